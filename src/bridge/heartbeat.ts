import { Dealer } from 'zeromq';
import './zmq-context.js';

export interface HeartbeatOptions {
  intervalMs: number;
  /** Declared dead after this long without an echo. */
  timeoutMs: number;
}

const EMPTY = Buffer.alloc(0);

/**
 * Pings the kernel's heartbeat port. A DEALER (not jupyter_client's REQ) so a
 * lost echo never wedges the socket; the empty frame makes it talk to REP
 * kernels and to ipykernel's ROUTER echo alike.
 */
export class Heartbeat {
  private socket: Dealer | undefined;
  private timer: NodeJS.Timeout | undefined;
  private lastEcho = 0;
  private fired = false;

  constructor(
    private readonly url: string,
    private readonly options: HeartbeatOptions,
    private readonly onDead: () => void,
  ) {
    this.tick = this.tick.bind(this);
  }

  start(): void {
    this.stop();
    const socket = new Dealer({ linger: 0, sendHighWaterMark: 16 });
    socket.connect(this.url);
    this.socket = socket;
    this.lastEcho = Date.now();
    this.fired = false;
    void this.receive(socket);
    this.timer = setInterval(this.tick, this.options.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.socket?.close();
    this.socket = undefined;
  }

  private async receive(socket: Dealer): Promise<void> {
    try {
      for await (const _ of socket) this.lastEcho = Date.now();
    } catch {
      // closed
    }
  }

  private tick(): void {
    const socket = this.socket;
    if (!socket || this.fired) return;
    if (Date.now() - this.lastEcho > this.options.timeoutMs) {
      this.fired = true;
      this.onDead();
      return;
    }
    if (socket.writable) socket.send([EMPTY, Buffer.from('ping')]).catch(() => undefined);
  }
}
