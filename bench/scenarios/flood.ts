/**
 * (b) and (c) Floods: `flood N SIZE` makes the kernel publish N iopub stream
 * messages of SIZE text bytes as fast as it can; one client counts them. The
 * rate is streams received over the time from sending the request to its
 * reply and idle. Lost = N − received (the kernel's ZeroMQ queue is deep
 * enough to drop nothing itself). Repeated; the median rate is quoted.
 */
import type { ScenarioId } from '../lib/config.js';
import type { Target } from '../lib/lab.js';
import { RssWatch } from '../lib/procs.js';
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
    const repeatsEnd = performance.now() + REPEATS_BUDGET_MS;
    for (let i = 0; i < z.repeats && (i === 0 || performance.now() < repeatsEnd); i++) {
      const watch = k.serverPid === undefined ? undefined : new RssWatch(k.serverPid);
      const r = await s.execute(`flood ${z.n} ${z.size}`, z.timeoutMs);
      if (watch) growth = Math.max(growth, watch.stop());
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
  } finally {
    await k.stop();
  }
}

export const floodSmall: Scenario = {
  id: 'flood-small',
  title: 'flood of 100-byte stream messages',
  metrics: [
    ['msgs/s', 'msgs/s'],
    ['lost', 'msgs'],
  ],
  measure: (ctx, target) => flood(ctx, target, 'flood-small', ctx.sizes.floodSmall, false),
};

export const floodLarge: Scenario = {
  id: 'flood-large',
  title: 'flood of 64 KiB stream messages',
  metrics: [
    ['MB/s', 'MB/s'],
    ['lost', 'msgs'],
  ],
  measure: (ctx, target) => flood(ctx, target, 'flood-large', ctx.sizes.floodLarge, true),
};
