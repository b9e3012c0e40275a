/**
 * Round trips of random messages through kgate's codecs and a client's codec
 * written from the DESIGN.md layouts (test/bridge/client-codec.ts), on both
 * WebSocket protocols and in both directions.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeJsonFrame, encodeJsonFrame } from '../../src/bridge/ws-json.js';
import { decodeV1Frame, encodeV1Frame } from '../../src/bridge/ws-v1.js';
import { Signer, splitWire, toWire, type Channel, type InputChannel, type MessageParts } from '../../src/bridge/wire.js';
import { jsonBinaryDecode, jsonBinaryEncode, jsonTextDecode, pseudoRandomBuffer, v1Decode, v1Encode } from './client-codec.js';

const NUM_RUNS = 200;
const MAX_BUFFER = 256 * 1024;

type Json = Record<string, unknown>;

/** JSON objects with arbitrary (astral, combining, control) characters in keys and strings. */
const jsonObject = (maxDepth: number): fc.Arbitrary<Json> =>
  fc.dictionary(fc.string({ unit: 'binary', maxLength: 12 }), fc.jsonValue({ stringUnit: 'binary', maxDepth }), { maxKeys: 6 }) as fc.Arbitrary<Json>;

const header: fc.Arbitrary<Json> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc
      .tuple(fc.uuid(), fc.string({ unit: 'grapheme', maxLength: 20 }), jsonObject(1))
      .map(([id, type, extra]) => ({ ...extra, msg_id: id, msg_type: type, version: '5.3' })),
  },
  { weight: 1, arbitrary: jsonObject(2) },
);

/** A buffer length: empty, tiny, or anything up to 256 KiB. */
const bufferLength = fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 64 }), fc.noBias(fc.integer({ min: 0, max: MAX_BUFFER })));
const buffers = fc.array(fc.tuple(bufferLength, fc.integer()), { maxLength: 8 }).map((specs) => specs.map(([n, seed]) => pseudoRandomBuffer(n, seed)));

const message = fc.record({ header, parent: jsonObject(3), metadata: jsonObject(2), content: jsonObject(4), buffers });
/** How a kernel serialises: jupyter_client's json.dumps puts spaces after ':' and ','; indentation covers any whitespace. */
const style = fc.constantFrom<[undefined | number]>([undefined], [1]);

const utf8 = (v: unknown, indent?: number): Buffer => Buffer.from(JSON.stringify(v, null, indent), 'utf8');

function kernelParts(m: { header: Json; parent: Json; metadata: Json; content: Json; buffers: Buffer[] }, indent?: number): MessageParts {
  return { header: utf8(m.header, indent), parent: utf8(m.parent, indent), metadata: utf8(m.metadata, indent), content: utf8(m.content, indent), buffers: m.buffers };
}

function expectSameBuffers(got: Buffer[], want: Buffer[]): void {
  expect(got.length).toBe(want.length);
  got.forEach((x, k) => expect(x.equals(want[k]!), `buffer ${k} (${want[k]!.length} bytes)`).toBe(true));
}

const outputChannel = fc.constantFrom<Channel>('iopub', 'shell', 'control', 'stdin');
const inputChannel = fc.constantFrom<InputChannel>('shell', 'control', 'stdin');

describe('kernel → client', () => {
  it('v1: encodeV1Frame then the client decode gives back the channel and every part byte-exact', () => {
    fc.assert(
      fc.property(outputChannel, message, style, (channel, m, [indent]) => {
        const p = kernelParts(m, indent);
        const f = encodeV1Frame(channel, p);
        const frame = Buffer.concat(f.chunks);
        expect(frame.length).toBe(f.length);
        expect(f.binary).toBe(true);
        const d = v1Decode(frame);
        expect(d.channel).toBe(channel);
        for (const k of ['header', 'parent', 'metadata', 'content'] as const) expect(d[k].equals(p[k]), k).toBe(true);
        expectSameBuffers(d.buffers, p.buffers);
      }),
      { numRuns: NUM_RUNS },
    );
  });

  it('JSON protocol: encodeJsonFrame then the client decode gives back every part and buffer', () => {
    fc.assert(
      fc.property(outputChannel, message, style, (channel, m, [indent]) => {
        const p = kernelParts(m, indent);
        const f = encodeJsonFrame(channel, p);
        const frame = Buffer.concat(f.chunks);
        expect(frame.length).toBe(f.length);
        let msg: Json;
        if (p.buffers.length === 0) {
          expect(f.binary).toBe(false);
          msg = jsonTextDecode(frame);
          expect(msg.buffers).toEqual([]);
        } else {
          expect(f.binary).toBe(true);
          const d = jsonBinaryDecode(frame);
          msg = d.msg;
          expectSameBuffers(d.buffers, p.buffers);
        }
        expect(msg.channel).toBe(channel);
        // The client sees the values the kernel serialised; re-serialised, they are the kernel's bytes.
        const parsed = (x: Buffer): unknown => JSON.parse(x.toString('utf8'));
        expect(msg.header).toEqual(parsed(p.header));
        expect(msg.parent_header).toEqual(parsed(p.parent));
        expect(msg.metadata).toEqual(parsed(p.metadata));
        expect(msg.content).toEqual(parsed(p.content));
        if (indent === undefined) {
          expect(utf8(msg.header).equals(p.header)).toBe(true);
          expect(utf8(msg.content).equals(p.content)).toBe(true);
        }
        expect(msg.msg_id).toEqual(m.header.msg_id ?? null);
        expect(msg.msg_type).toEqual(m.header.msg_type ?? null);
      }),
      { numRuns: NUM_RUNS },
    );
  });
});

