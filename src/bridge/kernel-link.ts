/**
 * One ZeroMQ link per kernel, shared by all of its clients: a SUB for iopub
 * fanned out to every client, and one DEALER each for shell, control and stdin.
 * A client is told apart by an identity frame placed before `<IDS|MSG>`; the
 * kernel's ROUTER echoes it on replies and `input_request`s, so they route back
 * without parsing anything. Shell and stdin share a routing id, as in
 * jupyter_client, because ipykernel sends `input_request` to the shell
 * requester's identity.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { Dealer, Subscriber } from 'zeromq';
import './zmq-context.js';
import type { ConnectionInfo } from '../provisioner/types.js';
import { IopubRateLimiter, Verdict, type RateLimits } from './iopub-rate-limit.js';
import { makeMessage } from './messages.js';
import { lostOutputNotice, ReplayStore, type ReplayLimits } from './replay.js';
import { Outbox, type InputOwner } from './outbox.js';
import { messageBytes, Signer, splitWire, toWire, type Channel, type InputChannel, type MessageParts, type WireMessage } from './wire.js';
import type { PreparedFrame } from './ws-send.js';
import { events, type LinkDropEvent } from '../events.js';

export type ExecutionState = 'starting' | 'idle' | 'busy' | 'restarting' | 'dead' | 'unknown';

/**
 * One kernel message's encodings, made at most once per protocol however many
 * clients receive it (null: it could not be encoded).
 */
export interface EncodeCache {
  json?: PreparedFrame | null;
  v1?: PreparedFrame | null;
}

/** What the link needs of a client: a key for its identity frame, a way to hand it messages, and its input counters. */
export interface LinkClient extends InputOwner {
  readonly identity: Buffer;
  /** `identity` as a latin1 string: the key of the routing map. */
  readonly identityKey: string;
  /** Hands the client a message; true when the client is behind (its unsent bytes are past half its bound). */
  deliver(channel: Channel, m: MessageParts, cache: EncodeCache): boolean;
  /** Whether the client has caught up enough for the link to read iopub again. */
  caughtUp(): boolean;
  close(code: number, reason: string): void;
}

export interface KernelLinkOptions {
  verifySignatures: boolean;
  /** Messages from clients held per kernel channel while the kernel (re)starts or does not read. */
  maxQueued: number;
  /**
   * Bytes of client messages held per kernel channel (all its clients together)
   * before ZeroMQ takes them; also what shell and control may have sent that the
   * kernel has not yet shown it handled (see Outbox).
   */
  maxKernelInputBytes: number;
  /** Bytes of one client's messages held before ZeroMQ takes them. */
  maxClientInputBytes: number;
  /** jupyter_server's iopub rate limit; undefined leaves it off. */
  iopubRateLimit?: RateLimits | undefined;
  /** Messages the iopub SUB may hold before the kernel's PUB starts dropping (ZeroMQ RCVHWM). */
  iopubHighWaterMark: number;
  /** What is kept for a client whose socket closed, for its reconnect. */
  replay: ReplayLimits;
  log: Logger;
  /** The kernel's id, for the events subscribers (metrics) receive. */
  kernelId?: string | undefined;
  /** What every link of the gateway relayed, counted for metrics (one per gateway). */
  counts?: RelayCounts | undefined;
}

/**
 * What a gateway's links relayed, as plain numbers that metrics read when
 * scraped: an increment per message on the hot path, nothing published, no
 * allocation. "in" is client to kernel (as the link takes it), "out" kernel
 * to clients (once per kernel message, however many clients it goes to).
 */
export class RelayCounts {
  shellInMessages = 0;
  shellInBytes = 0;
  controlInMessages = 0;
  controlInBytes = 0;
  stdinInMessages = 0;
  stdinInBytes = 0;
  iopubOutMessages = 0;
  iopubOutBytes = 0;
  shellOutMessages = 0;
  shellOutBytes = 0;
  controlOutMessages = 0;
  controlOutBytes = 0;
  stdinOutMessages = 0;
  stdinOutBytes = 0;
  /** Reconnecting sessions that got what was kept for them, and those told their output was lost. */
  replayResumed = 0;
  replayLost = 0;

