/** The JSON WebSocket protocol (no subprotocol): text frames, and the binary form with big-endian uint32 offsets. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FrameError, type ClientMessage } from '../../src/bridge/client-message.js';
import { decodeJsonFrame, encodeJsonFrame, JsonScanError } from '../../src/bridge/ws-json.js';
import type { MessageParts } from '../../src/bridge/wire.js';
import { jsonBinaryEncode, v1Encode } from './client-codec.js';
import { expectFrameError } from './expect-frame-error.js';
import { manyMembers } from './many-members.js';

const b = (s: string): Buffer => Buffer.from(s, 'utf8');
const bytes = (...xs: number[]): Buffer => Buffer.from(xs);

describe('decodeJsonFrame: text frames', () => {
  it('splits {header, parent_header, metadata, content, buffers, channel} into the raw member bytes', () => {
    const header = '{"msg_id":"abc","msg_type":"execute_request","session":"s","username":"u","version":"5.3"}';
    const content = '{"code":"print(\\"héllo 🌍 中文\\")","silent":false}';
    const frame = b(`{"header":${header},"parent_header":{},"metadata":{"cellId":"c1"},"content":${content},"buffers":[],"channel":"control"}`);
    const m = decodeJsonFrame(frame, false);
    expect(m.channel).toBe('control');
    expect(m.header.equals(b(header))).toBe(true);
    expect(m.parent.equals(b('{}'))).toBe(true);
    expect(m.metadata.equals(b('{"cellId":"c1"}'))).toBe(true);
    expect(m.content.equals(b(content))).toBe(true);
    expect(JSON.parse(m.content.toString()).code).toBe('print("héllo 🌍 中文")');
    expect(m.buffers).toEqual([]);
  });

  it('keeps member bytes exactly as sent, whitespace and escapes included (no re-serialisation)', () => {
    const content = '{ "code" : "a\\u00e9\\n" ,\n "x": [1, 2.50, -0] }';
    const m = decodeJsonFrame(b(`{\n  "channel": "shell",\n  "header": {"msg_id": "1"},\n  "content": ${content}\n}\n`), false);
    expect(m.content.toString()).toBe(content);
    expect(m.header.toString()).toBe('{"msg_id": "1"}');
  });

  it.each(['shell', 'control', 'stdin'] as const)('accepts channel %s', (ch) => {
    expect(decodeJsonFrame(b(`{"header":{},"content":{},"channel":"${ch}"}`), false).channel).toBe(ch);
  });

  it('defaults to shell without a channel, and to {} without parent_header, metadata or content', () => {
    const m = decodeJsonFrame(b('{"header":{"msg_id":"1"}}'), false);
    expect(m.channel).toBe('shell');
    expect(String(m.parent)).toBe('{}');
    expect(String(m.metadata)).toBe('{}');
    expect(String(m.content)).toBe('{}');
  });

  it('takes a null parent_header or metadata as {}', () => {
    const m = decodeJsonFrame(b('{"header":{},"parent_header":null,"metadata":null,"content":{"a":1}}'), false);
    expect(String(m.parent)).toBe('{}');
    expect(String(m.metadata)).toBe('{}');
    expect(String(m.content)).toBe('{"a":1}');
  });

  it('decodes an escaped channel name', () => {
    expect(decodeJsonFrame(b('{"header":{},"channel":"st\\u0064in"}'), false).channel).toBe('stdin');
  });
});

/** The documented bound on a message's top-level members (README, close code 1007). */
const MEMBER_LIMIT = 32;

/** `{"header":{},` then `n` members, then `"content":{}}`. */
const frameWithMembers = (n: number): Buffer => manyMembers(n, '{"header":{},', '"content":{}}');

/** The FrameError `f` throws (closing with 1007), and the byte position its message reports. */
function refusedAt(f: () => unknown): { message: string; at: number } {
  let thrown: unknown;
  expectFrameError(() => {
    try {
      f();
    } catch (e) {
      thrown = e;
      throw e;
    }
  });
  const message = (thrown as Error).message;
  const at = /at byte (\d+)/.exec(message);
  expect(at, `a byte position in "${message}"`).not.toBeNull();
  return { message, at: Number(at![1]) };
}

