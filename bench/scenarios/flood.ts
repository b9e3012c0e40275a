/**
 * (b) and (c) Floods: `flood N SIZE` makes the kernel publish N iopub stream
 * messages of SIZE text bytes as fast as it can; one client counts them. The
 * rate is streams received over the time from sending the request to its
 * reply and idle. Lost = N − received (the kernel's ZeroMQ queue is deep
 * enough to drop nothing itself). Repeated; the median rate is quoted.
 * Also quoted, median over the runs: the CPU time (user + system, all
 * threads, from /proc/PID/stat) the gateway process spent per stream message
 * and per MiB of stream text it relayed, and the same for the benchmark's
 * own client (on the direct target that is the floor: what receiving alone
 * costs one process).
 */
import { appendFileSync } from 'node:fs';
import type { ScenarioId } from '../lib/config.js';
import type { Target } from '../lib/lab.js';
import { CpuWatch, RssWatch } from '../lib/procs.js';
import { median } from '../lib/stats.js';
import type { Context, Scenario } from './types.js';

/** Repeats stop once this much time has gone (jupyter server takes ~20 s per 100k). */
const REPEATS_BUDGET_MS = 40_000;

interface FloodSizes {
  n: number;
  size: number;
  warmupN: number;
  repeats: number;
  timeoutMs: number;
}

interface FloodStats {
  publish_ms?: number;
  messages?: number;
}

async function flood(ctx: Context, target: Target, id: ScenarioId, z: FloodSizes, bytes: boolean): Promise<void> {
  const k = await ctx.lab.startKernel(target, 'kgate-bench');
  try {
    const s = await k.connect();
    await s.execute(`flood ${z.warmupN} ${z.size}`, z.timeoutMs);
    const rates: number[] = [];
    const publishRates: number[] = [];
    let lost = 0;
    const notes: string[] = [];
    let growth = 0;
    const gatewayCpu: number[] = [];
    const clientCpu: number[] = [];
    const busy: number[] = [];
    const repeatsEnd = performance.now() + REPEATS_BUDGET_MS;
    for (let i = 0; i < z.repeats && (i === 0 || performance.now() < repeatsEnd); i++) {
      const watch = k.serverPid === undefined ? undefined : new RssWatch(k.serverPid);
      const cpu = new CpuWatch(k.serverPid);
      const startUs = monotonicUs();
      const r = await s.execute(`flood ${z.n} ${z.size}`, z.timeoutMs);
      const used = cpu.stop();
      markWindow(id, target, startUs);
      if (watch) growth = Math.max(growth, watch.stop());
      if (r.streams > 0) {
        // Per message, in seconds; per MiB is this × messages per MiB.
        if (used.server !== undefined) gatewayCpu.push(used.server / r.streams);
        if (used.server !== undefined) busy.push(used.server / used.wall);
        clientCpu.push(used.own / r.streams);
      }
      const seconds = r.doneMs / 1000;
      rates.push(bytes ? (r.streams * z.size) / seconds / 1e6 : r.streams / seconds);
      lost = Math.max(lost, z.n - r.streams);
      const f = r.reply?.['flood'] as FloodStats | undefined;
      if (f?.publish_ms) publishRates.push((bytes ? (z.n * z.size) / 1e6 : z.n) / (f.publish_ms / 1000));
      if (r.timedOut) notes.push(`run ${i + 1} hit the ${z.timeoutMs / 1000} s bound`);
      if (r.closedWith !== undefined) {
        notes.push(`run ${i + 1}: socket closed with ${r.closedWith}`);
        break;
      }
    }
    const kernelRate = publishRates.length ? median(publishRates) : undefined;
    const unit = bytes ? 'MB/s' : 'msgs/s';
    const main = [`median of ${rates.length}`, ...notes];
    if (kernelRate !== undefined && target.id === 'direct') main.push(`the kernel published at ${Math.round(kernelRate).toLocaleString('en-US')} ${unit}`);
    if (k.serverPid !== undefined) main.push(`gateway RSS +${(growth / 2 ** 20).toFixed(0)} MiB at peak`);
    ctx.report.add(id, target.id, unit, unit, median(rates), main.join('; '));
    ctx.report.add(id, target.id, 'lost', 'msgs', lost, `of ${z.n.toLocaleString('en-US')} per run (worst run)`);
    reportCpu(ctx, target, id, z, bytes, { gatewayCpu, clientCpu, busy });
  } finally {
    await k.stop();
  }
}

