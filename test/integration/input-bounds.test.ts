/**
 * Client → kernel is bounded in bytes: a socket that sends large messages as
 * fast as it can neither grows kgate nor the kernel. kgate runs as its own
 * process (its RSS is its alone) with small bounds; the kernel's RSS is read
 * from /proc too. Each flood is bounded in count (FLOOD messages of 512 KiB)
 * and in time, and stops early once the socket is visibly paused.
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gatewayClient, interruptUntilReplied, KernelClient, makeRequest, stdout, type GatewayClient } from '../helpers/gateway.js';
import { memoryOf, startKgate, type Running } from '../helpers/kgate-process.js';
import { processesMatching } from '../helpers/procs.js';
import { until } from '../helpers/wait.js';

const TOKEN = 'input-bounds-token';
const MiB = 1024 * 1024;
const MESSAGE = 512 * 1024;
/** 300 MiB offered in all: more than kgate or the kernel may hold, fewer than the kernel's ZeroMQ queue (1000 messages) takes. */
const FLOOD = 600;
const CLIENT_BOUND = 4 * MiB;
const KERNEL_BOUND = 8 * MiB;
/** The flooding client keeps at most this much unsent; past it kgate has stopped taking its data. */
const CLIENT_HIGH_WATER = 8 * MiB;
/** No more than STALL_BYTES taken off the socket in STALL_MS (with data waiting) means kgate stopped reading it. */
const STALL_MS = 2000;
const STALL_BYTES = MiB;
const FLOOD_TIMEOUT_MS = 20_000;

let k: Running;
let t: GatewayClient;
const kernels: string[] = [];
/** kgate's log (stderr). */
let log = '';

beforeAll(async () => {
  k = await startKgate([
    '--port',
    '0',
    '--auth-token',
    TOKEN,
    '--max-client-input',
    String(CLIENT_BOUND),
    '--max-kernel-input',
    String(KERNEL_BOUND),
    '--runtime-dir',
    mkdtempSync(join(tmpdir(), 'kgate-rt-')),
  ]);
  k.child.stderr!.on('data', (d: Buffer) => (log += d.toString()));
  t = gatewayClient(k.url, TOKEN);
});
afterAll(async () => {
  await Promise.all(kernels.map((id) => t.api(`api/kernels/${id}`, { method: 'DELETE' }).catch(() => undefined)));
  k.child.kill('SIGTERM');
  await k.exited;
});

async function startKernel(): Promise<{ id: string; pid: number }> {
  const id = await t.startKernel('python3');
  kernels.push(id);
  const pids = processesMatching(`kernel-${id}.json`);
  expect(pids).toHaveLength(1);
  return { id, pid: pids[0]! };
}

