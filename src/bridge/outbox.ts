import type { Dealer } from 'zeromq';

/**
 * The client a queued message is counted against until ZeroMQ takes it. The
 * outboxes keep both counters; the owner only reads them.
 */
export interface InputOwner {
  /** Bytes of this owner's messages the outboxes hold (queued, not yet handed to ZeroMQ). */
  inputBytes: number;
  /** Outboxes this owner waits on to drain (it added to one past half its bound). */
  drainWaits: number;
  /** `inputBytes` or `drainWaits` went down: the owner may read its socket again. */
  inputReleased(): void;
}

export interface OutboxLimits {
  /** Bytes of client messages queued here (held, or waiting for the socket) before more are refused. */
  maxBytes: number;
  /** Client messages queued here before more are refused. */
  maxMessages: number;
  /**
   * Bytes of client messages sent that the kernel has not shown it handled
   * (0: no such window). Past it, messages wait here, where they count
   * against the bounds, instead of piling up in ZeroMQ and in the kernel.
   */
  window: number;
}

/**
 * What one kernel channel's DEALER still has to send. zeromq.js allows one
 * pending send per socket; sends that arrive meanwhile wait here, bounded in
 * bytes and in messages, so a flood from clients meets backpressure and then
 * a refusal instead of growing memory. While the kernel (re)starts, client
 * messages are held here (nothing sent during a restart is lost) and the
 * link's own requests (nudges, shutdown) go first.
 *
 * With a window (shell, control), bytes handed to ZeroMQ count until the
 * kernel shows it got past them: the link sends its own `kernel_info_request`
 * behind them (a probe), and a kernel handles a channel's requests in order,
 * so its reply means everything before it was handled. A probe goes out each
 * half window, so a kernel that keeps up always has work queued; a busy one
 * answers none, and then messages stop here, where they count against their
 * clients. This bounds what kgate leaves in ZeroMQ's queues and in the
 * kernel's, which count messages (1000 by default), not bytes.
 */
export class Outbox {
  private frames: Array<Buffer[] | undefined> = [];
  private sizes: number[] = [];
  private owners: Array<InputOwner | undefined> = [];
  private head = 0;
  /** The link's own messages: never held, never refused, sent before any queued client message. */
  private own: Buffer[][] = [];
  private sending = false;
  /** Bytes of client messages queued here. */
  private queuedBytes = 0;
  private held = true;
  private closed = false;
  /** Owners paused until this channel drains. */
  private waiting: InputOwner[] = [];
  /** Bytes of client messages handed to ZeroMQ, and how many of them the kernel has shown it handled. */
  private sentBytes = 0;
  private handledBytes = 0;
  /** `sentBytes` when the outstanding probe was queued; -1: none outstanding. */
  private probeAt = -1;

  constructor(
    private readonly socket: Dealer,
    private readonly limits: OutboxLimits,
    /** Queues a probe (an own request whose reply calls `probeAnswered`); needed with a window. */
    private readonly sendProbe?: () => void,
  ) {
    this.onSent = this.onSent.bind(this);
    this.onFailed = this.onFailed.bind(this);
  }

  /** Whether a client message of `size` bytes may be queued: always when nothing is, so one message larger than the bound still goes. */
  fits(size: number): boolean {
    const n = this.frames.length - this.head;
    if (n === 0) return true;
    return n < this.limits.maxMessages && this.queuedBytes + size <= this.limits.maxBytes;
  }

  /** Past half its bound (in bytes or in messages): clients adding to it are paused until it drains. */
  get congested(): boolean {
    return this.queuedBytes > this.limits.maxBytes / 2 || this.frames.length - this.head > this.limits.maxMessages / 2;
  }

  /** Queues a client message (after `fits`); the owner counts its bytes until ZeroMQ takes them. */
  push(frames: Buffer[], size: number, owner: InputOwner): void {
    if (this.closed) return;
    // The common case: nothing waits, so the message goes at once, counted against no one.
    if (!this.sending && !this.held && this.head === this.frames.length && this.windowOpen(size)) {
      this.start(frames, size);
      return;
    }
    owner.inputBytes += size;
    this.queuedBytes += size;
    this.frames.push(frames);
    this.sizes.push(size);
    this.owners.push(owner);
    if (!this.sending) this.next();
  }

  /** Sends a message of the link's own (nudge, probe, shutdown, interrupt): first in line, even while held. */
  pushOwn(frames: Buffer[]): void {
    if (this.closed) return;
    this.own.push(frames);
    if (!this.sending) this.next();
  }

