/**
 * The JSON WebSocket form of the Jupyter protocol (no subprotocol): a text frame
 * holding `{header, parent_header, metadata, content, buffers, channel}`, or,
 * when buffers are present, a binary frame: big-endian uint32 `nbufs`, `nbufs`
 * big-endian uint32 offsets (the first is 4·(nbufs+1)), the JSON message, then
 * the buffers. See jupyter_server `services/kernels/connection/base.py`.
 */
import { isUtf8 } from 'node:buffer';
import { EMPTY_OBJECT, FrameError, MAX_BUFFERS, type ClientMessage } from './client-message.js';
import { isObjectSpan, JsonScanError, scanTopLevel, type Span } from './json-scan.js';
import { isInputChannel, type Channel, type MessageParts } from './wire.js';

function describe(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function objectPart(frame: Buffer, span: Span | undefined, name: string, allowNull: boolean): Buffer {
  if (span === undefined) return EMPTY_OBJECT;
  if (isObjectSpan(frame, span)) return frame.subarray(span.start, span.end);
  if (allowNull && frame[span.start] === 0x6e /* null */) return EMPTY_OBJECT;
  throw new FrameError(`"${name}" must be a JSON object`);
}

/** Splits the JSON part of a client message into raw parts; `buffers` come from the binary form. */
function decodeJsonPart(frame: Buffer, start: number, end: number, buffers: Buffer[]): ClientMessage {
  // The scanner does not check UTF-8, and ws does not check binary frames.
  if (!isUtf8(frame.subarray(start, end))) throw new FrameError('the JSON message is not valid UTF-8');
  let members: Map<string, Span>;
  try {
    members = scanTopLevel(frame, start, end);
  } catch (e) {
    throw new FrameError(`invalid JSON message: ${describe(e)}`);
  }
  const headerSpan = members.get('header');
  if (headerSpan === undefined || !isObjectSpan(frame, headerSpan)) throw new FrameError('the message has no "header" object');
  let channel = 'shell';
  const channelSpan = members.get('channel');
  if (channelSpan !== undefined) {
    const value: unknown = JSON.parse(frame.toString('utf8', channelSpan.start, channelSpan.end));
    if (typeof value !== 'string') throw new FrameError('"channel" must be a string');
    channel = value;
  }
  if (!isInputChannel(channel)) throw new FrameError(`unknown channel ${JSON.stringify(channel.slice(0, 32))}: expected shell, control or stdin`);
  return {
    channel,
    header: frame.subarray(headerSpan.start, headerSpan.end),
    parent: objectPart(frame, members.get('parent_header'), 'parent_header', true),
    metadata: objectPart(frame, members.get('metadata'), 'metadata', true),
    content: objectPart(frame, members.get('content'), 'content', false),
    buffers,
  };
}

/** Decodes one client frame of the JSON protocol (text, or the binary form with buffers). */
export function decodeJsonFrame(frame: Buffer, isBinary: boolean): ClientMessage {
  // jupyter_server's gateway client (1.x and 2.x) forwards a browser's binary frames
  // as text frames. JSON text never starts with NUL and the binary form always does
  // (its first word is a small buffer count), so the frame tells which it is.
  if (!isBinary && frame[0] !== 0) return decodeJsonPart(frame, 0, frame.length, []);
  if (frame.length < 8) throw new FrameError('binary frame too short for an offsets table');
  const nbufs = frame.readUInt32BE(0);
  const tableEnd = 4 * (nbufs + 1);
  if (nbufs < 1 || nbufs > MAX_BUFFERS + 1 || tableEnd > frame.length) throw new FrameError(`bad buffer count ${nbufs} in the offsets table`);
  const offsets: number[] = new Array<number>(nbufs + 1);
  for (let k = 0; k < nbufs; k++) offsets[k] = frame.readUInt32BE(4 + 4 * k);
  offsets[nbufs] = frame.length;
  if (offsets[0] !== tableEnd) throw new FrameError(`the first offset must be ${tableEnd}, got ${offsets[0]}`);
  for (let k = 1; k <= nbufs; k++) {
    if (offsets[k]! < offsets[k - 1]! || offsets[k]! > frame.length) throw new FrameError('offsets out of order or past the end of the frame');
  }
  const buffers: Buffer[] = [];
  for (let k = 1; k < nbufs; k++) buffers.push(frame.subarray(offsets[k]!, offsets[k + 1]!));
  return decodeJsonPart(frame, offsets[0]!, offsets[1]!, buffers);
}

const HEAD = Buffer.from('{"header":');
const MSG_ID = Buffer.from(',"msg_id":');
const MSG_TYPE = Buffer.from(',"msg_type":');
const PARENT = Buffer.from(',"parent_header":');
const METADATA = Buffer.from(',"metadata":');
const CONTENT = Buffer.from(',"content":');
const NULL = Buffer.from('null');
const tails = new Map<string, { text: Buffer; binary: Buffer }>();
for (const ch of ['shell', 'control', 'stdin', 'iopub'] as const) {
  tails.set(ch, {
    text: Buffer.from(`,"buffers":[],"channel":"${ch}"}`),
    binary: Buffer.from(`,"channel":"${ch}"}`),
  });
}

/** Chunks of one outgoing frame, to be sent whole or as fragments. */
export interface OutFrame {
  chunks: Buffer[];
  length: number;
  binary: boolean;
}

/**
 * Encodes a kernel message for a JSON-protocol client by splicing the raw
 * parts into the envelope (with top-level `msg_id` and `msg_type` copied from
 * the header, as jupyter_server sends them). Throws a JsonScanError if the
 * kernel's header is not a JSON object.
 */
export function encodeJsonFrame(channel: Channel, m: MessageParts): OutFrame {
  const hdr = scanTopLevel(m.header);
  const id = hdr.get('msg_id');
  const type = hdr.get('msg_type');
  const tail = tails.get(channel)!;
  const binary = m.buffers.length > 0;
  const json = [
    HEAD,
    m.header,
    MSG_ID,
    id ? m.header.subarray(id.start, id.end) : NULL,
    MSG_TYPE,
    type ? m.header.subarray(type.start, type.end) : NULL,
    PARENT,
    m.parent.length > 0 ? m.parent : EMPTY_OBJECT,
    METADATA,
    m.metadata.length > 0 ? m.metadata : EMPTY_OBJECT,
    CONTENT,
    m.content.length > 0 ? m.content : EMPTY_OBJECT,
    binary ? tail.binary : tail.text,
  ];
  let jsonLength = 0;
  for (const c of json) jsonLength += c.length;
  if (!binary) return { chunks: json, length: jsonLength, binary: false };

  const nbufs = 1 + m.buffers.length;
  const table = Buffer.allocUnsafe(4 * (nbufs + 1));
  table.writeUInt32BE(nbufs, 0);
  let offset = table.length;
  table.writeUInt32BE(offset, 4);
  offset += jsonLength;
  for (let k = 0; k < m.buffers.length; k++) {
    table.writeUInt32BE(offset, 8 + 4 * k);
    offset += m.buffers[k]!.length;
  }
  return { chunks: [table, ...json, ...m.buffers], length: offset, binary: true };
}

export { JsonScanError };
