/**
 * JwtAuth against real tokens minted with jose: HS256 with a shared secret,
 * RS256, ES256 and EdDSA by the keys of a JWKS file, and every way a token is
 * refused (signature, time, issuer, audience, algorithm, key, claims). Then a
 * JWKS served by the test itself on 127.0.0.1, its keys rotated by kid, with
 * the server's hits counted to show refetches are bounded by the cooldown.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { base64url, exportJWK, exportSPKI, generateKeyPair, SignJWT, type CryptoKey, type JWK, type JWTPayload } from 'jose';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { JwtAuth, type JwtSettings } from '../../src/gateway/jwt.js';
import { ConfigError } from '../../src/options.js';

const ISS = 'https://idp.example';
const AUD = 'kgate';
const dir = mkdtempSync(join(tmpdir(), 'kgate-jwt-'));
const secret = new Uint8Array(randomBytes(32));

interface Pair {
  alg: string;
  kid: string;
  privateKey: CryptoKey;
  publicKey: CryptoKey;
  jwk: JWK;
}

async function pair(alg: string, kid: string): Promise<Pair> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' };
  return { alg, kid, privateKey, publicKey, jwk };
}

const now = (): number => Math.floor(Date.now() / 1000);

/** A token with sane defaults (iss, aud, sub, an hour of life), any of which `claims` overrides or removes (undefined). */
async function mint(key: CryptoKey | Uint8Array, alg: string, claims: Record<string, unknown> = {}, header: Record<string, unknown> = {}): Promise<string> {
  const base: Record<string, unknown> = { iss: ISS, aud: AUD, sub: 'alice', iat: now(), exp: now() + 3600, ...claims };
  const payload = Object.fromEntries(Object.entries(base).filter(([, v]) => v !== undefined)) as JWTPayload;
  return new SignJWT(payload).setProtectedHeader({ alg, ...header }).sign(key);
}

/** A token put together by hand, as an attacker would: any header, any payload, any signature. */
function handMade(header: object, payload: object, signature = ''): string {
  const enc = (o: object): string => base64url.encode(JSON.stringify(o));
  return `${enc(header)}.${enc(payload)}.${signature}`;
}

const settings = (s: Partial<JwtSettings>): JwtSettings => ({
  issuer: ISS,
  audience: [AUD],
  clockToleranceSec: 30,
  userClaim: 'sub',
  tenantClaim: 'tenant',
  scopeClaim: 'scope',
  ...s,
});

let rsa: Pair, ec: Pair, ed: Pair, stranger: Pair;
let jwksFile: string;

beforeAll(async () => {
  [rsa, ec, ed, stranger] = await Promise.all([pair('RS256', 'rsa-1'), pair('ES256', 'ec-1'), pair('EdDSA', 'ed-1'), pair('RS256', 'rsa-stranger')]);
  jwksFile = join(dir, 'jwks.json');
  writeFileSync(jwksFile, JSON.stringify({ keys: [rsa.jwk, ec.jwk, ed.jwk] }));
});

