/**
 * `--token-file` and the auth settings: the file's format with one message per
 * mistake, matching by digest, the composite authenticator's order (static
 * tokens, then JWTs), reload keeping the old file on a bad new one, and the
 * start-time refusals of the JWT options.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT } from 'jose';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { authenticatorFor, GatewayAuth } from '../../src/gateway/auth.js';
import { TokenFile, tokenDigest } from '../../src/gateway/token-file.js';
import { ConfigError } from '../../src/options.js';

const dir = mkdtempSync(join(tmpdir(), 'kgate-tokens-'));
const sha = (t: string): string => createHash('sha256').update(t).digest('hex');
const write = (name: string, text: string): string => {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
};
const bearer = (t: string): { authorization: string } => ({ authorization: `Bearer ${t}` });

describe('TokenFile', () => {
  it('reads entries, defaults the tenant and scopes, and matches by digest', () => {
    const f = TokenFile.parse(
      `tokens:\n  - sha256: ${sha('svc-a')}\n    user: notebook\n    tenant: acme\n    scopes: [kgate:impersonate, custom-scope]\n  - sha256: ${sha('svc-b').toUpperCase()}\n    user: cron\n`,
    );
    expect(f.size).toBe(2);
    expect(f.match(tokenDigest('svc-a'))).toMatchObject({ user: 'notebook', tenant: 'acme', via: 'static-token' });
    expect([...f.match(tokenDigest('svc-a'))!.scopes]).toEqual(['kgate:impersonate', 'custom-scope']);
    expect(f.match(tokenDigest('svc-b'))).toMatchObject({ user: 'cron', tenant: 'default' });
    expect(f.match(tokenDigest('svc-c'))).toBeUndefined();
  });

  it.each([
    ['not YAML', 'tokens: [', /not valid YAML/],
    ['no tokens key', 'users: []', /tokens/],
    ['a short digest', 'tokens:\n  - sha256: abc\n    user: u', /tokens\.0\.sha256: must be the 64 hex digits/],
    ['no user', `tokens:\n  - sha256: ${sha('x')}`, /tokens\.0\.user/],
    ['a user with a space', `tokens:\n  - sha256: ${sha('x')}\n    user: a b`, /tokens\.0\.user: must be a non-empty string of at most 128/],
    ['a misspelt kgate scope', `tokens:\n  - sha256: ${sha('x')}\n    user: u\n    scopes: [kgate:admn]`, /"kgate:admn" is not a kgate scope/],
    ['scopes as a string', `tokens:\n  - sha256: ${sha('x')}\n    user: u\n    scopes: kgate:admin`, /tokens\.0\.scopes/],
    ['an unknown key (a typo of scopes)', `tokens:\n  - sha256: ${sha('x')}\n    user: u\n    scope: [kgate:admin]`, /tokens\.0.*scope/],
    ['the token itself instead of its digest', 'tokens:\n  - token: hunter2\n    user: u', /tokens\.0/],
    ['a digest twice', `tokens:\n  - sha256: ${sha('x')}\n    user: u\n  - sha256: ${sha('x')}\n    user: v`, /tokens\.1\.sha256: the same digest as tokens\[0\]/],
  ])('refuses %s with a message that says where', (_what, text, message) => {
    expect(() => TokenFile.parse(text, 'tokens.yaml')).toThrow(ConfigError);
    expect(() => TokenFile.parse(text, 'tokens.yaml')).toThrow(message);
  });

  it('names every mistake of a file at once', () => {
    try {
      TokenFile.parse(`tokens:\n  - sha256: nope\n    user: ok\n  - sha256: ${sha('y')}\n    user: 'b a d'\n`, 'f.yaml');
      expect.fail('no error');
    } catch (e) {
      expect((e as Error).message).toMatch(/tokens\.0\.sha256/);
      expect((e as Error).message).toMatch(/tokens\.1\.user/);
    }
  });

  it('refuses a missing file at start', () => {
    expect(() => TokenFile.load(join(dir, 'nope.yaml'))).toThrow(/--token-file: cannot read .*ENOENT/);
  });
});

describe('GatewayAuth', () => {
  it('operator token → operator; a token-file token → its principal; anything else → bad_token; none → missing', async () => {
    const file = write('t1.yaml', `tokens:\n  - sha256: ${sha('svc-token-1')}\n    user: svc\n    tenant: acme\n`);
    const auth = new GatewayAuth({ operatorToken: 'op-token', tokenFile: file });
    expect((await auth.authenticate(bearer('op-token'), '/')).principal?.via).toBe('operator-token');
    expect((await auth.authenticate({}, '/api?token=svc-token-1')).principal).toMatchObject({ user: 'svc', tenant: 'acme' });
    expect((await auth.authenticate({ authorization: 'token svc-token-1' }, '/')).principal?.user).toBe('svc');
    expect((await auth.authenticate(bearer('svc-token-2'), '/')).failure).toBe('bad_token');
    expect((await auth.authenticate({}, '/api')).failure).toBe('missing');
    expect((await auth.authenticate({ authorization: 'Basic abc' }, '/api')).failure).toBe('missing');
  });

  it('reload() takes a new token file, and keeps the old one when the new one is bad', async () => {
    const file = write('t2.yaml', `tokens:\n  - sha256: ${sha('first')}\n    user: one\n`);
    const auth = new GatewayAuth({ operatorToken: '', tokenFile: file });
    expect(auth.enabled).toBe(true);
    expect((await auth.authenticate(bearer('first'), '/')).principal?.user).toBe('one');
    write('t2.yaml', `tokens:\n  - sha256: ${sha('second')}\n    user: two\n`);
    await auth.reload();
    expect((await auth.authenticate(bearer('first'), '/')).failure).toBe('bad_token');
    expect((await auth.authenticate(bearer('second'), '/')).principal?.user).toBe('two');
    write('t2.yaml', 'tokens:\n  - sha256: broken\n');
    await expect(auth.reload()).rejects.toThrow(ConfigError);
    expect((await auth.authenticate(bearer('second'), '/')).principal?.user).toBe('two');
  });

  it('a static token shaped like a JWT still matches; a JWT is checked by JwtAuth', async () => {
    const secret = randomBytes(32);
    const secretFile = write('secret', `${secret.toString('base64url')}\n`);
    const jwtLike = 'aaaa.bbbb.cccc';
    const tokens = write('t3.yaml', `tokens:\n  - sha256: ${sha(jwtLike)}\n    user: legacy\n`);
    const config = loadConfig(['--token-file', tokens, '--jwt-secret-file', secretFile, '--jwt-issuer', 'iss', '--jwt-audience', 'aud'], {});
    const auth = authenticatorFor(config, 'op');
    expect((await auth.authenticate(bearer(jwtLike), '/')).principal?.user).toBe('legacy');
    expect((await auth.authenticate(bearer('aaaa.bbbb.cccd'), '/')).failure).toBe('malformed');
    const key = new TextEncoder().encode(secret.toString('base64url'));
    const jwt = await new SignJWT({ sub: 'dora' }).setProtectedHeader({ alg: 'HS256' }).setIssuer('iss').setAudience('aud').setExpirationTime('1h').sign(key);
    expect((await auth.authenticate(bearer(jwt), '/')).principal).toMatchObject({ user: 'dora', via: 'jwt' });
    // Not JWT-shaped: never sent to JwtAuth.
    expect((await auth.authenticate(bearer('plain-wrong'), '/')).failure).toBe('bad_token');
  });
});

describe('the auth options', () => {
  const secretFile = write('secret32', 'x'.repeat(32));
  const load = (args: string[]): unknown => loadConfig(args, {});

  it('JWT sources need --jwt-issuer and --jwt-audience', () => {
    expect(() => load(['--jwt-secret-file', secretFile])).toThrow(/needs --jwt-issuer and --jwt-audience/);
    expect(() => load(['--jwt-secret-file', secretFile, '--jwt-issuer', 'i'])).toThrow(/needs --jwt-audience/);
    expect(() => load(['--jwks-file', secretFile, '--jwt-audience', 'a'])).toThrow(/needs --jwt-issuer/);
    expect(() => load(['--jwt-issuer', 'i', '--jwt-audience', 'a'])).toThrow(/no JWT source/);
  });

  it('--jwt-algorithms refuses none and kinds without their key', () => {
    const base = ['--jwt-issuer', 'i', '--jwt-audience', 'a'];
    expect(() => load([...base, '--jwt-secret-file', secretFile, '--jwt-algorithms', 'HS256,none'])).toThrow(/never accepted/);
    expect(() => load([...base, '--jwt-secret-file', secretFile, '--jwt-algorithms', 'RS256'])).toThrow(/public-key/);
    expect(() => load([...base, '--jwks-url', 'https://idp.example/jwks', '--jwt-algorithms', 'HS256'])).toThrow(/HMAC/);
    expect(load([...base, '--jwks-url', 'https://idp.example/jwks', '--jwt-algorithms', 'RS256', '--jwt-algorithms', 'ES256'])).toMatchObject({
      jwtAlgorithms: ['RS256', 'ES256'],
    });
  });

  it('--jwks-url must be https, or http to loopback; not both --jwks-url and --jwks-file', () => {
    const base = ['--jwt-issuer', 'i', '--jwt-audience', 'a'];
    expect(() => load([...base, '--jwks-url', 'http://idp.example/jwks'])).toThrow(/must be https/);
    expect(() => load([...base, '--jwks-url', 'ftp://idp.example/jwks'])).toThrow(/--jwks-url/);
    expect(load([...base, '--jwks-url', 'http://127.0.0.1:8080/jwks'])).toMatchObject({ jwksUrl: 'http://127.0.0.1:8080/jwks' });
    expect(load([...base, '--jwks-url', 'http://[::1]:8080/jwks'])).toMatchObject({ jwksUrl: 'http://[::1]:8080/jwks' });
    expect(() => load([...base, '--jwks-url', 'https://x/j', '--jwks-file', secretFile])).toThrow(/not both/);
  });

  it('files are read when the gateway is built: a short secret, a missing secret file, a bad token file are ConfigErrors', () => {
    const base = ['--jwt-issuer', 'i', '--jwt-audience', 'a'];
    const short = write('short', 'tooshort\n');
    expect(() => authenticatorFor(loadConfig([...base, '--jwt-secret-file', short], {}), 'op')).toThrow(/at least 32 are needed/);
    expect(() => authenticatorFor(loadConfig([...base, '--jwt-secret-file', join(dir, 'none')], {}), 'op')).toThrow(/cannot read/);
    expect(() => authenticatorFor(loadConfig(['--token-file', write('bad.yaml', 'tokens: 3')], {}), 'op')).toThrow(ConfigError);
  });

  it('an empty --auth-token on a public address is allowed when a token file or JWTs authenticate', () => {
    expect(() => load(['--ip', '0.0.0.0', '--auth-token', ''])).toThrow(/without a token/);
    expect(load(['--ip', '0.0.0.0', '--auth-token', '', '--token-file', 'x.yaml'])).toMatchObject({ authToken: '' });
  });
});
