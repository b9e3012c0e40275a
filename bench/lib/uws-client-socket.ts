/**
 * The ClientSocket of a uWebSockets.js engine, measured against ws by
 * bench/tools/ws-engines.ts (issue 16). uWS is not a dependency of kgate: its
 * types are restated here, as far as this adapter uses them, and the module is
 * loaded (optionally) by whoever builds the uWS App.
 *
 * Two things differ from ws and are handled here:
 * - uWS writes at each `send` unless inside `ws.cork(cb)`, which is
 *   synchronous. To keep ws-send.ts's one writev per burst, frames sent in an
 *   event-loop turn are queued per socket and sent in one cork at the check
 *   phase (one setImmediate per turn for all sockets, none per message).
 * - A uWS WebSocket must not be touched after its close handler ran (it
 *   throws), and `end`/`close` run that handler synchronously: `open` guards
 *   every call.
 */
import type { ClientSocket, ClientSocketEvents } from '../../src/bridge/client-socket.js';
import type { PreparedFrame } from '../../src/bridge/ws-send.js';

/** The part of uWS's `WebSocket<UserData>` this adapter calls. */
export interface UwsWebSocket {
  send(message: Uint8Array, isBinary?: boolean, compress?: boolean): number;
  sendFirstFragment(message: Uint8Array, isBinary?: boolean, compress?: boolean): boolean;
  sendFragment(message: Uint8Array, compress?: boolean): boolean;
  sendLastFragment(message: Uint8Array, compress?: boolean): boolean;
  getBufferedAmount(): number;
  end(code?: number, shortMessage?: string): void;
  close(): void;
  cork(cb: () => void): unknown;
  /** Only in newer uWS releases; without them reading cannot be stopped (see `pause`). */
  pause?(): void;
  resume?(): void;
}

const dirty: UwsClientSocket[] = [];
let flushScheduled = false;
/** The socket whose queue the cork callback sends: one module-level function, no closure per flush. */
let flushing: UwsClientSocket | undefined;

function sendQueued(): void {
  flushing!.sendQueued();
}

function corkAndSend(s: UwsClientSocket, ws: UwsWebSocket): void {
  flushing = s;
  try {
    ws.cork(sendQueued);
  } finally {
    flushing = undefined;
  }
}

function flushAll(): void {
  flushScheduled = false;
  for (const s of dirty) s.flush();
  dirty.length = 0;
}

function frameLength(frame: PreparedFrame): number {
  let n = 0;
  for (const f of frame.fragments) n += f.length;
  return n;
}

export class UwsClientSocket implements ClientSocket {
  private events: ClientSocketEvents | undefined;
  private open = true;
  private closing = false;
  private readonly queue: PreparedFrame[] = [];
  private queuedBytes = 0;
  private paused = false;
  /**
   * Messages that came while paused, on a uWS without pause(): unbounded, unlike
   * ws, which stops reading the TCP socket. Input backpressure is not what the
   * benchmark measures; this only keeps the relay's order of events.
   */
  private held: Array<{ data: Buffer; isBinary: boolean }> = [];

  constructor(private readonly ws: UwsWebSocket) {}

  get isOpen(): boolean {
    return this.open && !this.closing;
  }

  get bufferedAmount(): number {
    return this.open ? this.ws.getBufferedAmount() + this.queuedBytes : this.queuedBytes;
  }

  send(frame: PreparedFrame): void {
    if (!this.isOpen) return;
    if (this.queue.length === 0) {
      dirty.push(this);
      if (!flushScheduled) {
        flushScheduled = true;
        setImmediate(flushAll);
      }
    }
    this.queue.push(frame);
    this.queuedBytes += frameLength(frame);
  }

  /** Sends what this turn queued, in one cork (one write). */
  flush(): void {
    if (this.queue.length === 0) return;
    if (!this.open) {
      this.dropQueue();
      return;
    }
    corkAndSend(this, this.ws);
  }

  /** Inside the cork: uWS copies each frame into its buffers, so the queue can go at once. */
  sendQueued(): void {
    const ws = this.ws;
    for (const frame of this.queue) {
      const fragments = frame.fragments;
      const last = fragments.length - 1;
      if (last === 0) {
        ws.send(fragments[0]!, frame.binary, false);
        continue;
      }
      ws.sendFirstFragment(fragments[0]!, frame.binary, false);
      for (let k = 1; k < last; k++) ws.sendFragment(fragments[k]!, false);
      ws.sendLastFragment(fragments[last]!, false);
    }
    this.dropQueue();
  }

  private dropQueue(): void {
    this.queue.length = 0;
    this.queuedBytes = 0;
  }

  pause(): void {
    if (this.paused || !this.open) return;
    this.paused = true;
    this.ws.pause?.();
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    if (this.open) this.ws.resume?.();
    const held = this.held;
    if (held.length === 0) return;
    this.held = [];
    for (const m of held) {
      if (this.paused) this.held.push(m);
      else this.events!.socketMessage(m.data, m.isBinary);
    }
  }

  close(code: number, reason: string): void {
    if (!this.isOpen) return;
    // What this turn queued goes out before the close frame, as with ws.
    this.flush();
    this.closing = true;
    this.ws.end(code, reason);
  }

  terminate(): void {
    if (this.open) this.ws.close();
  }

  listen(events: ClientSocketEvents): void {
    this.events = events;
  }

  /** From the behaviour's `message` handler: uWS lends the ArrayBuffer for the call only, so it is copied. */
  received(message: ArrayBuffer, isBinary: boolean): void {
    const data = Buffer.copyBytesFrom(new Uint8Array(message));
    if (this.paused && this.ws.pause === undefined) {
      this.held.push({ data, isBinary });
      return;
    }
    this.events!.socketMessage(data, isBinary);
  }

  /** From the behaviour's `close` handler; the uWS socket is invalid from here on. */
  closed(code: number): void {
    this.open = false;
    this.closing = true;
    this.dropQueue();
    this.held = [];
    this.events?.socketClose(code);
  }
}
