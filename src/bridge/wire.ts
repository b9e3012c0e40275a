/**
 * The Jupyter wire protocol (messaging spec 5.3,
 * https://jupyter-client.readthedocs.io/en/stable/messaging.html#the-wire-protocol):
 * `[...identities, "<IDS|MSG>", hmac_hex, header, parent_header, metadata, content, ...buffers]`.
 *
 * Everything here works on the ZeroMQ frames as they are: nothing is parsed
 * and nothing is copied but the signature.
 */
import { createHmac, type Hmac } from 'node:crypto';

export type Channel = 'shell' | 'control' | 'stdin' | 'iopub';
/** The channels a client may send on. */
export type InputChannel = Exclude<Channel, 'iopub'>;

export const DELIMITER = Buffer.from('<IDS|MSG>');

/** The four JSON parts of a message as raw UTF-8 bytes, plus its binary buffers. */
export interface MessageParts {
  header: Buffer;
  parent: Buffer;
  metadata: Buffer;
  content: Buffer;
  buffers: Buffer[];
}

export interface WireMessage extends MessageParts {
  identities: Buffer[];
  signature: Buffer;
}

const HMAC_ALGORITHMS: Record<string, string> = {
  'hmac-sha256': 'sha256',
  'hmac-sha512': 'sha512',
  'hmac-sha1': 'sha1',
  'hmac-md5': 'md5',
};

const EMPTY = Buffer.alloc(0);

/** The ASCII of each lowercase hex digit: the signature frame is Python's `hexdigest()`. */
const HEX_DIGITS = Buffer.from('0123456789abcdef', 'latin1');

/**
 * Signs and verifies messages with a kernel's key. Built once per kernel, at
 * control time, so the per-message path only reads it.
 */
export class Signer {
  private readonly key: Buffer;
  private readonly algorithm: string;

  constructor(key: string, scheme = 'hmac-sha256') {
    const algorithm = HMAC_ALGORITHMS[scheme];
    if (algorithm === undefined) throw new Error(`unsupported signature scheme ${scheme}`);
    this.algorithm = algorithm;
    this.key = Buffer.from(key, 'utf8');
  }

  private mac(header: Buffer, parent: Buffer, metadata: Buffer, content: Buffer): Hmac {
    const h = createHmac(this.algorithm, this.key);
    h.update(header);
    h.update(parent);
    h.update(metadata);
    h.update(content);
    return h;
  }

  /** The hex signature as bytes, ready to be a frame. An empty key signs nothing, as the spec allows. */
  sign(header: Buffer, parent: Buffer, metadata: Buffer, content: Buffer): Buffer {
    if (this.key.length === 0) return EMPTY;
    return Buffer.from(this.mac(header, parent, metadata, content).digest('hex'), 'latin1');
  }

  /**
   * Compares the raw digest with the hex frame digit by digit, in constant
   * time. Making the hex string and a Buffer of it for every message, as
   * `sign` does, cost 3.8 % of kgate's busy time in a 100-byte flood and
   * 9.6 % in a 64 KiB one (bench/README.md, issue 16).
   */
  verify(m: WireMessage): boolean {
    if (this.key.length === 0) return true;
    const digest = this.mac(m.header, m.parent, m.metadata, m.content).digest();
    const sig = m.signature;
    if (sig.length !== 2 * digest.length) return false;
    let diff = 0;
    for (let i = 0; i < digest.length; i++) {
      const b = digest[i]!;
      diff |= (HEX_DIGITS[b >> 4]! ^ sig[2 * i]!) | (HEX_DIGITS[b & 15]! ^ sig[2 * i + 1]!);
    }
    return diff === 0;
  }
}

function indexOfDelimiter(frames: readonly Buffer[]): number {
  for (let i = 0; i < frames.length; i++) {
    const f = frames[i]!;
    if (f.length === DELIMITER.length && f.equals(DELIMITER)) return i;
  }
  return -1;
}

/** Splits frames received from a kernel; `undefined` when they are not a Jupyter message. */
export function splitWire(frames: Buffer[]): WireMessage | undefined {
  const d = indexOfDelimiter(frames);
  if (d < 0 || frames.length < d + 6) return undefined;
  return {
    identities: frames.slice(0, d),
    signature: frames[d + 1]!,
    header: frames[d + 2]!,
    parent: frames[d + 3]!,
    metadata: frames[d + 4]!,
    content: frames[d + 5]!,
    buffers: frames.length > d + 6 ? frames.slice(d + 6) : [],
  };
}

/** Frames to send to a kernel: the identity that routes the reply back, then the signed message. */
export function toWire(identity: Buffer, signer: Signer, p: MessageParts): Buffer[] {
  const frames = [identity, DELIMITER, signer.sign(p.header, p.parent, p.metadata, p.content), p.header, p.parent, p.metadata, p.content];
  for (const b of p.buffers) frames.push(b);
  return frames;
}

export function isInputChannel(s: string): s is InputChannel {
  return s === 'shell' || s === 'control' || s === 'stdin';
}

/** The bytes a message carries: its four JSON parts and its buffers. */
export function messageBytes(m: MessageParts): number {
  let n = m.header.length + m.parent.length + m.metadata.length + m.content.length;
  for (const b of m.buffers) n += b.length;
  return n;
}
