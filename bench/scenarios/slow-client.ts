/**
 * (f) A client that stops reading. On a fresh server, one kernel and a
 * reader client: `flood N 65536` (about 1 GiB at full scale) with the reader
 * alone; then, on another fresh server, the same flood with a second
 * WebSocket whose TCP socket is paused (`ws._socket.pause()`: nothing is read, so the gateway's send
 * buffer for it fills). Quoted: the gateway's peak RSS growth during the
 * second flood, the reader's MB/s and its ratio to the same flood without the
 * slow client (the ratio to (c) is in the note), what the reader lost,
 * and how the gateway treated the slow client: the close code it finds once it
 * reads again, or that it is still open, and what it got.
 */
import { randomUUID } from 'node:crypto';
import type WebSocket from 'ws';
import { RssWatch, sleep } from '../lib/procs.js';
import { kernelInfoHandshake, type Target } from '../lib/lab.js';
import { channelsUrl, createKernel, deleteKernel, type Gateway, type ServerKind } from '../lib/servers.js';
import { msgTypeIn } from '../lib/session.js';
import { openWebSocket, WsSession, type WsProtocol } from '../lib/ws-session.js';
import type { Context, Scenario } from './types.js';

function tcpSocket(ws: WebSocket): { pause(): void; resume(): void } {
  return (ws as unknown as { _socket: { pause(): void; resume(): void } })._socket;
}

/** What the paused client finds once it reads again. */
class SlowClientLog {
  streams = 0;
  /** A gateway's notice that output was dropped for this client (kgate writes one on stderr). */
  notice = '';
  closeCode: number | undefined;
  /** `closeCode` when the benchmark stopped watching, before it closes the socket itself. */
  seenCode: number | undefined;