function monotonicUs(): number {
  return Number(process.hrtime.bigint() / 1000n);
}

/**
 * With BENCH_WINDOWS_FILE set (bench/tools/profile-floods.ts), appends the
 * measured flood's span on CLOCK_MONOTONIC, so that a profile of the gateway
 * can be cut to the floods alone.
 */
function markWindow(id: ScenarioId, target: Target, startUs: number): void {
  const file = process.env['BENCH_WINDOWS_FILE'];
  if (file) appendFileSync(file, `${JSON.stringify({ scenario: id, target: target.id, startUs, endUs: monotonicUs() })}\n`);
}

/** Messages of SIZE text bytes in a MiB. */
function perMiB(size: number): number {
  return 2 ** 20 / size;
}

function reportCpu(ctx: Context, target: Target, id: ScenarioId, z: FloodSizes, bytes: boolean, cpu: { gatewayCpu: number[]; clientCpu: number[]; busy: number[] }): void {
  const runs = `median of ${cpu.clientCpu.length}`;
  const tick = `/proc ticks are 10 ms: ±${((0.01 / z.n) * 1e6).toFixed(2)} µs per message`;
  const gw = cpu.gatewayCpu.length ? median(cpu.gatewayCpu) : null;
  const gwNote =
    target.server === 'direct'
      ? 'n/a: no gateway between (the client row is the floor)'
      : `${runs}; the gateway process busy ${fmtPct(median(cpu.busy))} of the flood's wall time; ${tick}`;
  if (bytes) ctx.report.add(id, target.id, 'gateway CPU per MiB', 'ms', gw === null ? null : gw * perMiB(z.size) * 1e3, gwNote);
  ctx.report.add(id, target.id, 'gateway CPU per message', 'µs', gw === null ? null : gw * 1e6, bytes ? undefined : gwNote);
  const own = cpu.clientCpu.length ? median(cpu.clientCpu) : null;
  const ownNote = `${runs}; the benchmark process (its one reading client) over the flood`;
  if (bytes) ctx.report.add(id, target.id, 'client CPU per MiB', 'ms', own === null ? null : own * perMiB(z.size) * 1e3, ownNote);
  else ctx.report.add(id, target.id, 'client CPU per message', 'µs', own === null ? null : own * 1e6, ownNote);
}

function fmtPct(x: number): string {
  return `${(x * 100).toFixed(0)} %`;
}

export const floodSmall: Scenario = {
  id: 'flood-small',
  title: 'flood of 100-byte stream messages',
  metrics: [
    ['msgs/s', 'msgs/s'],
    ['lost', 'msgs'],
    ['gateway CPU per message', 'µs'],
    ['client CPU per message', 'µs'],
  ],
  measure: (ctx, target) => flood(ctx, target, 'flood-small', ctx.sizes.floodSmall, false),
};

export const floodLarge: Scenario = {
  id: 'flood-large',
  title: 'flood of 64 KiB stream messages',
  metrics: [
    ['MB/s', 'MB/s'],
    ['lost', 'msgs'],
    ['gateway CPU per MiB', 'ms'],
    ['gateway CPU per message', 'µs'],
    ['client CPU per MiB', 'ms'],
  ],
  measure: (ctx, target) => flood(ctx, target, 'flood-large', ctx.sizes.floodLarge, true),
};
