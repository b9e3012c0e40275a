/**
 * The audit log, kgate run as a process with real (bench) kernels: each
 * state-changing action once, and exactly one audit line for it with who,
 * what, kernel, when, outcome and the request id: a start, a refused start, an
 * interrupt, a restart, a 401, a session made and deleted, a kill -9 (a death
 * and an automatic restart), a client's shutdown, a cull, a SIGHUP (reload,
 * and the file reopened after a rename, as logrotate does), and the gateway's
 * own shutdown. Then --keep-kernels (release) and the next gateway's adoption,
 * and the default: the lines on stderr, at any log level.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { afterAll, describe, expect, it } from 'vitest';
import type { AuditEntry } from '../../src/audit.js';
import { startKgate, type Running } from '../helpers/kgate-process.js';
import { processesMatching } from '../helpers/procs.js';
import { until } from '../helpers/wait.js';

const OPERATOR = `op-${randomBytes(12).toString('hex')}`;
const SERVICE = `svc-${randomBytes(12).toString('hex')}`;
const SPEC = 'kgate-bench';

const dirs: string[] = [];
const running: Running[] = [];
afterAll(async () => {
  for (const k of running) {
    if (k.child.exitCode === null) {
      k.child.kill('SIGTERM');
      await k.exited;
    }
  }
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'kgate-audit-'));
  dirs.push(d);
  return d;
}

function entries(file: string): AuditEntry[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as AuditEntry);
}

async function kgate(args: string[]): Promise<Running & { stderr: () => string }> {
  const k = await startKgate(['--port', '0', '--auth-token', OPERATOR, ...args]);
  running.push(k);
  let err = '';
  k.child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return { ...k, stderr: () => err };
}

function client(url: string, token: string) {
  return async (method: string, path: string, o: { json?: unknown; requestId?: string; token?: string } = {}): Promise<{ status: number; body: Record<string, unknown> }> => {
    const headers: Record<string, string> = { Authorization: `token ${o.token ?? token}` };
    if (o.requestId) headers['X-Request-Id'] = o.requestId;
    if (o.json !== undefined) headers['Content-Type'] = 'application/json';
    const r = await fetch(new URL(path, url), { method, headers, body: o.json === undefined ? undefined : JSON.stringify(o.json) });
    const text = await r.text();
    return { status: r.status, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
  };
}

describe('--audit-log FILE', () => {
  it('one line per action, with who, what, kernel, when, outcome and request id', async () => {
    const dir = tmp();
    const file = join(dir, 'audit.log');
    const tokens = join(dir, 'tokens.yaml');
    writeFileSync(tokens, `tokens:\n  - sha256: ${createHash('sha256').update(SERVICE).digest('hex')}\n    user: svc-audit\n    tenant: acme\n`);
    const runtime = join(dir, 'runtime');
    const k = await kgate([
      '--audit-log',
      file,
      '--token-file',
      tokens,
      '--state-dir',
      join(dir, 'state'),
      '--runtime-dir',
      runtime,
      '--cull-idle-timeout',
      '3',
      '--cull-interval',
      '1',
    ]);
    const call = client(k.url, SERVICE);
    const after = (n: number): AuditEntry[] => entries(file).slice(n);
    const who = { user: 'svc-audit', tenant: 'acme', via: 'static-token' };
    const since = Date.now();

    // start
    const started = await call('POST', 'api/kernels', { json: { name: SPEC }, requestId: 'audit-start-1' });
    expect(started.status).toBe(201);
    const id = started.body['id'] as string;
    // A client stays connected, so the culler leaves this kernel alone.
    const ws = new WebSocket(`${k.url.replace(/^http/, 'ws')}api/kernels/${id}/channels?token=${SERVICE}`);
    await new Promise<void>((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    const all = entries(file);
    expect(all).toHaveLength(1);
    const first = all[0]!;
    expect(first).toMatchObject({ type: 'audit', what: 'start', who, kernel: { id, kernelspec: SPEC }, outcome: 'ok', request: 'audit-start-1' });
    expect(Date.parse(first.when)).toBeGreaterThanOrEqual(since - 1000);
    expect(new Date(first.when).toISOString()).toBe(first.when);

    // a start refused, with a generated request id
    let n = all.length;
    expect((await call('POST', 'api/kernels', { json: { name: 'no-such-spec' } })).status).toBe(404);
    let got = after(n);
    expect(got).toHaveLength(1);
    expect(got[0]).toMatchObject({ what: 'start', who, outcome: 'KG_KERNELSPEC_NOT_FOUND' });
    expect(got[0]!.kernel).toBeUndefined();
    expect(got[0]!.request).toMatch(/^[0-9a-f-]{36}$/);

    // interrupt, restart
    n += got.length;
    expect((await call('POST', `api/kernels/${id}/interrupt`, { requestId: 'audit-interrupt' })).status).toBe(204);
    expect((await call('POST', `api/kernels/${id}/restart`, { requestId: 'audit-restart' })).status).toBe(200);
    got = after(n);
    expect(got.map((e) => [e.what, e.kernel?.id, e.kernel?.kernelspec, e.outcome, e.request])).toEqual([
      ['interrupt', id, SPEC, 'ok', 'audit-interrupt'],
      ['restart', id, SPEC, 'ok', 'audit-restart'],
    ]);

    // a refused shutdown: a bad token (its who is nobody), the kernel untouched
    n += got.length;
    expect((await call('DELETE', `api/kernels/${id}`, { token: 'not-a-token', requestId: 'audit-401' })).status).toBe(401);
    got = after(n);
    expect(got).toEqual([
      expect.objectContaining({ what: 'shutdown', cause: 'client', who: { user: null, tenant: null, via: 'none' }, outcome: 'KG_UNAUTHORIZED', request: 'audit-401' }),
    ]);
    expect(got[0]!.kernel?.id).toBe(id);

    // a session made (starting a kernel) and deleted (shutting it down)
    n += got.length;
    const s = await call('POST', 'api/sessions', { json: { path: 'a.ipynb', type: 'notebook', kernel: { name: SPEC } } });
    expect(s.status).toBe(201);
    const sessionKernel = (s.body['kernel'] as { id: string }).id;
    expect((await call('DELETE', `api/sessions/${s.body['id'] as string}`)).status).toBe(204);
    got = after(n);
    expect(got.map((e) => [e.what, e.session, e.kernel?.id, e.kernel?.kernelspec, e.outcome])).toEqual([
      ['session_create', s.body['id'], sessionKernel, SPEC, 'ok'],
      ['session_delete', s.body['id'], sessionKernel, SPEC, 'ok'],
    ]);

    // kill -9 of the kernel: its death and the automatic restart, by the supervisor
    n += got.length;
    const pids = processesMatching(`kernel-${id}.json`);
    expect(pids).toHaveLength(1);
    process.kill(pids[0]!, 'SIGKILL');
    await until(() => after(n).some((e) => e.what === 'auto_restart'), 'the automatic restart line', 20_000);
    got = after(n);
    expect(got.map((e) => [e.what, e.who.via, e.kernel?.id, e.outcome])).toEqual([
      ['death', 'supervisor', id, 'ok'],
      ['auto_restart', 'supervisor', id, 'ok'],
    ]);
    expect(got[0]).toMatchObject({ final: false, kernel: { owner: { user: 'svc-audit', tenant: 'acme' } } });
    expect(got[1]!.attempt).toBe(1);
    await until(async () => ((await call('GET', `api/kernels/${id}`)).body['execution_state'] as string) === 'idle', 'the kernel to be back', 20_000);

    // a cull: a kernel nobody is connected to, idle for 3 s
    n += got.length;
    const idle = (await call('POST', 'api/kernels', { json: { name: SPEC } })).body['id'] as string;
    await until(() => after(n).some((e) => e.what === 'shutdown' && e.cause === 'cull'), 'the cull line', 20_000);
    got = after(n);
    expect(got.map((e) => [e.what, e.cause, e.who.via, e.kernel?.id, e.outcome])).toEqual([
      ['start', undefined, 'static-token', idle, 'ok'],
      ['shutdown', 'cull', 'culler', idle, 'ok'],
    ]);

    // a client's shutdown
    n += got.length;
    expect((await call('DELETE', `api/kernels/${id}`, { requestId: 'audit-delete' })).status).toBe(204);
    got = after(n);
    expect(got).toEqual([expect.objectContaining({ what: 'shutdown', cause: 'client', who, kernel: { id, kernelspec: SPEC }, outcome: 'ok', request: 'audit-delete' })]);

    // SIGHUP after logrotate moved the file: the reload's line is the new file's first
    renameSync(file, `${file}.1`);
    k.child.kill('SIGHUP');
    await until(() => entries(file).length > 0, 'the reload line in the reopened file', 10_000);
    expect(entries(file)).toEqual([expect.objectContaining({ what: 'reload', who: { user: null, tenant: null, via: 'sighup' }, outcome: 'ok' })]);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(entries(`${file}.1`)).toHaveLength(n + got.length);

    // the gateway's own shutdown: one line for the kernel still running (the operator's)
    const last = (await client(k.url, OPERATOR)('POST', 'api/kernels', { json: { name: SPEC }, requestId: 'audit-last' })).body['id'] as string;
    k.child.kill('SIGTERM');
    expect(await k.exited).toBe(0);
    const final = entries(file).slice(1);
    expect(final.map((e) => [e.what, e.cause, e.who.via, e.kernel?.id, e.outcome, e.request])).toEqual([
      ['start', undefined, 'operator-token', last, 'ok', 'audit-last'],
      ['shutdown', 'gateway_shutdown', 'gateway', last, 'ok', undefined],
    ]);
    expect(final[0]!.who).toEqual({ user: null, tenant: 'default', via: 'operator-token' });
    ws.close();
  }, 120_000);

  it('--keep-kernels: a line per kernel let go, and the next gateway on the state dir writes its adoption', async () => {
    const dir = tmp();
    const file = join(dir, 'audit.log');
    const state = join(dir, 'state');
    const a = await kgate(['--audit-log', file, '--state-dir', state, '--keep-kernels', 'true', '--runtime-dir', join(dir, 'runtime')]);
    const id = (await client(a.url, OPERATOR)('POST', 'api/kernels', { json: { name: SPEC } })).body['id'] as string;
    a.child.kill('SIGTERM');
    expect(await a.exited, a.stderr().slice(-3000)).toBe(0);
    expect(entries(file).map((e) => [e.what, e.who.via, e.kernel?.id, e.outcome])).toEqual([
      ['start', 'operator-token', id, 'ok'],
      ['release', 'gateway', id, 'ok'],
    ]);
    const b = await kgate(['--audit-log', file, '--state-dir', state, '--runtime-dir', join(dir, 'runtime')]);
    await until(() => entries(file).length >= 3, 'the adoption line', 10_000);
    // The adoption came before listening: one answer first, so the signal handlers are in place.
    expect((await fetch(new URL('healthz', b.url))).status).toBe(200);
    expect(entries(file)[2]).toMatchObject({ what: 'adopt', who: { via: 'gateway' }, kernel: { id, kernelspec: SPEC }, outcome: 'ok' });
    b.child.kill('SIGTERM');
    expect(await b.exited, b.stderr().slice(-3000)).toBe(0);
    expect(entries(file).slice(3)).toEqual([expect.objectContaining({ what: 'shutdown', cause: 'gateway_shutdown', kernel: expect.objectContaining({ id }) })]);
  }, 60_000);
});

describe('the default: stderr', () => {
  it('carries the audit lines beside the log, even at --log-level error', async () => {
    const k = await kgate(['--log-level', 'error', '--runtime-dir', join(tmp(), 'runtime')]);
    const r = await client(k.url, OPERATOR)('POST', 'api/kernels', { json: { name: SPEC }, requestId: 'audit-stderr' });
    expect(r.status).toBe(201);
    await until(() => k.stderr().includes('"request":"audit-stderr"'), 'the audit line on stderr', 10_000);
    const lines = k
      .stderr()
      .split('\n')
      .filter((l) => l.includes('"type":"audit"'))
      .map((l) => JSON.parse(l) as AuditEntry);
    expect(lines).toEqual([expect.objectContaining({ what: 'start', kernel: { id: r.body['id'], kernelspec: SPEC }, outcome: 'ok', request: 'audit-stderr' })]);
    // At error level, no info line came with it.
    expect(k.stderr()).not.toMatch(/"level":30/);
  });
});
