/**
 * One WebSocket client of a kernel: decodes its frames onto the kernel link,
 * and encodes what the link routes to it in the client's protocol.
 */
import type { Logger } from 'pino';
import { WsClose } from '../errors.js';
import { FrameError, type ClientMessage } from './client-message.js';
import type { ClientSocket, ClientSocketEvents } from './client-socket.js';
import { msgTypeOf } from './iopub-rate-limit.js';
import { Input, type EncodeCache, type KernelLink, type LinkClient } from './kernel-link.js';
import { makeMessage } from './messages.js';
import { decodeJsonFrame, encodeJsonFrame, type OutFrame } from './ws-json.js';
import { prepareFrame } from './ws-send.js';
import { decodeV1Frame, encodeV1Frame } from './ws-v1.js';
import type { Channel, MessageParts } from './wire.js';
import { events, type ClientDropEvent } from '../events.js';

export type WsProtocol = 'json' | 'v1';

/** How long a stalled (or flooding) client's close handshake may take before its socket is destroyed. */
const SLOW_CLIENT_GRACE_MS = 2000;
/** While a client is behind, how often to see whether it has caught up. */
const DRAIN_CHECK_MS = 100;
/** Output a client that is behind can miss without the notebook's state going wrong. */
const DROPPABLE = new Set(['stream', 'display_data', 'update_display_data']);

export interface ClientRelayOptions {
  /** Bytes the socket may hold unsent before the client counts as too slow and is closed. */
  maxBufferedBytes: number;
  log: Logger;
}

type Decoder = (frame: Buffer, isBinary: boolean) => ClientMessage;
type Encoder = (channel: Channel, m: MessageParts) => OutFrame;

const codecs: Record<WsProtocol, { decode: Decoder; encode: Encoder }> = {
  json: { decode: decodeJsonFrame, encode: encodeJsonFrame },
  v1: { decode: decodeV1Frame, encode: encodeV1Frame },
};

/** A session_id becomes the identity frame; the prefix keeps it from ever equalling `<IDS|MSG>`. */
export function identityFor(sessionId: string): Buffer {
  return Buffer.from(`s:${sessionId}`, 'utf8');
}

/** A close reason must fit in 123 bytes of UTF-8. */
function closeReason(s: string): string {
  const b = Buffer.from(s, 'utf8');
  return b.length <= 120 ? s : b.subarray(0, 117).toString('utf8');
}

export class ClientRelay implements LinkClient, ClientSocketEvents {
  readonly identity: Buffer;
  readonly identityKey: string;
  private readonly decode: Decoder;
  private readonly encode: Encoder;
  /** Output messages not sent since the client fell behind, and the request the last one answered. */
  private droppedOutputs = 0;
  private droppedParent: Buffer | undefined;
  private drainCheck: NodeJS.Timeout | undefined;
  /** Bytes of this client's messages the link holds for the kernel, and outboxes it waits on (kept by the link's outboxes). */
  inputBytes = 0;
  drainWaits = 0;
  /** Reading of the socket stopped: what it sent waits for the kernel. */
  private paused = false;
  /** Closed (or closing) by kgate or the client: nothing more it sends reaches the kernel. */
  private closing = false;

  constructor(
    private readonly socket: ClientSocket,
    private readonly link: KernelLink,
    readonly protocol: WsProtocol,
    readonly sessionId: string,
    private readonly options: ClientRelayOptions,
  ) {
    this.identity = identityFor(sessionId);
    this.identityKey = this.identity.toString('latin1');
    this.decode = codecs[protocol].decode;
    this.encode = codecs[protocol].encode;
    this.onDrainCheck = this.onDrainCheck.bind(this);
    socket.listen(this);
    link.attach(this);
    if (events.clientAttach.hasSubscribers) events.clientAttach.publish({ kernelId: link.kernelId, protocol });
  }

  /** Tells subscribers (metrics) what this client did not get or could not send. */
  private publishDrop(reason: ClientDropEvent['reason'], count: number): void {
    if (events.clientDrop.hasSubscribers) events.clientDrop.publish({ kernelId: this.link.kernelId, protocol: this.protocol, reason, count });
  }

  deliver(channel: Channel, m: MessageParts, cache: EncodeCache): boolean {
    const ws = this.socket;
    if (!ws.isOpen) {
      // Closing (the client's close frame came, the 'close' event has not yet):
      // the message is kept for the session's reconnect, not dropped.
      this.link.undelivered(this, channel, m);
      return false;
    }
    const max = this.options.maxBufferedBytes;
    if (ws.bufferedAmount > max && this.overBound(channel, m)) return true;
    let frame = cache[this.protocol];
    if (frame === undefined) {
      try {
        frame = prepareFrame(this.encode(channel, m));
      } catch (e) {
        this.options.log.warn({ err: e, channel }, 'dropped a kernel message that could not be encoded');
        frame = null;
      }
      cache[this.protocol] = frame;
    }
    if (frame !== null) ws.send(frame);
    return ws.bufferedAmount > max / 2;
  }

  caughtUp(): boolean {
    return !this.socket.isOpen || this.socket.bufferedAmount <= this.options.maxBufferedBytes / 2;
  }