  constructor(ws: WebSocket, protocol: WsProtocol) {
    ws.on('message', (data: Buffer) => {
      const head = protocol === 'v1' ? data.toString('latin1', data.readUInt32LE(16), data.readUInt32LE(24)) : data.toString('latin1', 0, 512);
      if (msgTypeIn(head) !== 'stream') return;
      this.streams++;
      if (data.length < 2048 && data.includes('stderr')) this.notice = /\[kgate\][^"\\]*/.exec(data.toString('utf8'))?.[0] ?? 'a stderr notice';
    });
    ws.on('close', (code: number) => {
      this.closeCode = code;
    });
    ws.on('error', () => undefined);
  }
}

interface FloodRun {
  growth: number;
  rssBefore: number;
  mbs: number;
  lost: number;
  note: string;
  slow: SlowClientLog | undefined;
}

/** One flood to a reader, on a server of its own, with or without a paused second client. */
async function floodRun(ctx: Context, target: Target, withSlowClient: boolean): Promise<FloodRun> {
  const z = ctx.sizes.slow;
  const server = target.server as ServerKind;
  const protocol = target.protocol as WsProtocol;
  const kgateArgs = server === 'kgate' && z.maxClientBuffer !== undefined ? ['--max-client-buffer', String(z.maxClientBuffer)] : [];
  const fresh = ctx.sizes.freshServers || kgateArgs.length > 0;
  const g: Gateway = fresh ? await ctx.lab.fresh(server, kgateArgs) : await ctx.lab.server(server);
  let id: string | undefined;
  let reader: WsSession | undefined;
  let slow: WebSocket | undefined;
  try {
    id = await createKernel(g, 'kgate-bench');
    const url = channelsUrl(g, id);
    reader = await WsSession.open(url, protocol, 30_000);
    await kernelInfoHandshake(reader, 30_000);
    await reader.execute(`flood ${ctx.sizes.floodLarge.warmupN} ${z.size}`, z.timeoutMs);
    let slowLog: SlowClientLog | undefined;
    if (withSlowClient) {
      slow = await openWebSocket(url(randomUUID()), protocol, 30_000);
      slowLog = new SlowClientLog(slow, protocol);
      tcpSocket(slow).pause();
    }
    await sleep(300);
    const watch = new RssWatch(g.pid);
    const r = await reader.execute(`flood ${z.n} ${z.size}`, z.timeoutMs);
    const growth = watch.stop();
    if (slow && slowLog) {
      tcpSocket(slow).resume();
      const until = performance.now() + z.closeWaitMs;
      while (slowLog.closeCode === undefined && performance.now() < until) await sleep(50);
      slowLog.seenCode = slowLog.closeCode;
    }
    const note = [r.timedOut ? `hit the ${z.timeoutMs / 1000} s bound` : '', r.closedWith ? `reader closed with ${r.closedWith}` : ''].filter(Boolean).join(', ');
    return { growth, rssBefore: watch.baseline, mbs: (r.streams * z.size) / (r.doneMs / 1000) / 1e6, lost: z.n - r.streams, note, slow: slowLog };
  } finally {
    reader?.close();
    slow?.terminate();
    if (id !== undefined) await deleteKernel(g, id);
    if (fresh) await ctx.lab.release(g);
  }
}

export const slowClient: Scenario = {
  id: 'slow-client',
  title: 'a client that stops reading',
  metrics: [
    ['peak RSS growth', 'MiB'],
    ['reader MB/s', 'MB/s'],
    ['reader vs no slow client', '×'],
    ['reader lost', 'msgs'],
    ['slow client closed with', 'code'],
  ],
  notApplicable: { direct: 'no gateway between' },
  async measure(ctx, target) {
    const z = ctx.sizes.slow;
    const alone = await floodRun(ctx, target, false);
    const r = await floodRun(ctx, target, true);
    const slowLog = r.slow!;
    const fromC = ctx.report.value('flood-large', 'MB/s', target.id);
    const gib = (z.n * z.size) / 2 ** 30;
    const size = `${gib >= 1 ? gib.toFixed(0) : gib.toFixed(3)} GiB`;
    const mib = (b: number): string => (b / 2 ** 20).toFixed(0);
    ctx.report.add(
      'slow-client',
      target.id,
      'peak RSS growth',
      'MiB',
      r.growth / 2 ** 20,
      `RSS before ${mib(r.rssBefore)} MiB; the same ${size} flood to the reader alone: +${mib(alone.growth)} MiB`,
    );
    ctx.report.add('slow-client', target.id, 'reader MB/s', 'MB/s', r.mbs, [`${size} flood`, r.note].filter(Boolean).join(', '));
    // "Normal" is the same flood to the reader alone on a fresh server: (c) is a shorter
    // flood on a shared server, so its ratio goes in the note.
    ctx.report.add(
      'slow-client',
      target.id,
      'reader vs no slow client',
      '×',
      alone.mbs > 0 ? r.mbs / alone.mbs : null,
      `vs ${alone.mbs.toFixed(0)} MB/s for the same flood to the reader alone${fromC !== null && fromC > 0 ? `; vs (c), ${fromC.toFixed(0)} MB/s: ${(r.mbs / fromC).toFixed(2)}×` : ''}`,
    );
    ctx.report.add('slow-client', target.id, 'reader lost', 'msgs', r.lost, `of ${z.n.toLocaleString('en-US')}; reader alone: ${alone.lost.toLocaleString('en-US')} lost`);
    const got = `the slow client got ${slowLog.streams.toLocaleString('en-US')} of ${z.n.toLocaleString('en-US')} streams${slowLog.notice ? `, and a notice: "${slowLog.notice.trim().slice(0, 90)}"` : ''}`;
    ctx.report.add(
      'slow-client',
      target.id,
      'slow client closed with',
      'code',
      slowLog.seenCode ?? null,
      slowLog.seenCode === undefined ? `still open ${z.closeWaitMs / 1000} s after the flood; ${got}` : got,
    );
  },
};
