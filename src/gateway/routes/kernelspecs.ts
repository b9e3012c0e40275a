import { createReadStream } from 'node:fs';
import { extname } from 'node:path';
import type { FastifyInstance } from 'fastify';
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
  const { specs, baseUrl } = ctx;

  app.get<{ Querystring: { user?: string } }>('/api/kernelspecs', async (req) => {
    await specs.refresh();
    // jupyter_server's GatewayKernelSpecManager, with KERNEL_USERNAME set, asks for one
    // spec as `/api/kernelspecs?user=alice/python3` (the name appended after its filter).
    const user = req.query.user;
    if (typeof user === 'string' && user.includes('/')) {
      const name = user.slice(user.lastIndexOf('/') + 1);
      const m = specs.model(name, baseUrl);
      if (!m) throw kernelspecNotFound(name);
      return m;
    }
    const kernelspecs: Record<string, KernelSpecModel> = {};
    for (const name of specs.names()) kernelspecs[name] = specs.model(name, baseUrl)!;
    return { default: specs.defaultName, kernelspecs };
  });

  app.get<{ Params: { name: string } }>('/api/kernelspecs/:name', async (req) => {
    await specs.refresh();
    const m = specs.model(req.params.name, baseUrl);
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
