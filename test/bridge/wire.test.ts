/** The Jupyter wire codec: HMAC signing and verification, splitting and building multipart messages. */
import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { DELIMITER, Signer, splitWire, toWire, type MessageParts, type WireMessage } from '../../src/bridge/wire.js';

const b = (s: string): Buffer => Buffer.from(s, 'utf8');

function parts(): MessageParts {
  return {
    header: b('{"msg_id":"m1","msg_type":"execute_request","session":"s","username":"u","date":"2024-01-01T00:00:00.000000Z","version":"5.3"}'),
    parent: b('{}'),
    metadata: b('{"trusted":true}'),
    content: b('{"code":"print(\'héllo 🌍\')","silent":false}'),
    buffers: [],
  };
}

function expectedHmac(key: string, p: MessageParts, algo = 'sha256'): string {
  const h = createHmac(algo, key);
  h.update(p.header);
  h.update(p.parent);
  h.update(p.metadata);
  h.update(p.content);
  return h.digest('hex');
}

describe('Signer', () => {
  it('matches a published HMAC-SHA256 test vector split across the four parts', () => {
    // HMAC_SHA256("key", "The quick brown fox jumps over the lazy dog"), as published (e.g. Wikipedia's HMAC article).
    const s = new Signer('key');
    const sig = s.sign(b('The quick '), b('brown fox '), b('jumps over '), b('the lazy dog'));
    expect(sig.toString('latin1')).toBe('f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8');
  });

  it('signs header|parent|metadata|content in that order with hmac-sha256, as lowercase hex', () => {
    const key = 'a0436f6c-1916-498b-8eb9-e81ab9368e84';
    const p = parts();
    const sig = new Signer(key).sign(p.header, p.parent, p.metadata, p.content);
    expect(sig.toString('latin1')).toBe(expectedHmac(key, p));
    expect(sig.toString('latin1')).toMatch(/^[0-9a-f]{64}$/);
    // Order matters: swapping parent and metadata gives another signature.
    const swapped = new Signer(key).sign(p.header, p.metadata, p.parent, p.content);
    expect(swapped.equals(sig)).toBe(false);
  });

  it.each([
    ['hmac-sha256', 'sha256'],
    ['hmac-sha512', 'sha512'],
    ['hmac-sha1', 'sha1'],
    ['hmac-md5', 'md5'],
  ])('supports the %s scheme of the connection file', (scheme, algo) => {
    const p = parts();
    expect(new Signer('k', scheme).sign(p.header, p.parent, p.metadata, p.content).toString('latin1')).toBe(expectedHmac('k', p, algo));
    // verify compares the raw digest with the hex frame, so each digest length is checked too.
    const signer = new Signer('k', scheme);
    const m = { ...p, identities: [], signature: b(expectedHmac('k', p, algo)) };
    expect(signer.verify(m)).toBe(true);
    const last = m.signature.length - 1;
    const wrong = Buffer.from(m.signature);
    wrong[last] = wrong[last] === 0x30 ? 0x31 : 0x30;
    expect(signer.verify({ ...m, signature: wrong })).toBe(false);
    expect(signer.verify({ ...m, signature: b(expectedHmac('k', p, algo === 'md5' ? 'sha256' : 'md5')) })).toBe(false);
  });

  it('uses the UTF-8 bytes of a non-ASCII key', () => {
    const p = parts();
    expect(new Signer('clé-🔑').sign(p.header, p.parent, p.metadata, p.content).toString('latin1')).toBe(expectedHmac('clé-🔑', p));
  });

  it('rejects an unknown signature scheme', () => {
    expect(() => new Signer('k', 'hmac-sha3')).toThrow(/unsupported signature scheme/);
  });

  it('with an empty key signs with an empty signature and accepts any message (the spec allows no auth)', () => {
    const s = new Signer('');
    const p = parts();
    expect(s.sign(p.header, p.parent, p.metadata, p.content).length).toBe(0);
    expect(s.verify({ ...p, identities: [], signature: b('whatever') })).toBe(true);
  });
});