describe('JwtAuth: a shared secret (HS256)', () => {
  const auth = (): JwtAuth => new JwtAuth(settings({ secret }));

  it('accepts a good token and maps its claims: user from sub, tenant absent → default, no scopes', async () => {
    const r = await auth().verify(await mint(secret, 'HS256'));
    expect(r.failure).toBeUndefined();
    expect(r.principal!.user).toBe('alice');
    expect(r.principal!.tenant).toBe('default');
    expect([...r.principal!.scopes]).toEqual([]);
    expect(r.principal!.via).toBe('jwt');
  });

  it('accepts HS384 and HS512 too, and --jwt-algorithms narrows the list', async () => {
    expect((await auth().verify(await mint(secret, 'HS384'))).principal?.user).toBe('alice');
    expect((await auth().verify(await mint(secret, 'HS512'))).principal?.user).toBe('alice');
    const narrow = new JwtAuth(settings({ secret, algorithms: ['HS512'] }));
    expect((await narrow.verify(await mint(secret, 'HS256'))).failure).toBe('bad_algorithm');
    expect((await narrow.verify(await mint(secret, 'HS512'))).failure).toBeUndefined();
  });

  it('refuses a token signed with another secret: bad_signature', async () => {
    expect((await auth().verify(await mint(new Uint8Array(randomBytes(32)), 'HS256'))).failure).toBe('bad_signature');
  });

  it('refuses a tampered payload: bad_signature', async () => {
    const [h, , s] = (await mint(secret, 'HS256')).split('.');
    const forged = `${h}.${base64url.encode(JSON.stringify({ iss: ISS, aud: AUD, sub: 'root', exp: now() + 3600 }))}.${s}`;
    expect((await auth().verify(forged)).failure).toBe('bad_signature');
  });

  it('expiry and not-before, within and beyond the clock tolerance', async () => {
    expect((await auth().verify(await mint(secret, 'HS256', { exp: now() - 10 }))).failure).toBeUndefined();
    expect((await auth().verify(await mint(secret, 'HS256', { exp: now() - 60 }))).failure).toBe('expired');
    expect((await auth().verify(await mint(secret, 'HS256', { nbf: now() + 10 }))).failure).toBeUndefined();
    expect((await auth().verify(await mint(secret, 'HS256', { nbf: now() + 60 }))).failure).toBe('not_yet_valid');
    const strict = new JwtAuth(settings({ secret, clockToleranceSec: 0 }));
    expect((await strict.verify(await mint(secret, 'HS256', { exp: now() - 10 }))).failure).toBe('expired');
  });

  it('requires exp: a token that never expires is refused (bad_claims)', async () => {
    expect((await auth().verify(await mint(secret, 'HS256', { exp: undefined }))).failure).toBe('bad_claims');
  });

  it('wrong or missing issuer, wrong or missing audience', async () => {
    expect((await auth().verify(await mint(secret, 'HS256', { iss: 'https://evil.example' }))).failure).toBe('wrong_issuer');
    expect((await auth().verify(await mint(secret, 'HS256', { iss: undefined }))).failure).toBe('wrong_issuer');
    expect((await auth().verify(await mint(secret, 'HS256', { aud: 'other' }))).failure).toBe('wrong_audience');
    expect((await auth().verify(await mint(secret, 'HS256', { aud: undefined }))).failure).toBe('wrong_audience');
    // An audience list that includes ours is fine.
    expect((await auth().verify(await mint(secret, 'HS256', { aud: ['other', AUD] }))).failure).toBeUndefined();
  });

  it('never accepts alg none, in any spelling, with or without a signature', async () => {
    const payload = { iss: ISS, aud: AUD, sub: 'alice', exp: now() + 3600 };
    for (const alg of ['none', 'None', 'NONE', 'nOnE']) {
      expect((await auth().verify(handMade({ alg, typ: 'JWT' }, payload))).failure).toBe('bad_algorithm');
      expect((await auth().verify(handMade({ alg }, payload, 'c2ln'))).failure).toBe('bad_algorithm');
    }
  });

  it('refuses a public-key algorithm when only the secret is configured', async () => {
    expect((await auth().verify(await mint(rsa.privateKey, 'RS256', {}, { kid: rsa.kid }))).failure).toBe('bad_algorithm');
  });

  it('refuses what is not a JWT at all: malformed', async () => {
    for (const t of ['', 'abc', 'a.b', 'a.b.c', '..', 'x'.repeat(9000), handMade({ alg: 'HS256' }, {}).replace(/^[^.]+/, 'bm90IGpzb24')]) {
      expect((await auth().verify(t)).failure, t.slice(0, 20)).toMatch(/^(malformed|bad_signature)$/);
    }
    expect((await auth().verify('a.b.c')).failure).toBe('malformed');
    expect((await auth().verify(handMade({ typ: 'JWT' }, {}))).failure).toBe('malformed');
  });
});