  /**
   * The client is not reading as fast as the kernel writes and its unsent
   * bytes passed the bound. Output (stream and display data) is dropped for
   * this client alone until it catches up, and then it is told how much it
   * missed; what keeps the protocol's state right (status, replies, results,
   * errors, comms, stdin) still goes out. If even that passes twice the bound,
   * the client has stopped reading altogether and is closed with 4008.
   * Returns true when the message is not to be sent.
   */
  private overBound(channel: Channel, m: MessageParts): boolean {
    if (this.socket.bufferedAmount > 2 * this.options.maxBufferedBytes) {
      this.dropStalled();
      return true;
    }
    if (channel !== 'iopub') return false;
    const type = msgTypeOf(m.header);
    if (type === undefined || !DROPPABLE.has(type)) return false;
    this.droppedOutputs++;
    this.droppedParent = m.parent;
    if (this.drainCheck === undefined) {
      this.drainCheck = setInterval(this.onDrainCheck, DRAIN_CHECK_MS);
      this.drainCheck.unref();
    }
    return true;
  }

  private onDrainCheck(): void {
    const ws = this.socket;
    if (!ws.isOpen) {
      this.stopDrainCheck();
      return;
    }
    if (ws.bufferedAmount > this.options.maxBufferedBytes / 2) return;
    const n = this.droppedOutputs;
    this.stopDrainCheck();
    this.droppedOutputs = 0;
    this.publishDrop('slow_client', n);
    const { parts } = makeMessage(
      'stream',
      { name: 'stderr', text: `[kgate] ${n} output message${n === 1 ? ' was' : 's were'} not sent to this client: it was not reading as fast as the kernel wrote.\n` },
      this.link.session,
    );
    if (this.droppedParent) parts.parent = this.droppedParent;
    this.droppedParent = undefined;
    ws.send(prepareFrame(this.encode('iopub', parts)));
  }

  private stopDrainCheck(): void {
    clearInterval(this.drainCheck);
    this.drainCheck = undefined;
  }

  /**
   * The client stopped reading altogether: close it with 4008. The close frame
   * waits behind the unread data, which a stalled client never drains, so the
   * socket (and the memory it holds) is destroyed after a short grace instead
   * of ws's 30 s close timeout.
   */
  private dropStalled(): void {
    this.stopDrainCheck();
    this.close(WsClose.SlowClient, 'kgate: client too slow: its unread messages passed the send buffer bound');
    const ws = this.socket;
    setTimeout(() => ws.terminate(), SLOW_CLIENT_GRACE_MS).unref();
  }

  close(code: number, reason: string): void {
    this.closing = true;
    // A paused socket could not read the client's close frame: what it sends now is ignored.
    if (this.paused) {
      this.paused = false;
      this.socket.resume();
    }
    this.link.detach(this);
    this.socket.close(code, reason);
  }

  socketMessage(frame: Buffer, isBinary: boolean): void {
    // ws still emits the frames that came in the same read as the one that closed the
    // socket (a malformed frame, say): none of them may reach the kernel.
    if (this.closing || !this.socket.isOpen) {
      this.link.dropped.afterClose++;
      return;
    }
    let msg: ClientMessage;
    try {
      msg = this.decode(frame, isBinary);
    } catch (e) {
      if (e instanceof FrameError) {
        this.publishDrop('malformed', 1);
        this.close(e.closeCode, closeReason(`kgate: ${e.message}`));
        return;
      }
      // A bug in a codec must cost this client its socket, never the gateway.
      this.options.log.error({ err: e }, 'failed to decode a client frame');
      this.close(WsClose.InternalError, 'kgate: internal error decoding the frame');
      return;
    }
    const verdict = this.link.send(msg.channel, this, msg);
    if (verdict === Input.Pause) {
      // Backpressure: stop reading this socket until the kernel has taken enough of what it sent.
      if (!this.paused) {
        this.paused = true;
        this.socket.pause();
      }
    } else if (verdict === Input.Refused) {
      this.publishDrop('input_queue_full', 1);
      this.close(WsClose.TryAgainLater, 'kgate: the kernel is not taking input fast enough');
      // What it still had queued goes too, so the kernel's other clients are not held behind it;
      // and a client that keeps sending instead of closing is cut off after a short grace.
      this.link.purge(this);
      const ws = this.socket;
      setTimeout(() => ws.terminate(), SLOW_CLIENT_GRACE_MS).unref();
    }
  }

  /** The link took some of this client's input: read the socket again once it is well below its bound. */
  inputReleased(): void {
    if (this.paused && this.drainWaits === 0 && this.inputBytes <= this.link.inputResumeBytes) {
      this.paused = false;
      this.socket.resume();
    }
  }

  socketError(err: Error): void {
    this.options.log.debug({ err, session: this.sessionId }, 'client WebSocket error');
    this.closing = true;
    this.link.detach(this);
  }

  socketClose(code: number): void {
    if (events.clientDetach.hasSubscribers) events.clientDetach.publish({ kernelId: this.link.kernelId, protocol: this.protocol, code });
    this.closing = true;
    this.stopDrainCheck();
    this.link.detach(this);
  }
}
