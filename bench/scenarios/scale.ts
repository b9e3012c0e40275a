/**
 * (h) Many kernels and (i) idle cost: what an operator of a big gateway pays.
 *
 * (h) N kernels (`BENCH_KERNELS`, default 200; the Python servers capped at
 * `BENCH_PEER_KERNELS`, default 40, as they hold four ZeroMQ sockets per
 * WebSocket in a context of 1023), C clients each, every client sending
 * `execute_request`s of `x` at a fixed rate. The rate goes up in steps
 * (doubling) until a step's p99 passes 100 ms, a request fails or the steps
 * run out. Latency is from when a request was due (not when it could be
 * sent: a client with a request still in flight sends the next late, and the
 * wait counts), so queueing is not hidden. Quoted: the highest completed
 * requests/s of a step within the p99 bound (the knee), the gateway's CPU
 * per request and its busy share at that step, and its RSS per kernel link
 * (RSS with every kernel and client connected, less RSS before the kernels,
 * over N).
 *
 * (i) N kernels with one client each, nothing sent for a window
 * (`BENCH_IDLE_SECONDS`): the gateway's heartbeats and WebSocket pings only.
 * Quoted: its RSS per idle kernel (with its client) and its CPU over the
 * window.
 */
import type { KernelHandle, Target } from '../lib/lab.js';
import { CpuWatch, rssBytes, sleep } from '../lib/procs.js';
import type { Gateway, ServerKind } from '../lib/servers.js';
import type { KernelSession } from '../lib/session.js';
import { percentile } from '../lib/stats.js';
import type { Context, Scenario } from './types.js';

/** Kernels are started this many at a time, and clients connected this many at a time. */
const START_CONCURRENCY = 8;
const CONNECT_CONCURRENCY = 50;
const P99_BOUND_MS = 100;
const REQUEST_TIMEOUT_MS = 10_000;
/** Settle after connecting, before RSS is read (clients' handshakes done, buffers freed). */
const SETTLE_MS = 1000;

async function inBatches<T>(n: number, size: number, make: (i: number) => Promise<T>, out: T[]): Promise<void> {
  for (let i = 0; i < n; i += size) {
    const got = await Promise.allSettled(Array.from({ length: Math.min(size, n - i) }, (_, j) => make(i + j)));
    for (const r of got) if (r.status === 'fulfilled') out.push(r.value);
    const failed = got.find((r) => r.status === 'rejected');
    if (failed) throw new Error(`after ${out.length} of ${n}: ${String((failed as PromiseRejectedResult).reason)}`);
  }
}

interface Fleet {
  gateway: Gateway | undefined;
  fresh: boolean;
  handles: KernelHandle[];
  clients: KernelSession[][];
  /** Gateway RSS before the first kernel, and with all kernels and clients connected. */
  rssBefore: number;
  rssAfter: number;
  kernels: number;
}

function kernelsFor(ctx: Context, target: Target): number {
  const z = ctx.sizes.scale;
  return target.server === 'kgate' || target.server === 'direct' ? z.kernels : Math.min(z.kernels, z.peerKernels);
}

async function startFleet(ctx: Context, target: Target, kernels: number, clientsEach: number): Promise<Fleet> {
  const server = target.server === 'direct' ? undefined : (target.server as ServerKind);
  const fresh = server !== undefined && (ctx.sizes.freshServers || server === 'kgate');
  const gateway = server === undefined ? undefined : fresh ? await ctx.lab.fresh(server) : await ctx.lab.server(server);
  const fleet: Fleet = { gateway, fresh, handles: [], clients: [], rssBefore: 0, rssAfter: 0, kernels };
  try {
    await sleep(200);
    fleet.rssBefore = gateway ? rssBytes(gateway.pid) : 0;
    await inBatches(kernels, START_CONCURRENCY, () => ctx.lab.startKernel(target, 'kgate-bench', gateway), fleet.handles);
    ctx.log(`${target.id}: ${kernels} kernels started`);
    const flat: Array<{ k: number }> = [];
    for (let k = 0; k < fleet.handles.length; k++) for (let c = 0; c < clientsEach; c++) flat.push({ k });
    fleet.clients = fleet.handles.map(() => []);
    const opened: Array<{ k: number; s: KernelSession }> = [];
    await inBatches(flat.length, CONNECT_CONCURRENCY, async (i) => ({ k: flat[i]!.k, s: await fleet.handles[flat[i]!.k]!.connect() }), opened);
    for (const o of opened) fleet.clients[o.k]!.push(o.s);
    await sleep(SETTLE_MS);
    fleet.rssAfter = gateway ? rssBytes(gateway.pid) : 0;
    return fleet;
  } catch (e) {
    await stopFleet(ctx, fleet);
    throw e;
  }
}

