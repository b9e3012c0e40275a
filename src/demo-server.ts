/**
 * Serves the demo page (demo/index.html and the bundle `npm run build` makes in
 * demo/dist/) on a port of its own, so the page runs from a different origin
 * than the gateway, as a page embedding kernels would. The few files are read
 * once at start; no path from a request ever reaches the file system.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Fastify, { type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { clientErrorHandler, httpServerOptions, type HttpLimits } from './gateway/app.js';
import { frameAncestorsPolicy } from './gateway/origin.js';

export const DEMO_ROOT = fileURLToPath(new URL('../demo/', import.meta.url));

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.map': 'application/json',
};

export interface DemoServerOptions {
  ip: string;
  port: number;
  /** The frame-ancestors sources, as for the gateway: who may show the page in a frame. */
  frameAncestors: readonly string[];
  root?: string;
  /** The gateway's HTTP time and count bounds (a page is small: the same bounds serve it). */
  limits?: HttpLimits;
  /** Where connection faults go (never a request's bytes). */
  log?: Logger;
}

/** When no limits are given: the defaults of --request-timeout, --headers-timeout, --keep-alive-timeout, --max-requests-per-socket. */
const DEFAULT_LIMITS: HttpLimits = { requestTimeoutMs: 30_000, headersTimeoutMs: 10_000, keepAliveTimeoutMs: 5_000, maxRequestsPerSocket: 1000 };

export interface DemoServer {
  app: FastifyInstance;
  /** The bound port (the asked one, or the one picked for 0). */
  port: number;
  close(): Promise<void>;
}

export class DemoNotBuiltError extends Error {}

function readFiles(root: string): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  try {
    files.set('/', readFileSync(join(root, 'index.html')));
    for (const name of readdirSync(join(root, 'dist'))) {
      const path = join(root, 'dist', name);
      if (TYPES[extname(name)] && statSync(path).isFile()) files.set(`/dist/${name}`, readFileSync(path));
    }
  } catch (e) {
    throw new DemoNotBuiltError(`the demo page is not built (${e instanceof Error ? e.message : String(e)}): run npm run build`);
  }
  if (!files.has('/dist/main.js')) throw new DemoNotBuiltError(`no ${join(root, 'dist', 'main.js')}: run npm run build`);
  return files;
}

export async function startDemoServer(options: DemoServerOptions): Promise<DemoServer> {
  const files = readFiles(options.root ?? DEMO_ROOT);
  files.set('/index.html', files.get('/')!);
  // The page may talk to any gateway its address names (http, and ws for the channels),
  // runs only its own script, and is framed only where --frame-ancestors says.
  const csp = [
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    'connect-src http: https: ws: wss:',
    "object-src 'none'",
    "base-uri 'none'",
    frameAncestorsPolicy(options.frameAncestors),
  ].join('; ');
  // Bounded in time as the gateway is, with its handler for malformed requests and resets.
  const app = Fastify({ logger: false, ...httpServerOptions(options.limits ?? DEFAULT_LIMITS), clientErrorHandler: clientErrorHandler(options.log, csp) });
  app.get('/*', (req, reply) => {
    const path = req.url.split(/[?#]/)[0]!;
    const body = files.get(path);
    if (!body) return reply.code(404).header('Content-Security-Policy', csp).type('text/plain; charset=utf-8').send('not found');
    return reply
      .header('Content-Type', TYPES[extname(path)] ?? TYPES['.html']!)
      .header('Content-Security-Policy', csp)
      .header('X-Content-Type-Options', 'nosniff')
      .header('Referrer-Policy', 'no-referrer')
      .header('Cache-Control', 'no-cache')
      .send(body);
  });
  await app.listen({ host: options.ip, port: options.port });
  // A failed accept() is an 'error' event on the server: without a listener it ends kgate.
  app.server.on('error', (err) => options.log?.error({ err }, 'the demo page server reported an error; still serving'));
  const addr = app.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : options.port;
  return { app, port, close: () => app.close() };
}
