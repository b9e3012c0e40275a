import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { ManagedKernel } from '../../kernels/manager.js';
import type { Principal } from '../../principal.js';
import type { GatewayContext } from '../context.js';
import { startKernelBody } from '../schemas.js';
import { parseBody } from '../validate.js';

interface IdParams {
  id: string;
}

/**
 * Who asked for an operation on a kernel, for the log at info level: the
 * principal's user (when it has one), the remote address and the route
 * pattern. Never the URL as sent, whose query may hold a token.
 */
export function askedBy(req: FastifyRequest): { user?: string; remote: string; route: string } {
  const user = req.principal.user;
  return { ...(user !== undefined ? { user } : {}), remote: req.ip, route: `${req.method} ${req.routeOptions.url ?? ''}` };
}

/** The kernels a caller is shown, by GET /api/kernels and counted by /api/status alike. */
export async function listedKernels(ctx: GatewayContext, principal: Principal): Promise<ManagedKernel[]> {
  return (await ctx.kernels.listShared(principal)).filter((k) => k.phase !== 'dead' && k.phase !== 'gone');
}

export function kernelRoutes(app: FastifyInstance, ctx: GatewayContext): void {
  const { kernels, baseUrl } = ctx;

  app.get('/api/kernels', async (req) => (await listedKernels(ctx, req.principal)).map((k) => k.model()));

  app.post('/api/kernels', async (req, reply) => {
    const body = parseBody(startKernelBody, req.body);
    // The manager decides whom the kernel is for from the principal (a front server may name KERNEL_USERNAME).
    const k = await kernels.start({ name: body.name, env: body.env, path: body.path, principal: req.principal });
    return reply.code(201).header('Location', `${baseUrl}api/kernels/${k.id}`).send(k.model());
  });

  app.get<{ Params: IdParams }>('/api/kernels/:id', async (req) => (await kernels.find(req.params.id, req.principal)).model());

  // Logged once the kernel is known to exist (a guessed id is a plain 404, not a log line).
  app.delete<{ Params: IdParams }>('/api/kernels/:id', async (req, reply) => {
    const k = await kernels.find(req.params.id, req.principal);
    req.log.info({ kernel: k.id, ...askedBy(req) }, 'client asked to shut the kernel down');
    await kernels.shutdown(k.id, req.principal);
    return reply.code(204).send();
  });

  app.post<{ Params: IdParams }>('/api/kernels/:id/interrupt', async (req, reply) => {
    const k = await kernels.find(req.params.id, req.principal);
    req.log.info({ kernel: k.id, ...askedBy(req) }, 'client asked to interrupt the kernel');
    await kernels.interrupt(k.id, req.principal);
    return reply.code(204).send();
  });

  app.post<{ Params: IdParams }>('/api/kernels/:id/restart', async (req) => {
    const k = await kernels.find(req.params.id, req.principal);
    req.log.info({ kernel: k.id, ...askedBy(req) }, 'client asked to restart the kernel');
    return (await kernels.restart(k.id, req.principal)).model();
  });
}