async function stopFleet(ctx: Context, f: Fleet): Promise<void> {
  await inBatches(f.handles.length, START_CONCURRENCY * 4, (i) => f.handles[i]!.stop(), []);
  if (f.gateway && f.fresh) await ctx.lab.release(f.gateway);
}

interface Step {
  perClient: number;
  offered: number;
  completed: number;
  p50: number;
  p99: number;
  failed: number;
  gatewayCpu: number | undefined;
  wall: number;
}

/** One step: every client sends at `perClient` requests/s for `seconds`; latency from when each was due. */
async function step(fleet: Fleet, perClient: number, seconds: number): Promise<Step> {
  const all = fleet.clients.flat();
  const lat: number[] = [];
  let failed = 0;
  const period = 1000 / perClient;
  const cpu = new CpuWatch(fleet.gateway?.pid);
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  await Promise.all(
    all.map(async (s, i) => {
      // Spread the clients' phases over one period.
      let due = t0 + (period * i) / all.length;
      while (due < end) {
        const wait = due - performance.now();
        if (wait > 1) await sleep(wait);
        const r = await s.execute('x', REQUEST_TIMEOUT_MS);
        const doneAt = performance.now();
        if (r.timedOut || r.closedWith !== undefined) {
          failed++;
          lat.push(doneAt - due);
          return;
        }
        lat.push(doneAt - due);
        due += period;
      }
    }),
  );
  const used = cpu.stop();
  return {
    perClient,
    offered: perClient * all.length,
    completed: (lat.length - failed) / used.wall,
    p50: percentile(lat, 50),
    p99: percentile(lat, 99),
    failed,
    gatewayCpu: used.server,
    wall: used.wall,
  };
}

function stepText(s: Step): string {
  return `${s.offered.toFixed(0)}/s offered: ${s.completed.toFixed(0)}/s done, p50 ${s.p50.toFixed(1)} ms, p99 ${s.p99.toFixed(0)} ms${s.failed ? `, ${s.failed} failed` : ''}${s.gatewayCpu !== undefined ? `, gateway ${((s.gatewayCpu / s.wall) * 100).toFixed(0)} % CPU` : ''}`;
}

