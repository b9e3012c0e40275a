/**
 * The ceiling: the benchmark talks ZeroMQ to the kernel itself, as
 * jupyter_client does (a DEALER on shell, a SUB on iopub), with the
 * benchmark's own wire codec (bench/lib/wire-codec.ts, not kgate's). It
 * verifies nothing (BENCH_DIRECT_VERIFY=1: it verifies every message, as
 * jupyter_client does) and parses only small messages.
 */
import { randomUUID } from 'node:crypto';
import { Context, Dealer, Subscriber } from 'zeromq';
import type { ConnectionInfo } from '../../src/provisioner/types.js';
import { executeRequest, msgTypeIn, Pending, type ExecResult, type KernelSession } from './session.js';
import { decodeFrames, encodeFrames, HmacSha256, request, type Parts, type Received } from './wire-codec.js';

const VERIFY = process.env['BENCH_DIRECT_VERIFY'] === '1';
/**
 * A context of the benchmark's own: ZeroMQ's default allows 1023 sockets, and
 * the many-kernels scenario holds two per client, five clients per kernel.
 */
let context: Context | undefined;
function benchContext(): Context {
  context ??= new Context({ maxSockets: 32_768 });
  return context;
}

/** The identity frame the kernel's ROUTER echoes back (kgate puts a client's the same way). */
const IDENTITY = Buffer.from('bench');
const NUDGE_EVERY_MS = 50;
/**
 * The sockets connect before the kernel binds (start-time scenario): a flat
 * 10 ms reconnect pace, as kgate's link uses, instead of ZeroMQ's 100 ms, which
 * would add up to 100 ms to every direct start.
 */
const SOCKET_OPTIONS = { linger: 0, reconnectInterval: 10, reconnectMaxInterval: 0 } as const;

function url(c: ConnectionInfo, port: number): string {
  return `tcp://${c.ip}:${port}`;
}

function parentId(m: Received): string | undefined {
  try {
    const id = (JSON.parse(m.parent.toString('utf8')) as { msg_id?: unknown }).msg_id;
    return typeof id === 'string' ? id : undefined;
  } catch {
    return undefined;
  }
}

export class ZmqSession implements KernelSession {
  lastIdleParent: string | undefined;
  iopubSeen = 0;
  /** Messages whose signature did not verify (BENCH_DIRECT_VERIFY=1), dropped. */
  badSignatures = 0;
  private readonly signer: HmacSha256;
  private readonly session = randomUUID();
  private readonly shell = new Dealer({ ...SOCKET_OPTIONS, context: benchContext() });
  private readonly iopub = new Subscriber({ ...SOCKET_OPTIONS, context: benchContext() });
  private pending: Pending | undefined;
  private closed = false;

  private constructor(conn: ConnectionInfo) {
    this.signer = new HmacSha256(conn.key, conn.signature_scheme);
    this.shell.connect(url(conn, conn.shell_port));
    this.iopub.connect(url(conn, conn.iopub_port));
    this.iopub.subscribe();
    void this.pumpShell();
    void this.pumpIopub();
  }

  /** Connects without waiting: requests queue in the DEALER until the kernel binds. */
  static connect(conn: ConnectionInfo): ZmqSession {
    return new ZmqSession(conn);
  }

  /**
   * Connects and repeats `kernel_info_request` until it is answered and an
   * iopub message has arrived (the SUB has joined), as kgate and
   * jupyter_server do before relaying.
   */
  static async open(conn: ConnectionInfo, timeoutMs: number): Promise<ZmqSession> {
    const s = new ZmqSession(conn);
    const deadline = performance.now() + timeoutMs;
    let answered = false;
    while (performance.now() < deadline) {
      const seen = s.iopubSeen;
      const left = deadline - performance.now();
      if (!answered) {
        try {
          await s.kernelInfo(Math.min(left, 2000));
          answered = true;
        } catch {
          continue;
        }
      }
      if (s.iopubSeen > seen) return s;
      await new Promise((r) => setTimeout(r, NUDGE_EVERY_MS));
      if (s.iopubSeen > seen) return s;
      answered = false;
    }
    s.close();
    throw new Error(`the kernel did not answer on ZeroMQ within ${timeoutMs} ms`);
  }

  async execute(code: string, timeoutMs: number): Promise<ExecResult> {
    const { msgId, parts } = executeRequest(code, this.session);
    return this.request(new Pending(msgId, timeoutMs), parts);
  }

  async kernelInfo(timeoutMs: number): Promise<number> {
    const { msgId, parts } = request('kernel_info_request', {}, this.session);
    const r = await this.request(new Pending(msgId, timeoutMs, true), parts);
    if (r.timedOut) throw new Error(`no kernel_info_reply within ${timeoutMs} ms`);
    return r.replyMs;
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.shell.close();
    this.iopub.close();
  }

  private async request(p: Pending, parts: Parts): Promise<ExecResult> {
    this.pending = p;
    await this.shell.send(encodeFrames(IDENTITY, this.signer, parts));
    const r = await p.done;
    if (this.pending === p) this.pending = undefined;
    return r;
  }

  private decode(frames: Buffer[]): Received | undefined {
    const m = decodeFrames(frames);
    if (m === undefined || !VERIFY || this.signer.verify(m)) return m;
    this.badSignatures++;
    return undefined;
  }

  private async pumpShell(): Promise<void> {
    try {
      for await (const frames of this.shell) {
        const m = this.decode(frames);
        const p = this.pending;
        if (m === undefined || p === undefined) continue;
        if (!msgTypeIn(m.header.toString('latin1')).endsWith('_reply')) continue;
        if (parentId(m) !== p.msgId) continue;
        p.onReply(JSON.parse(m.content.toString('utf8')) as Record<string, unknown>);
      }
    } catch (e) {
      if (!this.closed) process.stderr.write(`[bench] ZeroMQ receive failed: ${String(e)}\n`);
    }
  }

  private async pumpIopub(): Promise<void> {
    try {
      for await (const frames of this.iopub) {
        const m = this.decode(frames);
        if (m === undefined) continue;
        this.iopubSeen++;
        const type = msgTypeIn(m.header.toString('latin1'));
        if (type === 'stream') {
          if (this.pending) this.pending.streams++;
          continue;
        }
        if (type !== 'status' || !m.content.includes('"idle"')) continue;
        const parent = parentId(m);
        this.lastIdleParent = parent;
        if (this.pending && parent === this.pending.msgId) this.pending.onIdle();
      }
    } catch (e) {
      if (!this.closed) process.stderr.write(`[bench] ZeroMQ receive failed: ${String(e)}\n`);
    }
  }
}
