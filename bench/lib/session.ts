/**
 * What every benchmark client does the same way, whatever it talks through
 * (ZeroMQ, kgate, jupyter server): run one request at a time and account for
 * what comes back. A client classifies each kernel message by a regex on its
 * header bytes and parses only the small ones (replies, status), so a client
 * costs the same on every target and never parses a 64 KiB stream message.
 */
import { request, type Parts } from './wire-codec.js';

export interface ExecResult {
  /** From send to `execute_reply`, ms. */
  replyMs: number;
  /** From send to both `execute_reply` and iopub `status: idle` having arrived, ms. */
  doneMs: number;
  /** iopub `stream` messages that arrived during the request. */
  streams: number;
  /** The reply's content (parsed: replies are small). */
  reply: Record<string, unknown> | undefined;
  timedOut: boolean;
  /** The WebSocket close code when the socket closed during the request. */
  closedWith: number | undefined;
}

export interface KernelSession {
  /** Sends `execute_request` with `code` and waits for its reply and idle (bounded). */
  execute(code: string, timeoutMs: number): Promise<ExecResult>;
  /** Sends `kernel_info_request` on shell and answers the ms to its reply (bounded; rejects on timeout). */
  kernelInfo(timeoutMs: number): Promise<number>;
  /** The msg_id of the last request whose `status: idle` this client saw. */
  readonly lastIdleParent: string | undefined;
  /** Every iopub message seen, for watchers. */
  readonly iopubSeen: number;
  readonly isOpen: boolean;
  close(): void;
}

/** `"msg_type":"x"`, with or without the space Python's json.dumps puts after the colon. */
const MSG_TYPE = /"msg_type":\s?"([a-z_]+)"/;

export function msgTypeIn(text: string): string {
  return MSG_TYPE.exec(text)?.[1] ?? '';
}

export function executeRequest(code: string, session: string): { msgId: string; parts: Parts } {
  return request('execute_request', { code, silent: false, store_history: true, user_expressions: {}, allow_stdin: false, stop_on_error: true }, session);
}

/**
 * One request in flight on a session, and the accounting of what came back.
 * Sessions feed it; it resolves once reply and idle are both in, or on a
 * timeout, or when the socket closes.
 */
export class Pending {
  readonly t0 = performance.now();
  replyMs = -1;
  idleMs = -1;
  streams = 0;
  reply: Record<string, unknown> | undefined;
  readonly done: Promise<ExecResult>;
  private resolve!: (r: ExecResult) => void;
  private readonly timer: NodeJS.Timeout;
  private settled = false;

  constructor(
    readonly msgId: string,
    timeoutMs: number,
    /** `kernel_info` waits for the reply only. */
    private readonly replyOnly = false,
  ) {
    this.done = new Promise((r) => {
      this.resolve = r;
    });
    this.timer = setTimeout(() => this.finish(true, undefined), timeoutMs);
  }

  onReply(content: Record<string, unknown> | undefined): void {
    if (this.replyMs >= 0) return;
    this.replyMs = performance.now() - this.t0;
    this.reply = content;
    if (this.replyOnly || this.idleMs >= 0) this.finish(false, undefined);
  }

  onIdle(): void {
    if (this.idleMs >= 0) return;
    this.idleMs = performance.now() - this.t0;
    if (this.replyMs >= 0) this.finish(false, undefined);
  }

  onClose(code: number): void {
    this.finish(false, code);
  }

  private finish(timedOut: boolean, closedWith: number | undefined): void {
    if (this.settled) return;
    this.settled = true;
    clearTimeout(this.timer);
    const now = performance.now() - this.t0;
    this.resolve({
      replyMs: this.replyMs >= 0 ? this.replyMs : now,
      doneMs: this.replyMs >= 0 && this.idleMs >= 0 ? Math.max(this.replyMs, this.idleMs) : now,
      streams: this.streams,
      reply: this.reply,
      timedOut,
      closedWith,
    });
  }
}
