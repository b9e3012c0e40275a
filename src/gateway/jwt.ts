/**
 * JWTs, checked by jose (never by hand): signed with a shared secret
 * (`--jwt-secret-file`, HS256/384/512) or by a key of a JWKS (`--jwks-url`,
 * `--jwks-file`: RSA, EC, EdDSA). The algorithm the token's header names
 * decides the key *kind* before any key is looked at: an HMAC algorithm is only
 * ever checked against the secret, an asymmetric one only against the JWKS, so
 * a token "signed with HS256 using the public key as the secret" cannot verify;
 * `none` is never accepted. Issuer, audience and expiry are always required.
 */
import { readFileSync } from 'node:fs';
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  customFetch,
  decodeProtectedHeader,
  jwtVerify,
  type CryptoKey,
  type FetchImplementation,
  type FlattenedJWSInput,
  type JSONWebKeySet,
  type JWSHeaderParameters,
  type JWTPayload,
} from 'jose';
import type { Logger } from 'pino';
import { z } from 'zod';
import { ConfigError } from '../options.js';
import { DEFAULT_TENANT, type Principal } from '../principal.js';
import { MAX_SCOPES, NAME_PATTERN, SCOPE_PATTERN } from './token-file.js';

export const HMAC_ALGORITHMS: readonly string[] = ['HS256', 'HS384', 'HS512'];
export const ASYMMETRIC_ALGORITHMS: readonly string[] = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519'];

/** A JWT longer than this is refused unread (node bounds headers at 16 KiB anyway). */
export const MAX_JWT_LENGTH = 8192;
/** An HMAC secret shorter than this is refused at start (RFC 7518 §3.2: at least the hash's size). */
export const MIN_SECRET_BYTES = 32;
/** The most a JWKS response may hold. */
const MAX_JWKS_BYTES = 1024 * 1024;

/** Three base64url segments: what is checked as a JWT, rather than as a static token. */
const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;
export const looksLikeJwt = (token: string): boolean => JWT_SHAPE.test(token);

/** Why a JWT was refused (src/gateway/auth.ts adds the kinds of static tokens). */
export const JWT_FAILURES = [
  'bad_signature',
  'expired',
  'not_yet_valid',
  'wrong_issuer',
  'wrong_audience',
  'bad_algorithm',
  'unknown_kid',
  'malformed',
  'bad_claims',
  'jwks_unavailable',
] as const;
export type JwtFailure = (typeof JWT_FAILURES)[number];
export type JwtResult = { principal: Principal; failure?: undefined } | { failure: JwtFailure; principal?: undefined };

export type JwksSource = { file: string } | { url: URL };

export interface JwtSettings {
  /** The HMAC secret (the bytes of --jwt-secret-file). */
  secret?: Uint8Array | undefined;
  jwks?: JwksSource | undefined;
  issuer: string;
  audience: readonly string[];
  clockToleranceSec: number;
  /** The allow-list; undefined: every algorithm of the configured key kinds. */
  algorithms?: readonly string[] | undefined;
  userClaim: string;
  tenantClaim: string;
  scopeClaim: string;
  /** A remote JWKS: the least time between two fetches for an unknown kid, and between a failed fetch and the next (default 30 s). */
  cooldownMs?: number;
  /** A remote JWKS: how long one fetch may take (default 5 s). */
  timeoutMs?: number;
  log?: Logger | undefined;
}

/**
 * Which algorithms may be accepted, given the configured key kinds. Throws a
 * ConfigError that says why for `none`, an unknown name, or an algorithm with
 * no key of its kind.
 */
