/**
 * One log line per request, and per WebSocket open and close, each with the
 * request's id. fastify's own request logging stays off (app.ts): it logs the
 * URL as sent, whose query may hold `?token=`. These lines name the route
 * pattern instead, and the principal (user, tenant, how it authenticated),
 * never a credential.
 *
 * The id is the client's `X-Request-Id` when it is well-formed (1 to 128
 * characters of a safe set, so it cannot forge or split a log line), else a
 * new UUID; it is echoed in the `X-Request-Id` response header (and on the
 * WebSocket's 101), and fastify puts it on every line logged through
 * `req.log` as `reqId`.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { WebSocket } from 'ws';
import { V1_PROTOCOL } from '../bridge/ws-v1.js';
import type { Principal } from '../principal.js';

export const REQUEST_ID_HEADER = 'x-request-id';
const REQUEST_ID = /^[A-Za-z0-9._:+=/@-]{1,128}$/;

/** The client's X-Request-Id when well-formed (a repeated header, joined by node with ", ", is not), else a new one. */
export function requestIdOf(headers: IncomingHttpHeaders): string {
  const given = headers[REQUEST_ID_HEADER];
  return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
}

/** fastify's `genReqId` (with `requestIdHeader: false`, so an unchecked header is never taken as is). */
export function genReqId(req: IncomingMessage): string {
  return requestIdOf(req.headers);
}

/** Who, for a log or audit line: never the credential itself. */
export function principalFields(p: Principal | null | undefined): { user: string | null; tenant: string | null; via: string } {
  if (!p) return { user: null, tenant: null, via: 'none' };
  return { user: p.user ?? null, tenant: p.tenant, via: p.via };
}

export interface RequestLogOptions {
  /** Requests logged at debug rather than info (the probes, which come every few seconds). */
  quiet?: (req: FastifyRequest) => boolean;
}

/**
 * The X-Request-Id header on every answer, and the line per request once it
 * is answered: method, route pattern (null for no route), status, duration in
 * ms, the principal (null when not authenticated) and the peer address.
 * Register before the auth hook, so a 401 carries the header too.
 */
export function installRequestLog(app: FastifyInstance, o: RequestLogOptions = {}): void {
  app.addHook('onRequest', (req, reply, done) => {
    void reply.header('X-Request-Id', req.id);
    done();
  });
  app.addHook('onResponse', (req, reply, done) => {
    const line = {
      method: req.method,
      route: req.routeOptions.url ?? null,
      status: reply.statusCode,
      ms: Math.round(reply.elapsedTime * 10) / 10,
      ...principalFields(req.principal),
      remote: req.ip,
    };
    if (o.quiet?.(req)) req.log.debug(line, 'request');
    else req.log.info(line, 'request');
    done();
  });
}

export interface SocketLogInfo {
  reqId: string;
  kernelId: string;
  /** The route pattern, as the REST lines name theirs. */
  route: string;
  principal: Principal;
}

/** The open line of a channels WebSocket now, and its close line (code, duration) when it closes. */
export function logSocket(log: Logger, ws: WebSocket, info: SocketLogInfo): void {
  const started = performance.now();
  const l = log.child({ reqId: info.reqId, kernel: info.kernelId });
  const common = { route: info.route, protocol: ws.protocol === V1_PROTOCOL ? 'v1' : 'json', ...principalFields(info.principal) };
  l.info(common, 'WebSocket opened');
  ws.once('close', (code: number) => l.info({ ...common, code, ms: Math.round(performance.now() - started) }, 'WebSocket closed'));
}

/** The line of an upgrade refused before the handshake (its status and code; never its URL). */
export function logRefusedSocket(log: Logger, info: { reqId: string; route: string; status: number; code: string }): void {
  log.info({ reqId: info.reqId, route: info.route, status: info.status, code: info.code }, 'WebSocket refused');
}
