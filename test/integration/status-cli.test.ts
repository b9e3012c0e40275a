/**
 * `kgate status` as a user runs it (the built dist/cli.js in its own
 * process) against kgate run the same way, with a bench kernel and a warm
 * pool: the table holds the kernel's id prefix, kernelspec and state; a wrong
 * or missing token and a gateway that is not there each end with one line on
 * stderr and exit 1, and the token is never printed.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gatewayClient } from '../helpers/gateway.js';
import { CLI, startKgate, type Running } from '../helpers/kgate-process.js';

const TOKEN = 'status-cli-token-0123456789';

let dir: string;
let kgate: Running;
let kernelId: string;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `kgate status …` with an environment of its own (no KG_TOKEN from the test's). */
function status(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const { KG_TOKEN: _t, KG_URL: _u, ...rest } = process.env;
  const child = spawn(process.execPath, [CLI, 'status', ...args], { env: { ...rest, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`kgate status did not end: ${stdout}${stderr}`));
    }, 20_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** A port nothing listens on: bound, then closed. */
async function closedPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kgate-status-cli-'));
  kgate = await startKgate(['--port', '0', '--auth-token', TOKEN, '--pool', 'kgate-bench=1', '--runtime-dir', join(dir, 'runtime')]);
  kernelId = await gatewayClient(kgate.url, TOKEN).startKernel('kgate-bench', { KERNEL_USERNAME: 'alice' });
});

afterAll(async () => {
  if (kgate) {
    kgate.child.kill('SIGTERM');
    await kgate.exited;
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('kgate status', () => {
  it('prints the kernels, the pool and the counters, with the token from KG_TOKEN', async () => {
    const r = await status(['--url', kgate.url], { KG_TOKEN: TOKEN });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = r.stdout.split('\n');
    expect(lines[0]).toMatch(/^kernels 1 {3}starting 0 {3}connections 0 {3}up \d+s {3}last activity \d+s ago$/);
    const header = lines.find((l) => l.startsWith('KERNEL '))!;
    expect(header.split(/\s+/)).toEqual(['KERNEL', 'KERNELSPEC', 'PROVISIONER', 'OWNER', 'TENANT', 'STATE', 'AGE', 'IDLE', 'CONN', 'RESOURCES']);
    const row = lines.find((l) => l.startsWith(kernelId.slice(0, 8)))!;
    expect(row, r.stdout).toBeDefined();
    // The id is cut to 8 characters; the columns line up under their headers.
    expect(row).not.toContain(kernelId);
    expect(row.split(/\s+/).slice(0, 6)).toEqual([kernelId.slice(0, 8), 'kgate-bench', 'local', 'alice', 'default', 'idle']);
    expect(row.indexOf('kgate-bench')).toBe(header.indexOf('KERNELSPEC'));
    expect(row.indexOf('idle')).toBe(header.indexOf('STATE'));
    expect(lines.find((l) => l.startsWith('POOL '))?.split(/\s+/)).toEqual(['POOL', 'TARGET', 'READY', 'STARTING']);
    expect(lines.find((l) => l.startsWith('kgate-bench '))).toMatch(/^kgate-bench\s+1\s+[01]\s+[01]$/);
    expect(r.stdout).not.toContain(TOKEN);
  });

  it('takes the token from --token too', async () => {
    const r = await status(['--url', kgate.url, '--token', TOKEN]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(kernelId.slice(0, 8));
  });

  it('a wrong token: one line saying so, exit 1, and the token not echoed', async () => {
    const r = await status(['--url', kgate.url], { KG_TOKEN: `wrong-${TOKEN}` });
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(`kgate status: ${kgate.url} refused the token (401 Unauthorized): give a valid one with KG_TOKEN or --token\n`);
  });

  it('no token: one line saying one is needed, exit 1', async () => {
    const r = await status(['--url', kgate.url]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`kgate status: ${kgate.url} needs a token (401 Unauthorized): give it with KG_TOKEN or --token\n`);
  });

  it('a gateway that is not there: one line, exit 1', async () => {
    const url = `http://127.0.0.1:${await closedPort()}/`;
    const r = await status(['--url', url], { KG_TOKEN: TOKEN });
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`kgate status: cannot reach ${url}: ECONNREFUSED\n`);
  });

  it('a URL holding a query (where a token would be printed back) or a wrong flag: exit 2 with the usage', async () => {
    const q = await status(['--url', `${kgate.url}?token=${TOKEN}`]);
    expect(q.code).toBe(2);
    expect(q.stderr).not.toContain(TOKEN);
    const bad = await status(['--nope']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('usage: kgate status');
  });
});
