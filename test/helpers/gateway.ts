/**
 * Starts a real kgate in this process on 127.0.0.1, port 0, with a token,
 * and real ipykernel kernels (or a test's own provisioner, through the
 * overrides of createServer), and offers small REST and WebSocket helpers.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import WebSocket from 'ws';
import { loadConfig } from '../../src/config.js';
import { createServer, type Gateway, type ServerOverrides } from '../../src/gateway/app.js';
import { createLogger } from '../../src/log.js';

/** What a test needs to talk to a gateway: its URLs, token, REST and kernel start. */
export interface GatewayClient {
  url: string;
  wsUrl: string;
  token: string;
  api(path: string, init?: RequestInit & { json?: unknown }): Promise<Response>;
  startKernel(name?: string, env?: Record<string, string>): Promise<string>;
}

/** A gateway running in this process. */
export interface TestGateway extends GatewayClient {
  gw: Gateway;
  close(): Promise<void>;
}

export const TOKEN = 'test-token-0123456789';

/** A client of the gateway at `url` (its base URL included) with `token`. */
export function gatewayClient(url: string, token: string): GatewayClient {
  const api = (path: string, init: RequestInit & { json?: unknown } = {}): Promise<Response> => {
    const headers = new Headers(init.headers);
    if (!headers.has('Authorization')) headers.set('Authorization', `token ${token}`);
    let body = init.body;
    if (init.json !== undefined) {
      body = JSON.stringify(init.json);
      headers.set('Content-Type', 'application/json');
    }
    return fetch(new URL(path, url), { ...init, headers, body });
  };
  return {
    url,
    wsUrl: url.replace(/^http/, 'ws'),
    token,
    api,
    async startKernel(name = 'python3', env = {}) {
      const r = await api('api/kernels', { method: 'POST', json: { name, env } });
      if (r.status !== 201) throw new Error(`start failed: ${r.status} ${await r.text()}`);
      return ((await r.json()) as { id: string }).id;
    },
  };
}

/** The logger of a test's gateway: silent, unless KGATE_TEST_LOG is set. */
const testLogger = (): Logger => createLogger(process.env['KGATE_TEST_LOG'] ? 'debug' : 'silent');

/** Builds a gateway as the CLI does (flags over no environment), with a test's overrides, without listening. */
export function buildGateway(extraArgs: string[] = [], overrides: ServerOverrides = {}): Promise<Gateway> {
  const config = loadConfig(['--port', '0', '--auth-token', TOKEN, ...extraArgs], {});
  return createServer(config, { log: testLogger(), ...overrides });
}

/** A gateway listening on 127.0.0.1, port 0. */
export async function startGateway(extraArgs: string[] = [], overrides: ServerOverrides = {}): Promise<TestGateway> {
  const gw = await buildGateway(extraArgs, overrides);
  const { port } = await gw.listen();
  // Under the gateway's --base-url, so `api('api/kernels')` and `wsUrl` follow it.
  return { gw, ...gatewayClient(`http://127.0.0.1:${port}${gw.ctx.baseUrl}`, TOKEN), close: () => gw.close() };
}

export interface Msg {
  channel: string;
  header: { msg_id: string; msg_type: string; session?: string };
  parent_header: { msg_id?: string; msg_type?: string };
  metadata: Record<string, unknown>;
  content: Record<string, unknown>;
  buffers: Buffer[];
  msg_type?: string;
}

export function makeRequest(msgType: string, content: object, session: string, channel = 'shell'): Msg {
  return {
    channel,
    header: { msg_id: randomUUID(), msg_type: msgType, session, username: 'test', date: new Date().toISOString(), version: '5.3' } as Msg['header'],
    parent_header: {},
    metadata: {},
    content: content as Record<string, unknown>,
    buffers: [],
  };
}

