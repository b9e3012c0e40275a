/**
 * What a ClientRelay needs of its client's WebSocket, whichever server
 * library holds it (ws in kgate; uWebSockets.js measured in
 * bench/tools/ws-engines.ts). Kept to what the hot path and the slow-client
 * bounds use, so that an engine is a small adapter.
 */
import type { PreparedFrame } from './ws-send.js';

/**
 * The socket's events, as methods of one object (the relay) rather than
 * callbacks: nothing is allocated per socket beyond the adapter, and nothing
 * per message.
 */
export interface ClientSocketEvents {
  /** A whole message; `data` is the relay's to keep (an engine that lends its buffer copies it first). */
  socketMessage(data: Buffer, isBinary: boolean): void;
  /** The socket closed, by either side; nothing more comes. */
  socketClose(code: number): void;
  /** A protocol fault (an oversize frame, bad UTF-8): the engine closes the socket itself and `socketClose` follows. */
  socketError(err: Error): void;
}

export interface ClientSocket {
  /** Open and not yet closing: what is sent now is framed and queued. */
  readonly isOpen: boolean;
  /** Bytes accepted by `send` and not yet written to the kernel's TCP socket. */
  readonly bufferedAmount: number;
  /** Sends one prepared message (one buffer, or the fragments of one message). Only while open. */
  send(frame: PreparedFrame): void;
  /** Stops reading the client (input backpressure): what it sends waits in its TCP socket. */
  pause(): void;
  resume(): void;
  /** Starts the close handshake; nothing happens once the socket is closing or closed. */
  close(code: number, reason: string): void;
  /** Destroys the connection without a handshake (a stalled client). */
  terminate(): void;
  /** Where the events go; called once, by the relay's constructor. */
  listen(events: ClientSocketEvents): void;
}
