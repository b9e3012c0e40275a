import type { FastifyInstance } from 'fastify';
import { badRequest } from '../../errors.js';
import type { GatewayContext } from '../context.js';
import { createSessionBody, patchSessionBody } from '../schemas.js';
import { parseBody } from '../validate.js';
import { askedBy } from './kernels.js';

interface IdParams {
  id: string;
}

export function sessionRoutes(app: FastifyInstance, ctx: GatewayContext): void {
  const { sessions, kernels, baseUrl } = ctx;

  app.get('/api/sessions', async () => sessions.list().map((s) => sessions.model(s)));

  app.post('/api/sessions', async (req, reply) => {
    const body = parseBody(createSessionBody, req.body);
    const path = body.path ?? body.notebook?.path;
    if (path === undefined) throw badRequest('path: a session needs a path');
    const s = await sessions.create({
      path,
      name: body.name ?? '',
      type: body.type ?? 'notebook',
      kernel: body.kernel ?? undefined,
      principal: req.principal,
    });
    return reply.code(201).header('Location', `${baseUrl}api/sessions/${s.id}`).send(sessions.model(s));
  });

  app.get<{ Params: IdParams }>('/api/sessions/:id', async (req) => sessions.model(sessions.get(req.params.id)));

  app.patch<{ Params: IdParams }>('/api/sessions/:id', async (req) => {
    const body = parseBody(patchSessionBody, req.body);
    const before = sessions.get(req.params.id);
    // A kernel named by kernelspec only replaces the session's kernel, which is shut down (see SessionManager.update).
    if (body.kernel?.name !== undefined && body.kernel.id === undefined && kernels.has(before.kernelId)) {
      req.log.info({ kernel: before.kernelId, session: before.id, ...askedBy(req) }, "client asked to replace the session's kernel: the old one is shut down");
    }
    const s = await sessions.update(req.params.id, { ...body, kernel: body.kernel ?? undefined, principal: req.principal });
    return sessions.model(s);
  });

  app.delete<{ Params: IdParams }>('/api/sessions/:id', async (req, reply) => {
    const s = sessions.get(req.params.id);
    if (kernels.has(s.kernelId)) req.log.info({ kernel: s.kernelId, session: s.id, ...askedBy(req) }, 'client asked to delete the session: its kernel is shut down');
    await sessions.delete(req.params.id);
    return reply.code(204).send();
  });
}
