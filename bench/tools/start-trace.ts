/**
 * Where a kernel start's time goes (issue 16): for N starts of one kernelspec
 * through kgate, the timeline of each from `POST /api/kernels` to the
 * client's first `kernel_info_reply` on a new WebSocket, and the same kernel
 * started directly (a connection file, the spec's argv, a raw ZeroMQ client
 * asking `kernel_info_request` until it answers): the kernel alone.
 *
 * The steps inside kgate come from its debug log ("kernel start: …",
 * "kernel spawned", "nudge: …"), each line carrying `at`, a high-resolution
 * wall-clock time (performance.timeOrigin + now, comparable across
 * processes); when the kernel's ports are bound is seen from outside, by
 * polling /proc/net/tcp every millisecond for new listening sockets.
 * Medians per step are printed, from the POST (or the direct launch) and
 * from the step before.
 *
 *   npx tsx bench/tools/start-trace.ts [kgate-bench|python3] [--runs N] [--dist] [--no-ports] [--verbose] [--kgate-root DIR]
 *
 * kgate runs from src/ through tsx (no build needed); --dist runs dist/cli.js.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { kernelInfoHandshake } from '../lib/lab.js';
import { rssBytes, sleep, stopChild } from '../lib/procs.js';
import { channelsUrl, createKernel, deleteKernel, launchDirect, REPO, startKgate, type Gateway, type KernelName } from '../lib/servers.js';
import { median } from '../lib/stats.js';
import { WsSession } from '../lib/ws-session.js';
import { ZmqSession } from '../lib/zmq-session.js';

const args = process.argv.slice(2);
const kernel = (['kgate-bench', 'python3'].find((k) => args.includes(k)) ?? 'kgate-bench') as KernelName;
const runsAt = args.indexOf('--runs');
const RUNS = runsAt >= 0 ? Number(args[runsAt + 1]) : 12;
const FROM_DIST = args.includes('--dist');
const WATCH_PORTS = !args.includes('--no-ports');
const VERBOSE = args.includes('--verbose');
/** Another checkout's kgate (a before/after comparison); this one by default. */
const rootAt = args.indexOf('--kgate-root');
const KGATE_ROOT = rootAt >= 0 ? args[rootAt + 1]! : REPO;
const TIMEOUT_MS = 60_000;

const now = (): number => performance.timeOrigin + performance.now();

/** Listening IPv4 sockets, by port: the first time each new one was seen. */
class ListenWatch {
  private readonly before = ListenWatch.listening();
  readonly firstSeen = new Map<number, number>();
  private readonly timer: NodeJS.Timeout | undefined;

  constructor(enabled: boolean) {
    if (enabled) this.timer = setInterval(() => this.poll(), 1);
  }

  static listening(): Set<number> {
    const out = new Set<number>();
    let text: string;
    try {
      text = readFileSync('/proc/net/tcp', 'latin1');
    } catch {
      return out;
    }
    for (const line of text.split('\n')) {
      // "  sl  local_address rem_address   st ..."; st 0A is LISTEN.
      const f = line.trim().split(/\s+/);
      if (f[3] === '0A') out.add(parseInt(f[1]!.split(':')[1]!, 16));
    }
    return out;
  }

  private poll(): void {
    const t = now();
    for (const p of ListenWatch.listening()) if (!this.before.has(p) && !this.firstSeen.has(p)) this.firstSeen.set(p, t);
  }

