/**
 * A validating scanner for one JSON object that records where each wanted
 * top-level member's value starts and ends, without building any value. The
 * relay uses it to split a client's `{header, parent_header, metadata, content,
 * ...}` into raw byte ranges, so `content` is never parsed nor re-serialised.
 *
 * Its cost is a constant per byte and it allocates nothing per member or per
 * nested value: wanted names are matched against a key's bytes (no string is
 * made), other members are skipped, nesting stops at MAX_DEPTH, and a caller
 * can stop it after a number of top-level members (a client's message has a
 * handful; a hostile one has millions).
 */

export interface Span {
  start: number;
  end: number;
}

export class JsonScanError extends Error {
  constructor(
    message: string,
    readonly at: number,
  ) {
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
      return scanObject(b, i, end, depth + 1);
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

/** A key's value as JSON.parse decodes it (only the legacy scanTopLevel makes one). */
function keyOf(b: Uint8Array, start: number, end: number): string {
  const raw = Buffer.from(b.buffer, b.byteOffset + start, end - start);
  // Keys with escapes are rare; decode those exactly, the rest cheaply.
  return raw.includes(C.Backslash) ? (JSON.parse(raw.toString('utf8')) as string) : raw.toString('utf8', 1, raw.length - 1);
}

/** A nested object: validated and skipped. */
function scanObject(b: Uint8Array, i: number, end: number, depth: number): number {
  if (depth > MAX_DEPTH) throw new JsonScanError('nesting too deep', i);
  i = skipWs(b, i + 1, end);
  if (b[i] === C.RBrace) return i + 1;
  for (;;) {
    if (b[i] !== C.Quote) throw new JsonScanError('member name expected', i);
    i = skipWs(b, scanString(b, i, end), end);
    if (b[i] !== C.Colon) throw new JsonScanError("':' expected", i);
    i = skipWs(b, scanValue(b, skipWs(b, i + 1, end), end, depth), end);
    if (i >= end) throw new JsonScanError('unterminated object', i);
    if (b[i] === C.RBrace) return i + 1;
    if (b[i] !== C.Comma) throw new JsonScanError("',' or '}' expected", i);
    i = skipWs(b, i + 1, end);
  }
}

/**
 * The top-level member names a caller looks for, made once (at module level),
 * so that a scan compares a key's bytes with them instead of decoding it.
 * ASCII names only: every name of the Jupyter protocol is.
 */
export class MemberNames {
  /** The ASCII codes of each name. */
  private readonly codes: Uint8Array[];

  constructor(readonly names: readonly string[]) {
    this.codes = names.map((n) => {
      if (!/^[\x20-\x7e]*$/.test(n) || n.includes('"') || n.includes('\\')) throw new Error(`member name ${JSON.stringify(n)} is not plain printable ASCII`);
      return Uint8Array.from(n, (ch) => ch.charCodeAt(0));
    });
  }

  /** Where name `name`'s span sits in scanMembers' result: `[2k]` is its start, `[2k + 1]` its end. */
  indexOf(name: string): number {
    const k = this.names.indexOf(name);
    if (k < 0) throw new Error(`${JSON.stringify(name)} is not one of ${JSON.stringify(this.names)}`);
    return k;
  }

  /**
   * The index of the name the key `b[start, end)` (quotes included, already
   * validated) decodes to, or -1. At most a few bytes per name are read.
   */
  match(b: Uint8Array, start: number, end: number): number {
    const from = start + 1;
    const len = end - 1 - from;
    const codes = this.codes;
    for (let k = 0; k < codes.length; k++) {
      const name = codes[k]!;
      if (name.length === len) {
        let j = 0;
        while (j < len && b[from + j] === name[j]) j++;
        if (j === len) return k;
      } else if (len > name.length && escapedKeyIs(b, from, end - 1, name)) {
        // Spelt with escapes (`\u0068eader`), a name is longer than itself; rare.
        return k;
      }
    }
    return -1;
  }
}

const UNESCAPED: Record<number, number> = { 0x22: 0x22, 0x5c: 0x5c, 0x2f: 0x2f, 0x62: 0x08, 0x66: 0x0c, 0x6e: 0x0a, 0x72: 0x0d, 0x74: 0x09 };

function hexValue(c: number): number {
  return c <= C.Nine ? c - C.Zero : (c | 0x20) - 0x61 + 10;
}

/**
 * Whether the (valid) string contents `b[i, end)`, with escapes, decode to the
 * ASCII `name`, as JSON.parse would decode them: compared one UTF-16 unit at a
 * time, without building the string; it stops at the first unit that differs,
 * so it reads at most `name.length + 1` units. A raw byte of 0x80 or more is
 * part of a non-ASCII character, as is any `\u` escape above 0x7f: neither is
 * in a name.
 */
function escapedKeyIs(b: Uint8Array, i: number, end: number, name: Uint8Array): boolean {
  let j = 0;
  while (i < end) {
    let unit = b[i]!;
    if (unit === C.Backslash) {
      const e = b[i + 1]!;
      if (e === 0x75 /* u */) {
        unit = (hexValue(b[i + 2]!) << 12) | (hexValue(b[i + 3]!) << 8) | (hexValue(b[i + 4]!) << 4) | hexValue(b[i + 5]!);
        i += 6;
      } else {
        unit = UNESCAPED[e]!;
        i += 2;
      }
    } else {
      i++;
    }
    if (j >= name.length || unit !== name[j]) return false;
    j++;
  }
  return j === name.length;
}

/** Thrown when an object has more top-level members than the caller allows. */
export class MemberLimitError extends JsonScanError {
  constructor(
    readonly limit: number,
    at: number,
  ) {
    super(`more than ${limit} top-level members`, at);
  }
}

/**
 * The shared loop of scanMembers and scanTopLevel: validates that `b[start,
 * end)` holds exactly one JSON object, writes the span of each of `names` into
 * `spans` (the last one wins on duplicates, as with `JSON.parse`), and, for
 * scanTopLevel only, every member into `all`.
 */
function scanTop(
  b: Uint8Array,
  start: number,
  end: number,
  names: MemberNames | undefined,
  spans: number[] | undefined,
  maxMembers: number,
  all: Map<string, Span> | undefined,
): void {
  let i = skipWs(b, start, end);
  if (i >= end || b[i] !== C.LBrace) throw new JsonScanError('a JSON object was expected', i);
  i = skipWs(b, i + 1, end);
  if (i < end && b[i] === C.RBrace) {
    i++;
  } else {
    for (let count = 1; ; count++) {
      // Refused before the member is scanned: the work done is bounded by the limit, not by the frame.
      if (count > maxMembers) throw new MemberLimitError(maxMembers, i);
      if (i >= end || b[i] !== C.Quote) throw new JsonScanError('member name expected', i);
      const keyStart = i;
      i = scanString(b, i, end);
      const keyEnd = i;
      i = skipWs(b, i, end);
      if (i >= end || b[i] !== C.Colon) throw new JsonScanError("':' expected", i);
      i = skipWs(b, i + 1, end);
      const valueStart = i;
      i = scanValue(b, i, end, 1);
      if (names !== undefined) {
        const k = names.match(b, keyStart, keyEnd);
        if (k >= 0) {
          spans![2 * k] = valueStart;
          spans![2 * k + 1] = i;
        }
      }
      if (all !== undefined) all.set(keyOf(b, keyStart, keyEnd), { start: valueStart, end: i });
      i = skipWs(b, i, end);
      if (i >= end) throw new JsonScanError('unterminated object', i);
      if (b[i] === C.RBrace) {
        i++;
        break;
      }
      if (b[i] !== C.Comma) throw new JsonScanError("',' or '}' expected", i);
      i = skipWs(b, i + 1, end);
    }
  }
  i = skipWs(b, i, end);
  if (i !== end) throw new JsonScanError('trailing data after the object', i);
}

/**
 * Validates that `b[start, end)` holds exactly one JSON object of at most
 * `maxMembers` top-level members (a MemberLimitError as soon as it has more),
 * and returns where the value of each of `names` lies: `[2k]` and `[2k + 1]`
 * are the start and end of `names.names[k]`'s value in `b` (the last one wins
 * on duplicates, as with `JSON.parse`), or -1 and -1 when it is absent. Other
 * members are validated and skipped.
 */
export function scanMembers(b: Uint8Array, names: MemberNames, maxMembers = Infinity, start = 0, end = b.length): number[] {
  const spans = new Array<number>(2 * names.names.length).fill(-1);
  scanTop(b, start, end, names, spans, maxMembers, undefined);
  return spans;
}

/**
 * Validates that `b[start, end)` holds exactly one JSON object and returns the
 * byte span of every top-level member's value (the last one wins on
 * duplicates, as with `JSON.parse`). It makes a string and a Map entry per
 * member, with no bound on members: not for input from clients, nor for the
 * hot path (scanMembers is both).
 */
export function scanTopLevel(b: Uint8Array, start = 0, end = b.length): Map<string, Span> {
  const members = new Map<string, Span>();
  scanTop(b, start, end, undefined, undefined, Infinity, members);
  return members;
}

/** Whether `b[span]` is a JSON object (the scanner already checked it is valid JSON). */
export function isObjectSpan(b: Uint8Array, span: Span): boolean {
  return b[span.start] === C.LBrace;
}
