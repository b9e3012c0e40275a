import type { FastifyInstance } from 'fastify';
import { jupyterDate } from '../../bridge/messages.js';
import { VERSION } from '../../version.js';
import type { GatewayContext } from '../context.js';
import { listedKernels } from './kernels.js';

export function statusRoutes(app: FastifyInstance, ctx: GatewayContext): void {
  app.get('/api', async () => ({ version: VERSION, gateway: 'kgate' }));

  app.get('/api/status', async (req) => {
    // The kernels GET /api/kernels lists for the same caller, so the two agree.
    const kernels = await listedKernels(ctx, req.principal);
    let connections = 0;
    let last = ctx.startedAt.getTime();
    for (const k of kernels) {
      connections += k.link?.connections ?? 0;
      last = Math.max(last, k.link?.lastActivity ?? 0);
    }
    return {
      started: jupyterDate(ctx.startedAt.getTime()),
      last_activity: jupyterDate(last),
      kernels: kernels.length,
      connections,
      pools: ctx.kernels.pools.stats(),
    };
  });
}
