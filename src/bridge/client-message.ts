import { WsClose } from '../errors.js';
import type { InputChannel, MessageParts } from './wire.js';

/** A message a client sent, split into raw parts and ready to be signed. */
export interface ClientMessage extends MessageParts {
  channel: InputChannel;
}

/** A frame from a client that kgate cannot relay; the client's socket is closed with `closeCode`. */
export class FrameError extends Error {
  readonly closeCode: number = WsClose.InvalidFrame;
}

/** More buffers than this in one message is taken for a garbage offsets table. */
export const MAX_BUFFERS = 4096;

export const EMPTY_OBJECT = Buffer.from('{}');
