/** The validating JSON scanner that splits a client's message into raw member spans. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isObjectSpan, JsonScanError, MemberLimitError, MemberNames, scanMembers, scanTopLevel, type Span } from '../../src/bridge/json-scan.js';
import { manyMembers } from './many-members.js';

const b = (s: string): Buffer => Buffer.from(s, 'utf8');
const text = (buf: Buffer, s: Span): string => buf.toString('utf8', s.start, s.end);

function members(s: string): Record<string, string> {
  const buf = b(s);
  const out: Record<string, string> = {};
  for (const [k, span] of scanTopLevel(buf)) out[k] = text(buf, span);
  return out;
}

describe('scanTopLevel: spans', () => {
  it('returns the raw bytes of each top-level member value', () => {
    const s = '{"header":{"msg_id":"a","n":[1,2,{"x":null}]},"parent_header":{},"metadata":{"k":true},"content":{"code":"1+1"},"buffers":[],"channel":"shell"}';
    expect(members(s)).toEqual({
      header: '{"msg_id":"a","n":[1,2,{"x":null}]}',
      parent_header: '{}',
      metadata: '{"k":true}',
      content: '{"code":"1+1"}',
      buffers: '[]',
      channel: '"shell"',
    });
  });

  it('excludes the whitespace around values and accepts all four JSON whitespace characters', () => {
    expect(members(' \t\r\n{ "a" :\n  { "b" : 1 } ,\t"c":\r[ ] , "d" : "x" }\n ')).toEqual({ a: '{ "b" : 1 }', c: '[ ]', d: '"x"' });
  });

  it('gives byte offsets (not UTF-16 indices) with multi-byte UTF-8 before a member', () => {
    const s = '{"emoji":"🌍é中","content":{"t":"ü"}}';
    const buf = b(s);
    const span = scanTopLevel(buf).get('content')!;
    expect(span.start).toBe(Buffer.byteLength('{"emoji":"🌍é中","content":'));
    expect(text(buf, span)).toBe('{"t":"ü"}');
  });

  it('decodes escaped member names and keeps the last of duplicate names, as JSON.parse does', () => {
    expect(members('{"h\\u0065ader":{"a":1},"x\\"y":2}')).toEqual({ header: '{"a":1}', 'x"y': '2' });
    expect(members('{"a":1,"a":{"b":2}}')).toEqual({ a: '{"b":2}' });
  });

  it('accepts every kind of JSON value as a member', () => {
    expect(members('{"a":-0.5e+10,"b":0,"c":true,"d":false,"e":null,"f":"\\n\\t\\/\\\\\\"\\u00e9","g":[[]],"h":1E-2}')).toEqual({
      a: '-0.5e+10',
      b: '0',
      c: 'true',
      d: 'false',
      e: 'null',
      f: '"\\n\\t\\/\\\\\\"\\u00e9"',
      g: '[[]]',
      h: '1E-2',
    });
  });

  it('scans only b[start, end) and reports spans in the whole buffer', () => {
    const buf = b('XXXX{"a":{"b":1}}YYYY');
    const m = scanTopLevel(buf, 4, buf.length - 4);
    expect(m.get('a')).toEqual({ start: 9, end: 16 });
  });

  it('tells object spans from other values', () => {
    const buf = b('{"o":{},"a":[],"s":"{"}');
    const m = scanTopLevel(buf);
    expect(isObjectSpan(buf, m.get('o')!)).toBe(true);
    expect(isObjectSpan(buf, m.get('a')!)).toBe(false);
    expect(isObjectSpan(buf, m.get('s')!)).toBe(false);
  });

  it('accepts an empty object', () => {
    expect(scanTopLevel(b('{}')).size).toBe(0);
  });
});

describe('scanTopLevel: rejects what is not exactly one JSON object', () => {
  it.each([
    ['an empty input', ''],
    ['whitespace only', '  \n'],
    ['an array', '[{"header":{}}]'],
    ['a string', '"{\\"header\\":{}}"'],
    ['a number', '42'],
    ['null', 'null'],
    ['trailing garbage', '{"a":1}x'],
    ['a second object', '{"a":1}{"b":2}'],
    ['trailing comma in object', '{"a":1,}'],
    ['trailing comma in array', '{"a":[1,]}'],
    ['missing colon', '{"a" 1}'],
    ['missing comma', '{"a":1 "b":2}'],
    ['unquoted key', '{a:1}'],
    ['single quotes', "{'a':1}"],
    ['unterminated object', '{"a":1'],
    ['unterminated string', '{"a":"abc}'],
    ['unterminated array', '{"a":[1,2}'],
    ['a raw newline in a string', '{"a":"x\ny"}'],
    ['a raw tab in a string', '{"a":"x\ty"}'],
    ['a bad escape', '{"a":"\\x41"}'],
    ['a short \\u escape', '{"a":"\\u12"}'],
    ['a non-hex \\u escape', '{"a":"\\u12G4"}'],
    ['a leading zero', '{"a":01}'],
    ['a bare minus', '{"a":-}'],
    ['a dot without digits', '{"a":1.}'],
    ['an exponent without digits', '{"a":1e}'],
    ['a leading plus', '{"a":+1}'],
    ['NaN', '{"a":NaN}'],
    ['a truncated literal', '{"a":tru}'],
    ['a misspelt literal', '{"a":nul1}'],
    ['a BOM', '\ufeff{"a":1}'],
    ['a comment', '{"a":1 /* c */}'],
    ['a non-ASCII byte outside a string', '{"a":1é}'],
  ])('%s', (_name, s) => {
    expect(() => scanTopLevel(b(s))).toThrow(JsonScanError);
  });

  it('rejects 100k nested arrays without overflowing the stack, quickly', () => {
    const deep = b(`{"a":${'['.repeat(100_000)}${']'.repeat(100_000)}}`);
    const t0 = performance.now();
    expect(() => scanTopLevel(deep)).toThrow(/nesting too deep/);
    expect(performance.now() - t0).toBeLessThan(1000);
  });

  it('rejects 100k nested objects and 100k unclosed brackets without overflowing the stack', () => {
    expect(() => scanTopLevel(b(`${'{"a":'.repeat(100_000)}1${'}'.repeat(100_000)}`))).toThrow(/nesting too deep/);
    expect(() => scanTopLevel(b(`{"a":${'['.repeat(100_000)}`))).toThrow(JsonScanError);
  });

  it('accepts moderately deep nesting (what real messages contain)', () => {
    expect(scanTopLevel(b(`{"a":${'['.repeat(200)}${']'.repeat(200)}}`)).has('a')).toBe(true);
  });

  it('never reads past end: every strict prefix of an object is rejected even when the bytes after it would complete it', () => {
    const s = b('{"a":[1,-2.5e3,{"b":"c\\"d"}],"t":true,"n":null,"e":{},"z":-0}');
    for (let end = 0; end < s.length; end++) {
      expect(() => scanTopLevel(s, 0, end), `prefix of ${end} bytes`).toThrow(JsonScanError);
    }
    expect(scanTopLevel(s, 0, s.length).size).toBe(5);
  });
});