export function allowedAlgorithms(list: readonly string[] | undefined, hasSecret: boolean, hasJwks: boolean): Set<string> {
  const available = [...(hasSecret ? HMAC_ALGORITHMS : []), ...(hasJwks ? ASYMMETRIC_ALGORITHMS : [])];
  if (list === undefined) return new Set(available);
  if (list.length === 0) throw new ConfigError('--jwt-algorithms: the list is empty');
  for (const a of list) {
    if (a.toLowerCase() === 'none') throw new ConfigError('--jwt-algorithms: "none" (an unsigned token) is never accepted');
    if (HMAC_ALGORITHMS.includes(a)) {
      if (!hasSecret) throw new ConfigError(`--jwt-algorithms: ${a} is an HMAC algorithm, checked only with --jwt-secret-file (never with a JWKS key)`);
    } else if (ASYMMETRIC_ALGORITHMS.includes(a)) {
      if (!hasJwks) throw new ConfigError(`--jwt-algorithms: ${a} is a public-key algorithm, checked only with --jwks-url or --jwks-file`);
    } else {
      throw new ConfigError(`--jwt-algorithms: ${JSON.stringify(a)} is not one of ${[...HMAC_ALGORITHMS, ...ASYMMETRIC_ALGORITHMS].join(', ')}`);
    }
  }
  return new Set(list);
}

/** The secret in a --jwt-secret-file: its bytes, less a trailing newline (as `echo` writes one). */
export function readSecretFile(path: string): Uint8Array {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw new ConfigError(`--jwt-secret-file: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  let end = bytes.length;
  while (end > 0 && (bytes[end - 1] === 0x0a || bytes[end - 1] === 0x0d)) end--;
  if (end < MIN_SECRET_BYTES) throw new ConfigError(`--jwt-secret-file: the secret in ${path} is ${end} bytes; at least ${MIN_SECRET_BYTES} are needed`);
  return new Uint8Array(bytes.subarray(0, end));
}

/** A public key of a JWKS; private parts and symmetric keys are refused (an HMAC key belongs in --jwt-secret-file). */
const publicJwk = z
  .looseObject({ kty: z.enum(['RSA', 'EC', 'OKP']), kid: z.string().max(256).optional(), alg: z.string().optional() })
  .refine((k) => !['d', 'p', 'q', 'dp', 'dq', 'qi', 'priv'].some((m) => m in k), 'holds a private key: a JWKS for kgate holds public keys only');
const jwksSchema = z.strictObject({ keys: z.array(publicJwk).min(1).max(100) });

/** Reads and validates a JWKS file; a ConfigError names the file and what is wrong. */
export function readJwksFile(path: string): JSONWebKeySet {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError(`--jwks-file: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`--jwks-file: ${path} is not JSON: ${e instanceof Error ? e.message : String(e)}`);
  }
  const r = jwksSchema.safeParse(doc);
  if (!r.success) {
    const issues = r.error.issues.map((i) => `${i.path.length > 0 ? i.path.map(String).join('.') : '(top level)'}: ${i.message}`);
    throw new ConfigError(`--jwks-file: ${path} is not a JWKS of public keys ({"keys": [...]} with kty RSA, EC or OKP):\n  ${issues.join('\n  ')}`);
  }
  return r.data as JSONWebKeySet;
}

/** A remote JWKS that could not be fetched (network, status, size, JSON). */
class JwksUnavailable extends Error {}

/** What jwtVerify asks for a token's key. */
type KeySet = (header: JWSHeaderParameters, token: FlattenedJWSInput) => Promise<CryptoKey>;