  countIn(channel: InputChannel, bytes: number): void {
    if (channel === 'shell') {
      this.shellInMessages++;
      this.shellInBytes += bytes;
    } else if (channel === 'control') {
      this.controlInMessages++;
      this.controlInBytes += bytes;
    } else {
      this.stdinInMessages++;
      this.stdinInBytes += bytes;
    }
  }

  countReply(channel: InputChannel, bytes: number): void {
    if (channel === 'shell') {
      this.shellOutMessages++;
      this.shellOutBytes += bytes;
    } else if (channel === 'control') {
      this.controlOutMessages++;
      this.controlOutBytes += bytes;
    } else {
      this.stdinOutMessages++;
      this.stdinOutBytes += bytes;
    }
  }
}

/** What became of a client's message (`KernelLink.send`). */
export const Input = {
  /** Relayed, or queued to be. */
  Taken: 0,
  /** Queued; the client's socket is to stop being read until its input drains. */
  Pause: 1,
  /** Not taken: past the bounds (the client is closed with 1013), or the link is closed. */
  Refused: 2,
  /** Dropped as garbage the kernel would discard (an input_reply nothing asked for); the client stays. */
  Dropped: 3,
} as const;
export type Input = (typeof Input)[keyof typeof Input];

/**
 * ZeroMQ's own send queue per DEALER, in messages (its default is 1000, which
 * let 1000 messages of any size pile up in the gateway). Bytes are bounded
 * before ZeroMQ (the outboxes' windows and bounds); this bounds the count.
 */
const SEND_HIGH_WATER_MARK = 64;
/** input_requests counted per client: ipykernel asks one at a time, and a new one makes older ones moot. */
const MAX_INPUT_REQUESTS = 4;
/** Clients with input_requests outstanding, per kernel; past it the oldest are forgotten. */
const MAX_INPUT_CLIENTS = 1024;

/** The identity frame of the link's own requests (nudges, window probes, shutdown, interrupt). */
const LINK_IDENTITY = Buffer.from('kgate-link');
const LINK_KEY = LINK_IDENTITY.toString('latin1');
/**
 * Once the kernel answers but iopub is still silent (the SUB has not joined
 * yet), the nudge repeats at this pace; jupyter_server's 500 ms costs a start
 * up to half a second for nothing.
 */
const NUDGE_INTERVAL_MS = 100;
const NUDGE_RESEND_UNANSWERED_MS = 2000;
const NUDGE_MIN_GAP_MS = 5;
/** While every client is behind, how often to look whether one has caught up. */
const CATCH_UP_POLL_MS = 2;
/**
 * The link connects before the kernel has bound its ports, so the first
 * connects are refused. ZeroMQ's default 100 ms reconnect pace, or any
 * exponential backoff (20, 40, … 250 ms cost a steady ~250 ms per start,
 * measured), would add that much to every start; a refused connect to a port
 * not yet bound is one cheap RST, so the pace stays flat and short.
 */
const SOCKET_OPTIONS = { linger: 0, reconnectInterval: 10, reconnectMaxInterval: 0 };
const DEALER_OPTIONS = { ...SOCKET_OPTIONS, sendHighWaterMark: SEND_HIGH_WATER_MARK };

export function channelUrl(c: ConnectionInfo, port: number): string {
  return c.transport === 'ipc' ? `ipc://${c.ip}-${port}` : `tcp://${c.ip.includes(':') ? `[${c.ip}]` : c.ip}:${port}`;
}

/** The parent of a message about no request: an empty object. */
const NO_PARENT = Buffer.from('{}');

