/**
 * (d) Kernels in parallel: K kernels, one client each, every client running
 * sequential executes of `x` for a fixed time; quoted: total completed round
 * trips (reply and idle) per second.
 */
import type { KernelHandle } from '../lib/lab.js';
import type { Scenario } from './types.js';

const WARMUP_EACH = 5;
/** Kernels are started this many at a time, so that a start storm does not time out. */
const START_CONCURRENCY = 8;

export const parallel: Scenario = {
  id: 'parallel',
  title: 'kernels in parallel',
  metrics: [['replies/s', 'replies/s']],
  async measure(ctx, target) {
    const { kernels, seconds, timeoutMs } = ctx.sizes.parallel;
    const handles: KernelHandle[] = [];
    try {
      for (let i = 0; i < kernels; i += START_CONCURRENCY) {
        const batch = Math.min(START_CONCURRENCY, kernels - i);
        const started = await Promise.allSettled(Array.from({ length: batch }, () => ctx.lab.startKernel(target, 'kgate-bench')));
        for (const r of started) if (r.status === 'fulfilled') handles.push(r.value);
        const failed = started.find((r) => r.status === 'rejected');
        if (failed) throw (failed as PromiseRejectedResult).reason;
      }
      const sessions = await Promise.all(handles.map((h) => h.connect()));
      await Promise.all(
        sessions.map(async (s) => {
          for (let i = 0; i < WARMUP_EACH; i++) await s.execute('x', timeoutMs);
        }),
      );
      let done = 0;
      let failures = 0;
      const t0 = performance.now();
      const end = t0 + seconds * 1000;
      await Promise.all(
        sessions.map(async (s) => {
          while (performance.now() < end) {
            const r = await s.execute('x', timeoutMs);
            if (r.timedOut || r.closedWith !== undefined) {
              failures++;
              return;
            }
            done++;
          }
        }),
      );
      const elapsed = (performance.now() - t0) / 1000;
      ctx.report.add('parallel', target.id, 'replies/s', 'replies/s', done / elapsed, `${kernels} kernels, ${seconds} s${failures ? `, ${failures} clients failed` : ''}`);
    } finally {
      await Promise.all(handles.map((h) => h.stop()));
    }
  },
};