export const manyKernels: Scenario = {
  id: 'many-kernels',
  title: 'many kernels, clients at a rising fixed rate',
  metrics: [
    ['sustained requests/s (p99 ≤ 100 ms)', 'req/s'],
    ['gateway CPU per request at the knee', 'µs'],
    ['gateway CPU at the knee', '% of a core'],
    ['gateway RSS per kernel link', 'KiB'],
  ],
  async measure(ctx, target) {
    const z = ctx.sizes.scale;
    const kernels = kernelsFor(ctx, target);
    const fleet = await startFleet(ctx, target, kernels, z.clientsEach);
    try {
      const setup = `${kernels} kernels × ${z.clientsEach} clients`;
      if (fleet.gateway) {
        ctx.report.add(
          'many-kernels',
          target.id,
          'gateway RSS per kernel link',
          'KiB',
          (fleet.rssAfter - fleet.rssBefore) / kernels / 1024,
          `${setup}: RSS ${(fleet.rssBefore / 2 ** 20).toFixed(0)} → ${(fleet.rssAfter / 2 ** 20).toFixed(0)} MiB`,
        );
      } else ctx.report.add('many-kernels', target.id, 'gateway RSS per kernel link', 'KiB', null, 'n/a: no gateway between');
      // Warm-up: one request per client.
      await Promise.all(fleet.clients.flat().map((s) => s.execute('x', REQUEST_TIMEOUT_MS)));
      const steps: Step[] = [];
      const budgetEnd = performance.now() + z.budgetSeconds * 1000;
      let perClient = z.startRate;
      for (let i = 0; i < z.maxSteps && performance.now() < budgetEnd; i++, perClient *= 2) {
        const s = await step(fleet, perClient, z.stepSeconds);
        steps.push(s);
        ctx.log(`many-kernels: ${target.label}: ${stepText(s)}`);
        if (s.p99 > P99_BOUND_MS || s.failed > 0) break;
      }
      const within = steps.filter((s) => s.p99 <= P99_BOUND_MS && s.failed === 0);
      const knee = within.length ? within.reduce((a, b) => (b.completed > a.completed ? b : a)) : undefined;
      const last = steps[steps.length - 1];
      const why = last && (last.p99 > P99_BOUND_MS || last.failed > 0) ? 'stopped: p99 past 100 ms' : 'the steps ran out before p99 passed 100 ms';
      ctx.report.add(
        'many-kernels',
        target.id,
        'sustained requests/s (p99 ≤ 100 ms)',
        'req/s',
        knee ? knee.completed : 0,
        `${setup}; ${why}; steps: ${steps.map(stepText).join('; ')}`,
      );
      // With no step within the bound (a loaded machine), the CPU figures are the first step's, said so.
      const at = knee ?? steps[0];
      const where = knee ? `at ${knee.offered.toFixed(0)}/s offered` : 'at the first step, already past the bound';
      const cpuPer = at && at.gatewayCpu !== undefined && at.completed > 0 ? (at.gatewayCpu / (at.completed * at.wall)) * 1e6 : null;
      ctx.report.add(
        'many-kernels',
        target.id,
        'gateway CPU per request at the knee',
        'µs',
        cpuPer,
        fleet.gateway ? `${where}; 6 messages through the gateway per request; 10 ms ticks` : 'n/a: no gateway between',
      );
      ctx.report.add(
        'many-kernels',
        target.id,
        'gateway CPU at the knee',
        '% of a core',
        at && at.gatewayCpu !== undefined ? (at.gatewayCpu / at.wall) * 100 : null,
        fleet.gateway ? where : 'n/a: no gateway between',
      );
    } finally {
      await stopFleet(ctx, fleet);
    }
  },
};

export const idle: Scenario = {
  id: 'idle',
  title: 'idle cost of many kernels',
  metrics: [
    ['gateway RSS per idle kernel', 'KiB'],
    ['gateway CPU while idle', '% of a core'],
    ['gateway CPU per idle kernel', 'µs/s'],
  ],
  notApplicable: { direct: 'no gateway between' },
  async measure(ctx, target) {
    const z = ctx.sizes.scale;
    const kernels = kernelsFor(ctx, target);
    const fleet = await startFleet(ctx, target, kernels, 1);
    try {
      const g = fleet.gateway!;
      const cpu = new CpuWatch(g.pid);
      await sleep(z.idleSeconds * 1000);
      const used = cpu.stop();
      const rssEnd = rssBytes(g.pid);
      const alive = fleet.clients.flat().filter((s) => s.isOpen).length;
      const setup = `${kernels} kernels × 1 client, ${z.idleSeconds} s idle; ${alive} clients still open at the end`;
      ctx.report.add(
        'idle',
        target.id,
        'gateway RSS per idle kernel',
        'KiB',
        (fleet.rssAfter - fleet.rssBefore) / kernels / 1024,
        `${setup}: RSS ${(fleet.rssBefore / 2 ** 20).toFixed(0)} → ${(fleet.rssAfter / 2 ** 20).toFixed(0)} MiB, ${(rssEnd / 2 ** 20).toFixed(0)} MiB at the end of the window`,
      );
      ctx.report.add(
        'idle',
        target.id,
        'gateway CPU while idle',
        '% of a core',
        (used.server! / used.wall) * 100,
        `${used.server!.toFixed(2)} s of CPU in ${used.wall.toFixed(1)} s (10 ms ticks)`,
      );
      ctx.report.add('idle', target.id, 'gateway CPU per idle kernel', 'µs/s', (used.server! / used.wall / kernels) * 1e6);
    } finally {
      await stopFleet(ctx, fleet);
    }
  },
};