function open(kernelId: string): Promise<WebSocket> {
  const ws = new WebSocket(`${t.wsUrl}api/kernels/${kernelId}/channels?session_id=${randomUUID()}&token=${TOKEN}`);
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

interface FloodResult {
  sent: number;
  /** With data waiting, the socket drained less than STALL_BYTES in STALL_MS: kgate stopped reading it. */
  paused: boolean;
  closedWith: number | undefined;
  kgateGrowth: number;
  kernelGrowth: number;
  ms: number;
}

/** Sends `frame` up to FLOOD times as fast as the socket takes it, sampling both processes' RSS. */
async function flood(ws: WebSocket, frame: string, kernelPid: number): Promise<FloodResult> {
  const kgateBefore = memoryOf(k.child.pid!).rss;
  const kernelBefore = memoryOf(kernelPid).rss;
  let kgatePeak = kgateBefore;
  let kernelPeak = kernelBefore;
  const sample = (): void => {
    kgatePeak = Math.max(kgatePeak, memoryOf(k.child.pid!).rss);
    kernelPeak = Math.max(kernelPeak, memoryOf(kernelPid).rss);
  };
  let closedWith: number | undefined;
  ws.once('close', (code: number) => (closedWith = code));
  const start = Date.now();
  let sent = 0;
  let paused = false;
  // Bytes the socket has taken off the client (what kgate's TCP side accepted), sampled.
  const drained = (): number => sent * frame.length - ws.bufferedAmount;
  const progress: Array<[number, number]> = [];
  while (sent < FLOOD && closedWith === undefined && Date.now() - start < FLOOD_TIMEOUT_MS) {
    while (sent < FLOOD && ws.readyState === WebSocket.OPEN && ws.bufferedAmount < CLIENT_HIGH_WATER) {
      ws.send(frame);
      sent++;
    }
    sample();
    const now = Date.now();
    progress.push([now, drained()]);
    while (progress.length > 1 && now - progress[1]![0] >= STALL_MS) progress.shift();
    const [since, then] = progress[0]!;
    if (ws.bufferedAmount > 0 && now - since >= STALL_MS && drained() - then < STALL_BYTES) {
      paused = true;
      break;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  // What was sent last reaches the processes a little later.
  for (let i = 0; i < 25; i++) {
    sample();
    await new Promise((r) => setTimeout(r, 20));
  }
  return { sent, paused, closedWith, kgateGrowth: kgatePeak - kgateBefore, kernelGrowth: kernelPeak - kernelBefore, ms: Date.now() - start };
}

/**
 * Runs `code` on `c` once the kernel takes it: right after an interrupted cell, ipykernel
 * aborts the requests that reach it before it has finished aborting (stop_on_error).
 */
async function runAfterInterrupt(c: KernelClient, code: string): Promise<string> {
  for (let i = 0; i < 5; i++) {
    const id = c.execute(code);
    const reply = await c.reply(id, 30_000);
    if (reply.content['status'] !== 'aborted') return stdout(c.outputs(id));
  }
  throw new Error('every execute_request was aborted');
}

function report(what: string, r: FloodResult): void {
  console.log(
    `${what}: sent ${r.sent} of ${FLOOD} (${((r.sent * MESSAGE) / MiB).toFixed(0)} MiB) in ${r.ms} ms; paused ${r.paused}; closed ${r.closedWith ?? '-'}; ` +
      `kgate RSS +${(r.kgateGrowth / MiB).toFixed(1)} MiB, kernel RSS +${(r.kernelGrowth / MiB).toFixed(1)} MiB`,
  );
}

describe('input bounds', () => {
  it('input_reply with no input_request outstanding: dropped in kgate, never grows kgate or the kernel', async () => {
    const { id, pid } = await startKernel();
    const other = await KernelClient.connect(t, id);
    await other.reply(other.execute('1'));
    const ws = await open(id);
    const frame = JSON.stringify({ ...makeRequest('input_reply', { value: 'x'.repeat(MESSAGE) }, randomUUID(), 'stdin'), buffers: [] });
    const r = await flood(ws, frame, pid);
    report('input_reply flood', r);

    // Neither process kept what flowed (300 MiB offered): kgate holds at most
    // its bounds plus garbage not yet collected; the kernel got none of it.
    expect(r.kgateGrowth).toBeLessThan(96 * MiB);
    expect(r.kernelGrowth).toBeLessThan(24 * MiB);
    // The stray replies were dropped (kgate says so once), or the socket was held back.
    const dropped = log.includes('dropped an input_reply with no input_request outstanding');
    expect(dropped || r.paused || r.closedWith === 1013).toBe(true);

    // Another client of the kernel still runs code, and still answers input() over stdin.
    const code = other.execute('v = input("? ")\nprint("got", v)', { allowStdin: true });
    await other.next((m) => m.header.msg_type === 'input_request');
    other.request('input_reply', { value: 'yes' }, 'stdin');
    await other.reply(code);
    expect(stdout(other.outputs(code))).toBe('got yes\n');
    ws.terminate();
    other.close();
  });

  it('shell messages to a kernel busy in time.sleep: the socket is paused (or closed with 1013); kgate and the kernel stay small', async () => {
    const { id, pid } = await startKernel();
    const other = await KernelClient.connect(t, id);
    const busy = other.execute('import time\ntime.sleep(60)');
    await other.next((m) => m.parent_header.msg_id === busy && m.header.msg_type === 'execute_input');
    const ws = await open(id);
    // Cheap for the kernel to answer once it reads them: the padding is in the metadata.
    const msg = makeRequest('kernel_info_request', {}, randomUUID());
    msg.metadata = { pad: 'x'.repeat(MESSAGE) };
    const r = await flood(ws, JSON.stringify({ ...msg, buffers: [] }), pid);
    report('shell flood to a busy kernel', r);

    expect(r.paused || r.closedWith === 1013).toBe(true);
    expect(r.sent).toBeLessThan(FLOOD);
    expect(r.kgateGrowth).toBeLessThan(64 * MiB);
    expect(r.kernelGrowth).toBeLessThan(32 * MiB);

    // The kernel was only busy: interrupted, it answers the other client again.
    ws.terminate();
    await interruptUntilReplied(other, busy, () => t.api(`api/kernels/${id}/interrupt`, { method: 'POST' }));
    expect(await runAfterInterrupt(other, 'print("still here")')).toBe('still here\n');
    other.close();
  });

  it('a message that would take a client past its bound while the kernel does not read: the socket is closed with 1013', async () => {
    const { id } = await startKernel();
    const other = await KernelClient.connect(t, id);
    const busy = other.execute('import time\ntime.sleep(60)');
    await other.next((m) => m.parent_header.msg_id === busy && m.header.msg_type === 'execute_input');
    const ws = await open(id);
    const closed = new Promise<number>((resolve) => ws.once('close', (code: number) => resolve(code)));
    const padded = (bytes: number): string => {
      const msg = makeRequest('kernel_info_request', {}, randomUUID());
      msg.metadata = { pad: 'x'.repeat(bytes) };
      return JSON.stringify({ ...msg, buffers: [] });
    };
    // Five fill what the busy kernel may be sent (8 MiB), the sixth waits in kgate (1.5 MiB,
    // under half the 4 MiB bound, so the socket is still read), the seventh would pass the bound.
    for (let i = 0; i < 6; i++) ws.send(padded(1.5 * MiB));
    ws.send(padded(3 * MiB));
    expect(await Promise.race([closed, new Promise((r) => setTimeout(r, 10_000, 'still open'))])).toBe(1013);

    await interruptUntilReplied(other, busy, () => t.api(`api/kernels/${id}/interrupt`, { method: 'POST' }));
    expect(await runAfterInterrupt(other, 'print("still here")')).toBe('still here\n');
    other.close();
  });

  it('a single message larger than the client bound is taken when nothing of the client is queued', async () => {
    const { id } = await startKernel();
    const c = await KernelClient.connect(t, id);
    const code = c.execute(`s = ${JSON.stringify('y'.repeat(CLIENT_BOUND + MiB))}\nprint(len(s))`);
    await c.reply(code);
    expect(stdout(c.outputs(code))).toBe(`${CLIENT_BOUND + MiB}\n`);
    expect(c.closed).toBeUndefined();
    c.close();
    await until(() => c.closed !== undefined, 'the socket to close', 5000);
  });
});
