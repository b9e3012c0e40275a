/**
 * (e) WebSockets held on one kernel: open up to N sockets to one kernel
 * through the gateway, in batches, stopping at the first batch where a socket
 * is refused or closed. Then one execute on the first socket: a socket counts
 * as held when it receives that request's iopub `status: idle` (every client
 * of a kernel gets its iopub). RSS per socket is the gateway's RSS growth over
 * the sockets opened, measured before that broadcast.
 */
import type { Gateway } from '../lib/servers.js';
import type { KernelSession } from '../lib/session.js';
import { rssBytes, sleep } from '../lib/procs.js';
import type { Scenario } from './types.js';

const OPEN_TIMEOUT_MS = 15_000;
const BROADCAST_TIMEOUT_MS = 60_000;

export const sockets: Scenario = {
  id: 'sockets',
  title: 'WebSockets held on one kernel',
  metrics: [
    ['sockets held', 'sockets'],
    ['RSS per socket', 'KiB'],
  ],
  notApplicable: { direct: 'a ZeroMQ client has no WebSocket' },
  async measure(ctx, target) {
    const z = ctx.sizes.sockets;
    const server = target.server === 'direct' ? undefined : target.server;
    if (server === undefined) return;
    const want = server === 'kgate' ? z.kgate : z.jupyter;
    const batch = server === 'kgate' ? z.batch : z.jupyterBatch;
    const fresh = ctx.sizes.freshServers || server === 'kgate';
    const g: Gateway = fresh ? await ctx.lab.fresh(server) : await ctx.lab.server(server);
    const k = await ctx.lab.startKernel(target, 'kgate-bench', g);
    const held: KernelSession[] = [];
    try {
      const first = await k.connect();
      await first.execute('x', 10_000);
      await sleep(z.settleMs);
      const before = rssBytes(g.pid);
      const deadline = performance.now() + z.timeoutMs;
      let stopped = '';
      while (held.length < want && performance.now() < deadline) {
        const n = Math.min(batch, want - held.length);
        const opened = await Promise.allSettled(Array.from({ length: n }, () => k.connect(OPEN_TIMEOUT_MS, false)));
        for (const r of opened) if (r.status === 'fulfilled') held.push(r.value);
        const refused = opened.find((r) => r.status === 'rejected');
        if (refused) {
          stopped = `refused after ${held.length}: ${String((refused as PromiseRejectedResult).reason).slice(0, 80)}`;
          break;
        }
        await sleep(50);
        const closed = held.filter((s) => !s.isOpen).length;
        if (closed > 0) {
          stopped = `${closed} closed by the server once open`;
          break;
        }
      }
      await sleep(z.settleMs);
      const after = rssBytes(g.pid);
      const open = held.filter((s) => s.isOpen);

      // Which of them are really attached: they all see the iopub of one execute.
      const r = await first.execute('x', BROADCAST_TIMEOUT_MS);
      const idleOf = (s: KernelSession): boolean => s.lastIdleParent !== undefined && s.lastIdleParent === first.lastIdleParent;
      const until = performance.now() + BROADCAST_TIMEOUT_MS;
      while (!r.timedOut && performance.now() < until && !open.every(idleOf)) await sleep(50);
      const live = open.filter(idleOf).length;

      const note = [`asked ${want}`, `opened ${held.length}`, `open after settling ${open.length}`, stopped].filter(Boolean).join(', ');
      ctx.report.add('sockets', target.id, 'sockets held', 'sockets', live, note);
      ctx.report.add(
        'sockets',
        target.id,
        'RSS per socket',
        'KiB',
        open.length ? (after - before) / open.length / 1024 : null,
        `RSS ${(before / 2 ** 20).toFixed(0)} → ${(after / 2 ** 20).toFixed(0)} MiB`,
      );
    } finally {
      await k.stop();
      if (fresh) await ctx.lab.release(g);
    }
  },
};