async function readBounded(res: Response, max: number): Promise<string> {
  const declared = Number(res.headers.get('content-length') ?? NaN);
  if (declared > max) throw new JwksUnavailable(`the JWKS response is larger than ${max} bytes`);
  const reader = res.body?.getReader();
  if (!reader) return '';
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > max) {
      await reader.cancel();
      throw new JwksUnavailable(`the JWKS response is larger than ${max} bytes`);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** How a JWT was refused, from jose's error. */
function failureOf(e: unknown): JwtFailure {
  if (e instanceof JwksUnavailable) return 'jwks_unavailable';
  const code = (e as { code?: unknown } | null)?.code;
  switch (code) {
    case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED':
      return 'bad_signature';
    case 'ERR_JWT_EXPIRED':
      return 'expired';
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED': {
      const claim = (e as { claim?: unknown }).claim;
      if (claim === 'nbf') return 'not_yet_valid';
      if (claim === 'iss') return 'wrong_issuer';
      if (claim === 'aud') return 'wrong_audience';
      return 'bad_claims';
    }
    case 'ERR_JOSE_ALG_NOT_ALLOWED':
    case 'ERR_JOSE_NOT_SUPPORTED':
      return 'bad_algorithm';
    case 'ERR_JWKS_NO_MATCHING_KEY':
    case 'ERR_JWKS_MULTIPLE_MATCHING_KEYS':
      return 'unknown_kid';
    case 'ERR_JWKS_TIMEOUT':
    case 'ERR_JWKS_INVALID':
      return 'jwks_unavailable';
    default:
      return 'malformed';
  }
}

const fail = (failure: JwtFailure): JwtResult => ({ failure });

/** Checks JWTs against the configured keys and turns their claims into a principal. */
export class JwtAuth {
  private readonly allowed: Set<string>;
  private readonly secret: Uint8Array | undefined;
  private keys: KeySet | undefined;
  private readonly log: Logger | undefined;
  private readonly cooldownMs: number;
  /** A remote JWKS: no fetch before this time (Date.now()), after one failed. */
  private fetchBlockedUntil = 0;

  constructor(private readonly s: JwtSettings) {
    if (!s.secret && !s.jwks) throw new ConfigError('JWT auth needs --jwt-secret-file, --jwks-url or --jwks-file');
    if (s.issuer === '') throw new ConfigError('--jwt-issuer is required with JWT auth');
    if (s.audience.length === 0) throw new ConfigError('--jwt-audience is required with JWT auth');
    this.allowed = allowedAlgorithms(s.algorithms, s.secret !== undefined, s.jwks !== undefined);
    this.secret = s.secret;
    this.log = s.log;
    this.cooldownMs = s.cooldownMs ?? 30_000;
    if (s.jwks && 'file' in s.jwks) this.keys = createLocalJWKSet(readJwksFile(s.jwks.file));
    else if (s.jwks) this.keys = this.remoteKeys(s.jwks.url);
  }

  /**
   * A remote JWKS through jose: cached, refetched when its keys are older than
   * 10 minutes, and on a kid it does not hold at most once per cooldown. A
   * failed fetch blocks the next for a cooldown too (jose would try again on
   * every token), and meanwhile the last keys fetched are still used.
   */
  private remoteKeys(url: URL): KeySet {
    const where = `${url.origin}${url.pathname}`;
    const fetchJwks: FetchImplementation = async (href, init) => {
      if (Date.now() < this.fetchBlockedUntil) throw new JwksUnavailable('the last JWKS fetch failed less than a cooldown ago');
      try {
        const res = await fetch(href, init);
        if (res.status !== 200) throw new JwksUnavailable(`the JWKS URL answered HTTP ${res.status}`);
        const text = await readBounded(res, MAX_JWKS_BYTES);
        // Checked here, so that a response that is no JWKS blocks the next fetch as a failed one does.
        const doc = JSON.parse(text) as { keys?: unknown } | null;
        if (!Array.isArray(doc?.keys) || !doc.keys.every((k) => typeof k === 'object' && k !== null)) throw new JwksUnavailable('the JWKS URL answered JSON that is not a JWKS');
        this.log?.debug({ jwks: where }, 'fetched the JWKS');
        return new Response(text, { status: 200, headers: { 'content-type': 'application/json' } });
      } catch (e) {
        this.fetchBlockedUntil = Date.now() + this.cooldownMs;
        const reason = e instanceof JwksUnavailable ? e.message : `${(e as Error).name}: ${(e as Error).message}`;
        this.log?.warn({ jwks: where, reason }, 'could not fetch the JWKS; keeping the keys fetched before, if any');
        throw e instanceof JwksUnavailable ? e : new JwksUnavailable(reason);
      }
    };
    const remote = createRemoteJWKSet(url, { cooldownDuration: this.cooldownMs, timeoutDuration: this.s.timeoutMs ?? 5000, [customFetch]: fetchJwks });
    // The last keys fetched, as a local set built once per fetch (not once per token while the URL fails).
    let stale: { jwks: JSONWebKeySet; keys: KeySet } | undefined;
    return async (header, token) => {
      try {
        return await remote(header, token);
      } catch (e) {
        const last = e instanceof JwksUnavailable ? remote.jwks() : undefined;
        if (!last) throw e;
        if (stale === undefined || JSON.stringify(stale.jwks) !== JSON.stringify(last)) stale = { jwks: last, keys: createLocalJWKSet(last) };
        return stale.keys(header, token);
      }
    };
  }

