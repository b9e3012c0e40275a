/**
 * jupyter_server's iopub rate limit, offered as an option (off by default):
 * over a sliding window, count the kernel's iopub messages (all but status,
 * comm_open and execute_input) and the bytes of its stream messages; past
 * either limit, stop relaying them and tell the clients once with a stderr
 * stream on the cell that is running; resume below 80 % of the limit; start
 * afresh whenever the kernel goes idle (so "Run All" does not trip it).
 *
 * jupyter_server does this per WebSocket. kgate's clients of one kernel all
 * see the same iopub, so the decision is taken once per kernel message.
 */
import { MemberNames, scanMembers } from './json-scan.js';
import { messageBytes, type WireMessage } from './wire.js';

export interface RateLimits {
  /** Messages per second; 0 turns the message limit off. */
  msgsPerSec: number;
  /** Stream bytes per second; 0 turns the data limit off. */
  bytesPerSec: number;
  windowSec: number;
}

export const Verdict = {
  Pass: 0,
  Drop: 1,
  /** Drop, and tell the clients the message limit was passed. */
  DropNoticeMsgs: 2,
  /** Drop, and tell the clients the data limit was passed. */
  DropNoticeData: 3,
} as const;
export type Verdict = (typeof Verdict)[keyof typeof Verdict];

const EXEMPT = new Set(['status', 'comm_open', 'execute_input']);

const MSG_TYPE = new MemberNames(['msg_type']);

/** The value of the header's top-level `msg_type`, without parsing the rest (nor allocating per member). */
export function msgTypeOf(header: Buffer): string | undefined {
  try {
    const [start, end] = scanMembers(header, MSG_TYPE) as [number, number];
    if (start < 0 || header[start] !== 0x22) return undefined;
    return JSON.parse(header.toString('utf8', start, end)) as string;
  } catch {
    return undefined;
  }
}

export class IopubRateLimiter {
  /** Expiry times (ms) and byte counts of the messages in the window, as a ring of two arrays. */
  private expiry: number[] = [];
  private bytes: number[] = [];
  private head = 0;
  private msgCount = 0;
  private byteCount = 0;
  private msgsExceeded = false;
  private dataExceeded = false;

  constructor(readonly limits: RateLimits) {}

  admit(m: WireMessage, now: number): Verdict {
    const type = msgTypeOf(m.header);
    if (type === 'status') {
      if (m.content.includes('"idle"')) this.reset();
      return Verdict.Pass;
    }
    if (type === undefined || EXEMPT.has(type)) return Verdict.Pass;

    while (this.head < this.expiry.length && now >= this.expiry[this.head]!) {
      this.msgCount--;
      this.byteCount -= this.bytes[this.head]!;
      this.head++;
    }
    if (this.head > 1024 && this.head * 2 > this.expiry.length) {
      this.expiry = this.expiry.slice(this.head);
      this.bytes = this.bytes.slice(this.head);
      this.head = 0;
    }

    const size = type === 'stream' ? messageBytes(m) : 0;
    const { msgsPerSec, bytesPerSec, windowSec } = this.limits;
    const msgRate = (this.msgCount + 1) / windowSec;
    const dataRate = (this.byteCount + size) / windowSec;
    let verdict: Verdict = Verdict.Pass;

    if (msgsPerSec > 0 && msgRate > msgsPerSec) {
      if (!this.msgsExceeded) {
        this.msgsExceeded = true;
        verdict = Verdict.DropNoticeMsgs;
      }
    } else if (this.msgsExceeded && msgRate < 0.8 * msgsPerSec) {
      this.msgsExceeded = false;
    }
    if (bytesPerSec > 0 && dataRate > bytesPerSec) {
      if (!this.dataExceeded) {
        this.dataExceeded = true;
        if (verdict === Verdict.Pass) verdict = Verdict.DropNoticeData;
      }
    } else if (this.dataExceeded && dataRate < 0.8 * bytesPerSec) {
      this.dataExceeded = false;
    }

    // A dropped message does not count against the window, as in jupyter_server.
    if (this.msgsExceeded || this.dataExceeded) return verdict === Verdict.Pass ? Verdict.Drop : verdict;
    this.msgCount++;
    this.byteCount += size;
    this.expiry.push(now + windowSec * 1000);
    this.bytes.push(size);
    return Verdict.Pass;
  }

  /** The text of the notice, naming kgate's options. */
  notice(verdict: typeof Verdict.DropNoticeMsgs | typeof Verdict.DropNoticeData): string {
    const { msgsPerSec, bytesPerSec, windowSec } = this.limits;
    const [what, option, value, unit] =
      verdict === Verdict.DropNoticeMsgs ? ['message', '--iopub-msg-rate-limit', msgsPerSec, 'msgs/sec'] : ['data', '--iopub-data-rate-limit', bytesPerSec, 'bytes/sec'];
    return (
      `IOPub ${what} rate exceeded.\n` +
      'kgate will temporarily stop sending output\n' +
      'to the client in order to avoid crashing it.\n' +
      `To change this limit, start kgate with ${option}.\n\n` +
      'Current values:\n' +
      `${option}=${value} (${unit})\n` +
      `--rate-limit-window=${windowSec} (secs)\n`
    );
  }

  private reset(): void {
    this.expiry = [];
    this.bytes = [];
    this.head = 0;
    this.msgCount = 0;
    this.byteCount = 0;
    this.msgsExceeded = false;
    this.dataExceeded = false;
  }
}
