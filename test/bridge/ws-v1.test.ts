/** The v1.kernel.websocket.jupyter.org subprotocol: little-endian uint64 count and offsets, then the parts. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FrameError, type ClientMessage } from '../../src/bridge/client-message.js';
import { decodeV1Frame, encodeV1Frame, V1_PROTOCOL } from '../../src/bridge/ws-v1.js';
import type { MessageParts } from '../../src/bridge/wire.js';
import { jsonBinaryEncode, v1Encode } from './client-codec.js';
import { expectFrameError } from './expect-frame-error.js';

const b = (s: string): Buffer => Buffer.from(s, 'utf8');
const bytes = (...xs: number[]): Buffer => Buffer.from(xs);
/** A little-endian uint64 written out byte by byte (values below 2^32). */
const u64 = (v: number): number[] => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff, 0, 0, 0, 0];
const table = (...vs: number[]): Buffer => Buffer.from(vs.flatMap(u64));

describe('V1_PROTOCOL', () => {
  it('is the subprotocol name JupyterLab offers', () => {
    expect(V1_PROTOCOL).toBe('v1.kernel.websocket.jupyter.org');
  });
});

describe('decodeV1Frame', () => {
  const header = b('{"msg_id":"a"}');
  const content = b('{"x":"é"}');

  it('decodes a frame with one buffer built byte by byte', () => {
    expect(header.length).toBe(14);
    expect(content.length).toBe(10);
    // n = 7 offsets, so the table is 8·8 = 64 bytes; parts: "shell" 5, header 14, {} 2, {} 2, content 10, buffer 3.
    const frame = Buffer.concat([table(7, 64, 69, 83, 85, 87, 97, 100), b('shell'), header, b('{}'), b('{}'), content, bytes(1, 2, 3)]);
    expect(frame.length).toBe(100);
    const m = decodeV1Frame(frame, true);
    expect(m.channel).toBe('shell');
    expect(m.header.equals(header)).toBe(true);
    expect(String(m.parent)).toBe('{}');
    expect(String(m.metadata)).toBe('{}');
    expect(m.content.equals(content)).toBe(true);
    expect(m.buffers.length).toBe(1);
    expect(m.buffers[0]!.equals(bytes(1, 2, 3))).toBe(true);
  });

  it('decodes a frame with no buffers (n = 6)', () => {
    const frame = Buffer.concat([table(6, 56, 63, 77, 79, 81, 91), b('control'), header, b('{}'), b('{}'), content]);
    expect(frame.length).toBe(91);
    const m = decodeV1Frame(frame, true);
    expect(m.channel).toBe('control');
    expect(m.content.toString()).toBe('{"x":"é"}');
    expect(m.buffers).toEqual([]);
  });

  it('decodes several buffers, empty ones included', () => {
    // n = 9: "stdin" 5, header 14, {} 2, {} 2, content 10, then buffers of 0, 4, 0 bytes.
    const frame = Buffer.concat([table(9, 80, 85, 99, 101, 103, 113, 113, 117, 117), b('stdin'), header, b('{}'), b('{}'), content, bytes(9, 8, 7, 6)]);
    const m = decodeV1Frame(frame, true);
    expect(m.channel).toBe('stdin');
    expect(m.buffers.map((x) => [...x])).toEqual([[], [9, 8, 7, 6], []]);
  });

  it('keeps unicode in every JSON part byte-exact', () => {
    const p = { header: b('{"msg_id":"ü-中-🌍"}'), parent: b('{"a":"ß"}'), metadata: b('{"m":"😀"}'), content: b('{"code":"print(\'日本語\')"}'), buffers: [b('🦄')] };
    const m = decodeV1Frame(v1Encode('shell', p), true);
    for (const k of ['header', 'parent', 'metadata', 'content'] as const) expect(m[k].equals(p[k])).toBe(true);
    expect(m.buffers[0]!.equals(b('🦄'))).toBe(true);
  });

  it('returns views into the frame, not copies', () => {
    const frame = v1Encode('shell', { header, parent: b('{}'), metadata: b('{}'), content, buffers: [Buffer.alloc(1000, 1)] });
    const m = decodeV1Frame(frame, true);
    expect(m.buffers[0]!.buffer).toBe(frame.buffer);
  });
});

