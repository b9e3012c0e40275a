/**
 * Bounded replay on reconnect. When a client's socket closes, what the kernel
 * sends for that client's session (all iopub, and replies addressed to it) is
 * kept, up to a byte bound and a time bound. A reconnect with the same
 * session_id gets it replayed in order before live traffic. Past either bound
 * the kept messages are dropped and, on reconnect, the client is told plainly
 * that output was lost. (jupyter_server keeps such a buffer without bound.)
 *
 * Memory is bounded three ways: per session (`maxBytes`), per kernel
 * (`maxSessions`, `maxKernelBytes`) and for the whole gateway (one
 * ReplayBudget that every kernel's store draws on). Past the kernel's or the
 * gateway's bound, the sessions parked first (of that kernel, or of any
 * kernel) are given up first.
 *
 * The sessions of one kernel share one log: an iopub message is kept once
 * however many sessions are parked (the bytes are what is held, and what is
 * counted), and each session is a position in the log. A session replays the
 * iopub messages from its position on and the replies addressed to it. The
 * log starts at the oldest session's position, so giving that session up is
 * what frees memory.
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

/** Why a session's output was lost, for the notice it gets on reconnect. */
type LossReason = 'session' | 'sessions' | 'kernel' | 'total';

/** A disconnected session being kept for its reconnect. */
interface Parked {
  readonly key: string;
  readonly store: ReplayStore;
  /** Its position in the store's log when it parked: it replays from here. */
  readonly start: number;
  /** The store's running total of iopub bytes when it parked. */
  readonly iopubAtPark: number;
  /** Bytes of replies addressed to it, and their log positions (freed when it goes). */
  ownBytes: number;
  readonly own: number[];
  /** The parent and log position of its latest reply (-1: none). */
  lastOwnParent: Buffer | undefined;
  lastOwnAt: number;
  readonly timer: NodeJS.Timeout;
}

/**
 * The gateway-wide bound on replay (`--replay-total-bytes`): every kernel's
 * ReplayStore draws on one budget, and past it the oldest disconnected
 * session of any kernel is given up first.
 */
export class ReplayBudget {
  private used = 0;
  /** Every parked session of every kernel, oldest first. */
  private readonly sessions = new Set<Parked>();

  constructor(readonly maxBytes: number) {}

  /** Bytes kept by every kernel's store. */
  get usedBytes(): number {
    return this.used;
  }

  /** @internal A store keeps or lets go of `bytes`. */
  add(bytes: number): void {
    this.used += bytes;
  }

  /** @internal */
  track(s: Parked): void {
    this.sessions.add(s);
  }

  /** @internal */
  untrack(s: Parked): void {
    this.sessions.delete(s);
  }

  /** @internal Gives up the oldest sessions of any kernel until the total fits. */
  enforce(): void {
    while (this.used > this.maxBytes) {
      const oldest = this.sessions.values().next().value as Parked | undefined;
      if (oldest === undefined) return;
      oldest.store.evict(oldest, 'total');
    }
  }
}

/** Sessions given up (their messages dropped) remembered so a late reconnect is told. */
const MAX_LOST_MARKERS = 1000;
/** The log's trimmed head is compacted once it passes this many entries and half the log. */
const COMPACT_AFTER = 1024;

interface LostMarker {
  /** The iopub count when the session was given up: later output was lost too. */
  iopubSeq: number;
  /** Kept messages were dropped. */
  dropped: boolean;
  /** The request the last dropped output answered, so the notice shows on that cell. */
  parent: Buffer | undefined;
  /** A notice of its own (output lost while no gateway held the link, or past a bound other than the session's). */
  text?: string | undefined;
}

/** What a reconnecting session gets: messages to replay, or a notice that output was lost. */
export type Resumption = { replay: Array<[Channel, MessageParts]> } | { lost: { parent: Buffer | undefined; text?: string | undefined } } | undefined;

export class ReplayStore {
  /** Parked sessions in the order they parked: the first is the oldest. */
  private readonly parked = new Map<string, Parked>();
  private readonly lost = new Map<string, LostMarker>();
  private iopubSeq = 0;
  /** The request the latest iopub message answered: where to show a loss nothing was kept of. */
  private lastParent: Buffer | undefined;

  // The log, as parallel arrays from `head`; entry i is at position `shift + i`.
  private parts: Array<MessageParts | undefined> = [];
  private channels: Channel[] = [];
  /** The session a reply is for; undefined: iopub, for every session. */
  private keys: Array<string | undefined> = [];
  private sizes: number[] = [];
  private head = 0;
  private shift = 0;
  /** Bytes of the log's live entries. */
  private logBytes = 0;
  /** Running total of the iopub bytes logged, and the position of the latest. */
  private iopubBytes = 0;
  private lastIopubAt = -1;