  /** `owner` is paused until this channel drains below a quarter of its bound. */
  wait(owner: InputOwner): void {
    if (this.waiting.includes(owner)) return;
    this.waiting.push(owner);
    owner.drainWaits++;
  }

  /** The kernel is not ready (starting, restarting): client messages wait here. */
  hold(): void {
    this.held = true;
    // What was sent to the process before it went away will never be answered.
    this.sentBytes = this.handledBytes = 0;
    this.probeAt = -1;
  }

  /** The kernel is ready: client messages go out. */
  release(): void {
    this.held = false;
    if (!this.sending) this.next();
  }

  /** The probe's reply came: everything sent before the probe was handled. */
  probeAnswered(): void {
    if (this.probeAt < 0) return;
    this.handledBytes = Math.max(this.handledBytes, this.probeAt);
    this.probeAt = -1;
    if (!this.sending) this.next();
  }

  /** Drops the queued messages of `owner` (a client closed for flooding), releasing their bytes. */
  purge(owner: InputOwner): void {
    let freed = 0;
    let w = 0;
    const { frames, sizes, owners } = this;
    for (let r = this.head; r < frames.length; r++) {
      if (owners[r] === owner) {
        freed += sizes[r]!;
        continue;
      }
      frames[w] = frames[r];
      sizes[w] = sizes[r]!;
      owners[w] = owners[r];
      w++;
    }
    frames.length = sizes.length = owners.length = w;
    this.head = 0;
    if (freed > 0) this.release_(owner, freed);
  }

  close(): void {
    this.closed = true;
    this.frames = [];
    this.sizes = [];
    this.owners = [];
    this.own = [];
    this.head = 0;
    this.waiting = [];
  }

  private next(): void {
    if (this.closed) {
      this.sending = false;
      return;
    }
    const own = this.own.shift();
    if (own !== undefined) {
      this.sending = true;
      this.socket.send(own).then(this.onSent, this.onFailed);
      return;
    }
    const h = this.head;
    if (h >= this.frames.length) {
      this.sending = false;
      // Emptied: reuse the arrays rather than make new ones.
      if (h > 0) this.frames.length = this.sizes.length = this.owners.length = this.head = 0;
      return;
    }
    const size = this.sizes[h]!;
    if (this.held || !this.windowOpen(size)) {
      this.sending = false;
      // A full window waits for the kernel to get through what it has: the probe's reply resumes this.
      if (!this.held && this.probeAt < 0) this.probe();
      return;
    }
    const frames = this.frames[h]!;
    const owner = this.owners[h]!;
    this.frames[h] = undefined;
    this.owners[h] = undefined;
    this.head = h + 1;
    if (this.head > 1024 && this.head * 2 > this.frames.length) this.compact();
    this.start(frames, size);
    this.release_(owner, size);
  }

  private windowOpen(size: number): boolean {
    const window = this.limits.window;
    if (window === 0) return true;
    const inFlight = this.sentBytes - this.handledBytes;
    return inFlight === 0 || inFlight + size <= window;
  }

  /**
   * Hands a client message to ZeroMQ, which takes it at once unless its own
   * queue is full (then zeromq.js keeps it until there is room): from here it
   * counts as ZeroMQ's, bounded by the window, not against its client.
   */
  private start(frames: Buffer[], size: number): void {
    this.sending = true;
    this.socket.send(frames).then(this.onSent, this.onFailed);
    const window = this.limits.window;
    if (window > 0) {
      this.sentBytes += size;
      if (this.probeAt < 0 && this.sentBytes - this.handledBytes >= window / 2) this.probe();
    }
  }

  private probe(): void {
    this.probeAt = this.sentBytes;
    this.sendProbe?.();
  }

  private compact(): void {
    this.frames = this.frames.slice(this.head);
    this.sizes = this.sizes.slice(this.head);
    this.owners = this.owners.slice(this.head);
    this.head = 0;
  }

  private release_(owner: InputOwner, size: number): void {
    this.queuedBytes -= size;
    owner.inputBytes -= size;
    if (this.waiting.length > 0 && this.queuedBytes <= this.limits.maxBytes / 4 && this.frames.length - this.head <= this.limits.maxMessages / 4) {
      const waiting = this.waiting;
      this.waiting = [];
      for (const o of waiting) {
        o.drainWaits--;
        if (o !== owner) o.inputReleased();
      }
    }
    owner.inputReleased();
  }

  private onSent(): void {
    this.next();
  }

  private onFailed(): void {
    // The socket was closed under us (kernel shut down); what was queued is moot.
    this.onSent();
  }
}
