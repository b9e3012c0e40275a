/**
 * The `kgate` command as a user runs it (the built dist/cli.js, which
 * `npm test` builds first): the listening line, the token, config errors, and
 * a clean shutdown that leaves no kernel process behind.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { OPTIONS } from '../src/config.js';
import { startKgate as start } from './helpers/kgate-process.js';
import { processesMatching } from './helpers/procs.js';

const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url));

function run(args: string[], env: Record<string, string> = {}): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 20_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('kgate CLI', () => {
  it('--help lists every option and its environment variable', () => {
    const r = run(['--help']);
    expect(r.status).toBe(0);
    for (const o of Object.values(OPTIONS)) {
      expect(r.stdout).toContain(`--${o.flag}`);
      expect(r.stdout).toContain(o.env);
    }
  });

  it('refuses bad settings with one clear line each and exit code 2', () => {
    const r = run(['--port', '99999', '--launch-timeout', 'soon']);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('--port');
    expect(r.stderr).toContain('--launch-timeout');
    expect(run(['--no-such-option']).status).toBe(2);
  });

  it('refuses to serve a non-loopback address without a token unless told', () => {
    const r = run(['--ip', '0.0.0.0', '--auth-token', '']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/without a token/);
  });

  it('prints the listening line first, then a random token that works', async () => {
    const k = await start(['--port', '0', '--runtime-dir', mkdtempSync(join(tmpdir(), 'kgate-rt-'))]);
    try {
      expect(k.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
      const token = /^token: (\S+)$/.exec(k.lines[1]!)?.[1];
      expect(token).toMatch(/^[0-9a-f]{48}$/);
      expect((await fetch(`${k.url}api/kernelspecs`)).status).toBe(401);
      expect((await fetch(`${k.url}api/kernelspecs`, { headers: { Authorization: `token ${token}` } })).status).toBe(200);
    } finally {
      k.child.kill('SIGTERM');
      await k.exited;
    }
  });

  it('takes KG_* settings from the environment', async () => {
    const k = await start(['--runtime-dir', mkdtempSync(join(tmpdir(), 'kgate-rt-'))], { KG_PORT: '0', KG_AUTH_TOKEN: 'from-env' });
    try {
      // A token the operator gave is not printed: stdout is often a log collector's (a pod's logs).
      expect(k.lines[1]).toBe('auth: the token given (not shown)');
      expect(k.lines.join('\n')).not.toContain('from-env');
      expect((await fetch(`${k.url}api/status`, { headers: { Authorization: 'token from-env' } })).status).toBe(200);
    } finally {
      k.child.kill('SIGTERM');
      await k.exited;
    }
  });

  it('--auth-token-file: uses the token from the file, kept off its command line and environment', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kgate-token-'));
    const file = join(dir, 'token');
    writeFileSync(file, 'file-token-0123456789\nsecond line ignored\n', { mode: 0o600 });
    const k = await start(['--port', '0', '--auth-token-file', file, '--runtime-dir', mkdtempSync(join(tmpdir(), 'kgate-rt-'))]);
    try {
      expect(k.lines[1]).toBe('auth: the token given (not shown)');
      expect(k.lines.join('\n')).not.toContain('file-token-0123456789');
      expect((await fetch(`${k.url}api/status`, { headers: { Authorization: 'token file-token-0123456789' } })).status).toBe(200);
      expect((await fetch(`${k.url}api/status?token=file-token-0123456789`)).status).toBe(200);
      expect((await fetch(`${k.url}api/status`, { headers: { Authorization: 'token second line ignored' } })).status).toBe(401);
      // What a local kernel could read of its parent: /proc/<ppid>/cmdline and environ.
      for (const what of ['cmdline', 'environ']) expect(readFileSync(`/proc/${k.child.pid}/${what}`, 'utf8')).not.toContain('file-token-0123456789');
    } finally {
      k.child.kill('SIGTERM');
      await k.exited;
    }
  });

  it('--auth-token-file: a missing or empty file, or a token given twice, stops kgate at start with one line and exit code 2', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kgate-token-'));
    const empty = join(dir, 'empty');
    writeFileSync(empty, '\n');
    const good = join(dir, 'good');
    writeFileSync(good, 'a-token\n');
    const cases: Array<[string[], Record<string, string>, RegExp]> = [
      [['--auth-token-file', join(dir, 'missing')], {}, /^kgate: --auth-token-file: cannot read .*missing: ENOENT$/],
      [['--auth-token-file', empty], {}, /^kgate: --auth-token-file: .*empty holds no token/],
      [['--auth-token-file', good, '--auth-token', 'other'], {}, /^kgate: give --auth-token or --auth-token-file, not both$/],
      [['--auth-token-file', good], { KG_AUTH_TOKEN: 'other' }, /^kgate: give --auth-token or --auth-token-file, not both$/],
    ];
    for (const [args, env, message] of cases) {
      const r = run(['--port', '0', ...args], env);
      expect(r.status, args.join(' ')).toBe(2);
      expect(r.stdout).toBe('');
      const lines = r.stderr.trimEnd().split('\n');
      expect(lines, r.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(message);
    }
  });

  it('never writes a kernel key or the token to its logs, even at trace level', async () => {
    const runtimeDir = mkdtempSync(join(tmpdir(), 'kgate-rt-'));
    const k = await start(['--port', '0', '--auth-token', 'sekret-token', '--runtime-dir', runtimeDir, '--log-level', 'trace']);
    let stderr = '';
    k.child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const headers = { Authorization: 'token sekret-token', 'Content-Type': 'application/json' };
    const r = await fetch(`${k.url}api/kernels`, { method: 'POST', headers, body: '{"name":"python3"}' });
    const { id } = (await r.json()) as { id: string };
    const key = (JSON.parse(readFileSync(join(runtimeDir, `kernel-${id}.json`), 'utf8')) as { key: string }).key;
    expect(key).toMatch(/^[0-9a-f]{64}$/);
    await fetch(`${k.url}api/kernels/${id}/restart?token=sekret-token`, { method: 'POST' });
    await fetch(`${k.url}api/kernels/${id}`, { method: 'DELETE', headers });
    k.child.kill('SIGTERM');
    await k.exited;
    expect(stderr).toContain('kernel started');
    expect(stderr).not.toContain(key);
    expect(stderr).not.toContain('sekret-token');
  });

  it.each(['SIGTERM', 'SIGINT'] as const)('on %s shuts every kernel down and leaves no process behind', async (signal) => {
    const runtimeDir = mkdtempSync(join(tmpdir(), 'kgate-rt-'));
    const k = await start(['--port', '0', '--auth-token', 't', '--runtime-dir', runtimeDir]);
    const headers = { Authorization: 'token t', 'Content-Type': 'application/json' };
    const starts = await Promise.all([0, 1].map(() => fetch(`${k.url}api/kernels`, { method: 'POST', headers, body: '{"name":"python3"}' })));
    expect(starts.map((r) => r.status)).toEqual([201, 201]);
    // Kernel command lines hold their connection file, kernel-{id}.json in the runtime dir.
    expect(processesMatching(join(runtimeDir, 'kernel-'))).toHaveLength(2);
    k.child.kill(signal);
    expect(await k.exited).toBe(0);
    expect(processesMatching(join(runtimeDir, 'kernel-'))).toEqual([]);
  });
});