/** Inserts, deletes or replaces one character: mostly invalid JSON, close to valid. */
function mutated(): fc.Arbitrary<string> {
  const alphabet = fc.constantFrom(...'{}[]":,.-+0123456789eEtrufalsn \\/u\n\tabc'.split(''));
  return fc.tuple(fc.jsonValue({ maxDepth: 3 }), fc.nat(), fc.constantFrom('insert', 'delete', 'replace'), alphabet).map(([v, at, op, ch]) => {
    const s = JSON.stringify({ v });
    const i = at % (s.length + 1);
    if (op === 'insert') return s.slice(0, i) + ch + s.slice(i);
    if (op === 'delete') return s.slice(0, i) + s.slice(i + 1);
    return s.slice(0, i) + ch + s.slice(i + 1);
  });
}

function parsesAsObject(s: string): boolean {
  try {
    const v: unknown = JSON.parse(s);
    return typeof v === 'object' && v !== null && !Array.isArray(v);
  } catch {
    return false;
  }
}

describe('scanTopLevel: properties', () => {
  it('agrees with JSON.parse on which inputs are one JSON object (near-valid and random strings)', () => {
    fc.assert(
      fc.property(fc.oneof(mutated(), fc.string({ unit: 'binary', maxLength: 40 })), (s) => {
        let accepted: boolean;
        try {
          scanTopLevel(b(s));
          accepted = true;
        } catch (e) {
          expect(e).toBeInstanceOf(JsonScanError);
          accepted = false;
        }
        expect(accepted).toBe(parsesAsObject(s));
      }),
      { numRuns: 2000 },
    );
  });

  it('on any serialised object, each span re-parses to the member value, with or without indentation', () => {
    fc.assert(
      fc.property(
        fc.dictionary(fc.string({ unit: 'binary', maxLength: 8 }), fc.jsonValue({ stringUnit: 'binary', maxDepth: 4 })),
        fc.constantFrom(undefined, 1, '\t'),
        (obj, indent) => {
          const buf = b(JSON.stringify(obj, null, indent));
          const spans = scanTopLevel(buf);
          const expected = JSON.parse(buf.toString('utf8')) as Record<string, unknown>;
          expect([...spans.keys()].sort()).toEqual(Object.keys(expected).sort());
          for (const [k, span] of spans) expect(JSON.parse(text(buf, span))).toEqual(expected[k]);
        },
      ),
      { numRuns: 300 },
    );
  });
});

