import type { FastifyInstance } from 'fastify';
import type { GatewayContext } from '../context.js';
import { startKernelBody } from '../schemas.js';
import { parseBody } from '../validate.js';

interface IdParams {
  id: string;
}

export function kernelRoutes(app: FastifyInstance, ctx: GatewayContext): void {
  const { kernels, baseUrl } = ctx;

  app.get('/api/kernels', async () => (await kernels.listShared()).filter((k) => k.phase !== 'dead').map((k) => k.model()));

  app.post('/api/kernels', async (req, reply) => {
    const body = parseBody(startKernelBody, req.body);
    const k = await kernels.start({ name: body.name, env: body.env, path: body.path, user: req.identity?.user });
    return reply.code(201).header('Location', `${baseUrl}api/kernels/${k.id}`).send(k.model());
  });

  app.get<{ Params: IdParams }>('/api/kernels/:id', async (req) => (await kernels.find(req.params.id)).model());

  app.delete<{ Params: IdParams }>('/api/kernels/:id', async (req, reply) => {
    await kernels.shutdown((await kernels.find(req.params.id)).id);
    return reply.code(204).send();
  });

  app.post<{ Params: IdParams }>('/api/kernels/:id/interrupt', async (req, reply) => {
    await kernels.interrupt(req.params.id);
    return reply.code(204).send();
  });

  app.post<{ Params: IdParams }>('/api/kernels/:id/restart', async (req) => (await kernels.restart(req.params.id)).model());
}
