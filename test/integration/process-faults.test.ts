/**
 * No single client can end the process: a fault that escapes a request or
 * socket handler (an exception, a rejection nobody handles) is logged at error
 * level and kgate goes on serving, its kernels untouched. The faults are
 * injected into a kgate process (inject-fault.mjs) as a stand-in for a bug on
 * one client's path; without the process-level handlers, node ends the
 * process and kgate's exit handler kills every kernel.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gatewayClient, KernelClient, stdout, type GatewayClient } from '../helpers/gateway.js';
import { startKgate, type Running } from '../helpers/kgate-process.js';
import { processesMatching } from '../helpers/procs.js';
import { until } from '../helpers/wait.js';
import { rawConnect, sleep, upgradeRequest } from './raw-socket.js';

const TOKEN = 'faults-test-token';
const INJECT = fileURLToPath(new URL('./inject-fault.mjs', import.meta.url));
const runtimeDir = mkdtempSync(join(tmpdir(), 'kgate-rt-'));
let k: Running;
let g: GatewayClient;
let kernelId: string;
let client: KernelClient;
let stderr = '';

beforeAll(async () => {
  k = await startKgate(['--port', '0', '--auth-token', TOKEN, '--runtime-dir', runtimeDir], { NODE_OPTIONS: `--import=${INJECT}` });
  k.child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  g = gatewayClient(k.url, TOKEN);
  kernelId = await g.startKernel('python3');
  client = await KernelClient.connect(g, kernelId);
});
afterAll(async () => {
  client?.close();
  if (k.child.exitCode === null) {
    k.child.kill('SIGTERM');
    await k.exited;
  }
  expect(processesMatching(join(runtimeDir, 'kernel-'))).toEqual([]);
});

interface LogLine {
  level: number;
  msg: string;
  err?: { message?: string };
}

const logLines = (): LogLine[] =>
  stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as LogLine);

async function stillServes(): Promise<void> {
  await sleep(50);
  expect(k.child.exitCode, `kgate exited:\n${stderr.slice(-1500)}`).toBeNull();
  expect(processesMatching(join(runtimeDir, `kernel-${kernelId}`))).toHaveLength(1);
  const id = client.execute('print(6 * 7)');
  await client.reply(id);
  expect(stdout(client.outputs(id)).trim()).toBe('42');
  client.messages.length = 0;
}

describe('a fault on one client path', () => {
  it.each([
    ['throw', 'thrown from a timer'],
    ['reject', 'rejected with no handler'],
    ['socket-throw', 'thrown by a socket listener'],
  ])('%s: is logged at error level, and kgate and its kernels go on', async (fault, text) => {
    const r = await fetch(`${k.url}api/status?token=${TOKEN}`, { headers: { 'X-Kgate-Test-Fault': fault, Authorization: `token ${TOKEN}`, Connection: 'close' } });
    expect(r.status).toBe(200);
    await r.text();
    await until(() => logLines().some((l) => l.err?.message?.includes(text) === true), `the ${fault} fault in the log`, 5000).catch(() => undefined);
    await stillServes();
    const line = logLines().find((l) => l.err?.message?.includes(text));
    expect(line, stderr.slice(-1500)).toBeDefined();
    expect(line!.level).toBe(50);
    expect(stderr).not.toContain(TOKEN);
  });

  it('on a WebSocket upgrade: the same', async () => {
    const c = await rawConnect(Number(new URL(k.url).port));
    c.socket.write(upgradeRequest(`/api/kernels/${kernelId}/channels?token=${TOKEN}`, { 'X-Kgate-Test-Fault': 'socket-throw' }));
    await c.waitFor((t) => t.includes('\r\n\r\n'), 'the 101');
    c.reset();
    await until(() => logLines().filter((l) => l.err?.message?.includes('socket listener')).length >= 2, 'the second socket fault in the log', 5000).catch(() => undefined);
    await stillServes();
    expect(logLines().filter((l) => l.err?.message?.includes('socket listener'))).toHaveLength(2);
    expect(stderr).not.toContain(TOKEN);
  });
});
