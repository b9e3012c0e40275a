import type { FastifyInstance, FastifyRequest } from 'fastify';
import { actingUser } from '../../principal.js';
import type { GatewayContext } from '../context.js';
import { startKernelBody } from '../schemas.js';
import { parseBody } from '../validate.js';

/** The user a start request names (a front server's KERNEL_USERNAME): identity only for a caller allowed to impersonate. */
function requestedUser(env: Record<string, unknown> | undefined): string | undefined {
  const u = env?.['KERNEL_USERNAME'];
  return typeof u === 'string' ? u : undefined;
}

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

export function kernelRoutes(app: FastifyInstance, ctx: GatewayContext): void {
  const { kernels, baseUrl } = ctx;

  app.get('/api/kernels', async () => (await kernels.listShared()).filter((k) => k.phase !== 'dead').map((k) => k.model()));

  app.post('/api/kernels', async (req, reply) => {
    const body = parseBody(startKernelBody, req.body);
    const k = await kernels.start({ name: body.name, env: body.env, path: body.path, user: actingUser(req.principal, requestedUser(body.env)) });
    return reply.code(201).header('Location', `${baseUrl}api/kernels/${k.id}`).send(k.model());
  });

  app.get<{ Params: IdParams }>('/api/kernels/:id', async (req) => (await kernels.find(req.params.id)).model());

  // Logged once the kernel is known to exist (a guessed id is a plain 404, not a log line).
  app.delete<{ Params: IdParams }>('/api/kernels/:id', async (req, reply) => {
    const k = await kernels.find(req.params.id);
    req.log.info({ kernel: k.id, ...askedBy(req) }, 'client asked to shut the kernel down');
    await kernels.shutdown(k.id);
    return reply.code(204).send();
  });

  app.post<{ Params: IdParams }>('/api/kernels/:id/interrupt', async (req, reply) => {
    const k = await kernels.find(req.params.id);
    req.log.info({ kernel: k.id, ...askedBy(req) }, 'client asked to interrupt the kernel');
    await kernels.interrupt(k.id);
    return reply.code(204).send();
  });

  app.post<{ Params: IdParams }>('/api/kernels/:id/restart', async (req) => {
    const k = await kernels.find(req.params.id);
    req.log.info({ kernel: k.id, ...askedBy(req) }, 'client asked to restart the kernel');
    return (await kernels.restart(k.id)).model();
  });
}