export class KernelLink {
  /** The parent of the last `busy` status (a client's request the kernel works on), until `idle`. */
  private busyWith: Buffer | undefined;
  /** The header of the last shell request a client sent: the one a kernel killed before it said `busy` was working on. */
  private lastShellRequest: Buffer | undefined;
  readonly session = randomBytes(16).toString('hex');
  executionState: ExecutionState = 'starting';
  lastActivity = Date.now();
  /** Counts of what was dropped, for metrics and tests. */
  readonly dropped = {
    badSignature: 0,
    malformed: 0,
    noClient: 0,
    /** Client messages refused past the input bounds (each costs the client its socket, 1013). */
    inputQueueFull: 0,
    rateLimited: 0,
    /** Client stdin messages with no input_request outstanding for that client (the kernel would discard them). */
    staleInput: 0,
    /** Messages a client sent after its socket began closing. */
    afterClose: 0,
  };

  private readonly signer: Signer;
  private readonly shell: Dealer;
  private readonly control: Dealer;
  private readonly stdin: Dealer;
  private readonly iopub: Subscriber;
  private readonly outboxes: Record<InputChannel, Outbox>;
  private readonly clients = new Map<string, LinkClient>();
  private readonly waiters = new Map<string, (m: WireMessage) => void>();
  /** input_requests the kernel sent each client (by identity key) that it has not answered yet. */
  private readonly inputRequests = new Map<string, number>();
  /** The outstanding window probe per channel (its msg_id). */
  private readonly probes: { shell: string | undefined; control: string | undefined } = { shell: undefined, control: undefined };
  private ready = false;
  private closed = false;
  private iopubSeen = false;
  private onIopubSeen: (() => void) | undefined;
  private readonly rateLimiter: IopubRateLimiter | undefined;
  private readonly replay: ReplayStore;
  /** Every client is behind: iopub reading pauses after the current message. */
  private allBehind = false;
  private readonly counts: RelayCounts;

  constructor(
    private conn: ConnectionInfo,
    private readonly options: KernelLinkOptions,
  ) {
    this.signer = new Signer(conn.key, conn.signature_scheme);
    // A routing id per link, not per gateway, so two gateways (or a restarted
    // one) can hold links to the same kernel at once. It must not start with 0.
    const routingId = `kg${randomBytes(8).toString('hex')}`;
    this.shell = new Dealer({ ...DEALER_OPTIONS, routingId });
    this.control = new Dealer({ ...DEALER_OPTIONS, routingId });
    this.stdin = new Dealer({ ...DEALER_OPTIONS, routingId });
    this.iopub = new Subscriber({ ...SOCKET_OPTIONS, receiveHighWaterMark: options.iopubHighWaterMark });
    this.rateLimiter = options.iopubRateLimit ? new IopubRateLimiter(options.iopubRateLimit) : undefined;
    this.replay = new ReplayStore(options.replay);
    this.counts = options.counts ?? new RelayCounts();
    this.onShellProbeReply = this.onShellProbeReply.bind(this);
    this.onControlProbeReply = this.onControlProbeReply.bind(this);
    const limits = { maxBytes: options.maxKernelInputBytes, maxMessages: options.maxQueued };
    // Shell and control answer requests in order, so a probe bounds what the kernel has queued;
    // stdin carries only replies to input_requests, which the link counts instead.
    this.outboxes = {
      shell: new Outbox(this.shell, { ...limits, window: options.maxKernelInputBytes }, () => this.sendProbe('shell', this.onShellProbeReply)),
      control: new Outbox(this.control, { ...limits, window: options.maxKernelInputBytes }, () => this.sendProbe('control', this.onControlProbeReply)),
      stdin: new Outbox(this.stdin, { ...limits, window: 0 }),
    };
  }

  /** A client's unread input that lets it be read again (a quarter of its bound). */
  get inputResumeBytes(): number {
    return this.options.maxClientInputBytes / 4;
  }

