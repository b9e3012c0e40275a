/**
 * The channels WebSocket, `/api/kernels/{id}/channels?session_id=…`: auth and
 * the kernel are checked before the upgrade (so refusals are plain HTTP with a
 * JSON body), then the socket becomes a ClientRelay on the kernel's link.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { ClientRelay } from '../bridge/client-relay.js';
import type { KernelLink } from '../bridge/kernel-link.js';
import { WsClientSocket } from '../bridge/ws-client-socket.js';
import { V1_PROTOCOL } from '../bridge/ws-v1.js';
import { events } from '../events.js';
import { ErrorCodes, KgateError, WsClose, badRequest, forbiddenOrigin, kernelNotFound, notFound, truncate, unauthorized } from '../errors.js';
import { errorBody, errorHeaders, httpStatusOf, reasonPhrase } from './http-errors.js';
import type { GatewayContext } from './context.js';
import { notReady } from './health.js';
import type { OriginPolicy } from './origin.js';
import { logRefusedSocket, logSocket, requestIdOf } from './request-log.js';
import { sessionIdQuery } from './schemas.js';

export interface ChannelsOptions {
  maxMessageSize: number;
  maxClientBuffer: number;
  pingIntervalMs: number;
  /** Offer permessage-deflate; off by default, because it costs CPU on every frame of the hot path. */
  deflate: boolean;
  /** Browser origins allowed to open a socket (the REST CORS list); none given: only clients that send no Origin. */
  origins?: OriginPolicy;
  /**
   * Check the Origin of a socket that carries a valid token too. Off by default, as in
   * jupyter_server (`should_check_origin` is false for a token-authenticated request): a
   * page that holds the token is authorised, and no cookie can carry it there unasked.
   */
  checkOriginWithToken?: boolean;
  /** The Content-Security-Policy header value for refusals, as on every REST response. */
  csp?: string;
}

/**
 * Errors of a raw socket are its client's (a reset arrives as ECONNRESET). Node
 * takes its own 'error' listener off a socket it hands to 'upgrade', and an
 * 'error' event with no listener ends the process: every socket gets this one first.
 */
function ignoreSocketError(): void {}

/**
 * Answers a refused upgrade and then destroys the socket, as ws's own
 * abortHandshake does: an HTTP server socket allows half-open connections, so
 * one only ended would wait for the client's FIN forever.
 */
export function refuse(socket: Duplex, e: KgateError, csp: string | undefined): void {
  if (socket.destroyed) return;
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const body = JSON.stringify(errorBody(e));
  const status = httpStatusOf(e);
  const extra = Object.entries(errorHeaders(e))
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('');
  socket.once('finish', socket.destroy);
  socket.end(
    `HTTP/1.1 ${status} ${reasonPhrase(status)}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${extra}${csp ? `Content-Security-Policy: ${csp}\r\n` : ''}Connection: close\r\n\r\n${body}`,
  );
}

function chooseProtocol(protocols: Set<string>): string | false {
  return protocols.has(V1_PROTOCOL) ? V1_PROTOCOL : false;
}

const alive = new WeakSet<WebSocket>();
function onPong(this: WebSocket): void {
  alive.add(this);
}

export class ChannelsEndpoint {
  private readonly wss: WebSocketServer;
  private readonly pattern: RegExp;
  private readonly pinger: NodeJS.Timeout;
  /** Shutting down: an upgrade that still comes on a kept connection is refused (503). */
  private closing = false;

  constructor(
    private readonly ctx: GatewayContext,
    private readonly options: ChannelsOptions,
  ) {
    this.wss = new WebSocketServer({
      noServer: true,
      maxPayload: options.maxMessageSize,
      perMessageDeflate: options.deflate ? { threshold: 1024 } : false,
      // Text frames are checked for UTF-8 by the JSON decoder itself, which must also
      // accept the binary form that jupyter_server's gateway client sends as text.
      skipUTF8Validation: true,
      handleProtocols: chooseProtocol,
    });
    const base = ctx.baseUrl.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    this.pattern = new RegExp(`^${base}api/kernels/([^/?]+)/channels$`);
    this.onUpgrade = this.onUpgrade.bind(this);
    // With a listener, ws leaves the answer to a handshake it refuses to us.
    this.wss.on('wsClientError', (err: Error, socket: Duplex, req: IncomingMessage) => this.onWsClientError(err, socket, req));
    // Dead peers (a laptop lid closed) are found by ping, one timer for all sockets.
    this.pinger = setInterval(() => this.ping(), options.pingIntervalMs);
    this.pinger.unref();
  }

  attach(server: Server): void {
    server.on('upgrade', this.onUpgrade);
  }

  /** Closes every client socket with 1001 (going away). */
  close(): void {
    this.closing = true;
    clearInterval(this.pinger);
    for (const ws of this.wss.clients) ws.close(WsClose.GoingAway, 'kgate is shutting down');
    this.wss.close();
  }

  private ping(): void {
    for (const ws of this.wss.clients) {
      try {
        // A socket paused for input backpressure cannot read its pong; it is not dead.
        if (ws.isPaused) continue;
        if (!alive.has(ws)) {
          ws.terminate();
          continue;
        }
        alive.delete(ws);
        ws.ping();
      } catch (err) {
        // One socket's fault must not stop the pings of all the others.
        this.ctx.log.warn({ err }, 'could not ping a client WebSocket');
        ws.terminate();
      }
    }
  }