const members = (n: number, name = (k: number) => `x${k}`): string => Array.from({ length: n }, (_, k) => `"${name(k)}":${k}`).join(',');

describe('decodeJsonFrame: top-level members', () => {
  it(`refuses a 59 MB frame of 5.9 million top-level members as soon as it has more than ${MEMBER_LIMIT}, naming the limit`, () => {
    const frame = frameWithMembers(5_900_000);
    expect(frame.length).toBeGreaterThan(59_000_000);
    const { message, at } = refusedAt(() => decodeJsonFrame(frame, false));
    expect(message).toMatch(new RegExp(`more than ${MEMBER_LIMIT} top-level members`));
    // The header is member 1, so member 33 starts at 13 + 10·31 = 323: the scanner stopped there, not 59 MB later.
    expect(at).toBe(13 + 10 * (MEMBER_LIMIT - 1));
    // The same in the binary form, where positions count from the start of the frame.
    const binary = jsonBinaryEncode(frameWithMembers(100_000), [b('x')]);
    expect(refusedAt(() => decodeJsonFrame(binary, true)).at).toBe(12 + 13 + 10 * (MEMBER_LIMIT - 1));
  });

  it(`decodes frames of 1 to ${MEMBER_LIMIT} top-level members, header first or last, and refuses ${MEMBER_LIMIT + 1}`, () => {
    for (let n = 1; n <= MEMBER_LIMIT + 1; n++) {
      const others = members(n - 1);
      for (const s of [`{"header":{"msg_id":"m"}${others ? `,${others}` : ''}}`, `{${others ? `${others},` : ''}"header":{"msg_id":"m"}}`]) {
        if (n <= MEMBER_LIMIT) {
          const m = decodeJsonFrame(b(s), false);
          expect(String(m.header), `${n} members`).toBe('{"msg_id":"m"}');
          expect(String(m.content)).toBe('{}');
        } else {
          expect(refusedAt(() => decodeJsonFrame(b(s), false)).message).toMatch(/more than 32 top-level members/);
        }
      }
    }
  });

  it('counts every member toward the limit: known, unknown and duplicates', () => {
    const known = ['parent_header', 'metadata', 'content', 'buffers', 'channel', 'msg_id', 'msg_type'];
    const value = (k: string): string => (k === 'buffers' ? '[]' : k === 'channel' ? '"shell"' : k.startsWith('msg_') ? '"x"' : '{}');
    const spread = Array.from({ length: MEMBER_LIMIT - 1 }, (_, k) => known[k % known.length]!).map((k) => `"${k}":${value(k)}`);
    expect(decodeJsonFrame(b(`{"header":{},${spread.join(',')}}`), false).channel).toBe('shell');
    refusedAt(() => decodeJsonFrame(b(`{"header":{},${spread.join(',')},"content":{}}`), false));
    refusedAt(() =>
      decodeJsonFrame(
        b(
          `{${Array(MEMBER_LIMIT + 1)
            .fill('"header":{}')
            .join(',')}}`,
        ),
        false,
      ),
    );
  });

  it("skips unknown members of any kind of value, old clients' msg_id and msg_type included", () => {
    const m = decodeJsonFrame(
      b(
        '{"msg_id":"1","msg_type":"execute_request","header":{"msg_id":"1"},"x":[{"header":{}}],"content2":{"a":1},"":null,"h":"header","content":{"code":"1"},"cont":{},"channel":"control","channelx":"iopub"}',
      ),
      false,
    );
    expect(m.channel).toBe('control');
    expect(String(m.header)).toBe('{"msg_id":"1"}');
    expect(String(m.content)).toBe('{"code":"1"}');
    expect(String(m.parent)).toBe('{}');
  });

  it('keeps the last of duplicate members, as JSON.parse does', () => {
    const m = decodeJsonFrame(
      b(
        '{"header":{"a":1},"content":{"c":1},"channel":"stdin","metadata":{"m":1},"header":{"b":2},"content":{"c":2},"channel":"control","parent_header":{"p":1},"parent_header":null,"metadata":{"m":2}}',
      ),
      false,
    );
    expect(String(m.header)).toBe('{"b":2}');
    expect(String(m.content)).toBe('{"c":2}');
    expect(String(m.metadata)).toBe('{"m":2}');
    expect(String(m.parent)).toBe('{}');
    expect(m.channel).toBe('control');
    // A valid first value does not save an invalid last one, nor the reverse.
    expectFrameError(() => decodeJsonFrame(b('{"header":{},"content":{},"content":[]}'), false));
    expectFrameError(() => decodeJsonFrame(b('{"header":{},"header":null}'), false));
    expectFrameError(() => decodeJsonFrame(b('{"header":{},"channel":"shell","channel":"iopub"}'), false));
    expect(String(decodeJsonFrame(b('{"header":null,"header":{"ok":1}}'), false).header)).toBe('{"ok":1}');
  });

  it('decodes escaped member names exactly, as JSON.parse does, last spelling winning', () => {
    const m = decodeJsonFrame(b('{"\\u0068eader":{"h":1},"cont\\u0065nt":{"c":1},"\\u0063\\u0068\\u0061\\u006E\\u006e\\u0065\\u006c":"control","metad\\u0061ta":{"m":1}}'), false);
    expect(String(m.header)).toBe('{"h":1}');
    expect(String(m.content)).toBe('{"c":1}');
    expect(String(m.metadata)).toBe('{"m":1}');
    expect(m.channel).toBe('control');
    expect(String(decodeJsonFrame(b('{"header":{"plain":1},"h\\u0065ader":{"escaped":1}}'), false).header)).toBe('{"escaped":1}');
    expect(String(decodeJsonFrame(b('{"h\\u0065ader":{"escaped":1},"header":{"plain":1}}'), false).header)).toBe('{"plain":1}');
    // Spellings of other names: another case, a trailing NUL, a look-alike, an escaped quote.
    for (const key of ['\\u0048eader', 'header\\u0000', 'h\\u00e9ader', 'head\\"er', 'heade\\r', 'header\\/', 'héader']) {
      expectFrameError(() => decodeJsonFrame(b(`{"${key}":{}}`), false));
      expect(String(decodeJsonFrame(b(`{"header":{"ok":1},"${key}":{"no":1}}`), false).header)).toBe('{"ok":1}');
    }
  });

  it('takes a null parent_header or metadata as {} only when it is the value JSON.parse keeps', () => {
    expect(String(decodeJsonFrame(b('{"header":{},"metadata":{"m":1},"metadata":null}'), false).metadata)).toBe('{}');
    expect(String(decodeJsonFrame(b('{"header":{},"metadata":null,"metadata":{"m":1}}'), false).metadata)).toBe('{"m":1}');
  });
});

