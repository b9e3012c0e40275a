import { createReadStream } from 'node:fs';
import { extname } from 'node:path';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { kernelspecNotFound, notFound } from '../../errors.js';
import type { KernelSpecModel } from '../../kernels/kernelspecs.js';
import type { GatewayContext } from '../context.js';

const MIME: Record<string, string> = {
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.js': 'text/javascript',
  '.css': 'text/css',
};

export function kernelspecRoutes(app: FastifyInstance, ctx: GatewayContext): void {
  const { specs, baseUrl, kernels } = ctx;
  // A kernelspec the caller's tenant may not start (--policy) is not listed, and not found.
  const visible = (req: FastifyRequest, name: string): KernelSpecModel | undefined => (kernels.kernelspecAllowed(req.principal, name) ? specs.model(name, baseUrl) : undefined);

  app.get<{ Querystring: { user?: string } }>('/api/kernelspecs', async (req) => {
    await specs.refresh();
    // jupyter_server's GatewayKernelSpecManager, with KERNEL_USERNAME set, asks for one
    // spec as `/api/kernelspecs?user=alice/python3` (the name appended after its filter).
    const user = req.query.user;
    if (typeof user === 'string' && user.includes('/')) {
      const name = user.slice(user.lastIndexOf('/') + 1);
      const m = visible(req, name);
      if (!m) throw kernelspecNotFound(name);
      return m;
    }
    const kernelspecs: Record<string, KernelSpecModel> = {};
    for (const name of specs.names()) {
      const m = visible(req, name);
      if (m) kernelspecs[name] = m;
    }
    // The default is one the caller may start, so a client that starts "the default" is not refused.
    return { default: kernels.defaultKernelspec(req.principal), kernelspecs };
  });

  app.get<{ Params: { name: string } }>('/api/kernelspecs/:name', async (req) => {
    await specs.refresh();
    const m = visible(req, req.params.name);
    if (!m) throw kernelspecNotFound(req.params.name);
    return m;
  });

  app.get<{ Params: { name: string; file: string } }>('/kernelspecs/:name/:file', async (req, reply) => {
    await specs.refresh();
    const path = specs.resourcePath(req.params.name, req.params.file);
    if (!path) throw notFound(`no resource ${JSON.stringify(req.params.file.slice(0, 64))} in kernelspec ${JSON.stringify(req.params.name.slice(0, 64))}`);
    return reply
      .type(MIME[extname(path)] ?? 'application/octet-stream')
      .header('Cache-Control', 'max-age=3600')
      .header('X-Content-Type-Options', 'nosniff')
      .send(createReadStream(path));
  });
}
