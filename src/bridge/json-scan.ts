/**
 * A validating scanner for one JSON object that records where each top-level
 * member's value starts and ends, without building any value. The relay uses
 * it to split a client's `{header, parent_header, metadata, content, ...}`
 * into raw byte ranges, so `content` is never parsed nor re-serialised.
 */

export interface Span {
  start: number;
  end: number;
}

export class JsonScanError extends Error {
  constructor(message: string, readonly at: number) {
    super(`${message} at byte ${at}`);
  }
}

const MAX_DEPTH = 512;

const enum C {
  Tab = 0x09,
  Nl = 0x0a,
  Cr = 0x0d,
  Space = 0x20,
  Quote = 0x22,
  Plus = 0x2b,
  Comma = 0x2c,
  Minus = 0x2d,
  Dot = 0x2e,
  Zero = 0x30,
  Nine = 0x39,
  Colon = 0x3a,
  E = 0x45,
  LBracket = 0x5b,
  Backslash = 0x5c,
  RBracket = 0x5d,
  e = 0x65,
  LBrace = 0x7b,
  RBrace = 0x7d,
}

function skipWs(b: Uint8Array, i: number, end: number): number {
  while (i < end) {
    const c = b[i]!;
    if (c !== C.Space && c !== C.Nl && c !== C.Cr && c !== C.Tab) break;
    i++;
  }
  return i;
}

const HEX = new Uint8Array(256);
for (const ch of '0123456789abcdefABCDEF') HEX[ch.charCodeAt(0)] = 1;
const ESCAPES = new Uint8Array(256);
for (const ch of '"\\/bfnrt') ESCAPES[ch.charCodeAt(0)] = 1;

/** Returns the index just after the closing quote of the string starting at `i`. */
function scanString(b: Uint8Array, i: number, end: number): number {
  i++; // opening quote
  while (i < end) {
    const c = b[i]!;
    if (c === C.Quote) return i + 1;
    if (c === C.Backslash) {
      const e = b[i + 1];
      if (e === undefined || i + 1 >= end) break;
      if (e === 0x75 /* u */) {
        if (i + 5 >= end || !HEX[b[i + 2]!] || !HEX[b[i + 3]!] || !HEX[b[i + 4]!] || !HEX[b[i + 5]!]) {
          throw new JsonScanError('bad \\u escape', i);
        }
        i += 6;
        continue;
      }
      if (!ESCAPES[e]) throw new JsonScanError('bad escape', i);
      i += 2;
      continue;
    }
    if (c < 0x20) throw new JsonScanError('control character in string', i);
    i++;
  }
  throw new JsonScanError('unterminated string', i);
}

function scanDigits(b: Uint8Array, i: number, end: number): number {
  const start = i;
  while (i < end && b[i]! >= C.Zero && b[i]! <= C.Nine) i++;
  if (i === start) throw new JsonScanError('digit expected', i);
  return i;
}

function scanNumber(b: Uint8Array, i: number, end: number): number {
  if (b[i] === C.Minus) i++;
  if (b[i] === C.Zero) i++;
  else i = scanDigits(b, i, end);
  if (i < end && b[i] === C.Dot) i = scanDigits(b, i + 1, end);
  if (i < end && (b[i] === C.e || b[i] === C.E)) {
    i++;
    if (b[i] === C.Plus || b[i] === C.Minus) i++;
    i = scanDigits(b, i, end);
  }
  return i;
}

function scanLiteral(b: Uint8Array, i: number, end: number, word: string): number {
  if (i + word.length > end) throw new JsonScanError('bad literal', i);
  for (let k = 0; k < word.length; k++) {
    if (b[i + k] !== word.charCodeAt(k)) throw new JsonScanError('bad literal', i);
  }
  return i + word.length;
}

/** Returns the index just after the value starting at `i` (which is not whitespace). */
function scanValue(b: Uint8Array, i: number, end: number, depth: number): number {
  if (i >= end) throw new JsonScanError('value expected', i);
  const c = b[i]!;
  switch (c) {
    case C.Quote:
      return scanString(b, i, end);
    case C.LBrace:
      return scanObject(b, i, end, depth + 1, undefined);
    case C.LBracket:
      return scanArray(b, i, end, depth + 1);
    case 0x74:
      return scanLiteral(b, i, end, 'true');
    case 0x66:
      return scanLiteral(b, i, end, 'false');
    case 0x6e:
      return scanLiteral(b, i, end, 'null');
    default:
      if (c === C.Minus || (c >= C.Zero && c <= C.Nine)) return scanNumber(b, i, end);
      throw new JsonScanError('unexpected character', i);
  }
}

function scanArray(b: Uint8Array, i: number, end: number, depth: number): number {
  if (depth > MAX_DEPTH) throw new JsonScanError('nesting too deep', i);
  i = skipWs(b, i + 1, end);
  if (b[i] === C.RBracket) return i + 1;
  for (;;) {
    i = skipWs(b, scanValue(b, i, end, depth), end);
    if (i >= end) throw new JsonScanError('unterminated array', i);
    if (b[i] === C.RBracket) return i + 1;
    if (b[i] !== C.Comma) throw new JsonScanError("',' or ']' expected", i);
    i = skipWs(b, i + 1, end);
  }
}

function keyOf(b: Uint8Array, start: number, end: number): string {
  const raw = Buffer.from(b.buffer, b.byteOffset + start, end - start);
  // Keys with escapes are rare; decode those exactly, the rest cheaply.
  return raw.includes(C.Backslash) ? (JSON.parse(raw.toString('utf8')) as string) : raw.toString('utf8', 1, raw.length - 1);
}

function scanObject(b: Uint8Array, i: number, end: number, depth: number, members: Map<string, Span> | undefined): number {
  if (depth > MAX_DEPTH) throw new JsonScanError('nesting too deep', i);
  i = skipWs(b, i + 1, end);
  if (b[i] === C.RBrace) return i + 1;
  for (;;) {
    if (b[i] !== C.Quote) throw new JsonScanError('member name expected', i);
    const keyStart = i;
    i = scanString(b, i, end);
    const keyEnd = i;
    i = skipWs(b, i, end);
    if (b[i] !== C.Colon) throw new JsonScanError("':' expected", i);
    i = skipWs(b, i + 1, end);
    const valueStart = i;
    i = scanValue(b, i, end, depth);
    if (members !== undefined) members.set(keyOf(b, keyStart, keyEnd), { start: valueStart, end: i });
    i = skipWs(b, i, end);
    if (i >= end) throw new JsonScanError('unterminated object', i);
    if (b[i] === C.RBrace) return i + 1;
    if (b[i] !== C.Comma) throw new JsonScanError("',' or '}' expected", i);
    i = skipWs(b, i + 1, end);
  }
}

/**
 * Validates that `b[start, end)` holds exactly one JSON object and returns the
 * byte span of each top-level member's value (the last one wins on duplicates,
 * as with `JSON.parse`).
 */
export function scanTopLevel(b: Uint8Array, start = 0, end = b.length): Map<string, Span> {
  const members = new Map<string, Span>();
  let i = skipWs(b, start, end);
  if (b[i] !== C.LBrace) throw new JsonScanError('a JSON object was expected', i);
  i = skipWs(b, scanObject(b, i, end, 1, members), end);
  if (i !== end) throw new JsonScanError('trailing data after the object', i);
  return members;
}

/** Whether `b[span]` is a JSON object (the scanner already checked it is valid JSON). */
export function isObjectSpan(b: Uint8Array, span: Span): boolean {
  return b[span.start] === C.LBrace;
}