describe('decodeJsonFrame: the binary form (big-endian uint32 table)', () => {
  it('decodes one buffer from a frame built byte by byte', () => {
    const json = b('{"header":{"msg_id":"x"},"content":{"a":"é"},"channel":"shell"}');
    expect(json.length).toBe(64);
    // nbufs = 2 (the JSON + 1 buffer); offsets: 12 (= 4·3), 12 + 64 = 76.
    const frame = Buffer.concat([bytes(0, 0, 0, 2, 0, 0, 0, 12, 0, 0, 0, 76), json, bytes(0xde, 0xad, 0xbe, 0xef)]);
    const m = decodeJsonFrame(frame, true);
    expect(m.channel).toBe('shell');
    expect(String(m.header)).toBe('{"msg_id":"x"}');
    expect(String(m.content)).toBe('{"a":"é"}');
    expect(m.buffers.length).toBe(1);
    expect(m.buffers[0]!.equals(bytes(0xde, 0xad, 0xbe, 0xef))).toBe(true);
  });

  it('decodes zero buffers (nbufs = 1)', () => {
    const json = b('{"header":{"msg_id":"x"},"content":{"a":"é"},"channel":"shell"}');
    const m = decodeJsonFrame(Buffer.concat([bytes(0, 0, 0, 1, 0, 0, 0, 8), json]), true);
    expect(String(m.content)).toBe('{"a":"é"}');
    expect(m.buffers).toEqual([]);
  });

  it('decodes several buffers, empty ones included', () => {
    const json = b('{"header":{"msg_id":"m"},"parent_header":null,"metadata":{},"content":{"t":"日本"}}');
    expect(json.length).toBe(85);
    const big = Buffer.alloc(300, 0xab);
    // nbufs = 5; offsets: 24 (= 4·6), then 24 + 85 = 109 (empty), 109 ([1,2,3]), 112 (empty), 112 (300 bytes) up to 412.
    const table = bytes(0, 0, 0, 5, 0, 0, 0, 24, 0, 0, 0, 109, 0, 0, 0, 109, 0, 0, 0, 112, 0, 0, 0, 112);
    const frame = Buffer.concat([table, json, bytes(1, 2, 3), big]);
    expect(frame.length).toBe(412);
    const m = decodeJsonFrame(frame, true);
    expect(m.channel).toBe('shell');
    expect(String(m.parent)).toBe('{}');
    expect(String(m.content)).toBe('{"t":"日本"}');
    expect(m.buffers.map((x) => x.length)).toEqual([0, 3, 0, 300]);
    expect(m.buffers[1]!.equals(bytes(1, 2, 3))).toBe(true);
    expect(m.buffers[3]!.equals(big)).toBe(true);
  });

  it('decodes a frame made by the client-side encoder written from the layout', () => {
    const frame = jsonBinaryEncode(b('{"header":{},"content":{"x":1},"channel":"stdin"}'), [Buffer.alloc(0), b('ü')]);
    const m = decodeJsonFrame(frame, true);
    expect(m.channel).toBe('stdin');
    expect(m.buffers.map(String)).toEqual(['', 'ü']);
  });
});

