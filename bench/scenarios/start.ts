/**
 * (g) Start to first `kernel_info_reply` (the former bench/start-time.ts, folded in):
 * direct, the benchmark spawns the kernel with a connection file and asks on
 * a DEALER connected before the spawn; through a gateway, `POST /api/kernels`
 * then `kernel_info_request` on a new WebSocket. For Debian's ipykernel and
 * for the bench kernel; the median of the runs is quoted.
 */
import { kernelInfoHandshake, type Target } from '../lib/lab.js';
import { channelsUrl, createKernel, deleteKernel, launchDirect, type KernelName } from '../lib/servers.js';
import { median } from '../lib/stats.js';
import { WsSession } from '../lib/ws-session.js';
import { ZmqSession } from '../lib/zmq-session.js';
import type { Context, Scenario } from './types.js';

const KERNELS: ReadonlyArray<readonly [KernelName, string]> = [
  ['python3', 'ipykernel: start → kernel_info_reply'],
  ['kgate-bench', 'bench kernel: start → kernel_info_reply'],
];

/** ms from asking for a kernel to its first kernel_info_reply; and, through a gateway, to the 201. */
async function once(ctx: Context, target: Target, name: KernelName, timeoutMs: number): Promise<{ ms: number; postMs?: number }> {
  if (target.server === 'direct') {
    const t0 = performance.now();
    const k = await launchDirect(name, ctx.lab.root);
    const s = ZmqSession.connect(k.conn);
    try {
      await s.kernelInfo(timeoutMs);
      return { ms: performance.now() - t0 };
    } finally {
      s.close();
      await k.stop();
    }
  }
  const g = await ctx.lab.server(target.server);
  const t0 = performance.now();
  const id = await createKernel(g, name, timeoutMs);
  const postMs = performance.now() - t0;
  let s: WsSession | undefined;
  try {
    s = await WsSession.open(channelsUrl(g, id), target.protocol === 'v1' ? 'v1' : 'json', timeoutMs);
    // Re-asked every 3 s if lost, as a client would; the time counts until the reply.
    await kernelInfoHandshake(s, timeoutMs);
    return { ms: performance.now() - t0, postMs };
  } finally {
    s?.close();
    await deleteKernel(g, id);
  }
}

export const start: Scenario = {
  id: 'start',
  title: 'start to first kernel_info_reply',
  metrics: KERNELS.map(([, m]) => [m, 'ms'] as const),
  async measure(ctx, target) {
    const { runs, timeoutMs } = ctx.sizes.start;
    for (const [name, metric] of KERNELS) {
      // One start first, unmeasured, so that the page cache is warm for every target alike.
      if (runs > 1) await once(ctx, target, name, timeoutMs);
      const ms: number[] = [];
      const post: number[] = [];
      for (let i = 0; i < runs; i++) {
        const r = await once(ctx, target, name, timeoutMs);
        ms.push(r.ms);
        if (r.postMs !== undefined) post.push(r.postMs);
      }
      const note = [`median of ${runs}`, post.length ? `POST /api/kernels alone: ${median(post).toFixed(0)} ms` : ''].filter(Boolean).join('; ');
      ctx.report.add('start', target.id, metric, 'ms', median(ms), note);
    }
  },
};
