/**
 * src/audit.ts on its own: the --audit-log file (created 0600, appended,
 * reopened at its path after a rename, as logrotate does), the default sink
 * (the log's own stream, at any level but silent), and the lifecycle events
 * it writes (only for kernels its gateway owns: the channels are process-wide).
 * The REST side is driven for real in test/integration/audit.test.ts.
 */
import { mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { AuditLog, type AuditEntry } from '../../src/audit.js';
import { events } from '../../src/events.js';
import { ConfigError } from '../../src/options.js';

const dirs: string[] = [];
const logs: AuditLog[] = [];
afterEach(() => {
  for (const a of logs.splice(0)) a.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'kgate-audit-unit-'));
  dirs.push(d);
  return d;
}

const silent = pino({ level: 'silent' });
const lines = (file: string): AuditEntry[] =>
  readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as AuditEntry);

function audit(file: string | undefined, owns: (id: string) => boolean = () => true, log = silent): AuditLog {
  const a = new AuditLog({ file, log, owns });
  logs.push(a);
  return a;
}

const kernel = { kernelId: 'k-1', kernelspec: 'python3', provisioner: 'local', owner: { user: 'alice', tenant: 'acme' } };

describe('the --audit-log file', () => {
  it('is created with mode 0600 and appended to', () => {
    const file = join(tmp(), 'audit.log');
    writeFileSync(file, '{"earlier":true}\n', { mode: 0o600 });
    const a = audit(file);
    a.reloaded('ok');
    const all = readFileSync(file, 'utf8').split('\n').filter(Boolean);
    expect(all[0]).toBe('{"earlier":true}');
    expect(JSON.parse(all[1]!)).toMatchObject({ type: 'audit', what: 'reload', who: { via: 'sighup' }, outcome: 'ok' });
    const fresh = join(tmp(), 'new.log');
    audit(fresh).reloaded('config_error');
    expect(statSync(fresh).mode & 0o777).toBe(0o600);
    expect(lines(fresh)[0]!.outcome).toBe('config_error');
  });

  it('is reopened at its path after a rename (logrotate), the new file 0600', () => {
    const dir = tmp();
    const file = join(dir, 'audit.log');
    const a = audit(file);
    a.reloaded('ok');
    renameSync(file, join(dir, 'audit.log.1'));
    a.reloaded('ok');
    a.reopen();
    a.reloaded('config_error');
    expect(lines(join(dir, 'audit.log.1')).map((e) => e.outcome)).toEqual(['ok', 'ok']);
    expect(lines(file).map((e) => e.outcome)).toEqual(['config_error']);
    expect(statSync(file).mode & 0o777).toBe(0o600);
  });

  it('that cannot be opened stops the start with a ConfigError', () => {
    expect(() => audit(join(tmp(), 'no-such-dir', 'audit.log'))).toThrow(ConfigError);
  });

  it('writes ISO times', () => {
    const file = join(tmp(), 'audit.log');
    audit(file).reloaded('ok');
    const when = lines(file)[0]!.when;
    expect(new Date(when).toISOString()).toBe(when);
  });
});

describe('the default sink: the log stream', () => {
  function memoryLog(level: string): { log: pino.Logger; out: string[] } {
    const out: string[] = [];
    const stream = new Writable({
      write(chunk: Buffer, _enc, cb) {
        out.push(...chunk.toString().split('\n').filter(Boolean));
        cb();
      },
    });
    return { log: pino({ level }, stream), out };
  }

  it('gets the lines whatever the level (error here), beside the log lines', () => {
    const { log, out } = memoryLog('error');
    audit(undefined, () => true, log).reloaded('ok');
    log.info('not at error level');
    expect(out.map((l) => JSON.parse(l) as { type?: string; what?: string })).toEqual([expect.objectContaining({ type: 'audit', what: 'reload' })]);
  });

  it('stays quiet when the log is silent', () => {
    const { log, out } = memoryLog('silent');
    audit(undefined, () => true, log).reloaded('ok');
    expect(out).toEqual([]);
  });
});

describe('lifecycle events', () => {
  it("writes a cull, an automatic restart, a death, an adoption and a takeover of the gateway's own kernels", () => {
    const file = join(tmp(), 'audit.log');
    const a = audit(file, (id) => id === 'k-1');
    events.kernelCull.publish({ ...kernel, idleMs: 5000 });
    events.kernelRestart.publish({ ...kernel, cause: 'death', attempt: 2 });
    // A restart a client asked for is the REST side's line, not this one's.
    events.kernelRestart.publish({ ...kernel, cause: 'request', attempt: 1 });
    events.kernelDeath.publish({ ...kernel, reason: 'process exited with code -9', final: false });
    events.kernelDeath.publish({ ...kernel, reason: 'gave up', final: true });
    events.kernelAdopt.publish({ ...kernel, how: 'adopted', resources: {} });
    events.kernelAdopt.publish({ ...kernel, how: 'takeover', resources: {} });
    events.kernelRelease.publish({ ...kernel, how: 'stepped_down', reason: 'another gateway holds its lease' });
    // Another gateway's kernel in the same process: not this audit's.
    events.kernelCull.publish({ ...kernel, kernelId: 'k-2', idleMs: 5000 });
    a.close();
    // Closed: no longer subscribed.
    events.kernelCull.publish({ ...kernel, idleMs: 5000 });
    const got = lines(file);
    expect(got.map((e) => [e.what, e.who.via, e.outcome])).toEqual([
      ['shutdown', 'culler', 'ok'],
      ['auto_restart', 'supervisor', 'ok'],
      ['death', 'supervisor', 'ok'],
      ['death', 'supervisor', 'KG_KERNEL_DEAD'],
      ['adopt', 'gateway', 'ok'],
      ['takeover', 'gateway', 'ok'],
      ['step_down', 'gateway', 'ok'],
    ]);
    expect(got[0]).toMatchObject({ cause: 'cull', kernel: { id: 'k-1', kernelspec: 'python3', owner: { user: 'alice', tenant: 'acme' } } });
    expect(got[1]!.attempt).toBe(2);
    expect(got[3]!.final).toBe(true);
    // No free text: a death's reason may quote a kernel's stderr.
    expect(readFileSync(file, 'utf8')).not.toContain('exited');
  });

  it('writes a line per kernel a gateway shutdown stopped or let go, pooled and followed ones aside', () => {
    const file = join(tmp(), 'audit.log');
    const a = audit(file);
    const k = (id: string, phase: string, extra: { pooled?: boolean; follower?: boolean } = {}) => ({
      id,
      name: 'python3',
      owner: 'bob',
      tenant: 'acme',
      phase,
      pooled: extra.pooled ?? false,
      follower: extra.follower ?? false,
    });
    const stopping = a.gatewayStopping([k('a', 'gone'), k('b', 'running'), k('p', 'gone', { pooled: true }), k('f', 'gone', { follower: true })], 'shutdown');
    stopping.done();
    a.gatewayStopping([k('c', 'gone')], 'release').done();
    expect(lines(file).map((e) => [e.what, e.cause, e.kernel?.id, e.outcome])).toEqual([
      ['shutdown', 'gateway_shutdown', 'a', 'ok'],
      ['shutdown', 'gateway_shutdown', 'b', 'KG_INTERNAL'],
      ['release', undefined, 'c', 'ok'],
    ]);
  });
});
