/**
 * The floor under a gateway's CPU per relayed message, measured in this
 * process, on this machine: what moving a message costs before any gateway
 * logic. For 100-byte and 64 KiB messages:
 * - memcpy: one copy of the message (`Buffer.copy`), per message and per MiB;
 * - HMAC-SHA256 of it (node:crypto, what verifying a kernel's signature costs);
 * - a loopback TCP hop: one `write` per message on one socket and its `read`
 *   on the other, both ends in this process (CPU of both, user + system), in
 *   bursts corked as kgate corks a turn's writes, and uncorked (a syscall each).
 * Each figure is the median of 5 rounds of CPU time (process.cpuUsage) per message.
 *
 *   npx tsx bench/tools/cpu-floor.ts
 */
import { createHmac } from 'node:crypto';
import { createServer, connect, type Socket } from 'node:net';
import { median } from '../lib/stats.js';

const SIZES = [100, 65_536] as const;
const ROUNDS = 5;

function cpuUs(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

function perMessage(n: number, fn: () => void): number {
  const xs: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const t0 = cpuUs();
    for (let i = 0; i < n; i++) fn();
    xs.push((cpuUs() - t0) / n);
  }
  return median(xs);
}

async function loopback(size: number, n: number, corkEvery: number): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const accepted = new Promise<Socket>((r) => server.once('connection', r));
  const client = connect(port, '127.0.0.1');
  await new Promise<void>((r) => client.once('connect', r));
  client.setNoDelay(true);
  const peer = await accepted;
  const msg = Buffer.alloc(size, 0x61);
  const xs: number[] = [];
  try {
    for (let r = 0; r < ROUNDS; r++) {
      let got = 0;
      const done = new Promise<void>((resolve) => {
        const onData = (b: Buffer): void => {
          got += b.length;
          if (got >= size * n) {
            peer.off('data', onData);
            resolve();
          }
        };
        peer.on('data', onData);
      });
      const t0 = cpuUs();
      for (let i = 0; i < n; i += corkEvery) {
        if (corkEvery > 1) client.cork();
        for (let j = i; j < Math.min(n, i + corkEvery); j++) client.write(msg);
        if (corkEvery > 1) client.uncork();
        // Let the event loop flush and read, as a gateway's turn would end.
        await new Promise<void>((res) => setImmediate(res));
      }
      await done;
      xs.push((cpuUs() - t0) / n);
    }
  } finally {
    client.destroy();
    peer.destroy();
    server.close();
  }
  return median(xs);
}

async function main(): Promise<void> {
  const key = Buffer.from('0123456789abcdef0123456789abcdef');
  console.log(
    '| message | memcpy µs/msg | memcpy ms/MiB | HMAC-SHA256 µs/msg | HMAC ms/MiB | loopback TCP write+read, corked by 64, µs/msg | same, ms/MiB | loopback, a write each, µs/msg |',
  );
  console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const size of SIZES) {
    const n = size === 100 ? 200_000 : 4_000;
    const src = Buffer.alloc(size, 0x61);
    const dst = Buffer.allocUnsafe(size);
    const copy = perMessage(n, () => src.copy(dst));
    const hmac = perMessage(n, () => createHmac('sha256', key).update(src).digest('hex'));
    const corked = await loopback(size, n, 64);
    const each = await loopback(size, Math.min(n, 50_000), 1);
    const mib = (us: number): string => ((us * (2 ** 20 / size)) / 1000).toFixed(3);
    console.log(
      `| ${size === 100 ? '100 B' : '64 KiB'} | ${copy.toFixed(3)} | ${mib(copy)} | ${hmac.toFixed(2)} | ${mib(hmac)} | ${corked.toFixed(2)} | ${mib(corked)} | ${each.toFixed(2)} |`,
    );
  }
}

void main();