describe('decodeJsonFrame: malformed frames throw FrameError', () => {
  const ok = '{"header":{"msg_id":"1"},"content":{},"channel":"shell"}';

  it.each([
    ['an empty text frame', ''],
    ['a JSON array', `[${ok}]`],
    ['a JSON string', JSON.stringify(ok)],
    ['a JSON number', '1'],
    ['null', 'null'],
    ['trailing garbage after the JSON', `${ok}garbage`],
    ['a second JSON object', `${ok}{}`],
    ['truncated JSON', ok.slice(0, -1)],
    ['no header', '{"content":{},"channel":"shell"}'],
    ['a null header', '{"header":null,"content":{}}'],
    ['an array header', '{"header":[],"content":{}}'],
    ['a string header', '{"header":"{}","content":{}}'],
    ['an array content', '{"header":{},"content":[]}'],
    ['a null content', '{"header":{},"content":null}'],
    ['a string parent_header', '{"header":{},"parent_header":"x"}'],
    ['an array metadata', '{"header":{},"metadata":[]}'],
    ['an unknown channel', '{"header":{},"content":{},"channel":"foo"}'],
    ['the iopub channel (kernel output only)', '{"header":{},"content":{},"channel":"iopub"}'],
    ['a channel in another case', '{"header":{},"content":{},"channel":"Shell"}'],
    ['a numeric channel', '{"header":{},"content":{},"channel":1}'],
    ['a null channel', '{"header":{},"content":{},"channel":null}'],
    ['an object channel', '{"header":{},"content":{},"channel":{"name":"shell"}}'],
  ])('%s', (_name, s) => {
    expectFrameError(() => decodeJsonFrame(b(s), false));
  });

  it('100k nested arrays in content, without overflowing the stack', () => {
    expectFrameError(() => decodeJsonFrame(b(`{"header":{},"content":{"a":${'['.repeat(100_000)}${']'.repeat(100_000)}}}`), false));
    expectFrameError(() => decodeJsonFrame(b('['.repeat(100_000)), false));
    expectFrameError(() => decodeJsonFrame(b(`{"header":${'{"a":'.repeat(100_000)}`), false));
  });

  it.each([
    ['a lone continuation byte', [0x80]],
    ['an invalid byte', [0xff]],
    ['an overlong encoding of "/"', [0xc0, 0xaf]],
    ['a UTF-16 surrogate encoded in UTF-8', [0xed, 0xa0, 0x80]],
    ['a truncated 3-byte sequence', [0xe6, 0x97]],
    ['a code point above U+10FFFF', [0xf4, 0x90, 0x80, 0x80]],
  ])('invalid UTF-8 in a string of the JSON (%s), in a text frame and in the binary form', (_name, bad) => {
    const json = Buffer.concat([b('{"header":{"msg_id":"'), Buffer.from(bad), b('"},"content":{"t":"x"}}')]);
    expectFrameError(() => decodeJsonFrame(json, false));
    expectFrameError(() => decodeJsonFrame(jsonBinaryEncode(json, [b('buf')]), true));
    const inContent = Buffer.concat([b('{"header":{},"content":{"t":"'), Buffer.from(bad), b('"}}')]);
    expectFrameError(() => decodeJsonFrame(jsonBinaryEncode(inContent, []), true));
  });

  it('a text JSON frame received as binary', () => {
    expectFrameError(() => decodeJsonFrame(b(ok), true));
  });

  it("reads a binary-form frame received as a text frame (jupyter_server's gateway client sends them so)", () => {
    const binary = jsonBinaryEncode(b(ok), [b('x')]);
    const m = decodeJsonFrame(binary, false);
    expect(m.buffers.map((x) => x.toString())).toEqual(['x']);
    expect(m).toEqual(decodeJsonFrame(binary, true));
  });

  it('a v1 frame sent to a JSON-protocol connection', () => {
    const v1 = v1Encode('shell', { header: b('{}'), parent: b('{}'), metadata: b('{}'), content: b('{}'), buffers: [] });
    expectFrameError(() => decodeJsonFrame(v1, true));
  });

  it.each([0, 1, 2, 3, 4, 5, 6, 7])('a binary frame of %i bytes (too short for a table)', (n) => {
    expectFrameError(() => decodeJsonFrame(Buffer.alloc(n), true));
    expectFrameError(() => decodeJsonFrame(Buffer.alloc(n, 0xff), true));
  });

  it('a count of 0, of 2^32 - 1, of 2^40 written as 64 bits, and more than the frame holds', () => {
    const json = b(ok);
    expectFrameError(() => decodeJsonFrame(Buffer.concat([bytes(0, 0, 0, 0, 0, 0, 0, 8), json]), true));
    expectFrameError(() => decodeJsonFrame(Buffer.concat([bytes(0xff, 0xff, 0xff, 0xff, 0, 0, 0, 8), json]), true));
    expectFrameError(() => decodeJsonFrame(Buffer.concat([bytes(0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 16), json]), true));
    // nbufs = 3 needs a 16-byte table; the frame has 12 bytes.
    expectFrameError(() => decodeJsonFrame(bytes(0, 0, 0, 3, 0, 0, 0, 16, 0, 0, 0, 16), true));
    // nbufs = 4097 (one more than MAX_BUFFERS allows), with a table that fits.
    const many = Buffer.alloc(4 * 4098 + json.length);
    many.writeUInt32BE(4097, 0);
    for (let k = 0; k < 4097; k++) many.writeUInt32BE(4 * 4098, 4 + 4 * k);
    json.copy(many, 4 * 4098);
    expectFrameError(() => decodeJsonFrame(many, true));
  });

  it('a truncated offsets table', () => {
    const frame = jsonBinaryEncode(b(ok), [b('a'), b('b'), b('c')]);
    for (let end = 0; end < 20; end++) expectFrameError(() => decodeJsonFrame(frame.subarray(0, end), true));
  });

  it('a first offset that is not 4·(nbufs+1)', () => {
    const json = b(ok);
    expectFrameError(() => decodeJsonFrame(Buffer.concat([bytes(0, 0, 0, 1, 0, 0, 0, 4), json]), true));
    expectFrameError(() => decodeJsonFrame(Buffer.concat([bytes(0, 0, 0, 1, 0, 0, 0, 9), b(' '), json]), true));
    // Little-endian offsets (a v1 habit) in a big-endian table.
    expectFrameError(() => decodeJsonFrame(Buffer.concat([bytes(1, 0, 0, 0, 8, 0, 0, 0), json]), true));
  });

  it('decreasing offsets, and offsets past the end of the frame', () => {
    const json = b(ok);
    const L = json.length;
    const frame = (table: number[], tail: Buffer): Buffer => {
      const t = Buffer.alloc(4 * table.length);
      table.forEach((v, k) => t.writeUInt32BE(v, 4 * k));
      return Buffer.concat([t, json, tail]);
    };
    const tail = b('0123456789');
    // A well-formed frame first, so the failures below are due to the offsets alone.
    expect(decodeJsonFrame(frame([3, 16, 16 + L, 16 + L + 5], tail), true).buffers.map(String)).toEqual(['01234', '56789']);
    expectFrameError(() => decodeJsonFrame(frame([3, 16, 16 + L + 5, 16 + L], tail), true));
    expectFrameError(() => decodeJsonFrame(frame([3, 16, 16 + L, 16 + L + 11], tail), true));
    expectFrameError(() => decodeJsonFrame(frame([3, 16, 16 + L, 0xffffffff], tail), true));
    expectFrameError(() => decodeJsonFrame(frame([2, 12, 10], tail.subarray(0, 4)), true));
  });

  it('a JSON part that is only complete with the bytes of the buffer after it', () => {
    const head = b('{"header":{},"content":{"a":[');
    expectFrameError(() => decodeJsonFrame(jsonBinaryEncode(head, [b(']}}')]), true));
    expectFrameError(() => decodeJsonFrame(jsonBinaryEncode(b('{"header":{},"content":{}'), [b('}')]), true));
    expectFrameError(() => decodeJsonFrame(jsonBinaryEncode(b('{"header":{},"n":-'), [b('0}')]), true));
  });

  it('random bytes either decode or throw FrameError, as text or binary', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.boolean(), (arr, isBinary) => {
        decodesOrFrameError(Buffer.from(arr), isBinary);
      }),
      { numRuns: 2000 },
    );
  });

  it('random tables (small counts, random offsets) in front of a valid message decode or throw FrameError', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 6 }), fc.array(fc.integer({ min: 0, max: 200 }), { maxLength: 7 }), fc.uint8Array({ maxLength: 64 }), (n, offs, tail) => {
        const t = Buffer.alloc(4 + 4 * offs.length);
        t.writeUInt32BE(n, 0);
        offs.forEach((v, k) => t.writeUInt32BE(v, 4 + 4 * k));
        decodesOrFrameError(Buffer.concat([t, b(ok), tail]), true);
      }),
      { numRuns: 2000 },
    );
  });

  it('one-byte mutations of a valid binary frame decode or throw FrameError', () => {
    const valid = jsonBinaryEncode(b('{"header":{"msg_id":"é"},"parent_header":{},"content":{"a":[1,"x"]},"channel":"control"}'), [b('ab'), Buffer.alloc(0)]);
    fc.assert(
      fc.property(fc.nat({ max: valid.length - 1 }), fc.integer({ min: 0, max: 255 }), fc.nat({ max: valid.length }), (at, v, cut) => {
        const f = Buffer.from(valid);
        f[at] = v;
        decodesOrFrameError(f.subarray(0, cut), true);
        decodesOrFrameError(f, true);
      }),
      { numRuns: 2000 },
    );
  });
});