  private onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    // First, before anything asynchronous: a reset from here on is an 'error' event.
    socket.on('error', ignoreSocketError);
    this.upgrade(req, socket, head).catch((err: unknown) => {
      // upgrade() answers its own faults; this is the last guard, so no rejection is unhandled.
      this.ctx.log.error({ err }, 'the WebSocket upgrade failed');
      socket.destroy();
    });
  }

  /**
   * ws's own refusals (a handshake it cannot complete: no Sec-WebSocket-Key, a bad
   * version) are answered here in kgate's JSON shape and with the CSP header.
   */
  private onWsClientError(err: Error, socket: Duplex, req: IncomingMessage): void {
    const message = `WebSocket handshake: ${truncate(err.message, 120)}`;
    const e = req.method === 'GET' ? badRequest(message) : new KgateError(ErrorCodes.METHOD_NOT_ALLOWED, message);
    refuse(socket, e, this.options.csp);
  }

  private async upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const reqId = requestIdOf(req.headers);
    const route = `${this.ctx.baseUrl}api/kernels/:id/channels`;
    let handedOver = false;
    try {
      if (this.closing) throw notReady('shutting_down');
      const url = req.url ?? '/';
      const q = url.indexOf('?');
      const path = q >= 0 ? url.slice(0, q) : url;
      const m = this.pattern.exec(path);
      if (!m) throw notFound(`no WebSocket endpoint at ${path.slice(0, 64)}`);
      const auth = this.ctx.auth;
      const { principal, failure } = await auth.authenticate(req.headers, url);
      // The client may have gone while the token was checked (a JWKS fetch): nothing to answer.
      if (socket.destroyed) return;
      if (failure !== undefined) {
        this.ctx.log.debug({ kind: failure, path: path.slice(0, 200) }, 'refused a WebSocket: not authenticated');
        if (events.authFailure.hasSubscribers) events.authFailure.publish({ kind: failure, transport: 'websocket' });
      }
      // A browser page always sends Origin. With auth on, a valid token authorises the page
      // (jupyter_server's rule; --check-origin-with-token adds the origin check on top);
      // without a valid token, or with auth off, an origin not allowed is refused first,
      // before anything about the kernel is looked at.
      const origin = req.headers.origin;
      if (origin !== undefined && (principal === undefined || !auth.enabled || this.options.checkOriginWithToken === true)) {
        if (this.options.origins?.check(req.headers) !== 'allowed') throw forbiddenOrigin(origin);
      }
      if (principal === undefined) throw unauthorized();
      const kernelId = decodeSegment(m[1]!);
      const kernels = this.ctx.kernels;
      // Not only this process's kernels: one another gateway on the same state dir runs is followed.
      const kernel = await kernels.find(kernelId, principal);
      if (socket.destroyed) return;
      const link = kernel.link;
      if (!link || kernel.phase === 'dead' || kernel.phase === 'gone' || kernel.phase === 'shutting_down') throw kernelNotFound(kernelId);
      const query = new URLSearchParams(q >= 0 ? url.slice(q + 1) : '');
      const asked = query.get('session_id');
      let sessionId: string = randomUUID();
      if (asked) {
        const r = sessionIdQuery.safeParse(asked);
        if (!r.success) throw badRequest(`session_id: ${r.error.issues[0]!.message}`);
        sessionId = r.data;
      }
      // From here the socket is ws's: nothing may write HTTP on it any more.
      handedOver = true;
      this.wss.handleUpgrade(req, socket, head, (ws) => {
        this.accepted(ws, link, sessionId);
        logSocket(this.ctx.log, ws, { reqId, kernelId, route, principal });
      });
    } catch (e) {
      if (handedOver) {
        this.ctx.log.error({ err: e }, 'the WebSocket upgrade failed after the handshake began');
        socket.destroy();
        return;
      }
      if (!(e instanceof KgateError)) this.ctx.log.error({ err: e }, 'the WebSocket upgrade failed');
      const refusal = e instanceof KgateError ? e : internalError();
      logRefusedSocket(this.ctx.log, { reqId, route, status: httpStatusOf(refusal), code: refusal.code });
      refuse(socket, refusal, this.options.csp);
    }
  }

  /** The handshake is done: the socket becomes a client of the kernel's link. */
  private accepted(ws: WebSocket, link: KernelLink, sessionId: string): void {
    // Listening before anything can fail: a WebSocket 'error' with no listener ends the process.
    ws.on('error', ignoreSocketError);
    try {
      alive.add(ws);
      ws.on('pong', onPong);
      const protocol = ws.protocol === V1_PROTOCOL ? 'v1' : 'json';
      new ClientRelay(new WsClientSocket(ws), link, protocol, sessionId, { maxBufferedBytes: this.options.maxClientBuffer, log: this.ctx.log });
    } catch (err) {
      // A fault here costs this client its socket, never the gateway.
      this.ctx.log.error({ err }, 'could not attach a client WebSocket to its kernel');
      ws.close(WsClose.InternalError, 'kgate: internal error');
      setTimeout(() => ws.terminate(), 1000).unref();
    }
  }
}

/** A path segment, percent-decoded; a malformed escape is the client's error (400), not a fault. */
function decodeSegment(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw badRequest('the kernel id in the path is not valid percent-encoding');
  }
}

const internalError = (): KgateError => new KgateError(ErrorCodes.INTERNAL, 'internal error; see the gateway log');
