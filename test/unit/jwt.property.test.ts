/**
 * Property tests (fast-check) of JWT checking: random strings and valid JWTs
 * mutated (characters flipped in the header, payload or signature, segments
 * swapped, dropped or repeated, the header re-encoded with another algorithm,
 * kid or none) are never accepted and never make the authenticator throw.
 * The one mutation that may still verify is one that decodes to the very same
 * bytes (a flipped padding bit of a segment's last base64url character): the
 * same token, so the property allows exactly that.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { base64url, exportJWK, generateKeyPair, SignJWT } from 'jose';
import { beforeAll, describe, expect, it } from 'vitest';
import { AUTH_FAILURES, GatewayAuth } from '../../src/gateway/auth.js';
import { JwtAuth } from '../../src/gateway/jwt.js';

const ISS = 'https://idp.example';
const AUD = 'kgate';
const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
const ALGS = ['none', 'None', 'HS256', 'HS384', 'HS512', 'RS256', 'PS256', 'ES256', 'ES384', 'EdDSA', 'Ed25519', 'A256KW', 'dir', '', 'hs256'];

let auth: GatewayAuth;
let valid: string[];

/** The bytes a token's segments decode to; undefined when one does not decode. */
function decoded(t: string): string | undefined {
  try {
    return t
      .split('.')
      .map((s) => Buffer.from(base64url.decode(s)).toString('hex'))
      .join('.');
  } catch {
    return undefined;
  }
}

beforeAll(async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kgate-jwtprop-'));
  const secret = new Uint8Array(randomBytes(32));
  const rsa = await generateKeyPair('RS256', { extractable: true });
  const ec = await generateKeyPair('ES256', { extractable: true });
  const jwks = join(dir, 'jwks.json');
  writeFileSync(
    jwks,
    JSON.stringify({
      keys: [
        { ...(await exportJWK(rsa.publicKey)), kid: 'r1' },
        { ...(await exportJWK(ec.publicKey)), kid: 'e1' },
      ],
    }),
  );
  const jwt = new JwtAuth({ secret, jwks: { file: jwks }, issuer: ISS, audience: [AUD], clockToleranceSec: 30, userClaim: 'sub', tenantClaim: 'tenant', scopeClaim: 'scope' });
  auth = new GatewayAuth({ operatorToken: 'operator-token-0123456789', jwt });
  const claims = { sub: 'alice', tenant: 'acme', scope: 'kgate:admin' };
  valid = [
    await new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).setIssuer(ISS).setAudience(AUD).setExpirationTime('1h').sign(secret),
    await new SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: 'r1' }).setIssuer(ISS).setAudience(AUD).setExpirationTime('1h').sign(rsa.privateKey),
    await new SignJWT(claims).setProtectedHeader({ alg: 'ES256', kid: 'e1' }).setIssuer(ISS).setAudience(AUD).setExpirationTime('1h').sign(ec.privateKey),
  ];
});

/** Checks `token` the three ways a client can send it; none may throw, and each must agree. */
async function check(token: string): Promise<{ accepted: boolean }> {
  const results = await Promise.all([
    auth.authenticate({ authorization: `Bearer ${token}` }, '/api/kernels'),
    auth.authenticate({ authorization: `token ${token}` }, '/api/kernels'),
    auth.authenticate({}, `/api/kernels?token=${encodeURIComponent(token)}`),
  ]);
  for (const r of results) if (r.failure !== undefined) expect(AUTH_FAILURES).toContain(r.failure);
  return { accepted: results.some((r) => r.principal !== undefined) };
}

const flip = (s: string, i: number, c: string): string => {
  const at = i % s.length;
  const next = s[at] === c ? B64[(B64.indexOf(c) + 1) % B64.length]! : c;
  return s.slice(0, at) + next + s.slice(at + 1);
};

describe('JWT checking, property-based', () => {
  it('the valid tokens are accepted (so the properties below can fail)', async () => {
    for (const t of valid) expect((await check(t)).accepted).toBe(true);
  });

  it('random strings are never accepted and never throw', async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.string({ maxLength: 300 }), fc.stringMatching(/^[A-Za-z0-9_-]{0,80}\.[A-Za-z0-9_-]{0,200}\.[A-Za-z0-9_-]{0,120}$/)), async (s) => {
        expect((await check(s)).accepted).toBe(false);
      }),
      { numRuns: 400 },
    );
  });

  it('a valid JWT with characters flipped in its header, payload or signature is refused (unless it decodes to the same bytes)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.nat({ max: 2 }), fc.nat({ max: 2 }), fc.array(fc.tuple(fc.nat(), fc.constantFrom(...B64)), { minLength: 1, maxLength: 4 }), async (which, seg, flips) => {
        const original = valid[which]!;
        const parts = original.split('.');
        for (const [i, c] of flips) parts[seg] = flip(parts[seg]!, i, c);
        const mutated = parts.join('.');
        const { accepted } = await check(mutated);
        if (accepted) expect(decoded(mutated)).toBe(decoded(original));
      }),
      { numRuns: 500 },
    );
  });

  it('segments swapped, dropped, repeated or joined from two tokens are refused', async () => {
    await fc.assert(
      fc.asyncProperty(fc.nat({ max: 2 }), fc.nat({ max: 2 }), fc.array(fc.nat({ max: 5 }), { minLength: 1, maxLength: 5 }), async (a, b, order) => {
        const pool = [...valid[a]!.split('.'), ...valid[b]!.split('.')];
        const mutated = order.map((k) => pool[k]!).join('.');
        // Only reassembling one of the valid tokens itself may pass.
        const { accepted } = await check(mutated);
        if (accepted) expect(valid).toContain(mutated);
      }),
      { numRuns: 300 },
    );
  });

  it('the header re-encoded with another alg, kid or extra members is refused', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.nat({ max: 2 }),
        fc.constantFrom(...ALGS),
        fc.option(fc.constantFrom('r1', 'e1', 'nope', '', '../../etc/passwd'), { nil: undefined }),
        fc.option(fc.constantFrom({ crit: ['exp'] }, { b64: false }, { jku: 'http://127.0.0.1:1/' }, { jwk: { kty: 'oct', k: 'AAAA' } }, { typ: 'JWT' }), { nil: undefined }),
        fc.boolean(),
        async (which, alg, kid, extra, dropSig) => {
          const [h, p, s] = valid[which]!.split('.');
          const original = JSON.parse(Buffer.from(base64url.decode(h!)).toString()) as Record<string, unknown>;
          const header = { ...original, alg, ...(kid === undefined ? {} : { kid }), ...(extra ?? {}) };
          const mutated = `${base64url.encode(JSON.stringify(header))}.${p}.${dropSig ? '' : s}`;
          const same = JSON.stringify(header) === JSON.stringify(original) && !dropSig;
          const { accepted } = await check(mutated);
          if (!same) expect(accepted).toBe(false);
        },
      ),
      { numRuns: 400 },
    );
  });
});