describe('JwtAuth: a JWKS file (RS256, ES256, EdDSA)', () => {
  const auth = (): JwtAuth => new JwtAuth(settings({ jwks: { file: jwksFile } }));

  it.each([
    ['RS256', () => rsa],
    ['ES256', () => ec],
    ['EdDSA', () => ed],
  ])('accepts a good %s token by its kid', async (alg, p) => {
    const r = await auth().verify(await mint(p().privateKey, alg, { sub: `user-${alg}` }, { kid: p().kid }));
    expect(r.failure).toBeUndefined();
    expect(r.principal!.user).toBe(`user-${alg}`);
  });

  it('refuses a token by a key not in the set: unknown_kid; by another key under a known kid: bad_signature', async () => {
    expect((await auth().verify(await mint(stranger.privateKey, 'RS256', {}, { kid: 'rsa-stranger' }))).failure).toBe('unknown_kid');
    expect((await auth().verify(await mint(stranger.privateKey, 'RS256', {}, { kid: rsa.kid }))).failure).toBe('bad_signature');
  });

  it('refuses HS256 signed with the RS256 public key (PEM, or JWK JSON) as the secret: never tried as HMAC', async () => {
    const pem = new TextEncoder().encode(await exportSPKI(rsa.publicKey));
    const jwkBytes = new TextEncoder().encode(JSON.stringify(rsa.jwk));
    for (const key of [pem, jwkBytes]) {
      const t = await mint(key, 'HS256', {}, { kid: rsa.kid });
      expect((await auth().verify(t)).failure).toBe('bad_algorithm');
      // With a secret configured as well, HS256 is checked against the secret only.
      const both = new JwtAuth(settings({ secret, jwks: { file: jwksFile } }));
      expect((await both.verify(t)).failure).toBe('bad_signature');
    }
  });

  it('refuses an algorithm the token names for a key of another kind (ES256 header on the RSA kid)', async () => {
    const t = await mint(ec.privateKey, 'ES256', {}, { kid: rsa.kid });
    expect((await auth().verify(t)).failure).toBe('unknown_kid');
  });

  it('reload() reads the file again; a bad file keeps the keys in force', async () => {
    const file = join(dir, 'rotating.json');
    writeFileSync(file, JSON.stringify({ keys: [rsa.jwk] }));
    const a = new JwtAuth(settings({ jwks: { file } }));
    const byStranger = await mint(stranger.privateKey, 'RS256', {}, { kid: stranger.kid });
    expect((await a.verify(byStranger)).failure).toBe('unknown_kid');
    writeFileSync(file, JSON.stringify({ keys: [stranger.jwk] }));
    a.reload();
    expect((await a.verify(byStranger)).failure).toBeUndefined();
    writeFileSync(file, '{"keys": [');
    expect(() => a.reload()).toThrow(ConfigError);
    expect((await a.verify(byStranger)).failure).toBeUndefined();
  });

  it('refuses at start a JWKS file that is missing, not JSON, empty, symmetric or private', async () => {
    const bad = (name: string, text: string | undefined): (() => JwtAuth) => {
      const file = join(dir, name);
      if (text !== undefined) writeFileSync(file, text);
      return () => new JwtAuth(settings({ jwks: { file } }));
    };
    expect(bad('missing.json', undefined)).toThrow(/cannot read .*ENOENT/);
    expect(bad('notjson.json', 'keys:')).toThrow(/is not JSON/);
    expect(bad('empty.json', '{"keys": []}')).toThrow(/keys/);
    expect(bad('oct.json', JSON.stringify({ keys: [{ kty: 'oct', k: 'c2VjcmV0' }] }))).toThrow(/kty/);
    const priv = await exportJWK((await generateKeyPair('ES256', { extractable: true })).privateKey);
    expect(bad('private.json', JSON.stringify({ keys: [priv] }))).toThrow(/private key/);
  });
});