/** Encodes as the JSON protocol does (text, or the binary form when there are buffers). */
export function encodeJson(msg: Msg): Buffer | string {
  const { buffers, ...rest } = msg;
  if (buffers.length === 0) return JSON.stringify({ ...rest, buffers: [] });
  const json = Buffer.from(JSON.stringify(rest));
  const nbufs = 1 + buffers.length;
  const table = Buffer.alloc(4 * (nbufs + 1));
  table.writeUInt32BE(nbufs, 0);
  let off = table.length;
  table.writeUInt32BE(off, 4);
  off += json.length;
  buffers.forEach((b, k) => {
    table.writeUInt32BE(off, 8 + 4 * k);
    off += b.length;
  });
  return Buffer.concat([table, json, ...buffers]);
}

function decodeJson(data: Buffer, isBinary: boolean): Msg {
  if (!isBinary) return { ...(JSON.parse(data.toString('utf8')) as Msg), buffers: [] };
  const nbufs = data.readUInt32BE(0);
  const offsets = Array.from({ length: nbufs }, (_, k) => data.readUInt32BE(4 + 4 * k));
  offsets.push(data.length);
  const msg = JSON.parse(data.toString('utf8', offsets[0], offsets[1])) as Msg;
  msg.buffers = offsets.slice(1, -1).map((o, k) => data.subarray(o, offsets[k + 2]));
  return msg;
}

/** Encodes as `v1.kernel.websocket.jupyter.org` does (the same layout as jupyterlab's serialize.ts). */
export function encodeV1(msg: Msg): Buffer {
  const parts: Buffer[] = [msg.channel, JSON.stringify(msg.header), JSON.stringify(msg.parent_header), JSON.stringify(msg.metadata), JSON.stringify(msg.content)].map((s) =>
    Buffer.from(s),
  );
  parts.push(...msg.buffers);
  const n = parts.length + 1;
  const table = Buffer.alloc(8 * (n + 1));
  table.writeBigUInt64LE(BigInt(n), 0);
  let off = table.length;
  parts.forEach((p, k) => {
    table.writeBigUInt64LE(BigInt(off), 8 * (k + 1));
    off += p.length;
  });
  table.writeBigUInt64LE(BigInt(off), 8 * n);
  return Buffer.concat([table, ...parts]);
}

function decodeV1(data: Buffer): Msg {
  const n = Number(data.readBigUInt64LE(0));
  const offsets = Array.from({ length: n }, (_, k) => Number(data.readBigUInt64LE(8 * (k + 1))));
  const part = (k: number): Buffer => data.subarray(offsets[k], offsets[k + 1]);
  const json = (k: number): Record<string, unknown> => JSON.parse(part(k).toString('utf8')) as Record<string, unknown>;
  return {
    channel: part(0).toString('utf8'),
    header: json(1) as Msg['header'],
    parent_header: json(2) as Msg['parent_header'],
    metadata: json(3),
    content: json(4),
    buffers: offsets.slice(5, -1).map((_, k) => part(5 + k)),
  };
}

/** A raw WebSocket client of the channels endpoint that records every message. */
export class KernelClient {
  readonly messages: Msg[] = [];
  readonly session: string;
  private waiters: Array<{ pred: (m: Msg) => boolean; resolve: (m: Msg) => void }> = [];
  closed: { code: number; reason: string } | undefined;
  private closeWaiters: Array<(c: { code: number; reason: string }) => void> = [];

