/**
 * The child process of bench/tools/ws-engines.ts: the real kgate gateway
 * (createServer, as src/cli.ts builds it, with ws on its own port), and beside
 * it a uWebSockets.js App on a second 127.0.0.1 port whose
 * `/api/kernels/{id}/channels` attaches a ClientRelay with a UwsClientSocket
 * to the same kernel's link. Both engines share one process, one KernelLink
 * per kernel and the same relay code: only the WebSocket server differs.
 *
 * Prints `kgate listening on URL` and then `uws listening on PORT`.
 *
 *   KGATE_UWS_BINARY=/path/to/uws_linux_x64_115.node \
 *     node --import tsx bench/tools/ws-engines-gateway.ts [kgate options]
 */
import { createRequire } from 'node:module';
import type { IncomingHttpHeaders } from 'node:http';
import { ClientRelay } from '../../src/bridge/client-relay.js';
import type { KernelLink } from '../../src/bridge/kernel-link.js';
import { UwsClientSocket, type UwsWebSocket } from '../lib/uws-client-socket.js';
import { V1_PROTOCOL } from '../../src/bridge/ws-v1.js';
import { loadConfig } from '../../src/config.js';
import { createServer } from '../../src/gateway/app.js';
import { sessionIdQuery } from '../../src/gateway/schemas.js';
import { createLogger } from '../../src/log.js';
import { randomUUID } from 'node:crypto';

/** The part of the uWS module (and its request/response objects) used here. */
interface UwsRequest {
  getUrl(): string;
  getQuery(): string;
  getParameter(i: number): string;
  forEach(cb: (key: string, value: string) => void): void;
}
interface UwsResponse {
  onAborted(cb: () => void): UwsResponse;
  cork(cb: () => void): UwsResponse;
  writeStatus(s: string): UwsResponse;
  end(body?: string): UwsResponse;
  upgrade(userData: UserData, key: string, protocol: string, extensions: string, context: unknown): void;
}
interface UserData {
  link: KernelLink;
  sessionId: string;
  v1: boolean;
  socket?: UwsClientSocket;
}
type UwsSocket = UwsWebSocket & { getUserData(): UserData };
interface UwsApp {
  ws(pattern: string, behavior: Record<string, unknown>): UwsApp;
  listen(host: string, port: number, cb: (listenSocket: unknown) => void): UwsApp;
}
interface UwsModule {
  App(): UwsApp;
  us_socket_local_port(s: unknown): number;
  DISABLED: number;
}

const binary = process.env['KGATE_UWS_BINARY'];
if (!binary) {
  process.stderr.write('ws-engines-gateway: KGATE_UWS_BINARY (the uWS .node file) is not set\n');
  process.exit(2);
}
// The native binary itself, never the package's index: that falls back to a ws-based copy when the binary does not load.
const uws = createRequire(import.meta.url)(binary) as UwsModule;

const config = loadConfig(process.argv.slice(2));
const log = createLogger(config.logLevel);
const gateway = await createServer(config, { log });
const { host, port } = await gateway.listen();
const ctx = gateway.ctx;

function refuse(res: UwsResponse, status: string, aborted: () => boolean): void {
  if (aborted()) return;
  res.cork(() => res.writeStatus(status).end(JSON.stringify({ message: status })));
}

/** As channels.ts: authenticate, find the kernel, then upgrade; refusals are plain HTTP. */
function upgrade(res: UwsResponse, req: UwsRequest, context: unknown): void {
  const path = req.getUrl();
  const query = req.getQuery();
  const kernelId = decodeURIComponent(req.getParameter(0));
  const headers: IncomingHttpHeaders = {};
  req.forEach((k, v) => (headers[k] = v));
  let aborted = false;
  res.onAborted(() => (aborted = true));
  const isAborted = (): boolean => aborted;
  void (async () => {
    const { principal } = await ctx.auth.authenticate(headers, `${path}?${query}`);
    if (principal === undefined) return refuse(res, '401 Unauthorized', isAborted);
    const kernel = await ctx.kernels.find(kernelId, principal).catch(() => undefined);
    const link = kernel?.link;
    if (!kernel || !link || kernel.phase === 'dead' || kernel.phase === 'gone') return refuse(res, '404 Not Found', isAborted);
    const asked = new URLSearchParams(query).get('session_id');
    const sessionId = asked ? sessionIdQuery.parse(asked) : randomUUID();
    const offered = (headers['sec-websocket-protocol'] as string | undefined) ?? '';
    const v1 = offered.split(',').some((p) => p.trim() === V1_PROTOCOL);
    if (aborted) return;
    res.cork(() => res.upgrade({ link, sessionId, v1 }, headers['sec-websocket-key'] as string, v1 ? V1_PROTOCOL : '', '', context));
  })().catch((err: unknown) => {
    log.error({ err }, 'uws upgrade failed');
    refuse(res, '500 Internal Server Error', isAborted);
  });
}

const app = uws.App().ws('/api/kernels/:id/channels', {
  compression: uws.DISABLED,
  maxPayloadLength: config.maxMessageSize,
  // The relay bounds each client itself (--max-client-buffer, then 4008): uWS must never drop a send on its own.
  maxBackpressure: 2 ** 31 - 1,
  closeOnBackpressureLimit: 0,
  idleTimeout: 0,
  upgrade,
  open(ws: UwsSocket) {
    const d = ws.getUserData();
    const socket = new UwsClientSocket(ws);
    d.socket = socket;
    new ClientRelay(socket, d.link, d.v1 ? 'v1' : 'json', d.sessionId, { maxBufferedBytes: config.maxClientBuffer, log });
  },
  message(ws: UwsSocket, message: ArrayBuffer, isBinary: boolean) {
    ws.getUserData().socket!.received(message, isBinary);
  },
  close(ws: UwsSocket, code: number) {
    ws.getUserData().socket?.closed(code);
  },
});

const uwsPort = await new Promise<number>((resolve, reject) => {
  app.listen('127.0.0.1', 0, (s) => (s ? resolve(uws.us_socket_local_port(s)) : reject(new Error('uws could not listen on 127.0.0.1'))));
});

process.stdout.write(`kgate listening on http://${host}:${port}${ctx.baseUrl}\nuws listening on ${uwsPort}\n`);

async function stop(): Promise<void> {
  await gateway.close();
  process.exit(0);
}
process.once('SIGTERM', () => void stop());
process.once('SIGINT', () => void stop());