const WANTED = new MemberNames(['header', 'parent_header', 'metadata', 'content', 'channel']);

/** scanMembers' result as `{name: raw value}`, absent names left out. */
function wanted(buf: Buffer, maxMembers = Infinity, names = WANTED): Record<string, string> {
  const spans = scanMembers(buf, names, maxMembers);
  expect(spans.length).toBe(2 * names.names.length);
  const out: Record<string, string> = {};
  names.names.forEach((n, k) => {
    if (spans[2 * k]! >= 0) out[n] = buf.toString('utf8', spans[2 * k], spans[2 * k + 1]);
    else expect(spans[2 * k + 1]).toBe(-1);
  });
  return out;
}

function thrownBy(f: () => unknown): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  return undefined;
}

describe('scanMembers: the wanted members, in a fixed shape', () => {
  it('returns [start, end] of each wanted member by its index in the names, -1 for the absent ones, skipping the rest', () => {
    const s = '{"msg_id":"1","header":{"msg_id":"a","n":[1,2,{"x":null}]},"x":{"header":{}},"content":{"code":"1+1"},"buffers":[],"channel":"shell"}';
    expect(wanted(b(s))).toEqual({ header: '{"msg_id":"a","n":[1,2,{"x":null}]}', content: '{"code":"1+1"}', channel: '"shell"' });
    const spans = scanMembers(b(s), WANTED);
    const k = WANTED.indexOf('content');
    expect(b(s).toString('utf8', spans[2 * k], spans[2 * k + 1])).toBe('{"code":"1+1"}');
    expect(scanMembers(b('{}'), WANTED)).toEqual(Array(10).fill(-1));
  });

  it('scans only b[start, end) and reports spans in the whole buffer', () => {
    const buf = b('XXXX{"content":{"b":1}}YYYY');
    expect(scanMembers(buf, WANTED, 32, 4, buf.length - 4).slice(6, 8)).toEqual([15, 22]);
  });

  it('keeps the last of duplicate members, as JSON.parse does', () => {
    expect(wanted(b('{"header":{"a":1},"content":1,"header":{"b":2},"x":0,"header":[3]}'))).toEqual({ header: '[3]', content: '1' });
  });

  it('matches names spelt with escapes exactly as JSON.parse decodes them, and nothing else', () => {
    expect(wanted(b('{"\\u0068eader":1,"c\\u006fn\\u0074ent":2,"\\u0063\\u0068\\u0061\\u006E\\u006e\\u0065\\u006C":3,"parent\\u005fheader":4}'))).toEqual({
      header: '1',
      content: '2',
      channel: '3',
      parent_header: '4',
    });
    expect(wanted(b('{"header":1,"h\\u0065ader":2}'))).toEqual({ header: '2' });
    expect(wanted(b('{"h\\u0065ader":2,"header":1}'))).toEqual({ header: '1' });
    for (const key of [
      '\\u0048eader',
      'header\\u0000',
      'heade\\u0072\\u0072',
      'h\\u00e9ader',
      'héader',
      'head\\"er',
      'heade\\r',
      'header\\/',
      'header ',
      ' header',
      'HEADER',
      'heade',
      'headers',
      '\\ud83d\\ude00',
    ]) {
      expect(wanted(b(`{"${key}":1}`)), key).toEqual({});
    }
    // Non-letter escapes decode too (a name may hold any printable ASCII but `"` and `\`).
    expect(wanted(b('{"a/b":1,"a\\/b":2,"a\\u0020b":3}'), Infinity, new MemberNames(['a/b', 'a b']))).toEqual({ 'a/b': '2', 'a b': '3' });
  });

  it('takes only printable ASCII names, the names of the protocol', () => {
    for (const n of ['é', 'a"b', 'a\\b', 'a\nb', '\u0000']) expect(() => new MemberNames([n]), JSON.stringify(n)).toThrow(/not plain printable ASCII/);
    expect(() => WANTED.indexOf('buffers')).toThrow();
  });

  it('refuses what is not exactly one JSON object, as scanTopLevel does, and never reads past end', () => {
    for (const s of ['', '[]', '{"a":1}x', '{"a":1,}', '{"a" 1}', '{"header":{}', '{"header":01}', '{"header":"\\x"}']) {
      expect(() => scanMembers(b(s), WANTED), s).toThrow(JsonScanError);
    }
    const s = b('{"header":[1,-2.5e3,{"b":"c\\"d"}],"t":true,"n":null,"content":{},"z":-0}');
    for (let end = 0; end < s.length; end++) expect(() => scanMembers(s, WANTED, 32, 0, end), `prefix of ${end} bytes`).toThrow(JsonScanError);
    expect(wanted(s)).toEqual({ header: '[1,-2.5e3,{"b":"c\\"d"}]', content: '{}' });
  });
});