  private constructor(
    readonly ws: WebSocket,
    readonly protocol: 'json' | 'v1',
    session: string,
  ) {
    this.session = session;
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      const m = protocol === 'v1' ? decodeV1(data) : decodeJson(data, isBinary);
      this.messages.push(m);
      this.waiters = this.waiters.filter((w) => {
        if (w.pred(m)) {
          w.resolve(m);
          return false;
        }
        return true;
      });
    });
    ws.on('close', (code: number, reason: Buffer) => {
      this.closed = { code, reason: reason.toString() };
      for (const w of this.closeWaiters) w(this.closed);
    });
  }

  static async connect(t: GatewayClient, kernelId: string, opts: { protocol?: 'json' | 'v1'; session?: string } = {}): Promise<KernelClient> {
    const protocol = opts.protocol ?? 'json';
    const session = opts.session ?? randomUUID();
    const ws = new WebSocket(`${t.wsUrl}api/kernels/${kernelId}/channels?session_id=${session}&token=${t.token}`, protocol === 'v1' ? ['v1.kernel.websocket.jupyter.org'] : []);
    // Listen before 'open': frames sent right after the upgrade (a replay) can be
    // emitted before a continuation of the 'open' promise would run.
    const client = new KernelClient(ws, protocol, session);
    await new Promise<void>((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
      ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
    });
    return client;
  }

  send(msg: Msg): string {
    this.ws.send(this.protocol === 'v1' ? encodeV1(msg) : encodeJson(msg));
    return msg.header.msg_id;
  }

  request(msgType: string, content: object, channel = 'shell', buffers: Buffer[] = []): string {
    const m = makeRequest(msgType, content, this.session, channel);
    m.buffers = buffers;
    return this.send(m);
  }

  execute(code: string, opts: { allowStdin?: boolean } = {}): string {
    return this.request('execute_request', { code, silent: false, store_history: true, user_expressions: {}, allow_stdin: opts.allowStdin ?? false, stop_on_error: true });
  }

  next(pred: (m: Msg) => boolean, timeoutMs = 30_000): Promise<Msg> {
    const found = this.messages.find(pred);
    if (found) return Promise.resolve(found);
    return new Promise<Msg>((resolve, reject) => {
      const w = { pred, resolve: (m: Msg) => (clearTimeout(t), resolve(m)) };
      const t = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(new Error(`timed out waiting for a message; saw ${this.messages.map((m) => `${m.channel}/${m.header.msg_type}`).join(', ')}`));
      }, timeoutMs);
      this.waiters.push(w);
    });
  }

  /** Waits for the reply to `msgId` and for the kernel to go idle after it. */
  async reply(msgId: string, timeoutMs = 30_000): Promise<Msg> {
    const r = await this.next((m) => m.parent_header.msg_id === msgId && m.header.msg_type.endsWith('_reply'), timeoutMs);
    await this.next((m) => m.parent_header.msg_id === msgId && m.header.msg_type === 'status' && m.content['execution_state'] === 'idle', timeoutMs);
    return r;
  }

  /** All iopub messages that answer `msgId`. */
  outputs(msgId: string): Msg[] {
    return this.messages.filter((m) => m.channel === 'iopub' && m.parent_header.msg_id === msgId);
  }

  waitClosed(timeoutMs = 10_000): Promise<{ code: number; reason: string }> {
    if (this.closed) return Promise.resolve(this.closed);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('socket did not close')), timeoutMs);
      this.closeWaiters.push((c) => (clearTimeout(t), resolve(c)));
    });
  }

  close(): void {
    this.ws.close();
  }
}

/** The text a cell printed on stdout. */
export function stdout(msgs: Msg[]): string {
  return msgs
    .filter((m) => m.header.msg_type === 'stream' && m.content['name'] === 'stdout')
    .map((m) => m.content['text'] as string)
    .join('');
}

/**
 * Interrupts the request `msgId` until it is answered. ipykernel publishes
 * execute_input just before it runs the cell, and an interrupt that lands in
 * between is lost inside ipykernel; a user presses interrupt again, and so do
 * the tests: again only after 2 s without a reply (at most 10 times), because a
 * second SIGINT that lands while ipykernel is still handling the first can
 * break the reply itself.
 */
export async function interruptUntilReplied(c: KernelClient, msgId: string, interrupt: () => Promise<Response>): Promise<Msg> {
  const replied = c.reply(msgId);
  let settled = false;
  void replied.then(
    () => (settled = true),
    () => (settled = true),
  );
  for (let i = 0; i < 10 && !settled; i++) {
    const r = await interrupt();
    if (r.status !== 204) throw new Error(`interrupt answered ${r.status}`);
    await Promise.race([replied, new Promise((res) => setTimeout(res, 2000))]);
  }
  return replied;
}
