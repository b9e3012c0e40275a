/**
 * (a) Execute round trip: sequential `execute_request`s of `x` on one kernel,
 * each timed from send until both its `execute_reply` and its iopub
 * `status: idle` have arrived (the kernel echoes `x` as one stream message in
 * between). Quoted: p50 and p99.
 */
import { percentile } from '../lib/stats.js';
import type { Scenario } from './types.js';

/**
 * However many executes are asked for, the warm-up and the measured loop stop
 * after this long (jupyter server's round trip is ~44 ms: 2000 would take 90 s).
 */
const WARMUP_DEADLINE_MS = 5_000;
const LOOP_DEADLINE_MS = 30_000;

export const execute: Scenario = {
  id: 'execute',
  title: 'execute round trip',
  metrics: [
    ['round trip p50', 'ms'],
    ['round trip p99', 'ms'],
  ],
  async measure(ctx, target) {
    const { warmup, count, timeoutMs } = ctx.sizes.execute;
    const k = await ctx.lab.startKernel(target, 'kgate-bench');
    try {
      const s = await k.connect();
      const warmEnd = performance.now() + WARMUP_DEADLINE_MS;
      for (let i = 0; i < warmup && performance.now() < warmEnd; i++) {
        const r = await s.execute('x', timeoutMs);
        if (r.timedOut || r.closedWith !== undefined) throw new Error(`warm-up execute ${i} failed`);
      }
      const rtt: number[] = [];
      const deadline = performance.now() + LOOP_DEADLINE_MS;
      while (rtt.length < count && performance.now() < deadline) {
        const r = await s.execute('x', timeoutMs);
        if (r.timedOut || r.closedWith !== undefined) throw new Error(`execute ${rtt.length} ${r.timedOut ? 'timed out' : `closed ${r.closedWith}`}`);
        rtt.push(r.doneMs);
      }
      const note = rtt.length < count ? `${rtt.length} executes (the ${LOOP_DEADLINE_MS / 1000} s bound)` : `${rtt.length} executes`;
      ctx.report.add('execute', target.id, 'round trip p50', 'ms', percentile(rtt, 50), note);
      ctx.report.add('execute', target.id, 'round trip p99', 'ms', percentile(rtt, 99));
    } finally {
      await k.stop();
    }
  },
};
