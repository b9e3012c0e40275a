/** The validating JSON scanner that splits a client's message into raw member spans. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isObjectSpan, JsonScanError, scanTopLevel, type Span } from '../../src/bridge/json-scan.js';

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
  return fc
    .tuple(fc.jsonValue({ maxDepth: 3 }), fc.nat(), fc.constantFrom('insert', 'delete', 'replace'), alphabet)
    .map(([v, at, op, ch]) => {
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
