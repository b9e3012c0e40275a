/**
 * Raw TCP clients for the hardening tests: they write exactly the bytes a test
 * names (a request cut anywhere, headers trickled), read what comes back, and
 * can end with a TCP reset (SO_LINGER 0, `resetAndDestroy`), which no HTTP or
 * WebSocket client library lets a test do at a chosen moment.
 */
import { randomBytes } from 'node:crypto';
import net from 'node:net';

export interface RawClient {
  socket: net.Socket;
  /** Everything received so far. */
  received(): string;
  /** Resolves when what was received satisfies `pred` (rejects after `timeoutMs`). */
  waitFor(pred: (text: string) => boolean, what: string, timeoutMs?: number): Promise<string>;
  /** Resolves when the server has closed its side (FIN) or the socket is gone. */
  ended: Promise<void>;
  /** Resolves with the socket's error code (ECONNRESET, EPIPE...) once it has one. */
  errored: Promise<string>;
  /** Sends a TCP RST: SO_LINGER 0 and close. */
  reset(): void;
}

export async function rawConnect(port: number, opts: { allowHalfOpen?: boolean } = {}): Promise<RawClient> {
  const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: opts.allowHalfOpen ?? false });
  let text = '';
  const waiters = new Set<() => void>();
  let onError: (code: string) => void = () => {};
  const errored = new Promise<string>((resolve) => (onError = resolve));
  socket.on('error', (e: NodeJS.ErrnoException) => onError(e.code ?? e.message));
  socket.on('data', (d: Buffer) => {
    text += d.toString('latin1');
    for (const w of waiters) w();
  });
  const ended = new Promise<void>((resolve) => {
    socket.once('end', resolve);
    socket.once('close', resolve);
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return {
    socket,
    received: () => text,
    waitFor(pred, what, timeoutMs = 10_000) {
      if (pred(text)) return Promise.resolve(text);
      return new Promise((resolve, reject) => {
        const check = (): void => {
          if (!pred(text)) return;
          done();
          resolve(text);
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`timed out waiting for ${what}; received ${JSON.stringify(text.slice(0, 200))}`));
        }, timeoutMs);
        const done = (): void => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
        void ended.then(() => setImmediate(check));
      });
    },
    ended,
    errored,
    reset: () => {
      if (!socket.destroyed) socket.resetAndDestroy();
    },
  };
}

/** The head of a WebSocket upgrade request for `path` (ending with the blank line). */
export function upgradeRequest(path: string, extra: Record<string, string> = {}): string {
  const headers: Record<string, string> = {
    Host: '127.0.0.1',
    Connection: 'Upgrade',
    Upgrade: 'websocket',
    'Sec-WebSocket-Version': '13',
    'Sec-WebSocket-Key': randomBytes(16).toString('base64'),
    ...extra,
  };
  return `GET ${path} HTTP/1.1\r\n${Object.entries(headers)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('')}\r\n`;
}

/** The status code of the first response in `text`, or undefined before its status line has come. */
export function statusOf(text: string): number | undefined {
  const m = /^HTTP\/1\.1 (\d{3}) /.exec(text);
  return m ? Number(m[1]) : undefined;
}

/** True once a whole response with a Content-Length body (or none) has been received. */
export function responseComplete(text: string): boolean {
  const end = text.indexOf('\r\n\r\n');
  if (end < 0) return false;
  const len = /\r\ncontent-length: (\d+)/i.exec(text.slice(0, end));
  return text.length >= end + 4 + (len ? Number(len[1]) : 0);
}

/** A masked client WebSocket frame (text), as a browser sends it. */
export function maskedTextFrame(payload: string): Buffer {
  const data = Buffer.from(payload, 'utf8');
  const mask = randomBytes(4);
  let head: Buffer;
  if (data.length < 126) {
    head = Buffer.from([0x81, 0x80 | data.length]);
  } else {
    head = Buffer.alloc(4);
    head[0] = 0x81;
    head[1] = 0x80 | 126;
    head.writeUInt16BE(data.length, 2);
  }
  const masked = Buffer.from(data.map((b, i) => b ^ mask[i % 4]!));
  return Buffer.concat([head, mask, masked]);
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
