/**
 * The JSON WebSocket form of the Jupyter protocol (no subprotocol): a text frame
 * holding `{header, parent_header, metadata, content, buffers, channel}`, or,
 * when buffers are present, a binary frame: big-endian uint32 `nbufs`, `nbufs`
 * big-endian uint32 offsets (the first is 4·(nbufs+1)), the JSON message, then
 * the buffers. See jupyter_server `services/kernels/connection/base.py`.
 */
import { isUtf8 } from 'node:buffer';
import { EMPTY_OBJECT, FrameError, MAX_BUFFERS, type ClientMessage } from './client-message.js';
import { JsonScanError, MemberLimitError, MemberNames, scanMembers } from './json-scan.js';
import { isInputChannel, type Channel, type MessageParts } from './wire.js';

/**
 * The most top-level members a client's message may have. A message has six
 * (header, parent_header, metadata, content, buffers, channel), eight from old
 * notebook clients that copy msg_id and msg_type up from the header;
 * jupyter_server ignores any others, so kgate skips them too, up to four times
 * the most a known client sends. Past that the frame is hostile, not a message:
 * it is refused (1007) at the first member over the bound, before the rest of
 * the frame is read, so the time spent on it is bounded by the bound, not by
 * the frame (5.9 million members in 60 MB once took 10 s and 700 MiB).
 */
export const MAX_TOP_LEVEL_MEMBERS = 32;

/** The members a client's message is split into; every other one is validated and skipped. */
const MESSAGE = new MemberNames(['header', 'parent_header', 'metadata', 'content', 'channel']);
const HEADER = 2 * MESSAGE.indexOf('header');
const PARENT = 2 * MESSAGE.indexOf('parent_header');
const METADATA = 2 * MESSAGE.indexOf('metadata');
const CONTENT = 2 * MESSAGE.indexOf('content');
const CHANNEL = 2 * MESSAGE.indexOf('channel');

/** The members of a kernel's header that the JSON form copies to the top level. */
const KERNEL_HEADER = new MemberNames(['msg_id', 'msg_type']);
const MSG_ID = 2 * KERNEL_HEADER.indexOf('msg_id');
const MSG_TYPE = 2 * KERNEL_HEADER.indexOf('msg_type');

/** The channels as a client spells them (`"shell"`, quotes included), so the common case is a byte compare. */
const CHANNEL_LITERALS = (['shell', 'control', 'stdin'] as const).map((ch) => ({ channel: ch, bytes: Buffer.from(JSON.stringify(ch)) }));

function describe(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** The object member at `spans[k]` (`{}` when absent, or null if `allowNull`). */
function objectPart(frame: Buffer, spans: number[], k: number, name: string, allowNull: boolean): Buffer {
  const start = spans[k]!;
  if (start < 0) return EMPTY_OBJECT;
  if (frame[start] === 0x7b /* { */) return frame.subarray(start, spans[k + 1]);
  if (allowNull && frame[start] === 0x6e /* null */) return EMPTY_OBJECT;
  throw new FrameError(`"${name}" must be a JSON object`);
}

function channelOf(frame: Buffer, start: number, end: number): string {
  if (start < 0) return 'shell';
  for (const { channel, bytes } of CHANNEL_LITERALS) {
    if (bytes.length === end - start && frame.compare(bytes, 0, bytes.length, start, end) === 0) return channel;
  }
  // Escaped, or not a channel: decoded exactly, to say which.
  const value: unknown = JSON.parse(frame.toString('utf8', start, end));
  if (typeof value !== 'string') throw new FrameError('"channel" must be a string');
  return value;
}

/** Splits the JSON part of a client message into raw parts; `buffers` come from the binary form. */
function decodeJsonPart(frame: Buffer, start: number, end: number, buffers: Buffer[]): ClientMessage {
  let spans: number[];
  try {
    spans = scanMembers(frame, MESSAGE, MAX_TOP_LEVEL_MEMBERS, start, end);
  } catch (e) {
    if (e instanceof MemberLimitError) throw new FrameError(`the message has more than ${e.limit} top-level members, at byte ${e.at}`);
    throw new FrameError(`invalid JSON message: ${describe(e)}`);
  }
  // The scanner reads bytes and does not check UTF-8 (ws does not for binary frames);
  // checked after it, so a frame the scanner stops early is not read to its end.
  if (!isUtf8(frame.subarray(start, end))) throw new FrameError('the JSON message is not valid UTF-8');
  if (spans[HEADER]! < 0 || frame[spans[HEADER]!] !== 0x7b /* { */) throw new FrameError('the message has no "header" object');
  const channel = channelOf(frame, spans[CHANNEL]!, spans[CHANNEL + 1]!);
  if (!isInputChannel(channel)) throw new FrameError(`unknown channel ${JSON.stringify(channel.slice(0, 32))}: expected shell, control or stdin`);
  return {
    channel,
    header: frame.subarray(spans[HEADER], spans[HEADER + 1]),
    parent: objectPart(frame, spans, PARENT, 'parent_header', true),
    metadata: objectPart(frame, spans, METADATA, 'metadata', true),
    content: objectPart(frame, spans, CONTENT, 'content', false),
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

const HEAD_KEY = Buffer.from('{"header":');
const MSG_ID_KEY = Buffer.from(',"msg_id":');
const MSG_TYPE_KEY = Buffer.from(',"msg_type":');
const PARENT_KEY = Buffer.from(',"parent_header":');
const METADATA_KEY = Buffer.from(',"metadata":');
const CONTENT_KEY = Buffer.from(',"content":');
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
  // A kernel's header is not a client's input: no bound on its members (none is allocated per member).
  const hdr = scanMembers(m.header, KERNEL_HEADER);
  const tail = tails.get(channel)!;
  const binary = m.buffers.length > 0;
  const json = [
    HEAD_KEY,
    m.header,
    MSG_ID_KEY,
    hdr[MSG_ID]! >= 0 ? m.header.subarray(hdr[MSG_ID], hdr[MSG_ID + 1]) : NULL,
    MSG_TYPE_KEY,
    hdr[MSG_TYPE]! >= 0 ? m.header.subarray(hdr[MSG_TYPE], hdr[MSG_TYPE + 1]) : NULL,
    PARENT_KEY,
    m.parent.length > 0 ? m.parent : EMPTY_OBJECT,
    METADATA_KEY,
    m.metadata.length > 0 ? m.metadata : EMPTY_OBJECT,
    CONTENT_KEY,
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
