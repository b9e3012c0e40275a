/**
 * The benchmark's own Jupyter wire codec (messaging spec 5.3), written apart
 * from kgate's (`src/bridge/wire.ts`) so that the direct-ZeroMQ ceiling does
 * not run kgate's code: were kgate's codec slow, a ceiling built on it would
 * be slow too and flatter kgate's ratio to it. Minimal on purpose: frames are
 * `[...identities, "<IDS|MSG>", hmac_hex, header, parent_header, metadata,
 * content, ...buffers]`, HMAC-SHA256 over the four JSON parts with node:crypto,
 * and messages the benchmark sends are built here too.
 */
import { createHmac, randomUUID, timingSafeEqual } from 'node:crypto';

const DELIMITER = Buffer.from('<IDS|MSG>');

/** The four JSON parts as raw UTF-8 bytes, plus the binary buffers (the benchmark sends none). */
export interface Parts {
  header: Buffer;
  parent: Buffer;
  metadata: Buffer;
  content: Buffer;
  buffers: Buffer[];
}

export interface Received extends Parts {
  signature: Buffer;
}

/** Signs with a kernel's key (`hmac-sha256` only: the scheme every connection file here names). */
export class HmacSha256 {
  private readonly key: Buffer;

  constructor(key: string, scheme: string) {
    if (scheme !== 'hmac-sha256') throw new Error(`the benchmark's codec signs with hmac-sha256 only, not ${scheme}`);
    this.key = Buffer.from(key, 'utf8');
  }

  sign(p: Parts): Buffer {
    const h = createHmac('sha256', this.key);
    h.update(p.header).update(p.parent).update(p.metadata).update(p.content);
    return Buffer.from(h.digest('hex'), 'latin1');
  }

  verify(m: Received): boolean {
    const expected = this.sign(m);
    return expected.length === m.signature.length && timingSafeEqual(expected, m.signature);
  }
}

/** The frames of a message: identity, delimiter, signature, the four parts, buffers. */
export function encodeFrames(identity: Buffer, signer: HmacSha256, p: Parts): Buffer[] {
  return [identity, DELIMITER, signer.sign(p), p.header, p.parent, p.metadata, p.content, ...p.buffers];
}

/** Splits frames at the delimiter; undefined when there is none or too few parts follow it. */
export function decodeFrames(frames: readonly Buffer[]): Received | undefined {
  let d = -1;
  for (let i = 0; i < frames.length; i++) {
    const f = frames[i]!;
    if (f.length === DELIMITER.length && f.equals(DELIMITER)) {
      d = i;
      break;
    }
  }
  if (d < 0 || frames.length < d + 6) return undefined;
  return {
    signature: frames[d + 1]!,
    header: frames[d + 2]!,
    parent: frames[d + 3]!,
    metadata: frames[d + 4]!,
    content: frames[d + 5]!,
    buffers: frames.slice(d + 6),
  };
}

/** jupyter_client's date format (microseconds, Z). */
function date(): string {
  return new Date().toISOString().replace(/Z$/, '000Z');
}

/** A request as a client sends it: a fresh msg_id, an empty parent. */
export function request(msgType: string, content: object, session: string): { msgId: string; parts: Parts } {
  const msgId = randomUUID();
  const header = { msg_id: msgId, msg_type: msgType, username: 'bench', session, date: date(), version: '5.3' };
  return {
    msgId,
    parts: {
      header: Buffer.from(JSON.stringify(header)),
      parent: Buffer.from('{}'),
      metadata: Buffer.from('{}'),
      content: Buffer.from(JSON.stringify(content)),
      buffers: [],
    },
  };
}