  /**
   * Moves the link to a kernel's new address (a pod relaunched with a new IP)
   * without closing its clients: the sockets leave the old endpoints and join
   * the new ones, keeping their routing id, and client messages are held
   * until the next `nudge()` says the kernel answers there. The key stays the
   * gateway's, so the signer does too.
   */
  rebind(conn: ConnectionInfo): void {
    if (this.closed) return;
    if (conn.key !== this.conn.key || conn.signature_scheme !== this.conn.signature_scheme) throw new Error('a rebound kernel keeps its key');
    const old = this.conn;
    this.ready = false;
    this.shell.disconnect(channelUrl(old, old.shell_port));
    this.control.disconnect(channelUrl(old, old.control_port));
    this.stdin.disconnect(channelUrl(old, old.stdin_port));
    this.iopub.disconnect(channelUrl(old, old.iopub_port));
    this.conn = conn;
    this.shell.connect(channelUrl(conn, conn.shell_port));
    this.control.connect(channelUrl(conn, conn.control_port));
    this.stdin.connect(channelUrl(conn, conn.stdin_port));
    this.iopub.connect(channelUrl(conn, conn.iopub_port));
  }

  /** Connects the sockets and starts reading; readiness comes from `nudge()`. */
  open(): void {
    const c = this.conn;
    this.shell.connect(channelUrl(c, c.shell_port));
    this.control.connect(channelUrl(c, c.control_port));
    this.stdin.connect(channelUrl(c, c.stdin_port));
    this.iopub.connect(channelUrl(c, c.iopub_port));
    this.iopub.subscribe();
    void this.pumpReplies(this.shell, 'shell');
    void this.pumpReplies(this.control, 'control');
    void this.pumpReplies(this.stdin, 'stdin');
    void this.pumpIopub();
  }

  get kernelId(): string {
    return this.options.kernelId ?? '';
  }

  get connections(): number {
    return this.clients.size;
  }

  get isReady(): boolean {
    return this.ready;
  }

  /**
   * Adds a client; one with the same identity (same session_id) is replaced.
   * A session that reconnects first gets what was kept for it while it was
   * away, in order, or a notice that it was lost.
   */
  attach(client: LinkClient): void {
    const key = client.identityKey;
    const old = this.clients.get(key);
    this.clients.set(key, client);
    if (old && old !== client) old.close(1000, 'replaced by a newer connection with the same session_id');
    const resumed = this.replay.resume(key);
    if (!resumed) return;
    if ('replay' in resumed) {
      this.counts.replayResumed++;
      for (const [channel, m] of resumed.replay) client.deliver(channel, m, {});
      return;
    }
    this.counts.replayLost++;
    const { parts } = makeMessage('stream', { name: 'stderr', text: resumed.lost.text ?? lostOutputNotice(this.replay.limits) }, this.session);
    if (resumed.lost.parent) parts.parent = resumed.lost.parent;
    client.deliver('iopub', parts, {});
  }

  /**
   * Sessions whose output was lost while no gateway held the link (this
   * kernel was adopted after the previous gateway died): each is told `text`
   * on stderr when it reconnects.
   */
  markSessionsLost(identityKeys: readonly string[], text: string): void {
    this.replay.markLost(identityKeys, text);
  }

  /** The identity keys of the sessions attached now, or parked for their reconnect. */
  sessionKeys(): string[] {
    return [...new Set([...this.clients.keys(), ...this.replay.parkedKeys()])];
  }

  /** A message a closing client could not take: it goes to the session's replay buffer. */
  undelivered(client: LinkClient, channel: Channel, m: MessageParts): void {
    this.detach(client);
    if (this.clients.has(client.identityKey)) return;
    this.replay.reply(client.identityKey, channel, m);
  }

  /** Removes a client whose socket closed; what the kernel sends its session is kept for a while. */
  detach(client: LinkClient): void {
    const key = client.identityKey;
    if (this.clients.get(key) !== client) return;
    this.clients.delete(key);
    if (!this.closed) this.replay.park(key);
  }

  /** Every client, for closing them all. */
  allClients(): LinkClient[] {
    return [...this.clients.values()];
  }