describe('JwtAuth: claims', () => {
  it('maps user, tenant and scopes from the default claims, scope as a space-separated string or an array', async () => {
    const a = new JwtAuth(settings({ secret }));
    const r1 = await a.verify(await mint(secret, 'HS256', { sub: 'bob@acme.io', tenant: 'acme', scope: 'kgate:tenant-admin  read write' }));
    expect(r1.principal).toMatchObject({ user: 'bob@acme.io', tenant: 'acme' });
    expect([...r1.principal!.scopes].sort()).toEqual(['kgate:tenant-admin', 'read', 'write']);
    const r2 = await a.verify(await mint(secret, 'HS256', { scope: ['kgate:admin'] }));
    expect([...r2.principal!.scopes]).toEqual(['kgate:admin']);
  });

  it('reads the claims the settings name', async () => {
    const a = new JwtAuth(settings({ secret, userClaim: 'preferred_username', tenantClaim: 'org', scopeClaim: 'scp' }));
    const r = await a.verify(
      await mint(secret, 'HS256', { sub: 'ignored', preferred_username: 'carol', org: 'beta', scp: ['kgate:impersonate'], tenant: 'not-this', scope: 'kgate:admin' }),
    );
    expect(r.principal).toMatchObject({ user: 'carol', tenant: 'beta' });
    expect([...r.principal!.scopes]).toEqual(['kgate:impersonate']);
    expect((await a.verify(await mint(secret, 'HS256'))).failure).toBe('bad_claims');
  });

  it.each<[string, Record<string, unknown>]>([
    ['no user', { sub: undefined }],
    ['an empty user', { sub: '' }],
    ['a user with a space', { sub: 'al ice' }],
    ['a user with a slash', { sub: '../etc' }],
    ['a user of 129 characters', { sub: 'a'.repeat(129) }],
    ['a numeric user', { sub: 42 }],
    ['an empty tenant', { tenant: '' }],
    ['a tenant that is an array', { tenant: ['acme'] }],
    ['a tenant with a newline', { tenant: 'acme\nadmin' }],
    ['a numeric scope claim', { scope: 7 }],
    ['a scope array holding a number', { scope: ['kgate:admin', 1] }],
    ['a scope array holding an object', { scope: [{ kgate: 'admin' }] }],
    ['65 scopes', { scope: Array.from({ length: 65 }, (_, i) => `s${i}`) }],
    ['a scope of 129 characters', { scope: 's'.repeat(129) }],
    ['a scope with a tab', { scope: 'kgate:admin\tx' }],
  ])('refuses %s: bad_claims', async (_what, claims) => {
    const a = new JwtAuth(settings({ secret }));
    expect((await a.verify(await mint(secret, 'HS256', claims))).failure).toBe('bad_claims');
  });

  it('accepts a user and tenant of exactly 128 characters of the safe set', async () => {
    const name = 'aZ09._@+-'.repeat(15).slice(0, 128);
    const r = await new JwtAuth(settings({ secret })).verify(await mint(secret, 'HS256', { sub: name, tenant: name }));
    expect(r.principal).toMatchObject({ user: name, tenant: name });
  });
});

describe('JwtAuth: settings refused at construction', () => {
  it('issuer, audience and a source are required; none and kind mismatches are refused', () => {
    expect(() => new JwtAuth(settings({}))).toThrow(/needs --jwt-secret-file/);
    expect(() => new JwtAuth(settings({ secret, issuer: '' }))).toThrow(/--jwt-issuer/);
    expect(() => new JwtAuth(settings({ secret, audience: [] }))).toThrow(/--jwt-audience/);
    expect(() => new JwtAuth(settings({ secret, algorithms: ['none'] }))).toThrow(/never accepted/);
    expect(() => new JwtAuth(settings({ secret, algorithms: ['RS256'] }))).toThrow(/public-key algorithm/);
    expect(() => new JwtAuth(settings({ jwks: { file: jwksFile }, algorithms: ['HS256'] }))).toThrow(/HMAC algorithm/);
    expect(() => new JwtAuth(settings({ secret, algorithms: ['HS1'] }))).toThrow(/is not one of/);
  });
});

/** A JWKS served by the test, whose keys it changes, counting its hits. */
class JwksServer {
  keys: JWK[] = [];
  hits = 0;
  status = 200;
  /** Instead of the JWKS, when set. */
  body: string | undefined;
  private server: Server | undefined;
  url = '';