describe('Signer.verify', () => {
  const key = 'secret';
  const signer = new Signer(key);
  const signed = (): WireMessage => {
    const p = parts();
    return { ...p, identities: [b('id')], signature: b(expectedHmac(key, p)) };
  };

  it('accepts a message signed independently with createHmac', () => {
    expect(signer.verify(signed())).toBe(true);
  });

  it.each(['header', 'parent', 'metadata', 'content'] as const)('rejects a message whose %s was tampered with', (field) => {
    const m = signed();
    const tampered = Buffer.from(m[field]);
    tampered[tampered.length - 2] ^= 0x01;
    expect(signer.verify({ ...m, [field]: tampered })).toBe(false);
  });

  it('rejects a tampered, truncated, uppercase, empty or foreign-key signature', () => {
    const m = signed();
    const flipped = Buffer.from(m.signature);
    flipped[0] = flipped[0] === 0x61 ? 0x62 : 0x61;
    expect(signer.verify({ ...m, signature: flipped })).toBe(false);
    expect(signer.verify({ ...m, signature: m.signature.subarray(0, 63) })).toBe(false);
    expect(signer.verify({ ...m, signature: Buffer.concat([m.signature, b('0')]) })).toBe(false);
    expect(signer.verify({ ...m, signature: b(m.signature.toString('latin1').toUpperCase()) })).toBe(false);
    expect(signer.verify({ ...m, signature: Buffer.alloc(0) })).toBe(false);
    expect(signer.verify({ ...m, signature: b(expectedHmac('other', m)) })).toBe(false);
  });

  it('ignores identities and buffers, which the spec does not sign', () => {
    const m = signed();
    expect(signer.verify({ ...m, identities: [b('x'), b('y')], buffers: [Buffer.from([1, 2, 3])] })).toBe(true);
  });
});

describe('splitWire', () => {
  it('splits a multipart with identities before <IDS|MSG>', () => {
    const frames = [b('router-id'), b('s:client-1'), b('<IDS|MSG>'), b('abcdef'), b('{"h":1}'), b('{"p":2}'), b('{"m":3}'), b('{"c":4}')];
    const m = splitWire(frames)!;
    expect(m).toBeDefined();
    expect(m.identities.map(String)).toEqual(['router-id', 's:client-1']);
    expect(String(m.signature)).toBe('abcdef');
    expect(String(m.header)).toBe('{"h":1}');
    expect(String(m.parent)).toBe('{"p":2}');
    expect(String(m.metadata)).toBe('{"m":3}');
    expect(String(m.content)).toBe('{"c":4}');
    expect(m.buffers).toEqual([]);
    // Views of the frames as received, not copies.
    expect(m.header).toBe(frames[4]);
  });

  it('splits a message with no identities (as from an iopub SUB socket) and with several buffers', () => {
    const bufs = [Buffer.alloc(0), Buffer.from([0, 255, 1]), Buffer.alloc(70_000, 7)];
    const frames = [b('<IDS|MSG>'), b(''), b('{}'), b('{}'), b('{}'), b('{}'), ...bufs];
    const m = splitWire(frames)!;
    expect(m.identities).toEqual([]);
    expect(m.signature.length).toBe(0);
    expect(m.buffers.length).toBe(3);
    m.buffers.forEach((x, k) => expect(x.equals(bufs[k]!)).toBe(true));
  });

  it('returns undefined without a delimiter or with fewer than the five frames after it', () => {
    expect(splitWire([])).toBeUndefined();
    expect(splitWire([b('{}'), b('{}'), b('{}'), b('{}'), b('{}'), b('{}')])).toBeUndefined();
    expect(splitWire([b('id'), b('<IDS|MSG>'), b('sig'), b('{}'), b('{}'), b('{}')])).toBeUndefined();
    // A frame that merely starts with the delimiter is not the delimiter.
    expect(splitWire([b('<IDS|MSG>x'), b('sig'), b('{}'), b('{}'), b('{}'), b('{}')])).toBeUndefined();
  });
});

describe('toWire', () => {
  it('builds [identity, <IDS|MSG>, hmac, header, parent, metadata, content, ...buffers] with an independent signature', () => {
    const p = { ...parts(), buffers: [Buffer.from([1]), Buffer.alloc(0)] };
    const frames = toWire(b('s:abc'), new Signer('k3y'), p);
    expect(frames.length).toBe(9);
    expect(String(frames[0])).toBe('s:abc');
    expect(String(frames[1])).toBe('<IDS|MSG>');
    expect(DELIMITER.toString()).toBe('<IDS|MSG>');
    expect(String(frames[2])).toBe(expectedHmac('k3y', p));
    expect(frames.slice(3, 7)).toEqual([p.header, p.parent, p.metadata, p.content]);
    expect(frames[7]!.equals(Buffer.from([1]))).toBe(true);
    expect(frames[8]!.length).toBe(0);
  });

  it('round-trips through splitWire and verifies, and a tampered frame does not', () => {
    const signer = new Signer('k3y');
    const frames = toWire(b('s:abc'), signer, parts());
    const m = splitWire(frames)!;
    expect(m.identities.map(String)).toEqual(['s:abc']);
    expect(signer.verify(m)).toBe(true);
    const tampered = frames.slice();
    tampered[6] = b('{"code":"import os; os.system(\'rm -rf /\')","silent":false}');
    expect(signer.verify(splitWire(tampered)!)).toBe(false);
  });
});
