/**
 * What receiving one kernel message costs a Node process through zeromq.js,
 * before any gateway logic: a PUB in a child process publishes 7-frame
 * messages shaped like an iopub stream message (topic, `<IDS|MSG>`, a 64-byte
 * hex signature, a ~220-byte header, the same as parent, `{}`, the content),
 * and this process's SUB receives them over ipc and only counts them. The CPU
 * of this process is split by thread (from /proc/self/task/*\/stat): the main
 * thread (zeromq.js's receive: libzmq's recv of each frame, a Node Buffer per
 * frame, a promise per message) and the others (libzmq's I/O thread reading
 * the pipe and decoding frames). Three ways of reading are compared:
 * `for await` over the socket (three promises per message), a plain
 * `await socket.receive()` loop (one), and a batch of the receives that
 * resolve at once while the socket is readable, awaited together.
 *
 *   npx tsx bench/tools/zmq-receive-floor.ts [count]
 */
import { fork } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Publisher, Subscriber } from 'zeromq';
import { median } from '../lib/stats.js';

export type ReadMode = 'for-await' | 'receive-loop' | 'batch';
export const READ_MODES: readonly ReadMode[] = ['for-await', 'receive-loop', 'batch'];

const BATCH = 64;
const TICKS_US = 1e6 / 100; // USER_HZ is 100 on Linux

/** CPU µs per thread of this process (utime + stime). */
function threadCpu(): Map<string, number> {
  const out = new Map<string, number>();
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(tid, (Number(f[11]) + Number(f[12])) * TICKS_US);
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return out;
}

function frames(size: number): Buffer[] {
  const header = Buffer.from(
    JSON.stringify({ msg_id: 'a'.repeat(32), msg_type: 'stream', username: 'bench', session: 'b'.repeat(32), date: '2026-12-02T00:00:00.000000Z', version: '5.3' }),
  );
  const content = Buffer.from(JSON.stringify({ name: 'stdout', text: 'x'.repeat(size) }));
  return [Buffer.from('stream'), Buffer.from('<IDS|MSG>'), Buffer.alloc(64, 0x66), header, header, Buffer.from('{}'), content];
}

async function publish(url: string, n: number, size: number): Promise<void> {
  const pub = new Publisher({ sendHighWaterMark: 0, linger: 0 });
  await pub.bind(url);
  const msg = frames(size);
  process.on('message', (m) => {
    if (m !== 'go') return;
    void (async () => {
      for (let i = 0; i < n; i++) await pub.send(msg);
      await pub.send([Buffer.from('end')]);
    })();
  });
  process.send!('ready');
}

async function read(sub: Subscriber, mode: ReadMode): Promise<number> {
  let n = 0;
  // The end marker is the only one-frame message.
  if (mode === 'for-await') {
    for await (const f of sub) {
      if (f.length === 1) break;
      n++;
    }
    return n;
  }
  if (mode === 'receive-loop') {
    for (;;) {
      const f = await sub.receive();
      if (f.length === 1) return n;
      n++;
    }
  }
  for (;;) {
    const pending: Promise<Buffer[]>[] = [];
    try {
      while (pending.length < BATCH && sub.readable) pending.push(sub.receive());
    } catch (e) {
      // zeromq.js resolves at most 512 receives in a row at once, then defers one to the event loop.
      if ((e as { code?: string }).code !== 'EBUSY') throw e;
    }
    if (pending.length === 0) pending.push(sub.receive());
    for (const f of await Promise.all(pending)) {
      if (f.length === 1) return n;
      n++;
    }
  }
}

export interface ReceiveCost {
  mode: ReadMode;
  /** µs of CPU per message: all threads, the main thread, libzmq's threads. */
  total: number;
  main: number;
  io: number;
}

/** Median over `rounds` of receiving `n` messages of `size` text bytes, for each read mode in turn. */
export async function receiveFloor(size: number, n: number, rounds: number, modes: readonly ReadMode[] = READ_MODES): Promise<ReceiveCost[]> {
  const dir = mkdtempSync(join(tmpdir(), 'kgate-zmq-floor-'));
  const samples = new Map<ReadMode, { total: number[]; main: number[]; io: number[] }>();
  try {
    for (let r = 0; r < rounds; r++) {
      for (const mode of modes) {
        const url = `ipc://${join(dir, `${mode}-${r}`)}`;
        const child = fork(fileURLToPath(import.meta.url), ['publish', url, String(n), String(size)], { stdio: 'inherit' });
        try {
          await new Promise((res) => child.once('message', res));
          const sub = new Subscriber({ receiveHighWaterMark: 0, linger: 0 });
          sub.connect(url);
          sub.subscribe();
          // The subscription must reach the PUB before it publishes (the slow joiner).
          await new Promise((res) => setTimeout(res, 300));
          const before = threadCpu();
          child.send('go');
          const got = await read(sub, mode);
          const after = threadCpu();
          sub.close();
          let main = 0;
          let io = 0;
          for (const [tid, us] of after) {
            const d = us - (before.get(tid) ?? 0);
            if (tid === String(process.pid)) main += d;
            else io += d;
          }
          const s = samples.get(mode) ?? { total: [], main: [], io: [] };
          s.total.push((main + io) / got);
          s.main.push(main / got);
          s.io.push(io / got);
          samples.set(mode, s);
        } finally {
          child.kill();
        }
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return modes.map((mode) => {
    const s = samples.get(mode)!;
    return { mode, total: median(s.total), main: median(s.main), io: median(s.io) };
  });
}

async function main(): Promise<void> {
  const count = Number(process.argv[2] ?? '100000');
  console.log('| message | read | CPU µs/msg (all threads) | main thread | libzmq threads | ms/MiB |');
  console.log('| --- | --- | ---: | ---: | ---: | ---: |');
  for (const size of [100, 65_536]) {
    const n = size === 100 ? count : Math.max(500, Math.round(count / 50));
    for (const c of await receiveFloor(size, n, 5)) {
      const mib = ((c.total * 2 ** 20) / size / 1000).toFixed(3);
      console.log(`| ${size === 100 ? '100 B' : '64 KiB'} | ${c.mode} | ${c.total.toFixed(2)} | ${c.main.toFixed(2)} | ${c.io.toFixed(2)} | ${mib} |`);
    }
  }
}

if (process.argv[2] === 'publish') void publish(process.argv[3]!, Number(process.argv[4]), Number(process.argv[5]));
else if (process.argv[1] === fileURLToPath(import.meta.url)) void main();