/** The oracle for fuzzing: either FrameError, or a message whose JSON parts really are UTF-8 JSON objects. */
function decodesOrFrameError(frame: Buffer, isBinary: boolean): void {
  let m: ClientMessage;
  try {
    m = decodeJsonFrame(frame, isBinary);
  } catch (e) {
    expect(e).toBeInstanceOf(FrameError);
    return;
  }
  expect(['shell', 'control', 'stdin']).toContain(m.channel);
  for (const part of [m.header, m.parent, m.metadata, m.content]) {
    const v: unknown = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(part));
    expect(typeof v === 'object' && v !== null && !Array.isArray(v)).toBe(true);
  }
  let total = 0;
  for (const x of [m.header, m.parent, m.metadata, m.content, ...m.buffers]) total += x.length;
  expect(total).toBeLessThanOrEqual(frame.length + 6); // `{}` defaults are the only bytes not in the frame
}

describe('encodeJsonFrame', () => {
  const header = b('{"msg_id": "k1", "msg_type": "stream", "session": "s", "username": "u", "date": "2024-01-01T00:00:00.000000Z", "version": "5.3"}');
  const parts = (buffers: Buffer[] = []): MessageParts => ({
    header,
    parent: b('{"msg_id": "p1"}'),
    metadata: b('{}'),
    content: b('{"name": "stdout", "text": "héllo 🌍 中文\\n"}'),
    buffers,
  });

  it('without buffers: one text message {header, msg_id, msg_type, parent_header, metadata, content, buffers: [], channel}', () => {
    const f = encodeJsonFrame('iopub', parts());
    expect(f.binary).toBe(false);
    const out = Buffer.concat(f.chunks);
    expect(out.length).toBe(f.length);
    expect(JSON.parse(out.toString('utf8'))).toEqual({
      header: JSON.parse(header.toString()),
      msg_id: 'k1',
      msg_type: 'stream',
      parent_header: { msg_id: 'p1' },
      metadata: {},
      content: { name: 'stdout', text: 'héllo 🌍 中文\n' },
      buffers: [],
      channel: 'iopub',
    });
  });

  it("splices the kernel's bytes verbatim, without re-serialising them", () => {
    const out = Buffer.concat(encodeJsonFrame('shell', parts()).chunks);
    for (const raw of [header, b('{"msg_id": "p1"}'), b('{"name": "stdout", "text": "héllo 🌍 中文\\n"}')]) expect(out.includes(raw)).toBe(true);
  });

  it.each(['shell', 'control', 'stdin', 'iopub'] as const)('names channel %s', (ch) => {
    expect(JSON.parse(Buffer.concat(encodeJsonFrame(ch, parts()).chunks).toString()).channel).toBe(ch);
  });

  it('with buffers: the binary form, whose table reads nbufs then big-endian offsets', () => {
    const b1 = bytes(1, 2, 3, 4, 5);
    const b2 = Buffer.alloc(0);
    const b3 = bytes(0xff);
    const f = encodeJsonFrame('iopub', parts([b1, b2, b3]));
    expect(f.binary).toBe(true);
    const out = Buffer.concat(f.chunks);
    expect(out.length).toBe(f.length);
    // nbufs = 4: [0,0,0,4], then the first offset 4·5 = 20.
    expect([...out.subarray(0, 8)]).toEqual([0, 0, 0, 4, 0, 0, 0, 20]);
    const off = (k: number): number => (out[4 + 4 * k]! << 24) | (out[5 + 4 * k]! << 16) | (out[6 + 4 * k]! << 8) | out[7 + 4 * k]!;
    // The buffers end the frame: the last 6 bytes are b1 b2 b3.
    expect(off(1)).toBe(out.length - 6);
    expect(off(2)).toBe(out.length - 1);
    expect(off(3)).toBe(out.length - 1);
    expect([...out.subarray(out.length - 6)]).toEqual([1, 2, 3, 4, 5, 0xff]);
    const msg = JSON.parse(out.toString('utf8', 20, off(1)));
    expect(msg.channel).toBe('iopub');
    expect(msg.header.msg_id).toBe('k1');
    expect(msg.content.text).toBe('héllo 🌍 中文\n');
  });

  it('sends {} for empty parent, metadata or content frames, and null msg_id/msg_type when the header lacks them', () => {
    const f = encodeJsonFrame('iopub', { header: b('{"x":1}'), parent: Buffer.alloc(0), metadata: Buffer.alloc(0), content: Buffer.alloc(0), buffers: [] });
    const msg = JSON.parse(Buffer.concat(f.chunks).toString());
    expect(msg).toMatchObject({ header: { x: 1 }, msg_id: null, msg_type: null, parent_header: {}, metadata: {}, content: {} });
  });

  it('refuses a kernel header that is not a JSON object', () => {
    for (const h of ['', '[]', '{"a":1', 'null']) {
      expect(() => encodeJsonFrame('iopub', { ...parts(), header: b(h) })).toThrow(JsonScanError);
    }
  });
});