describe('decodeV1Frame: malformed frames throw FrameError', () => {
  const good = (): Buffer => v1Encode('shell', { header: b('{"msg_id":"1"}'), parent: b('{}'), metadata: b('{}'), content: b('{}'), buffers: [b('xyz')] });

  it('sanity: the frame the cases below break is accepted', () => {
    expect(decodeV1Frame(good(), true).buffers.map(String)).toEqual(['xyz']);
  });

  it('a text frame', () => {
    expectFrameError(() => decodeV1Frame(good(), false));
    expectFrameError(() => decodeV1Frame(b('{"header":{},"content":{},"channel":"shell"}'), false));
  });

  it('a JSON text message sent as binary, and a JSON-protocol binary-form frame', () => {
    expectFrameError(() => decodeV1Frame(b('{"header":{},"content":{},"channel":"shell"}'), true));
    expectFrameError(() => decodeV1Frame(jsonBinaryEncode(b('{"header":{},"content":{}}'), [b('x')]), true));
  });

  it.each([0, 1, 4, 7])('a frame of %i bytes', (n) => {
    expectFrameError(() => decodeV1Frame(Buffer.alloc(n), true));
  });

  it('counts of 0, 5 (fewer than the 5 parts), 2^32, 2^40 and 2^64 - 1', () => {
    expectFrameError(() => decodeV1Frame(Buffer.concat([table(0), Buffer.alloc(64)]), true));
    expectFrameError(() => decodeV1Frame(table(5, 48, 53, 55, 57, 59), true));
    expectFrameError(() => decodeV1Frame(Buffer.concat([bytes(0, 0, 0, 0, 1, 0, 0, 0), good().subarray(8)]), true));
    expectFrameError(() => decodeV1Frame(Buffer.concat([bytes(0, 0, 0, 0, 0, 1, 0, 0), good().subarray(8)]), true));
    expectFrameError(() => decodeV1Frame(Buffer.concat([Buffer.alloc(8, 0xff), good().subarray(8)]), true));
  });

  it('a count larger than MAX_BUFFERS allows, with a table that fits', () => {
    const n = 4096 + 7;
    const f = Buffer.alloc(8 * (n + 1) + 5);
    f.writeUInt32LE(n, 0);
    for (let k = 0; k < n; k++) f.writeUInt32LE(k === n - 1 ? f.length : 8 * (n + 1), 8 * (k + 1));
    f.write('shell', 8 * (n + 1));
    expectFrameError(() => decodeV1Frame(f, true));
  });

  it('a truncated offsets table', () => {
    const f = good();
    for (let end = 0; end < 8 * 8; end++) expectFrameError(() => decodeV1Frame(f.subarray(0, end), true));
  });

  it('a truncated frame (last offset past the end) and a frame longer than its last offset', () => {
    const f = good();
    expectFrameError(() => decodeV1Frame(f.subarray(0, f.length - 1), true));
    expectFrameError(() => decodeV1Frame(Buffer.concat([f, bytes(0)]), true));
  });

  it('a first offset other than 8·(n+1)', () => {
    const f = good();
    f.writeUInt32LE(8 * 8 - 8, 8);
    expectFrameError(() => decodeV1Frame(f, true));
    // Big-endian (JSON-protocol habit) offsets.
    const g = good();
    g.writeUInt32BE(7, 0);
    g.writeUInt32LE(0, 4);
    expectFrameError(() => decodeV1Frame(g, true));
  });

  it('decreasing offsets and offsets past the end', () => {
    // header {"msg_id":"1"} is 14 bytes; offsets 64, 69, 83, 85, 87, 89, 92 for a 92-byte frame.
    const f = good();
    expect(f.length).toBe(92);
    expect(f.equals(Buffer.concat([table(7, 64, 69, 83, 85, 87, 89, 92), f.subarray(64)]))).toBe(true);
    const body = f.subarray(64);
    expectFrameError(() => decodeV1Frame(Buffer.concat([table(7, 64, 69, 85, 83, 87, 89, 92), body]), true));
    expectFrameError(() => decodeV1Frame(Buffer.concat([table(7, 64, 69, 83, 85, 87, 93, 92), body]), true));
    expectFrameError(() => decodeV1Frame(Buffer.concat([table(7, 64, 69, 83, 85, 87, 89, 1000), body]), true));
    expectFrameError(() => decodeV1Frame(Buffer.concat([table(7, 64, 69, 83, 85, 87, 89, 0xffffffff), body]), true));
    expectFrameError(() => decodeV1Frame(Buffer.concat([table(7, 64, 0, 83, 85, 87, 89, 92), body]), true));
  });

  it('an offset with its high 32 bits set', () => {
    const f = good();
    f.writeUInt32LE(1, 8 * 3 + 4); // the third offset becomes 2^32 + 83
    expectFrameError(() => decodeV1Frame(f, true));
  });

  it.each([
    ['iopub (kernel output only)', b('iopub')],
    ['unknown', b('foo')],
    ['empty', b('')],
    ['upper case', b('SHELL')],
    ['with a NUL', b('shell\0')],
    ['invalid UTF-8', Buffer.concat([b('shel'), bytes(0xff)])],
    ['invalid UTF-8 that decodes to the replacement character', bytes(0xef, 0xbf, 0xbd)],
    ['an overlong encoding', Buffer.concat([bytes(0xc1, 0xb3), b('hell')])],
  ])('a channel that is %s', (_name, channel) => {
    const chunks = [b('{"msg_id":"1"}'), b('{}'), b('{}'), b('{}')];
    const n = 6;
    const offsets = [8 * (n + 1)];
    for (const c of [channel, ...chunks]) offsets.push(offsets[offsets.length - 1]! + c.length);
    expectFrameError(() => decodeV1Frame(Buffer.concat([table(n, ...offsets), channel, ...chunks]), true));
  });

  it.each([
    ['empty', ''],
    ['a JSON array', '[]'],
    ['a JSON string', '"{}"'],
    ['null', 'null'],
    ['whitespace-led garbage', ' x'],
  ])('a header that is %s', (_name, h) => {
    expectFrameError(() => decodeV1Frame(v1Encode('shell', { header: b(h), parent: b('{}'), metadata: b('{}'), content: b('{}'), buffers: [] }), true));
  });

  it('random bytes either decode or throw FrameError, as binary or text', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.boolean(), (arr, isBinary) => decodesOrFrameError(Buffer.from(arr), isBinary)),
      { numRuns: 2000 },
    );
  });

  it('random tables (small counts, random offsets, random high words) decode or throw FrameError', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 10 }),
        fc.array(fc.tuple(fc.integer({ min: 0, max: 160 }), fc.constantFrom(0, 0, 0, 1, 0xffffffff)), { maxLength: 11 }),
        fc.uint8Array({ maxLength: 96 }),
        (n, offs, tail) => {
          const t = Buffer.alloc(8 + 8 * offs.length);
          t.writeUInt32LE(n, 0);
          offs.forEach(([lo, hi], k) => {
            t.writeUInt32LE(lo, 8 * (k + 1));
            t.writeUInt32LE(hi, 8 * (k + 1) + 4);
          });
          decodesOrFrameError(Buffer.concat([t, b('shell{"a":1}{}{}{}'), tail]), true);
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('one-byte mutations and truncations of a valid frame decode or throw FrameError', () => {
    const valid = v1Encode('control', { header: b('{"msg_id":"é"}'), parent: b('{}'), metadata: b('{}'), content: b('{"a":1}'), buffers: [b('ab'), Buffer.alloc(0)] });
    fc.assert(
      fc.property(fc.nat({ max: valid.length - 1 }), fc.integer({ min: 0, max: 255 }), fc.nat({ max: valid.length }), (at, v, cut) => {
        const f = Buffer.from(valid);
        f[at] = v;
        decodesOrFrameError(f, true);
        decodesOrFrameError(f.subarray(0, cut), true);
      }),
      { numRuns: 2000 },
    );
  });
});

