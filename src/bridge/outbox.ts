import type { Dealer } from 'zeromq';

/**
 * zeromq.js allows one pending send per socket. Sends that arrive while one is
 * pending wait here, in a queue bounded in messages, so a flood from clients
 * meets a refusal instead of growing memory without limit.
 */
export class Outbox {
  private queue: Buffer[][] = [];
  private head = 0;
  private sending = false;
  private closed = false;

  constructor(
    private readonly socket: Dealer,
    private readonly maxQueued: number,
  ) {
    this.onSent = this.onSent.bind(this);
    this.onFailed = this.onFailed.bind(this);
  }

  /** Queues or sends; false when the queue is full and the message was not taken. */
  push(frames: Buffer[]): boolean {
    if (this.closed) return false;
    if (!this.sending) {
      this.sending = true;
      this.socket.send(frames).then(this.onSent, this.onFailed);
      return true;
    }
    if (this.queue.length - this.head >= this.maxQueued) return false;
    this.queue.push(frames);
    return true;
  }

  get queued(): number {
    return this.queue.length - this.head;
  }

  close(): void {
    this.closed = true;
    this.queue = [];
    this.head = 0;
  }

  private next(): void {
    if (this.closed || this.head >= this.queue.length) {
      this.sending = false;
      this.queue = [];
      this.head = 0;
      return;
    }
    const frames = this.queue[this.head]!;
    this.queue[this.head++] = undefined as unknown as Buffer[];
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
    this.socket.send(frames).then(this.onSent, this.onFailed);
  }

  private onSent(): void {
    this.next();
  }

  private onFailed(): void {
    // The socket was closed under us (kernel shut down); what was queued is moot.
    this.next();
  }
}
