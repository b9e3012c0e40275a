/**
 * Bounded replay on reconnect. When a client's socket closes, what the kernel
 * sends for that client's session (all iopub, and replies addressed to it) is
 * kept, up to a byte bound and a time bound. A reconnect with the same
 * session_id gets it replayed in order before live traffic. Past either bound
 * the kept messages are dropped and, on reconnect, the client is told plainly
 * that output was lost. (jupyter_server keeps such a buffer without bound.)
 */
import { messageBytes, type Channel, type MessageParts } from './wire.js';

export interface ReplayLimits {
  /** Bytes kept per disconnected session; 0 turns replay off. */
  maxBytes: number;
  /** How long a disconnected session's messages are kept. */
  maxMs: number;
  /** Disconnected sessions kept per kernel; the oldest is given up past this. */
  maxSessions: number;
  /** Bytes kept for all disconnected sessions of one kernel; the oldest session is given up past this. */
  maxKernelBytes: number;
  /** What every kernel's replay of the gateway draws on: one per gateway process. */
  budget: ReplayBudget;
}

/**
 * The gateway-wide bound on replay (`--replay-total-bytes`): every kernel's
 * ReplayStore draws on one budget, and past it the oldest disconnected
 * session of any kernel is given up first.
 */
export class ReplayBudget {
  constructor(readonly maxBytes: number) {}
}

/** Sessions given up (their messages dropped) remembered so a late reconnect is told. */
const MAX_LOST_MARKERS = 1000;

interface Parked {
  items: Array<[Channel, MessageParts]>;
  bytes: number;
  timer: NodeJS.Timeout;
}

interface LostMarker {
  /** The iopub count when the session was given up: later output was lost too. */
  iopubSeq: number;
  /** Kept messages were dropped. */
  dropped: boolean;
  /** The request the last dropped output answered, so the notice shows on that cell. */
  parent: Buffer | undefined;
  /** A notice of its own (output lost while no gateway held the link), instead of the bound's. */
  text?: string | undefined;
}

/** What a reconnecting session gets: messages to replay, or a notice that output was lost. */
export type Resumption = { replay: Array<[Channel, MessageParts]> } | { lost: { parent: Buffer | undefined; text?: string | undefined } } | undefined;

export class ReplayStore {
  private readonly parked = new Map<string, Parked>();
  private readonly lost = new Map<string, LostMarker>();
  private iopubSeq = 0;
  /** The request the latest iopub message answered: where to show a loss nothing was kept of. */
  private lastParent: Buffer | undefined;

  constructor(readonly limits: ReplayLimits) {}

  get enabled(): boolean {
    return this.limits.maxBytes > 0;
  }

  /** A session's socket closed: start keeping what the kernel sends it. */
  park(key: string): void {
    if (!this.enabled || this.parked.has(key)) return;
    this.lost.delete(key);
    if (this.parked.size >= this.limits.maxSessions) {
      const oldest = this.parked.keys().next().value as string;
      this.giveUp(oldest);
    }
    const timer = setTimeout(() => this.giveUp(key), this.limits.maxMs);
    timer.unref();
    this.parked.set(key, { items: [], bytes: 0, timer });
  }

  /** An iopub message: every parked session gets it. */
  iopub(m: MessageParts): void {
    this.iopubSeq++;
    this.lastParent = m.parent;
    if (this.parked.size === 0) return;
    for (const key of this.parked.keys()) this.keep(key, 'iopub', m);
  }

  /** A reply for a session without a client; false when that session is not parked either. */
  reply(key: string, channel: Channel, m: MessageParts): boolean {
    if (!this.parked.has(key)) return false;
    this.keep(key, channel, m);
    return true;
  }

  /** A session reconnects: what to replay, or that output was lost, or nothing. */
  resume(key: string): Resumption {
    const p = this.parked.get(key);
    if (p) {
      clearTimeout(p.timer);
      this.parked.delete(key);
      return p.items.length > 0 ? { replay: p.items } : undefined;
    }
    const marker = this.lost.get(key);
    if (!marker) return undefined;
    this.lost.delete(key);
    if (marker.text !== undefined) return { lost: { parent: marker.parent, text: marker.text } };
    if (marker.dropped) return { lost: { parent: marker.parent } };
    // Output came after the session was given up, and none of it was kept.
    return this.iopubSeq > marker.iopubSeq ? { lost: { parent: this.lastParent } } : undefined;
  }

  /** Sessions whose output was lost elsewhere (before this gateway held the link): each reconnect is told `text`. */
  markLost(keys: readonly string[], text: string): void {
    for (const key of keys) {
      if (this.parked.has(key)) continue;
      if (this.lost.size >= MAX_LOST_MARKERS) this.lost.delete(this.lost.keys().next().value as string);
      this.lost.set(key, { iopubSeq: this.iopubSeq, dropped: true, parent: undefined, text });
    }
  }

  /** The sessions being kept for their reconnect. */
  parkedKeys(): IterableIterator<string> {
    return this.parked.keys();
  }

  clear(): void {
    for (const p of this.parked.values()) clearTimeout(p.timer);
    this.parked.clear();
    this.lost.clear();
  }

  private keep(key: string, channel: Channel, m: MessageParts): void {
    const p = this.parked.get(key)!;
    const size = messageBytes(m);
    if (p.bytes + size > this.limits.maxBytes) {
      this.giveUp(key, m.parent);
      return;
    }
    p.items.push([channel, m]);
    p.bytes += size;
  }

  /** Drops what was kept for `key`, remembering that it was (`overflow`: the message that did not fit). */
  private giveUp(key: string, overflow?: Buffer): void {
    const p = this.parked.get(key);
    if (!p) return;
    clearTimeout(p.timer);
    this.parked.delete(key);
    if (this.lost.size >= MAX_LOST_MARKERS) this.lost.delete(this.lost.keys().next().value as string);
    const dropped = p.items.length > 0 || overflow !== undefined;
    this.lost.set(key, { iopubSeq: this.iopubSeq, dropped, parent: overflow ?? p.items.at(-1)?.[1].parent });
  }
}

/** The notice a reconnecting client gets when what was kept for it had to be dropped. */
export function lostOutputNotice(limits: ReplayLimits): string {
  const mib = (limits.maxBytes / (1024 * 1024)).toFixed(limits.maxBytes % (1024 * 1024) === 0 ? 0 : 1);
  return (
    '[kgate] Output sent while this client was disconnected was lost: it passed what kgate keeps ' +
    `for a disconnected client (${mib} MiB, ${Math.round(limits.maxMs / 1000)} s; --replay-bytes, --replay-seconds).\n`
  );
}