  /**
   * Relays a client's message. Until the kernel is ready the message is held,
   * so nothing sent during a start or restart is lost. What is held for the
   * kernel is bounded in bytes per client and per kernel channel: past half a
   * bound the client is to be paused (Input.Pause), past the bound its message
   * is refused (Input.Refused), except that a message larger than the bound is
   * taken when nothing of that client (or of that channel) is held. An
   * input_reply with no input_request outstanding for that client is dropped
   * (Input.Dropped): ipykernel would discard it before its next input_request,
   * and meanwhile it only grows the kernel.
   */
  send(channel: InputChannel, from: LinkClient, parts: MessageParts): Input {
    if (this.closed) return Input.Refused;
    if (channel === 'stdin' && !this.takeInputRequest(from.identityKey)) return Input.Dropped;
    const size = messageBytes(parts);
    const outbox = this.outboxes[channel];
    const max = this.options.maxClientInputBytes;
    if ((from.inputBytes > 0 && from.inputBytes + size > max) || !outbox.fits(size)) {
      this.dropped.inputQueueFull++;
      return Input.Refused;
    }
    this.lastActivity = Date.now();
    outbox.push(toWire(from.identity, this.signer, parts), size, from);
    this.counts.countIn(channel, size);
    if (channel === 'shell') this.lastShellRequest = parts.header;
    if (outbox.congested) {
      outbox.wait(from);
      return Input.Pause;
    }
    return from.inputBytes > max / 2 ? Input.Pause : Input.Taken;
  }

  /** Drops what is still queued of a client closed for flooding. */
  purge(from: LinkClient): void {
    for (const o of Object.values(this.outboxes)) o.purge(from);
  }

  /** Counts down an input_request the kernel sent this client; false (and the reply is dropped) when none is outstanding. */
  private takeInputRequest(key: string): boolean {
    const n = this.inputRequests.get(key);
    if (n === undefined) {
      if (this.dropped.staleInput++ === 0) this.options.log.warn('dropped an input_reply with no input_request outstanding for its client (the kernel would discard it)');
      return false;
    }
    if (n <= 1) this.inputRequests.delete(key);
    else this.inputRequests.set(key, n - 1);
    return true;
  }

  /** The kernel sent this client a message on stdin: an input_request, which the client may answer. */
  private noteInputRequest(key: string): void {
    const n = this.inputRequests.get(key);
    if (n === undefined && this.inputRequests.size >= MAX_INPUT_CLIENTS) this.inputRequests.delete(this.inputRequests.keys().next().value as string);
    this.inputRequests.set(key, Math.min((n ?? 0) + 1, MAX_INPUT_REQUESTS));
  }

  /** Sends a window probe: the link's own kernel_info_request behind what the channel has sent. */
  private sendProbe(channel: 'shell' | 'control', onReply: (m: WireMessage) => void): void {
    const { msgId, parts } = makeMessage('kernel_info_request', {}, this.session);
    const previous = this.probes[channel];
    if (previous !== undefined) this.waiters.delete(previous);
    this.probes[channel] = msgId;
    this.waiters.set(msgId, onReply);
    this.outboxes[channel].pushOwn(toWire(LINK_IDENTITY, this.signer, parts));
  }

  private onShellProbeReply(): void {
    this.probeAnswered('shell');
  }

  private onControlProbeReply(): void {
    this.probeAnswered('control');
  }

  private probeAnswered(channel: 'shell' | 'control'): void {
    const id = this.probes[channel];
    if (id === undefined) return;
    this.waiters.delete(id);
    this.probes[channel] = undefined;
    this.outboxes[channel].probeAnswered();
  }

  /** Marks the kernel not ready: client messages are held until the next successful nudge. */
  suspend(): void {
    this.ready = false;
    for (const o of Object.values(this.outboxes)) o.hold();
    for (const channel of ['shell', 'control'] as const) {
      const id = this.probes[channel];
      if (id !== undefined) this.waiters.delete(id);
      this.probes[channel] = undefined;
    }
    // A new process asks anew.
    this.inputRequests.clear();
  }