describe('scanMembers: the bound on top-level members', () => {
  it('takes exactly maxMembers members, counting known, unknown and duplicate ones', () => {
    for (let max = 0; max <= 8; max++) {
      for (let n = 0; n <= max + 1; n++) {
        const s = `{${Array.from({ length: n }, (_, k) => (k % 3 === 0 ? '"header":{}' : k % 3 === 1 ? `"u${k}":[]` : '"header":1')).join(',')}}`;
        if (n <= max) expect(() => scanMembers(b(s), WANTED, max), `${n} of ${max}`).not.toThrow();
        else expect(() => scanMembers(b(s), WANTED, max), `${n} of ${max}`).toThrow(MemberLimitError);
      }
    }
  });

  it('stops at the first member over the bound, before reading it: 5.9 million members are refused at byte 321', () => {
    const frame = manyMembers(5_900_000);
    const e = thrownBy(() => scanMembers(frame, WANTED, 32));
    expect(e).toBeInstanceOf(MemberLimitError);
    expect(e).toBeInstanceOf(JsonScanError);
    expect((e as MemberLimitError).limit).toBe(32);
    expect((e as MemberLimitError).at).toBe(1 + 10 * 32);
    expect((e as Error).message).toBe('more than 32 top-level members at byte 321');
    // The member over the bound is not even looked at: garbage there changes nothing.
    const garbage = Buffer.concat([manyMembers(32, '{', ''), b('garbage')]);
    expect((thrownBy(() => scanMembers(garbage, WANTED, 32)) as MemberLimitError).at).toBe(321);
  });

  it('allocates nothing per member: a million members, scanned to the end without a bound, grow the heap by less than 8 MiB', () => {
    const frame = manyMembers(1_000_000, '{"header":{"a":1},', '"content":{"b":2}}');
    const heap0 = process.memoryUsage().heapUsed;
    const spans = scanMembers(frame, WANTED);
    const grown = process.memoryUsage().heapUsed - heap0;
    expect(frame.toString('utf8', spans[6], spans[7])).toBe('{"b":2}');
    // scanTopLevel, which makes a string, a Span and a Map entry per member, grows it by about 100 MiB here.
    expect(grown).toBeLessThan(8 * 2 ** 20);
  });
});

/** A member name that is sometimes wanted, sometimes one spelt with escapes, sometimes anything else. */
const memberName = fc.oneof(fc.constantFrom(...WANTED.names, 'buffers', 'msg_id', 'msg_type', 'Header', 'headers', 'heade', ''), fc.string({ unit: 'binary', maxLength: 10 }));

/** `name` serialised with some of its characters written as `\uXXXX`, as JSON.parse reads them back. */
function spelt(name: string, escapeMask: number): string {
  let out = '"';
  [...name].forEach((ch, k) => {
    const escaped = JSON.stringify(ch).slice(1, -1);
    if (escaped.length === ch.length && escapeMask & (1 << (k % 30))) {
      for (const unit of ch.split('')) out += `\\u${unit.charCodeAt(0).toString(16).padStart(4, '0')}`;
    } else {
      out += escaped;
    }
  });
  return `${out}"`;
}

describe('scanMembers: properties', () => {
  it('on any object with duplicate and escaped names, each wanted span re-parses to the value JSON.parse keeps', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(memberName, fc.nat(), fc.jsonValue({ stringUnit: 'binary', maxDepth: 3 })), { maxLength: 12 }),
        fc.constantFrom('', ' ', '\n\t'),
        (members, ws) => {
          const s = `{${ws}${members.map(([n, mask, v]) => `${spelt(n, mask)}${ws}:${ws}${JSON.stringify(v)}`).join(`${ws},${ws}`)}${ws}}`;
          const buf = b(s);
          const expected = JSON.parse(s) as Record<string, unknown>;
          const got = wanted(buf, members.length);
          for (const n of WANTED.names) {
            if (Object.hasOwn(expected, n)) expect(JSON.parse(got[n]!), n).toEqual(expected[n]);
            else expect(got[n], n).toBeUndefined();
          }
          if (members.length > 0) expect(() => scanMembers(buf, WANTED, members.length - 1)).toThrow(MemberLimitError);
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('agrees with scanTopLevel (and so with JSON.parse) on which inputs are one JSON object', () => {
    fc.assert(
      fc.property(fc.oneof(mutated(), fc.string({ unit: 'binary', maxLength: 40 })), (s) => {
        const buf = b(s);
        const legacy = thrownBy(() => scanTopLevel(buf));
        const scanned = thrownBy(() => scanMembers(buf, WANTED));
        expect(scanned === undefined).toBe(legacy === undefined);
        if (scanned !== undefined) expect((scanned as JsonScanError).at).toBe((legacy as JsonScanError).at);
      }),
      { numRuns: 2000 },
    );
  });
});
