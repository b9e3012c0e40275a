/**
 * Kernel start time: how long from asking for an ipykernel until its first
 * kernel_info_reply, (a) started directly and asked over ZeroMQ (the kernel's
 * own start time), (b) through kgate: POST /api/kernels, then kernel_info over
 * the channels WebSocket. Same machine, same run, medians.
 *
 *   npx tsx bench/start-time.ts            (BENCH_RUNS=N to change the count, default 7)
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { Dealer } from 'zeromq';
import { makeMessage } from '../src/bridge/messages.js';
import { Signer, splitWire, toWire } from '../src/bridge/wire.js';
import { loadConfig } from '../src/config.js';
import { createGateway } from '../src/gateway/app.js';
import { createLogger } from '../src/log.js';

const RUNS = Number(process.env['BENCH_RUNS'] ?? 7);
const PYTHON = '/usr/bin/python3';

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const a = srv.address();
      srv.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

/** Spawn ipykernel ourselves and time the first kernel_info_reply on a DEALER. */
async function direct(dir: string): Promise<number> {
  const key = randomBytes(32).toString('hex');
  const conn = {
    transport: 'tcp',
    ip: '127.0.0.1',
    shell_port: await freePort(),
    iopub_port: await freePort(),
    stdin_port: await freePort(),
    control_port: await freePort(),
    hb_port: await freePort(),
    key,
    signature_scheme: 'hmac-sha256',
    kernel_name: 'python3',
  };
  const file = join(dir, `direct-${randomBytes(4).toString('hex')}.json`);
  writeFileSync(file, JSON.stringify(conn));
  const signer = new Signer(key);
  // The same flat 10 ms reconnect pace kgate uses, so the ceiling is not held back by ZeroMQ's backoff.
  const shell = new Dealer({ linger: 0, reconnectInterval: 10, reconnectMaxInterval: 0 });
  shell.connect(`tcp://127.0.0.1:${conn.shell_port}`);
  const t0 = performance.now();
  const child = spawn(PYTHON, ['-m', 'ipykernel_launcher', '-f', file], { stdio: 'ignore' });
  await shell.send(toWire(Buffer.from('bench'), signer, makeMessage('kernel_info_request', {}, 'bench').parts));
  for (;;) {
    const frames = await shell.receive();
    const m = splitWire(frames);
    if (m && m.header.includes('kernel_info_reply')) break;
  }
  const ms = performance.now() - t0;
  shell.close();
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  return ms;
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'kgate-bench-'));
  const token = 'bench';
  const gw = await createGateway(loadConfig(['--port', '0', '--auth-token', token, '--runtime-dir', dir], {}), createLogger('silent'));
  const { port } = await gw.listen();
  const base = `http://127.0.0.1:${port}/`;
  const headers = { Authorization: `token ${token}`, 'Content-Type': 'application/json' };

  // One warm-up of each, so Python's bytecode cache and the page cache are warm for both.
  await direct(dir);
  const directMs: number[] = [];
  const postMs: number[] = [];
  const infoMs: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    directMs.push(await direct(dir));
    const t0 = performance.now();
    const r = await fetch(`${base}api/kernels`, { method: 'POST', headers, body: '{"name":"python3"}' });
    const { id } = (await r.json()) as { id: string };
    postMs.push(performance.now() - t0);
    const ws = new WebSocket(`ws://127.0.0.1:${port}/api/kernels/${id}/channels?token=${token}`, ['v1.kernel.websocket.jupyter.org']);
    await new Promise((res) => ws.once('open', res));
    const { parts } = makeMessage('kernel_info_request', {}, 'bench');
    const chan = Buffer.from('shell');
    const table = Buffer.alloc(8 * 7);
    const all = [chan, parts.header, parts.parent, parts.metadata, parts.content];
    let off = table.length;
    table.writeBigUInt64LE(6n, 0);
    all.forEach((p, k) => {
      table.writeBigUInt64LE(BigInt(off), 8 * (k + 1));
      off += p.length;
    });
    table.writeBigUInt64LE(BigInt(off), 48);
    const replied = new Promise<void>((res) => {
      ws.on('message', (d: Buffer) => {
        if (d.includes('kernel_info_reply')) res();
      });
    });
    ws.send(Buffer.concat([table, ...all]));
    await replied;
    infoMs.push(performance.now() - t0);
    ws.close();
    await fetch(`${base}api/kernels/${id}`, { method: 'DELETE', headers });
  }
  await gw.close();

  const row = (name: string, xs: number[]): string =>
    `| ${name.padEnd(52)} | ${median(xs).toFixed(0).padStart(6)} | ${Math.min(...xs).toFixed(0).padStart(5)} | ${Math.max(...xs).toFixed(0).padStart(5)} | ${(median(xs) / median(directMs)).toFixed(2).padStart(5)} |`;
  console.log(`kernel start, ipykernel ${PYTHON}, ${RUNS} runs each, ms`);
  console.log(`| ${'path'.padEnd(52)} | median |   min |   max | ratio |`);
  console.log(`| ${'-'.repeat(52)} | -----: | ----: | ----: | ----: |`);
  console.log(row('direct: spawn → kernel_info_reply on ZeroMQ', directMs));
  console.log(row('kgate: POST /api/kernels → 201 (kernel answered)', postMs));
  console.log(row('kgate: POST → kernel_info_reply over WebSocket (v1)', infoMs));
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