  constructor(readonly limits: ReplayLimits) {
    this.onTimeout = this.onTimeout.bind(this);
  }

  get enabled(): boolean {
    return this.limits.maxBytes > 0;
  }

  /** Bytes this kernel's store keeps. */
  get keptBytes(): number {
    return this.logBytes;
  }

  /** A session's socket closed: start keeping what the kernel sends it. */
  park(key: string): void {
    if (!this.enabled || this.parked.has(key)) return;
    this.lost.delete(key);
    if (this.parked.size >= this.limits.maxSessions) this.evict(this.oldest()!, 'sessions');
    const timer = setTimeout(this.onTimeout, this.limits.maxMs, key);
    timer.unref();
    const s: Parked = { key, store: this, start: this.end, iopubAtPark: this.iopubBytes, ownBytes: 0, own: [], lastOwnParent: undefined, lastOwnAt: -1, timer };
    this.parked.set(key, s);
    this.limits.budget.track(s);
  }

  /** An iopub message: every parked session gets it (kept once). */
  iopub(m: MessageParts): void {
    this.iopubSeq++;
    this.lastParent = m.parent;
    if (this.parked.size === 0) return;
    const size = messageBytes(m);
    this.lastIopubAt = this.end;
    this.append(undefined, 'iopub', m, size);
    this.iopubBytes += size;
    // The oldest session has kept the most iopub: it passes its bound first.
    for (let s = this.oldest(); s !== undefined && this.bytesOf(s) > this.limits.maxBytes; s = this.oldest()) this.giveUp(s, 'session', m.parent);
    this.enforce();
  }

  /** A reply for a session without a client; false when that session is not parked either. */
  reply(key: string, channel: Channel, m: MessageParts): boolean {
    const s = this.parked.get(key);
    if (!s) return false;
    const size = messageBytes(m);
    s.lastOwnAt = this.end;
    s.lastOwnParent = m.parent;
    s.ownBytes += size;
    s.own.push(this.end);
    this.append(key, channel, m, size);
    if (this.bytesOf(s) > this.limits.maxBytes) this.giveUp(s, 'session', m.parent);
    this.enforce();
    return true;
  }

  /** A session reconnects: what to replay, or that output was lost, or nothing. */
  resume(key: string): Resumption {
    const s = this.parked.get(key);
    if (s) {
      // A session that passed its bound through its own replies while an older one was kept is given up now.
      if (this.bytesOf(s) > this.limits.maxBytes) {
        this.giveUp(s, 'session', undefined);
      } else {
        const replay = this.collect(s);
        this.remove(s);
        return replay.length > 0 ? { replay } : undefined;
      }
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
      this.remember(key, { iopubSeq: this.iopubSeq, dropped: true, parent: undefined, text });
    }
  }

  /** The sessions being kept for their reconnect. */
  parkedKeys(): IterableIterator<string> {
    return this.parked.keys();
  }

  clear(): void {
    for (const s of this.parked.values()) {
      clearTimeout(s.timer);
      this.limits.budget.untrack(s);
    }
    this.parked.clear();
    this.lost.clear();
    this.trim();
  }

  /** @internal Gives up `s` for a bound of the kernel or the gateway (ReplayBudget calls this). */
  evict(s: Parked, reason: LossReason): void {
    this.giveUp(s, reason, undefined);
  }

  private get end(): number {
    return this.shift + this.parts.length;
  }

  private oldest(): Parked | undefined {
    return this.parked.values().next().value as Parked | undefined;
  }

  /** What a session would replay, in bytes: the iopub since it parked and its own replies. */
  private bytesOf(s: Parked): number {
    return this.iopubBytes - s.iopubAtPark + s.ownBytes;
  }

  private append(key: string | undefined, channel: Channel, m: MessageParts, size: number): void {
    this.parts.push(m);
    this.channels.push(channel);
    this.keys.push(key);
    this.sizes.push(size);
    this.logBytes += size;
    this.limits.budget.add(size);
  }

  /**
   * Past the kernel's bound, then the gateway's, the oldest sessions go first;
   * each is told on the cell of the latest output kept for it (the message
   * that passed the bound may be another session's).
   */
  private enforce(): void {
    for (let s = this.oldest(); s !== undefined && this.logBytes > this.limits.maxKernelBytes; s = this.oldest()) this.giveUp(s, 'kernel', undefined);
    this.limits.budget.enforce();
  }

