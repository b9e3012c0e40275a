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
import { V1_PROTOCOL } from '../bridge/ws-v1.js';
import { KgateError, WsClose, badRequest, forbiddenOrigin, kernelNotFound, notFound, unauthorized } from '../errors.js';
import type { GatewayContext } from './context.js';
import type { OriginPolicy } from './origin.js';
import { sessionIdQuery } from './schemas.js';

export interface ChannelsOptions {
  maxMessageSize: number;
  maxClientBuffer: number;
  pingIntervalMs: number;
  /** Offer permessage-deflate; off by default, because it costs CPU on every frame of the hot path. */
  deflate: boolean;
  /** Browser origins allowed to open a socket (the REST CORS list); none given: only clients that send no Origin. */
  origins?: OriginPolicy;
  /** The Content-Security-Policy header value for refusals, as on every REST response. */
  csp?: string;
}

function refuse(socket: Duplex, e: KgateError, csp: string | undefined): void {
  const body = JSON.stringify(e.toBody());
  socket.end(
    `HTTP/1.1 ${e.status} ${e.reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${csp ? `Content-Security-Policy: ${csp}\r\n` : ''}Connection: close\r\n\r\n${body}`,
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
    // Dead peers (a laptop lid closed) are found by ping, one timer for all sockets.
    this.pinger = setInterval(() => this.ping(), options.pingIntervalMs);
    this.pinger.unref();
  }

  attach(server: Server): void {
    server.on('upgrade', this.onUpgrade);
  }

  /** Closes every client socket with 1001 (going away). */
  close(): void {
    clearInterval(this.pinger);
    for (const ws of this.wss.clients) ws.close(WsClose.GoingAway, 'kgate is shutting down');
    this.wss.close();
  }

  private ping(): void {
    for (const ws of this.wss.clients) {
      if (!alive.has(ws)) {
        ws.terminate();
        continue;
      }
      alive.delete(ws);
      ws.ping();
    }
  }

  private onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    void this.upgrade(req, socket, head);
  }

  private async upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    try {
      const url = req.url ?? '/';
      const q = url.indexOf('?');
      const path = q >= 0 ? url.slice(0, q) : url;
      const m = this.pattern.exec(path);
      if (!m) throw notFound(`no WebSocket endpoint at ${path.slice(0, 64)}`);
      // A browser page always sends Origin; one not allowed is refused before anything else.
      if (req.headers.origin !== undefined && this.options.origins?.check(req.headers) !== 'allowed') throw forbiddenOrigin(req.headers.origin);
      if (!this.ctx.auth.authenticate(req.headers, url)) throw unauthorized();
      const kernelId = decodeURIComponent(m[1]!);
      const kernels = this.ctx.kernels;
      // Not only this process's kernels: one another gateway on the same state dir runs is followed.
      const kernel = await kernels.find(kernelId);
      if (socket.destroyed) return;
      const link = kernel.link;
      if (!link || kernel.phase === 'dead' || kernel.phase === 'shutting_down') throw kernelNotFound(kernelId);
      const query = new URLSearchParams(q >= 0 ? url.slice(q + 1) : '');
      const asked = query.get('session_id');
      let sessionId: string = randomUUID();
      if (asked) {
        const r = sessionIdQuery.safeParse(asked);
        if (!r.success) throw badRequest(`session_id: ${r.error.issues[0]!.message}`);
        sessionId = r.data;
      }
      this.wss.handleUpgrade(req, socket, head, (ws) => {
        alive.add(ws);
        ws.on('pong', onPong);
        const protocol = ws.protocol === V1_PROTOCOL ? 'v1' : 'json';
        new ClientRelay(ws, link, protocol, sessionId, { maxBufferedBytes: this.options.maxClientBuffer, log: this.ctx.log });
      });
    } catch (e) {
      refuse(socket, e instanceof KgateError ? e : notFound('bad request'), this.options.csp);
    }
  }
}