/** The oracle for fuzzing: either FrameError, or a message whose parts tile the frame after its table. */
function decodesOrFrameError(frame: Buffer, isBinary: boolean): void {
  let m: ClientMessage;
  try {
    m = decodeV1Frame(frame, isBinary);
  } catch (e) {
    expect(e).toBeInstanceOf(FrameError);
    return;
  }
  expect(isBinary).toBe(true);
  expect(['shell', 'control', 'stdin']).toContain(m.channel);
  expect(m.header[0]).toBe(0x7b);
  const n = frame.readUInt32LE(0);
  let total = 8 * (n + 1) + Buffer.byteLength(m.channel);
  for (const x of [m.header, m.parent, m.metadata, m.content, ...m.buffers]) total += x.length;
  expect(total).toBe(frame.length);
  expect(m.buffers.length).toBe(n - 6);
}

describe('encodeV1Frame', () => {
  const p = (buffers: Buffer[]): MessageParts => ({
    header: b('{"msg_id":"a"}'),
    parent: b('{}'),
    metadata: b('{}'),
    content: b('{"x":"é"}'),
    buffers,
  });

  it('encodes a message without buffers: n = 6, offsets from 56 to the total length', () => {
    const f = encodeV1Frame('iopub', p([]));
    expect(f.binary).toBe(true);
    const out = Buffer.concat(f.chunks);
    const expected = Buffer.concat([table(6, 56, 61, 75, 77, 79, 89), b('iopub'), b('{"msg_id":"a"}'), b('{}'), b('{}'), b('{"x":"é"}')]);
    expect(out.equals(expected)).toBe(true);
    expect(f.length).toBe(89);
  });

  it('encodes one buffer: n = 7', () => {
    const out = Buffer.concat(encodeV1Frame('shell', p([bytes(1, 2, 3)])).chunks);
    const expected = Buffer.concat([table(7, 64, 69, 83, 85, 87, 97, 100), b('shell'), b('{"msg_id":"a"}'), b('{}'), b('{}'), b('{"x":"é"}'), bytes(1, 2, 3)]);
    expect(out.equals(expected)).toBe(true);
  });

  it('encodes several buffers, empty ones included', () => {
    const f = encodeV1Frame('stdin', p([Buffer.alloc(0), bytes(9, 8, 7, 6), Buffer.alloc(0)]));
    const out = Buffer.concat(f.chunks);
    const expected = Buffer.concat([table(9, 80, 85, 99, 101, 103, 113, 113, 117, 117), b('stdin'), b('{"msg_id":"a"}'), b('{}'), b('{}'), b('{"x":"é"}'), bytes(9, 8, 7, 6)]);
    expect(out.equals(expected)).toBe(true);
    expect(f.length).toBe(117);
  });

  it.each(['shell', 'control', 'stdin', 'iopub'] as const)('writes channel %s as its UTF-8 name', (ch) => {
    const out = Buffer.concat(encodeV1Frame(ch, p([])).chunks);
    expect(out.toString('utf8', 56, 56 + ch.length)).toBe(ch);
  });

  it("passes the kernel's frames through as chunks, without copying them", () => {
    const big = Buffer.alloc(100_000, 3);
    const m = p([big]);
    const f = encodeV1Frame('iopub', m);
    expect(f.chunks).toContain(big);
    expect(f.chunks).toContain(m.content);
  });

  it('writes zero high words, even into a reused (allocUnsafe) table', () => {
    // Fill the pool with 0xff so leftovers in an unzeroed table would show.
    for (let i = 0; i < 50; i++) Buffer.allocUnsafe(128).fill(0xff);
    const out = Buffer.concat(encodeV1Frame('iopub', p([bytes(1)])).chunks);
    for (let k = 0; k <= 7; k++) expect(out.readUInt32LE(8 * k + 4), `high word ${k}`).toBe(0);
  });
});
