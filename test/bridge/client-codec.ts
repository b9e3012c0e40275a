/**
 * A client's side of the two WebSocket protocols, written from the byte layouts
 * in DESIGN.md and independently of src/bridge (no import from it), so that the
 * tests compare kgate's codecs against the layout rather than against themselves.
 *
 * - JSON protocol, binary form: big-endian uint32 `nbufs` (= 1 + buffers), then
 *   `nbufs` big-endian uint32 offsets (the first = 4·(nbufs+1)), the JSON message,
 *   then the buffers.
 * - v1.kernel.websocket.jupyter.org: little-endian uint64 `n`, then `n`
 *   little-endian uint64 offsets (first = 8·(n+1), last = total length); the parts
 *   between offsets: channel, header, parent_header, metadata, content, buffers.
 */

/** A message as a client holds it: raw JSON parts and binary buffers. */
export interface RawParts {
  header: Buffer;
  parent: Buffer;
  metadata: Buffer;
  content: Buffer;
  buffers: Buffer[];
}

/** The chunks of a v1 frame (the offsets table first), not concatenated. */
export function v1EncodeChunks(channel: string, p: RawParts): Buffer[] {
  const parts = [Buffer.from(channel, 'utf8'), p.header, p.parent, p.metadata, p.content, ...p.buffers];
  const n = parts.length + 1;
  const table = Buffer.alloc(8 * (n + 1));
  table.writeBigUInt64LE(BigInt(n), 0);
  let offset = 8 * (n + 1);
  for (let k = 0; k < parts.length; k++) {
    table.writeBigUInt64LE(BigInt(offset), 8 * (k + 1));
    offset += parts[k]!.length;
  }
  table.writeBigUInt64LE(BigInt(offset), 8 * n);
  return [table, ...parts];
}

export function v1Encode(channel: string, p: RawParts): Buffer {
  return Buffer.concat(v1EncodeChunks(channel, p));
}

/** Decodes a v1 frame strictly (throws on any layout violation); parts are copies. */
export function v1Decode(frame: Uint8Array): { channel: string } & RawParts {
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const n = Number(view.getBigUint64(0, true));
  if (n < 6) throw new Error(`v1: n=${n} < 6`);
  const offsets: number[] = [];
  for (let k = 0; k < n; k++) offsets.push(Number(view.getBigUint64(8 * (k + 1), true)));
  if (offsets[0] !== 8 * (n + 1)) throw new Error('v1: bad first offset');
  if (offsets[n - 1] !== frame.length) throw new Error('v1: last offset is not the length');
  for (let k = 1; k < n; k++) if (offsets[k]! < offsets[k - 1]!) throw new Error('v1: decreasing offsets');
  const part = (k: number): Buffer => Buffer.from(frame.slice(offsets[k]!, offsets[k + 1]!));
  const buffers: Buffer[] = [];
  for (let k = 5; k < n - 1; k++) buffers.push(part(k));
  return {
    channel: new TextDecoder('utf-8', { fatal: true }).decode(part(0)),
    header: part(1),
    parent: part(2),
    metadata: part(3),
    content: part(4),
    buffers,
  };
}

/** The chunks of a JSON-protocol binary frame (table, JSON, buffers), not concatenated. */
export function jsonBinaryEncodeChunks(json: Buffer, buffers: Buffer[]): Buffer[] {
  const nbufs = 1 + buffers.length;
  const table = Buffer.alloc(4 * (nbufs + 1));
  const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
  view.setUint32(0, nbufs, false);
  let offset = 4 * (nbufs + 1);
  const parts = [json, ...buffers];
  for (let k = 0; k < nbufs; k++) {
    view.setUint32(4 * (k + 1), offset, false);
    offset += parts[k]!.length;
  }
  return [table, ...parts];
}

export function jsonBinaryEncode(json: Buffer, buffers: Buffer[]): Buffer {
  return Buffer.concat(jsonBinaryEncodeChunks(json, buffers));
}

/** Decodes a JSON-protocol binary frame strictly into its parsed JSON and copied buffers. */
export function jsonBinaryDecode(frame: Uint8Array): { msg: Record<string, unknown>; buffers: Buffer[] } {
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const nbufs = view.getUint32(0, false);
  if (nbufs < 1) throw new Error('json binary: nbufs < 1');
  const offsets: number[] = [];
  for (let k = 0; k < nbufs; k++) offsets.push(view.getUint32(4 * (k + 1), false));
  if (offsets[0] !== 4 * (nbufs + 1)) throw new Error('json binary: bad first offset');
  offsets.push(frame.length);
  for (let k = 1; k <= nbufs; k++) if (offsets[k]! < offsets[k - 1]!) throw new Error('json binary: decreasing offsets');
  const text = new TextDecoder('utf-8', { fatal: true }).decode(frame.slice(offsets[0], offsets[1]));
  const buffers: Buffer[] = [];
  for (let k = 1; k < nbufs; k++) buffers.push(Buffer.from(frame.slice(offsets[k]!, offsets[k + 1]!)));
  return { msg: JSON.parse(text) as Record<string, unknown>, buffers };
}

/** Decodes a JSON-protocol text frame. */
export function jsonTextDecode(frame: Uint8Array): Record<string, unknown> {
  return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(frame)) as Record<string, unknown>;
}

/** A deterministic pseudo-random buffer (xorshift32), cheap for megabytes. */
export function pseudoRandomBuffer(length: number, seed: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  let x = seed | 0 || 0x9e3779b9;
  let i = 0;
  for (; i + 4 <= length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out.writeInt32LE(x | 0, i);
  }
  for (; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** Concatenates an encoder's chunks, as the wire would carry them. */
export function joined(chunks: readonly Uint8Array[]): Buffer {
  return Buffer.concat(chunks);
}
