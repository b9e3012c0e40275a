import type { FastifyInstance } from 'fastify';
import { badRequest } from '../../errors.js';
import type { Session, SessionKernel, SessionManager, SessionModel } from '../../kernels/sessions.js';
import type { GatewayContext } from '../context.js';
import { createSessionBody, patchSessionBody } from '../schemas.js';
import { parseBody } from '../validate.js';
import { askedBy } from './kernels.js';

interface IdParams {
  id: string;
}

/** The kernel a session names: `kernel.env` is the environment of one it starts (a front server that may impersonate names KERNEL_USERNAME there). */
function kernelOf(kernel: { id?: string | undefined; name?: string | undefined; env?: Record<string, unknown> | undefined } | null | undefined): SessionKernel | undefined {
  if (!kernel) return undefined;
  return { id: kernel.id, name: kernel.name, env: kernel.env };
}

/** The models of the sessions listed, less any whose kernel went away meanwhile. */
function models(sessions: SessionManager, list: Session[]): SessionModel[] {
  const out: SessionModel[] = [];
  for (const s of list) {
    try {
      out.push(sessions.model(s));
    } catch {
      // its kernel was removed since the list was made
    }
  }
  return out;
}

export function sessionRoutes(app: FastifyInstance, ctx: GatewayContext): void {
  const { sessions, kernels, baseUrl } = ctx;

  app.get('/api/sessions', async (req) => models(sessions, await sessions.list(req.principal)));

  app.post('/api/sessions', async (req, reply) => {
    const body = parseBody(createSessionBody, req.body);
    const path = body.path ?? body.notebook?.path;
    if (path === undefined) throw badRequest('path: a session needs a path');
    const s = await sessions.create({
      path,
      name: body.name ?? '',
      type: body.type ?? 'notebook',
      kernel: kernelOf(body.kernel),
      principal: req.principal,
    });
    return reply.code(201).header('Location', `${baseUrl}api/sessions/${s.id}`).send(sessions.model(s));
  });

  // A session the caller may not see is not found, as one that does not exist (SessionManager.get).
  app.get<{ Params: IdParams }>('/api/sessions/:id', async (req) => sessions.model(await sessions.get(req.params.id, req.principal)));

  app.patch<{ Params: IdParams }>('/api/sessions/:id', async (req) => {
    const body = parseBody(patchSessionBody, req.body);
    const before = await sessions.get(req.params.id, req.principal);
    // A kernel named by kernelspec only replaces the session's kernel, which is shut down (see SessionManager.update).
    if (body.kernel?.name !== undefined && body.kernel.id === undefined && kernels.has(before.kernelId)) {
      req.log.info({ kernel: before.kernelId, session: before.id, ...askedBy(req) }, "client asked to replace the session's kernel: the old one is shut down");
    }
    const s = await sessions.update(req.params.id, { ...body, kernel: kernelOf(body.kernel), principal: req.principal });
    return sessions.model(s);
  });

  app.delete<{ Params: IdParams }>('/api/sessions/:id', async (req, reply) => {
    const s = await sessions.get(req.params.id, req.principal);
    if (kernels.has(s.kernelId)) req.log.info({ kernel: s.kernelId, session: s.id, ...askedBy(req) }, 'client asked to delete the session: its kernel is shut down');
    await sessions.delete(req.params.id, req.principal);
    return reply.code(204).send();
  });
}