  /** When the last of these ports was first seen listening (undefined if one never was). */
  allBound(ports: number[]): number | undefined {
    let last = 0;
    for (const p of ports) {
      const t = this.firstSeen.get(p);
      if (t === undefined) return undefined;
      last = Math.max(last, t);
    }
    return last;
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

type Timeline = Map<string, number>;
/** Starts whose link saw iopub speak before the kernel's first reply (no slow joiner). */
let iopubFirst = 0;

/** kgate with a debug log, from src/ (tsx) or dist/. */
async function startGateway(dir: string): Promise<{ g: Gateway; log: string }> {
  const entry = FROM_DIST ? [join(KGATE_ROOT, 'dist/cli.js')] : ['--import', pathToFileURL(join(REPO, 'node_modules/tsx/dist/loader.mjs')).href, join(KGATE_ROOT, 'src/cli.ts')];
  const g = await startKgate(dir, { entry, logLevel: 'debug' });
  return { g, log: g.logFile };
}

/** The trace lines kgate wrote since `offset` (bytes), and the new offset. */
function traceLines(log: string, offset: number): { lines: Array<{ msg: string; at: number; shell?: number; iopub?: number; control?: number }>; offset: number } {
  const buf = readFileSync(log);
  const out = [];
  for (const l of buf.subarray(offset).toString('utf8').split('\n')) {
    if (!l.includes('"at":')) continue;
    try {
      out.push(JSON.parse(l) as { msg: string; at: number });
    } catch {
      // a line cut by the read: not a trace line of a finished start
    }
  }
  return { lines: out, offset: buf.length };
}

async function viaKgate(g: Gateway, log: string, offset: number): Promise<{ t: Timeline; offset: number }> {
  const watch = new ListenWatch(WATCH_PORTS);
  const t: Timeline = new Map();
  const t0 = now();
  t.set('POST sent', t0);
  const id = await createKernel(g, kernel, TIMEOUT_MS);
  t.set('201 received', now());
  const s = await WsSession.open(channelsUrl(g, id), 'json', TIMEOUT_MS);
  t.set('WebSocket open', now());
  await kernelInfoHandshake(s, TIMEOUT_MS);
  t.set("client's kernel_info_reply", now());
  watch.stop();
  s.close();
  await deleteKernel(g, id);
  await sleep(100); // the log is written asynchronously
  const r = traceLines(log, offset);
  let ports: number[] = [];
  for (const l of r.lines) {
    const name =
      l.msg === 'kernel spawned'
        ? 'kernel spawned (kgate)'
        : l.msg.startsWith('nudge: iopub') || l.msg.startsWith('nudge: first iopub')
          ? 'link first iopub message'
          : l.msg.startsWith('nudge: ')
            ? `link ${l.msg.slice(7)}`
            : l.msg;

    if (!t.has(name)) t.set(name, l.at);
    if (l.msg === 'kernel spawned') ports = [l.shell!, l.iopub!, l.control!];
  }
  if (r.lines.some((l) => l.msg === 'nudge: iopub message before any reply')) iopubFirst++;
  const bound = watch.allBound(ports);
  if (bound !== undefined) t.set('kernel ports bound (seen)', bound);
  for (const [k, v] of t) t.set(k, v - t0);
  return { t, offset: r.offset };
}

/** The kernel alone: ports, a connection file, the spec's argv, a DEALER and a SUB asking until it answers. */
async function direct(dir: string): Promise<Timeline> {
  const watch = new ListenWatch(WATCH_PORTS);
  const t: Timeline = new Map();
  const t0 = now();
  t.set('launch asked', t0);
  // The 'spawn' event comes on a later tick, so listening after launchDirect returns sees it.
  const { conn, child } = await launchDirect(kernel, dir);
  const spawned = new Promise<void>((r) => child.once('spawn', () => r(void t.set('kernel spawned', now()))));
  const s = ZmqSession.connect(conn);
  try {
    await s.kernelInfo(TIMEOUT_MS);
    t.set('kernel_info_reply', now());
    // When iopub first speaks to a SUB connected at the start (the link waits for it too).
    const until = performance.now() + 2000;
    while (s.iopubSeen === 0 && performance.now() < until) await sleep(1);
    if (s.iopubSeen > 0) t.set('first iopub message (polled, ±1 ms)', now());
    await spawned;
  } finally {
    watch.stop();
    s.close();
    await stopChild(child, 3000);
  }
  const bound = watch.allBound([conn.shell_port, conn.iopub_port, conn.control_port]);
  if (bound !== undefined) t.set('kernel ports bound (seen)', bound);
  for (const [k, v] of t) t.set(k, v - t0);
  return t;
}

/** The steps in the order they happen (a step missing from a run is skipped there). */
const ORDER = [
  'POST sent',
  'launch asked',
  'kernel start: asked',
  'kernel start: launching',
  'kernel ports taken',
  'connection file written',
  'kernel spawned (kgate)',
  'kernel spawned',
  'kernel ports bound (seen)',
  'link first kernel_info_reply',
  'link first iopub message',
  'link ready',
  'kernel start: ready',
  '201 received',
  'WebSocket open',
  "client's kernel_info_reply",
  'kernel_info_reply',
  'first iopub message (polled, ±1 ms)',
];

/** Per step: the median time from the start, and the median over runs of the time since the step before it in that run. */
function table(title: string, runs: Timeline[]): void {
  const at = new Map<string, number[]>();
  const delta = new Map<string, number[]>();
  for (const r of runs) {
    let prev = 0;
    for (const k of ORDER) {
      const v = r.get(k);
      if (v === undefined) continue;
      (at.get(k) ?? at.set(k, []).get(k)!).push(v);
      (delta.get(k) ?? delta.set(k, []).get(k)!).push(v - prev);
      prev = v;
    }
  }
  console.log(`\n${title} (medians of ${runs.length}; ms from the start; Δ: since the step above, median and max of the runs)`);
  for (const k of ORDER) {
    const v = at.get(k);
    if (!v) continue;
    const d = delta.get(k)!;
    console.log(
      `  ${median(v).toFixed(1).padStart(7)}  Δ ${median(d).toFixed(1).padStart(6)} (max ${Math.max(...d)
        .toFixed(1)
        .padStart(6)})  ${k}${v.length < runs.length ? ` (${v.length} of ${runs.length})` : ''}`,
    );
  }
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'kgate-start-trace-'));
  const { g, log } = await startGateway(dir).catch((e: unknown) => {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  });
  try {
    let offset = 0;
    const gateway: Timeline[] = [];
    const alone: Timeline[] = [];
    // One of each first, unmeasured: the page cache warm for both alike.
    offset = (await viaKgate(g, log, offset)).offset;
    await direct(dir);
    // Interleaved, so the machine's load falls on both alike.
    for (let i = 0; i < RUNS; i++) {
      const r = await viaKgate(g, log, offset);
      offset = r.offset;
      gateway.push(r.t);
      alone.push(await direct(dir));
    }
    if (VERBOSE) for (const [i, t] of gateway.entries()) console.log(`run ${i}: ${[...t].map(([k, v]) => `${k} ${v.toFixed(1)}`).join(' | ')}`);
    const load = loadavg()
      .map((x) => x.toFixed(2))
      .join(' ');
    // fork() copies the page tables: a kernel's spawn costs more the bigger kgate is.
    console.log(`kgate RSS ${(rssBytes(g.pid) / 2 ** 20).toFixed(0)} MiB, this process ${(process.memoryUsage().rss / 2 ** 20).toFixed(0)} MiB`);
    console.log(`load average ${load}; the link saw iopub before the first reply in ${iopubFirst} of ${RUNS + 1} starts`);
    console.log(`kernel ${kernel}, ${RUNS} starts each, kgate from ${KGATE_ROOT}/${FROM_DIST ? 'dist' : 'src (tsx)'}; ports ${WATCH_PORTS ? 'polled every 1 ms' : 'not watched'}`);
    table('through kgate', gateway);
    table('kernel alone (direct ZeroMQ)', alone);
    const total = median(gateway.map((t) => t.get("client's kernel_info_reply")!));
    const base = median(alone.map((t) => t.get('kernel_info_reply')!));
    console.log(`\nPOST → client's kernel_info_reply ${total.toFixed(1)} ms; kernel alone ${base.toFixed(1)} ms; kgate adds ${(total - base).toFixed(1)} ms`);
  } finally {
    await g.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