  /** Reads a --jwks-file again; a bad file throws ConfigError and the keys in force stay. */
  reload(): void {
    const src = this.s.jwks;
    if (src && 'file' in src) this.keys = createLocalJWKSet(readJwksFile(src.file));
  }

  /** The principal a JWT names, or why it is refused. Never throws. */
  async verify(token: string): Promise<JwtResult> {
    if (token.length > MAX_JWT_LENGTH || !looksLikeJwt(token)) return fail('malformed');
    let alg: unknown;
    try {
      alg = decodeProtectedHeader(token).alg;
    } catch {
      return fail('malformed');
    }
    if (typeof alg !== 'string') return fail('malformed');
    if (!this.allowed.has(alg)) return fail('bad_algorithm');
    const options = {
      issuer: this.s.issuer,
      audience: [...this.s.audience],
      clockTolerance: this.s.clockToleranceSec,
      algorithms: [alg],
      requiredClaims: ['exp'],
    };
    let payload: JWTPayload;
    try {
      if (HMAC_ALGORITHMS.includes(alg)) {
        if (!this.secret) return fail('bad_algorithm');
        ({ payload } = await jwtVerify(token, this.secret, options));
      } else {
        if (!this.keys) return fail('bad_algorithm');
        ({ payload } = await jwtVerify(token, this.keys, options));
      }
    } catch (e) {
      const failure = failureOf(e);
      if (failure === 'malformed') this.log?.debug({ error: (e as Error | null)?.name, code: (e as { code?: unknown } | null)?.code }, 'JWT refused by jose');
      return fail(failure);
    }
    const principal = this.principalOf(payload);
    return principal ? { principal } : fail('bad_claims');
  }

  private principalOf(payload: JWTPayload): Principal | undefined {
    const user = payload[this.s.userClaim];
    if (typeof user !== 'string' || !NAME_PATTERN.test(user)) return undefined;
    const tenant = payload[this.s.tenantClaim] ?? DEFAULT_TENANT;
    if (typeof tenant !== 'string' || !NAME_PATTERN.test(tenant)) return undefined;
    const scopes = scopesOf(payload[this.s.scopeClaim]);
    if (!scopes) return undefined;
    return { user, tenant, scopes, via: 'jwt' };
  }
}

/** A scope claim: absent, a space-separated string, or an array of strings; bounded. */
function scopesOf(v: unknown): Set<string> | undefined {
  if (v === undefined) return new Set();
  let list: unknown[];
  if (typeof v === 'string') {
    if (v.length > MAX_SCOPES * 129) return undefined;
    list = v.split(' ').filter(Boolean);
  } else if (Array.isArray(v)) list = v;
  else return undefined;
  if (list.length > MAX_SCOPES) return undefined;
  if (!list.every((s): s is string => typeof s === 'string' && SCOPE_PATTERN.test(s))) return undefined;
  return new Set(list);
}