  async start(): Promise<void> {
    this.server = createServer((_req, res) => {
      this.hits++;
      res.writeHead(this.status, { 'content-type': 'application/json' });
      res.end(this.body ?? JSON.stringify({ keys: this.keys }));
    });
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server!.address() as AddressInfo).port}/.well-known/jwks.json`;
  }

  close(): Promise<void> {
    return new Promise((r) => this.server!.close(() => r()));
  }
}

describe('JwtAuth: a JWKS URL, keys rotated by kid (served by the test on 127.0.0.1)', () => {
  const srv = new JwksServer();
  let k1: Pair, k2: Pair;
  beforeAll(async () => {
    [k1, k2] = await Promise.all([pair('RS256', 'k1'), pair('ES256', 'k2')]);
    await srv.start();
  });
  afterAll(() => srv.close());
  afterEach(() => vi.useRealTimers());

  /** Moves the clock jose reads (Date only: sockets and timeouts keep real time). */
  const advance = (ms: number): void => void vi.setSystemTime(Date.now() + ms);
  const token = (p: Pair, kid = p.kid): Promise<string> => mint(p.privateKey, p.alg, {}, { kid });

  it('fetches once, takes a new kid after one refetch once the 30 s cooldown passed, and a flood of unknown kids costs at most one fetch per cooldown', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    srv.keys = [k1.jwk];
    srv.hits = 0;
    const auth = new JwtAuth(settings({ jwks: { url: new URL(srv.url) } }));
    expect(srv.hits).toBe(0);
    expect((await auth.verify(await token(k1))).failure).toBeUndefined();
    expect(srv.hits).toBe(1);

    // Rotation: the IdP adds k2. Within the cooldown of the last fetch, its tokens are not yet known.
    srv.keys = [k1.jwk, k2.jwk];
    const t2 = await token(k2);
    expect((await auth.verify(t2)).failure).toBe('unknown_kid');
    expect(srv.hits).toBe(1);
    advance(29_000);
    expect((await auth.verify(t2)).failure).toBe('unknown_kid');
    expect(srv.hits).toBe(1);
    advance(2_000);
    expect((await auth.verify(t2)).failure).toBeUndefined();
    expect(srv.hits).toBe(2);
    expect((await auth.verify(await token(k1))).failure).toBeUndefined();
    expect(srv.hits).toBe(2);

    // A flood of unknown kids: none within the cooldown, then exactly one fetch for 200 concurrent ones.
    const unknown = await Promise.all(Array.from({ length: 10 }, (_, i) => token(k1, `nope-${i}`)));
    const flood = async (n: number): Promise<void> => {
      const rs = await Promise.all(Array.from({ length: n }, (_, i) => auth.verify(unknown[i % unknown.length]!)));
      expect(rs.every((r) => r.failure === 'unknown_kid')).toBe(true);
    };
    await flood(200);
    expect(srv.hits).toBe(2);
    advance(31_000);
    await flood(200);
    expect(srv.hits).toBe(3);
    for (let i = 0; i < 50; i++) await flood(2);
    expect(srv.hits).toBe(3);
  });

  it('a key removed from the set is dropped when the cache expires (10 min); while the URL fails, the last keys serve and fetches stay bounded', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    srv.keys = [k1.jwk, k2.jwk];
    srv.status = 200;
    srv.hits = 0;
    const auth = new JwtAuth(settings({ jwks: { url: new URL(srv.url) } }));
    const t1 = await token(k1);
    expect((await auth.verify(t1)).failure).toBeUndefined();
    expect(srv.hits).toBe(1);
    srv.keys = [k2.jwk];
    advance(60_000);
    expect((await auth.verify(t1)).failure).toBeUndefined(); // still cached
    expect(srv.hits).toBe(1);
    advance(10 * 60_000);
    expect((await auth.verify(await token(k1))).failure).toBe('unknown_kid');
    expect(srv.hits).toBe(2);

    // The IdP fails: after the cache expires the last keys still verify, and one failed fetch blocks the next for the cooldown.
    srv.status = 503;
    advance(11 * 60_000);
    const t2 = await token(k2);
    expect((await auth.verify(t2)).failure).toBeUndefined();
    expect(srv.hits).toBe(3);
    for (let i = 0; i < 20; i++) expect((await auth.verify(await token(k1, `gone-${i}`))).failure).toMatch(/^(unknown_kid|jwks_unavailable)$/);
    expect((await auth.verify(t2)).failure).toBeUndefined();
    expect(srv.hits).toBe(3);
    advance(31_000);
    expect((await auth.verify(t2)).failure).toBeUndefined();
    expect(srv.hits).toBe(4);

    // JSON that is no JWKS, or no JSON: a failure like any other, bounded the same way.
    srv.status = 200;
    for (const body of ['{"nope": 1}', 'not json', '{"keys": [1]}']) {
      srv.body = body;
      advance(31_000);
      const before = srv.hits;
      for (let i = 0; i < 10; i++) expect((await auth.verify(await token(k1, `odd-${i}`))).failure).toMatch(/^(unknown_kid|jwks_unavailable)$/);
      expect((await auth.verify(t2)).failure).toBeUndefined();
      expect(srv.hits).toBe(before + 1);
    }
    srv.body = undefined;
  });

  it('a JWKS URL that cannot be reached: jwks_unavailable, never a throw', async () => {
    const auth = new JwtAuth(settings({ jwks: { url: new URL('http://127.0.0.1:1/jwks.json') }, timeoutMs: 2000 }));
    expect((await auth.verify(await token(k1))).failure).toBe('jwks_unavailable');
  });
});