  /**
   * Sends `kernel_info_request` on shell and control until a reply and an
   * iopub message have both arrived, as jupyter_server does, so the
   * iopub subscription is known to be live before any client message goes out.
   */
  async nudge(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    this.iopubSeen = false;
    let replied = false;
    let lastSent = 0;
    const sent: string[] = [];
    let timer: NodeJS.Timeout | undefined;
    let deadline: NodeJS.Timeout | undefined;
    let again: NodeJS.Timeout | undefined;
    let pace = NUDGE_MIN_GAP_MS;
    // Start tracing (bench/tools/start-trace.ts): a few debug lines per nudge, none per message.
    const log = this.options.log;
    let iopubTraced = false;
    const trace = log.isLevelEnabled('debug')
      ? (what: string): void => log.debug({ at: performance.timeOrigin + performance.now(), fires: sent.length / 2 }, `nudge: ${what}`)
      : undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        const check = (): void => {
          if (replied && this.iopubSeen) resolve();
        };
        const onReply = (): void => {
          if (!replied) trace?.('first kernel_info_reply');
          replied = true;
          check();
          // The kernel answered but iopub missed its status (the SUB joins on its own
          // reconnect pace, after the DEALERs maybe): ask again soon, at a pace that
          // doubles from NUDGE_MIN_GAP_MS up to NUDGE_INTERVAL_MS. Asking only when a
          // reply came 5 ms after the last request left the second reply (1 ms after
          // it) to the 100 ms timer: up to 100 ms a start. One retry pending at a time,
          // so a kernel whose iopub never speaks is asked at most every 100 ms.
          if (this.iopubSeen || again !== undefined) return;
          const wait = lastSent + pace - Date.now();
          if (wait > 0) pace = Math.min(NUDGE_INTERVAL_MS, pace * 2);
          again = setTimeout(
            () => {
              again = undefined;
              if (!this.iopubSeen) fire();
            },
            Math.max(0, wait),
          );
        };
        // Requests wait in the DEALER's pipe while the kernel starts, so a
        // request is repeated quickly only once the kernel answers but iopub
        // is still silent (the slow-joiner case), and otherwise rarely.
        const fire = (): void => {
          if (!replied && Date.now() - lastSent < NUDGE_RESEND_UNANSWERED_MS) return;
          lastSent = Date.now();
          for (const channel of ['shell', 'control'] as const) {
            const { msgId, parts } = makeMessage('kernel_info_request', {}, this.session);
            sent.push(msgId);
            this.waiters.set(msgId, onReply);
            this.outboxes[channel].pushOwn(toWire(LINK_IDENTITY, this.signer, parts));
          }
        };
        this.onIopubSeen = trace
          ? () => {
              if (!replied) trace('iopub message before any reply');
              else if (!iopubTraced) trace('first iopub message after a reply');
              iopubTraced ||= replied;
              check();
            }
          : check;
        deadline = setTimeout(() => reject(new Error(`no kernel_info_reply within ${timeoutMs} ms`)), timeoutMs);
        signal?.addEventListener('abort', () => reject(signal.reason instanceof Error ? signal.reason : new Error('aborted')), { once: true });
        fire();
        timer = setInterval(fire, NUDGE_INTERVAL_MS);
      });
    } finally {
      clearInterval(timer);
      clearTimeout(deadline);
      clearTimeout(again);
      this.onIopubSeen = undefined;
      for (const id of sent) this.waiters.delete(id);
    }
    trace?.('ready');
    this.ready = true;
    // The kernel answered, and the status of the nudge itself is left out of the model:
    // a kernel just started (or restarted) is idle, and the model a start answers is what
    // the next GET returns. A status of a client's request seen meanwhile is kept.
    const s = this.executionState;
    if (s === 'starting' || s === 'restarting' || s === 'unknown') this.executionState = 'idle';
    for (const o of Object.values(this.outboxes)) o.release();
  }

  /** Sends a request of the link's own and waits for its reply (undefined on timeout). */
  async request(channel: 'shell' | 'control', msgType: string, content: object, timeoutMs: number): Promise<WireMessage | undefined> {
    const { msgId, parts } = makeMessage(msgType, content, this.session);
    let timer: NodeJS.Timeout | undefined;
    try {
      return await new Promise<WireMessage | undefined>((resolve) => {
        this.waiters.set(msgId, resolve);
        timer = setTimeout(resolve, timeoutMs, undefined);
        this.outboxes[channel].pushOwn(toWire(LINK_IDENTITY, this.signer, parts));
      });
    } finally {
      clearTimeout(timer);
      this.waiters.delete(msgId);
    }
  }

  /** Tells subscribers (metrics) that a kernel message was dropped, and why. */
  private publishDrop(reason: LinkDropEvent['reason']): void {
    if (events.linkDrop.hasSubscribers) events.linkDrop.publish({ kernelId: this.kernelId, reason, count: 1 });
  }

  /** Tells every client a state that did not come from the kernel (`restarting`, `dead`). */
  /**
   * A line of stderr output to every client (why the kernel died, say), on
   * the output of the request the kernel was busy with. A kernel killed at
   * once by what a cell did may die before its `busy` status leaves it: then
   * the request it was working on is the last one sent.
   */
  broadcastNotice(text: string): void {
    this.notify(text, this.busyWith ?? this.lastShellRequest ?? NO_PARENT);
  }

  broadcastStatus(state: ExecutionState): void {
    this.executionState = state;
    const { parts } = makeMessage('status', { execution_state: state }, this.session);
    this.fanOut(parts);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.ready = false;
    this.replay.clear();
    for (const o of Object.values(this.outboxes)) o.close();
    this.shell.close();
    this.control.close();
    this.stdin.close();
    this.iopub.close();
  }

  private accept(frames: Buffer[]): WireMessage | undefined {
    const m = splitWire(frames);
    if (m === undefined) {
      this.dropped.malformed++;
      this.publishDrop('malformed');
      return undefined;
    }
    if (this.options.verifySignatures && !this.signer.verify(m)) {
      this.publishDrop('bad_signature');
      if (this.dropped.badSignature++ === 0) this.options.log.warn('dropped a kernel message with a bad signature');
      return undefined;
    }
    return m;
  }

  private async pumpReplies(socket: Dealer, channel: InputChannel): Promise<void> {
    try {
      for await (const frames of socket) this.onReply(channel, frames);
    } catch (e) {
      if (!this.closed) this.options.log.error({ err: e, channel }, 'kernel link receive loop failed');
    }
  }

  private onReply(channel: InputChannel, frames: Buffer[]): void {
    const m = this.accept(frames);
    if (m === undefined) return;
    const id = m.identities[0];
    if (id === undefined) {
      this.dropped.noClient++;
      this.publishDrop('no_client');
      return;
    }
    const key = id.toString('latin1');
    if (key === LINK_KEY) {
      // The reply to a request of the link's own is left out of the model (activity, state).
      this.onOwnReply(m);
      return;
    }
    this.lastActivity = Date.now();
    if (channel === 'stdin') this.noteInputRequest(key);
    const client = this.clients.get(key);
    if (client) client.deliver(channel, m, {});
    else if (!this.replay.reply(key, channel, m)) {
      this.dropped.noClient++;
      this.publishDrop('no_client');
      return;
    }
    this.counts.countReply(channel, messageBytes(m));
  }

  private onOwnReply(m: WireMessage): void {
    try {
      const parent = JSON.parse(m.parent.toString('utf8')) as { msg_id?: unknown };
      if (typeof parent.msg_id === 'string') this.waiters.get(parent.msg_id)?.(m);
    } catch {
      this.dropped.malformed++;
      this.publishDrop('malformed');
    }
  }

  /**
   * Reads iopub. When every client is behind, reading pauses until one has
   * caught up: the kernel's output then waits in ZeroMQ (up to the high-water
   * marks) instead of in the gateway's memory or being dropped, so a lone
   * client that reads slower than the kernel writes still gets everything.
   * A client that is behind while another keeps up loses output instead (see
   * ClientRelay): one slow client never slows the others.
   */
  private async pumpIopub(): Promise<void> {
    try {
      for await (const frames of this.iopub) {
        this.onIopub(frames);
        if (this.allBehind) await this.untilCaughtUp();
      }
    } catch (e) {
      if (!this.closed) this.options.log.error({ err: e }, 'kernel link iopub loop failed');
    }
  }

  private untilCaughtUp(): Promise<void> {
    return new Promise<void>((resolve) => {
      const check = (): void => {
        if (this.closed || this.clients.size === 0) return resolve();
        for (const c of this.clients.values()) if (c.caughtUp()) return resolve();
        setTimeout(check, CATCH_UP_POLL_MS);
      };
      setTimeout(check, CATCH_UP_POLL_MS);
    }).then(() => {
      this.allBehind = false;
    });
  }

  private onIopub(frames: Buffer[]): void {
    const m = this.accept(frames);
    if (m === undefined) return;
    // Only status messages change the gateway's view of the kernel; a byte
    // search keeps the JSON parse off every other message.
    if (m.header.includes('"status"')) this.trackStatus(m);
    else this.lastActivity = Date.now();
    this.iopubSeen = true;
    this.onIopubSeen?.();
    if (this.rateLimiter) {
      const verdict = this.rateLimiter.admit(m, this.lastActivity);
      if (verdict !== Verdict.Pass) {
        this.dropped.rateLimited++;
        this.publishDrop('rate_limited');
        if (verdict !== Verdict.Drop) this.notify(this.rateLimiter.notice(verdict), m.parent);
        return;
      }
    }
    this.counts.iopubOutMessages++;
    this.counts.iopubOutBytes += messageBytes(m);
    this.fanOut(m);
  }

  private fanOut(m: MessageParts): void {
    this.replay.iopub(m);
    const cache: EncodeCache = {};
    let behind = 0;
    for (const client of this.clients.values()) if (client.deliver('iopub', m, cache)) behind++;
    if (behind > 0 && behind === this.clients.size) this.allBehind = true;
  }

  /** Tells every client something on stderr, on the output of the request `parent` answers. */
  notify(text: string, parent: Buffer): void {
    const { parts } = makeMessage('stream', { name: 'stderr', text }, this.session);
    parts.parent = parent;
    this.fanOut(parts);
  }

  /**
   * A status changes the model's state and activity, unless it is about a
   * request of the link's own (nudge, probe, shutdown, interrupt: its parent
   * carries the link's session), as jupyter_server leaves its own requests out
   * (`untracked_message_types`).
   */
  private trackStatus(m: WireMessage): void {
    try {
      const header = JSON.parse(m.header.toString('utf8')) as { msg_type?: unknown };
      if (header.msg_type !== 'status') {
        this.lastActivity = Date.now();
        return;
      }
      const parent = JSON.parse(m.parent.toString('utf8')) as { session?: unknown } | null;
      if (parent !== null && parent.session === this.session) return;
      const content = JSON.parse(m.content.toString('utf8')) as { execution_state?: unknown };
      const s = content.execution_state;
      // The kernel's own `starting` at launch can come after its first kernel_info_reply
      // (ipykernel answers on control first); once the link is ready it says nothing.
      if (s === 'starting' && this.ready) return;
      this.lastActivity = Date.now();
      if (s === 'idle' || s === 'busy' || s === 'starting') this.executionState = s;
      // The request the kernel is busy with: a notice about its death goes on that cell's output.
      this.busyWith = s === 'busy' ? m.parent : undefined;
    } catch {
      this.dropped.malformed++;
      this.publishDrop('malformed');
    }
  }
}
