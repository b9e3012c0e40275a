/**
 * (d) Kernels in parallel: K kernels, one client each, every client running
 * sequential executes of `x` for a fixed time; quoted: total completed round
 * trips (reply and idle) per second, and the CPU time the gateway process
 * (and the benchmark's clients) spent per round trip, which carries six
 * messages across the gateway (the request in; busy, execute_input, stream,
 * reply, idle out).
 */
import type { KernelHandle } from '../lib/lab.js';
import { CpuWatch } from '../lib/procs.js';
import type { Scenario } from './types.js';

const WARMUP_EACH = 5;
/** Kernels are started this many at a time, so that a start storm does not time out. */
const START_CONCURRENCY = 8;

function fmtUs(x: number | null, over: number): string {
  return x === null ? '–' : (x / over).toFixed(1);
}

export const parallel: Scenario = {
  id: 'parallel',
  title: 'kernels in parallel',
  metrics: [
    ['replies/s', 'replies/s'],
    ['gateway CPU per round trip', 'µs'],
    ['client CPU per round trip', 'µs'],
  ],
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
      const cpu = new CpuWatch(handles[0]?.serverPid);
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
      const used = cpu.stop();
      const elapsed = (performance.now() - t0) / 1000;
      ctx.report.add('parallel', target.id, 'replies/s', 'replies/s', done / elapsed, `${kernels} kernels, ${seconds} s${failures ? `, ${failures} clients failed` : ''}`);
      const per = (x: number | undefined): number | null => (x === undefined || done === 0 ? null : (x / done) * 1e6);
      ctx.report.add(
        'parallel',
        target.id,
        'gateway CPU per round trip',
        'µs',
        per(used.server),
        used.server === undefined
          ? 'n/a: no gateway between'
          : `6 messages each: ${fmtUs(per(used.server), 6)} µs per message; the gateway busy ${((used.server / used.wall) * 100).toFixed(0)} % of the time`,
      );
      ctx.report.add('parallel', target.id, 'client CPU per round trip', 'µs', per(used.own), `the benchmark process, all ${kernels} clients`);
    } finally {
      await Promise.all(handles.map((h) => h.stop()));
    }
  },
};
