/**
 * One WebSocket client of a kernel: decodes its frames onto the kernel link,
 * and encodes what the link routes to it in the client's protocol.
 */
import type { Logger } from 'pino';
import { WebSocket, type RawData } from 'ws';
import { WsClose } from '../errors.js';
import { FrameError, type ClientMessage } from './client-message.js';
import type { KernelLink, LinkClient } from './kernel-link.js';
import { decodeJsonFrame, encodeJsonFrame, type OutFrame } from './ws-json.js';
import { sendFrame } from './ws-send.js';
import { decodeV1Frame, encodeV1Frame } from './ws-v1.js';
import type { Channel, MessageParts } from './wire.js';

export type WsProtocol = 'json' | 'v1';

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

export class ClientRelay implements LinkClient {
  readonly identity: Buffer;
  readonly identityKey: string;
  private readonly decode: Decoder;
  private readonly encode: Encoder;

  constructor(
    private readonly ws: WebSocket,
    private readonly link: KernelLink,
    readonly protocol: WsProtocol,
    readonly sessionId: string,
    private readonly options: ClientRelayOptions,
  ) {
    this.identity = identityFor(sessionId);
    this.identityKey = this.identity.toString('latin1');
    this.decode = codecs[protocol].decode;
    this.encode = codecs[protocol].encode;
    this.onMessage = this.onMessage.bind(this);
    this.onClose = this.onClose.bind(this);
    this.onError = this.onError.bind(this);
    ws.on('message', this.onMessage);
    ws.on('close', this.onClose);
    // ws reports protocol faults (an oversize frame: 1009, bad UTF-8: 1007) here and
    // closes the socket itself; without a listener they would take the process down.
    ws.on('error', this.onError);
    link.attach(this);
  }

  deliver(channel: Channel, m: MessageParts): void {
    const ws = this.ws;
    if (ws.readyState !== WebSocket.OPEN) return;
    if (ws.bufferedAmount > this.options.maxBufferedBytes) {
      this.close(WsClose.SlowClient, 'client too slow: its unread messages passed the send buffer bound');
      return;
    }
    let frame: OutFrame;
    try {
      frame = this.encode(channel, m);
    } catch (e) {
      this.options.log.warn({ err: e, channel }, 'dropped a kernel message that could not be encoded');
      return;
    }
    sendFrame(ws, frame);
  }

  close(code: number, reason: string): void {
    this.link.detach(this);
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.close(code, reason);
  }

  private onMessage(data: RawData, isBinary: boolean): void {
    // With the default binaryType, ws hands a Buffer (fragments already joined).
    const frame = data as Buffer;
    let msg: ClientMessage;
    try {
      msg = this.decode(frame, isBinary);
    } catch (e) {
      if (e instanceof FrameError) {
        this.close(e.closeCode, closeReason(`kgate: ${e.message}`));
        return;
      }
      // A bug in a codec must cost this client its socket, never the gateway.
      this.options.log.error({ err: e }, 'failed to decode a client frame');
      this.close(WsClose.InternalError, 'kgate: internal error decoding the frame');
      return;
    }
    if (!this.link.send(msg.channel, this.identity, msg)) {
      this.close(WsClose.TryAgainLater, 'kgate: the kernel is not taking input fast enough');
    }
  }

  private onError(err: Error): void {
    this.options.log.debug({ err, session: this.sessionId }, 'client WebSocket error');
    this.link.detach(this);
  }

  private onClose(): void {
    this.link.detach(this);
  }
}
