/**
 * The `v1.kernel.websocket.jupyter.org` subprotocol: always binary, a
 * little-endian uint64 count `n`, then `n` little-endian uint64 offsets (the
 * first is 8·(n+1), the last the total length); between them: channel,
 * header, parent_header, metadata, content, then the buffers.
 * See jupyterlab `packages/services/src/kernel/serialize.ts`.
 */
import { FrameError, MAX_BUFFERS, type ClientMessage } from './client-message.js';
import type { OutFrame } from './ws-json.js';
import { isInputChannel, type Channel, type MessageParts } from './wire.js';

export const V1_PROTOCOL = 'v1.kernel.websocket.jupyter.org';

/** Reads a little-endian uint64 that must fit in 32 bits (no frame is 4 GiB). */
function readU64(frame: Buffer, at: number): number {
  if (frame.readUInt32LE(at + 4) !== 0) throw new FrameError(`offset at byte ${at} is larger than any frame`);
  return frame.readUInt32LE(at);
}

/** Decodes one client frame of the v1 protocol by slicing it at its offsets. */
export function decodeV1Frame(frame: Buffer, isBinary: boolean): ClientMessage {
  if (!isBinary) throw new FrameError('the v1.kernel.websocket.jupyter.org protocol takes binary frames only');
  if (frame.length < 8) throw new FrameError('frame too short for an offsets table');
  const n = readU64(frame, 0);
  const tableEnd = 8 * (n + 1);
  if (n < 6 || n > MAX_BUFFERS + 6 || tableEnd > frame.length) throw new FrameError(`bad offset count ${n}`);
  const offsets = new Array<number>(n);
  for (let k = 0; k < n; k++) offsets[k] = readU64(frame, 8 * (k + 1));
  if (offsets[0] !== tableEnd) throw new FrameError(`the first offset must be ${tableEnd}, got ${offsets[0]}`);
  for (let k = 1; k < n; k++) {
    if (offsets[k]! < offsets[k - 1]!) throw new FrameError('offsets out of order');
  }
  if (offsets[n - 1] !== frame.length) throw new FrameError(`the last offset must be the frame length ${frame.length}, got ${offsets[n - 1]}`);
  const channel = frame.toString('utf8', offsets[0]!, offsets[1]!);
  if (!isInputChannel(channel)) throw new FrameError(`unknown channel ${JSON.stringify(channel.slice(0, 32))}: expected shell, control or stdin`);
  const part = (k: number): Buffer => frame.subarray(offsets[k]!, offsets[k + 1]!);
  const header = part(1);
  if (header[0] !== 0x7b) throw new FrameError('the message has no "header" object');
  const buffers: Buffer[] = [];
  for (let k = 5; k < n - 1; k++) buffers.push(part(k));
  return { channel, header, parent: part(2), metadata: part(3), content: part(4), buffers };
}

const CHANNEL_BYTES: Record<Channel, Buffer> = {
  shell: Buffer.from('shell'),
  control: Buffer.from('control'),
  stdin: Buffer.from('stdin'),
  iopub: Buffer.from('iopub'),
};

/** Encodes a kernel message for a v1 client: an offsets table, then the parts as they came from ZeroMQ. */
export function encodeV1Frame(channel: Channel, m: MessageParts): OutFrame {
  const n = 6 + m.buffers.length;
  const table = Buffer.allocUnsafe(8 * (n + 1));
  table.writeUInt32LE(n, 0);
  table.writeUInt32LE(0, 4);
  const chunks = [table, CHANNEL_BYTES[channel], m.header, m.parent, m.metadata, m.content, ...m.buffers];
  let offset = table.length;
  for (let k = 0; k < chunks.length - 1; k++) {
    table.writeUInt32LE(offset, 8 * (k + 1));
    table.writeUInt32LE(0, 8 * (k + 1) + 4);
    offset += chunks[k + 1]!.length;
  }
  table.writeUInt32LE(offset, 8 * n);
  table.writeUInt32LE(0, 8 * n + 4);
  return { chunks, length: offset, binary: true };
}