  private collect(s: Parked): Array<[Channel, MessageParts]> {
    const out: Array<[Channel, MessageParts]> = [];
    for (let i = Math.max(this.head, s.start - this.shift); i < this.parts.length; i++) {
      const m = this.parts[i];
      const k = this.keys[i];
      if (m !== undefined && (k === undefined || k === s.key)) out.push([this.channels[i]!, m]);
    }
    return out;
  }

  private onTimeout(key: string): void {
    const s = this.parked.get(key);
    if (s) this.giveUp(s, 'session', undefined);
  }

  /** Drops what was kept for `s`, remembering that it was (`overflow`: the message that did not fit). */
  private giveUp(s: Parked, reason: LossReason, overflow: Buffer | undefined): void {
    const dropped = this.bytesOf(s) > 0 || overflow !== undefined;
    const parent = overflow ?? this.lastParentOf(s);
    this.remove(s);
    this.remember(s.key, { iopubSeq: this.iopubSeq, dropped, parent, text: reason === 'session' ? undefined : lostOutputNotice(this.limits, reason) });
  }

  /** The request the latest message kept for `s` answered. */
  private lastParentOf(s: Parked): Buffer | undefined {
    if (this.lastIopubAt >= s.start && this.lastIopubAt > s.lastOwnAt) return this.lastParent;
    return s.lastOwnParent;
  }

  private remember(key: string, marker: LostMarker): void {
    if (this.lost.size >= MAX_LOST_MARKERS) this.lost.delete(this.lost.keys().next().value as string);
    this.lost.set(key, marker);
  }

  private remove(s: Parked): void {
    clearTimeout(s.timer);
    const wasOldest = this.oldest() === s;
    this.parked.delete(s.key);
    this.limits.budget.untrack(s);
    // Its replies are no one else's: free them now, wherever they are in the log.
    let freed = 0;
    for (const at of s.own) {
      const i = at - this.shift;
      if (i < this.head || this.parts[i] === undefined) continue;
      freed += this.sizes[i]!;
      this.sizes[i] = 0;
      this.parts[i] = undefined;
    }
    this.logBytes -= freed;
    this.limits.budget.add(-freed);
    if (wasOldest || this.parked.size === 0) this.trim();
  }

  /** Drops the log's entries before the oldest parked session's position. */
  private trim(): void {
    const oldest = this.oldest();
    if (oldest === undefined) {
      this.limits.budget.add(-this.logBytes);
      this.logBytes = 0;
      this.shift = this.end;
      this.parts.length = this.channels.length = this.keys.length = this.sizes.length = this.head = 0;
      return;
    }
    const upTo = oldest.start - this.shift;
    let freed = 0;
    let i = this.head;
    for (; i < upTo; i++) {
      freed += this.sizes[i]!;
      this.parts[i] = undefined;
      this.keys[i] = undefined;
    }
    this.head = i;
    this.logBytes -= freed;
    this.limits.budget.add(-freed);
    if (this.head > COMPACT_AFTER && this.head * 2 > this.parts.length) {
      this.parts = this.parts.slice(this.head);
      this.channels = this.channels.slice(this.head);
      this.keys = this.keys.slice(this.head);
      this.sizes = this.sizes.slice(this.head);
      this.shift += this.head;
      this.head = 0;
    }
  }
}

/** The notice a reconnecting client gets when what was kept for it had to be dropped. */
export function lostOutputNotice(limits: ReplayLimits, reason: LossReason = 'session'): string {
  const mib = (n: number): string => (n / (1024 * 1024)).toFixed(n % (1024 * 1024) === 0 ? 0 : 1);
  const lead = '[kgate] Output sent while this client was disconnected was lost: ';
  switch (reason) {
    case 'sessions':
      return `${lead}kgate keeps output for at most ${limits.maxSessions} disconnected clients of a kernel, and gives up the oldest first (--replay-sessions).\n`;
    case 'kernel':
      return `${lead}kgate keeps at most ${mib(limits.maxKernelBytes)} MiB for the disconnected clients of a kernel, and gives up the oldest first (--replay-kernel-bytes).\n`;
    case 'total':
      return `${lead}kgate keeps at most ${mib(limits.budget.maxBytes)} MiB for the disconnected clients of all kernels, and gives up the oldest first (--replay-total-bytes).\n`;
    default:
      return (
        `${lead}it passed what kgate keeps ` + `for a disconnected client (${mib(limits.maxBytes)} MiB, ${Math.round(limits.maxMs / 1000)} s; --replay-bytes, --replay-seconds).\n`
      );
  }
}