describe('client → kernel', () => {
  it('v1: the client encode then decodeV1Frame gives back the channel, parts and buffers byte-exact, and they sign and verify on the wire', () => {
    const signer = new Signer('b1d5e5a4-5c1e-4a8f-9d2e-0f6f1c2b3a4d');
    fc.assert(
      fc.property(inputChannel, message, style, (channel, m, [indent]) => {
        const p = kernelParts(m, indent);
        const got = decodeV1Frame(v1Encode(channel, p), true);
        expect(got.channel).toBe(channel);
        for (const k of ['header', 'parent', 'metadata', 'content'] as const) expect(got[k].equals(p[k]), k).toBe(true);
        expectSameBuffers(got.buffers, p.buffers);

        const w = splitWire(toWire(Buffer.from('s:session'), signer, got))!;
        expect(signer.verify(w)).toBe(true);
        expect(w.content.equals(p.content)).toBe(true);
        expectSameBuffers(w.buffers, p.buffers);
      }),
      { numRuns: NUM_RUNS },
    );
  });

  it('JSON protocol: the client encode (text, or the binary form with buffers) then decodeJsonFrame gives back channel, parts and buffers', () => {
    fc.assert(
      fc.property(fc.option(inputChannel, { nil: undefined }), message, fc.boolean(), fc.boolean(), (channel, m, nullParent, binaryWithoutBuffers) => {
        const msg: Json = { header: m.header, parent_header: nullParent ? null : m.parent, metadata: m.metadata, content: m.content };
        if (channel !== undefined) msg.channel = channel;
        let got;
        if (m.buffers.length === 0 && !binaryWithoutBuffers) {
          got = decodeJsonFrame(utf8({ ...msg, buffers: [] }), false);
        } else {
          got = decodeJsonFrame(jsonBinaryEncode(utf8(msg), m.buffers), true);
        }
        expect(got.channel).toBe(channel ?? 'shell');
        // JSON.stringify of the whole message embeds each member's own serialisation verbatim.
        expect(got.header.equals(utf8(m.header))).toBe(true);
        expect(got.parent.equals(nullParent ? Buffer.from('{}') : utf8(m.parent))).toBe(true);
        expect(got.metadata.equals(utf8(m.metadata))).toBe(true);
        expect(got.content.equals(utf8(m.content))).toBe(true);
        expectSameBuffers(got.buffers, m.buffers);
      }),
      { numRuns: NUM_RUNS },
    );
  });

  it("JSON protocol: any order, extra members up to the bound (old clients' msg_id and msg_type among them) and earlier duplicates change nothing", () => {
    const extra = fc.tuple(
      fc.oneof(fc.constantFrom('msg_id', 'msg_type', 'buffers', 'Header', 'contents'), fc.string({ unit: 'binary', maxLength: 10 })),
      fc.jsonValue({ stringUnit: 'binary', maxDepth: 2 }),
    );
    fc.assert(
      fc.property(
        inputChannel,
        message,
        fc.array(extra, { maxLength: 24 }),
        fc.array(fc.constantFrom('header', 'parent_header', 'metadata', 'content', 'channel'), { maxLength: 2 }),
        fc.nat(),
        (channel, m, extras, dups, seed) => {
          const known: [string, unknown][] = [
            ['header', m.header],
            ['parent_header', m.parent],
            ['metadata', m.metadata],
            ['content', m.content],
            ['channel', channel],
          ];
          const wantedNames = new Set(known.map(([k]) => k));
          // The kept members last, in a shuffled order, behind the extras and the duplicates that JSON.parse drops.
          const members = [...extras.filter(([k]) => !wantedNames.has(k)), ...dups.map((k): [string, unknown] => [k, { dropped: true }])];
          const kept = [...known];
          for (let k = kept.length - 1; k > 0; k--) {
            const j = (seed + k * 7919) % (k + 1);
            [kept[k], kept[j]] = [kept[j]!, kept[k]!];
          }
          members.push(...kept);
          const json = Buffer.from(`{${members.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(',')}}`, 'utf8');
          const got = decodeJsonFrame(m.buffers.length === 0 ? json : jsonBinaryEncode(json, m.buffers), m.buffers.length > 0);
          expect(got.channel).toBe(channel);
          expect(got.header.equals(utf8(m.header))).toBe(true);
          expect(got.parent.equals(utf8(m.parent))).toBe(true);
          expect(got.metadata.equals(utf8(m.metadata))).toBe(true);
          expect(got.content.equals(utf8(m.content))).toBe(true);
          expectSameBuffers(got.buffers, m.buffers);
        },
      ),
      { numRuns: NUM_RUNS },
    );
  });
});
