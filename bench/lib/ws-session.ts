/**
 * A WebSocket client of a gateway's channels endpoint, in the JSON protocol
 * (text frames) or `v1.kernel.websocket.jupyter.org` (offset tables), doing
 * the same minimal work per message as the ZeroMQ client: a regex on the
 * header for the type, a parse only of small messages.
 */
import { randomUUID } from 'node:crypto';
import WebSocket from 'ws';
import { executeRequest, msgTypeIn, Pending, type ExecResult, type KernelSession } from './session.js';
import { request, type Parts } from './wire-codec.js';

export type WsProtocol = 'json' | 'v1';
export const V1 = 'v1.kernel.websocket.jupyter.org';
/** The header comes first in both servers' JSON envelopes; its msg_type is well inside this. */
const HEADER_WINDOW = 512;

export function encodeV1(channel: string, p: Parts): Buffer {
  const parts = [Buffer.from(channel), p.header, p.parent, p.metadata, p.content, ...p.buffers];
  const n = parts.length + 1;
  const table = Buffer.alloc(8 * (n + 1));
  table.writeUInt32LE(n, 0);
  let off = table.length;
  for (let k = 0; k < parts.length; k++) {
    table.writeUInt32LE(off, 8 * (k + 1));
    off += parts[k]!.length;
  }
  table.writeUInt32LE(off, 8 * n);
  return Buffer.concat([table, ...parts], off);
}

export function encodeJson(channel: string, p: Parts): string {
  return `{"header":${p.header.toString('utf8')},"parent_header":${p.parent.toString('utf8')},"metadata":${p.metadata.toString('utf8')},"content":${p.content.toString('utf8')},"buffers":[],"channel":"${channel}"}`;
}

export interface WsOpenOptions {
  protocol: WsProtocol;
  timeoutMs: number;
}

/** Opens a WebSocket and resolves once it is open (rejects on refusal or timeout). */
export function openWebSocket(url: string, protocol: WsProtocol, timeoutMs: number): Promise<WebSocket> {
  const ws = new WebSocket(url, protocol === 'v1' ? [V1] : [], { perMessageDeflate: false, handshakeTimeout: timeoutMs });
  return new Promise((resolve, reject) => {
    const fail = (e: Error): void => {
      ws.removeAllListeners();
      ws.on('error', () => undefined);
      ws.terminate();
      reject(e);
    };
    ws.once('open', () => {
      ws.removeAllListeners('error');
      ws.removeAllListeners('unexpected-response');
      resolve(ws);
    });
    ws.once('error', fail);
    ws.once('unexpected-response', (_req, res) => fail(new Error(`upgrade refused: HTTP ${res.statusCode}`)));
  });
}

export class WsSession implements KernelSession {
  lastIdleParent: string | undefined;
  iopubSeen = 0;
  /** The close code, once the socket has closed. */
  closeCode: number | undefined;
  readonly sessionId: string;
  private pending: Pending | undefined;

  constructor(
    readonly ws: WebSocket,
    readonly protocol: WsProtocol,
    sessionId: string,
  ) {
    this.sessionId = sessionId;
    this.onMessage = this.onMessage.bind(this);
    ws.on('message', this.onMessage);
    ws.on('error', () => undefined);
    ws.once('close', (code: number) => {
      this.closeCode = code;
      this.pending?.onClose(code);
    });
  }

  static async open(channelsUrl: (sessionId: string) => string, protocol: WsProtocol, timeoutMs: number): Promise<WsSession> {
    const sessionId = randomUUID();
    const ws = await openWebSocket(channelsUrl(sessionId), protocol, timeoutMs);
    return new WsSession(ws, protocol, sessionId);
  }

  get isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  async execute(code: string, timeoutMs: number): Promise<ExecResult> {
    const { msgId, parts } = executeRequest(code, this.sessionId);
    return this.request(new Pending(msgId, timeoutMs), parts);
  }

  async kernelInfo(timeoutMs: number): Promise<number> {
    const { msgId, parts } = request('kernel_info_request', {}, this.sessionId);
    const r = await this.request(new Pending(msgId, timeoutMs, true), parts);
    if (r.timedOut || r.closedWith !== undefined) throw new Error(`no kernel_info_reply within ${timeoutMs} ms${r.closedWith ? ` (closed ${r.closedWith})` : ''}`);
    return r.replyMs;
  }

  close(): void {
    this.ws.terminate();
  }

  private async request(p: Pending, parts: Parts): Promise<ExecResult> {
    if (!this.isOpen) {
      p.onClose(this.closeCode ?? 1006);
      return p.done;
    }
    this.pending = p;
    if (this.protocol === 'v1') this.ws.send(encodeV1('shell', parts));
    else this.ws.send(encodeJson('shell', parts));
    const r = await p.done;
    if (this.pending === p) this.pending = undefined;
    return r;
  }

  private onMessage(data: Buffer, isBinary: boolean): void {
    if (this.protocol === 'v1') this.onV1(data);
    else if (!isBinary) this.onJson(data);
  }

  private onV1(data: Buffer): void {
    const at = (k: number): number => data.readUInt32LE(8 * (k + 1));
    const channel = data.toString('latin1', at(0), at(1));
    const type = msgTypeIn(data.toString('latin1', at(1), at(2)));
    if (channel === 'iopub') this.iopubSeen++;
    if (type === 'stream') {
      if (this.pending) this.pending.streams++;
      return;
    }
    if (type !== 'status' && !type.endsWith('_reply')) return;
    const parent = (JSON.parse(data.toString('utf8', at(2), at(3))) as { msg_id?: string }).msg_id;
    const content = JSON.parse(data.toString('utf8', at(4), at(5))) as Record<string, unknown>;
    this.account(channel, type, parent, content);
  }

  private onJson(data: Buffer): void {
    const type = msgTypeIn(data.toString('latin1', 0, Math.min(data.length, HEADER_WINDOW)));
    if (type === 'stream') {
      this.iopubSeen++;
      if (this.pending) this.pending.streams++;
      return;
    }
    const m = JSON.parse(data.toString('utf8')) as { channel?: string; parent_header?: { msg_id?: string }; content?: Record<string, unknown> };
    if (m.channel === 'iopub') this.iopubSeen++;
    if (type !== 'status' && !type.endsWith('_reply')) return;
    this.account(m.channel ?? 'shell', type, m.parent_header?.msg_id, m.content ?? {});
  }

  private account(channel: string, type: string, parent: string | undefined, content: Record<string, unknown>): void {
    const p = this.pending;
    if (type === 'status') {
      if (content['execution_state'] !== 'idle') return;
      this.lastIdleParent = parent;
      if (p && parent === p.msgId) p.onIdle();
      return;
    }
    if (channel !== 'iopub' && p && parent === p.msgId) p.onReply(content);
  }
}
