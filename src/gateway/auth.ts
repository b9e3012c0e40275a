/**
 * Who the caller is, on every route, REST and WebSocket alike. The credential
 * comes as `Authorization: token X`, `Authorization: Bearer X` or `?token=X`
 * (a browser's WebSocket cannot set headers), and is one of:
 *
 * - the operator's token (`--auth-token`): the operator principal, every scope;
 * - a static token of `--token-file` (src/gateway/token-file.ts);
 * - a JWT (src/gateway/jwt.ts), when a JWT source is configured.
 *
 * Static tokens are compared in constant time over digests, so neither content
 * nor length leaks. A refusal names its kind (for the log at debug level and,
 * later, metrics); the client always gets the same 401, whatever the kind.
 */
import { timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { operatorPrincipal, type Principal } from '../principal.js';
import type { Logger } from 'pino';
import { JWT_FAILURES, JwtAuth, looksLikeJwt, readSecretFile } from './jwt.js';
import { jwtConfigured, type GatewayConfig } from './options.js';
import { TokenFile, tokenDigest } from './token-file.js';

const AUTH_HEADER = /^(?:token|bearer)\s+(.+)$/i;

export function tokenFromRequest(headers: IncomingHttpHeaders, url: string | undefined): string | undefined {
  const h = headers.authorization;
  if (h) {
    const m = AUTH_HEADER.exec(h.trim());
    if (m) return m[1]!.trim();
  }
  const q = url?.indexOf('?') ?? -1;
  if (q >= 0) {
    const t = new URLSearchParams(url!.slice(q + 1)).get('token');
    if (t) return t;
  }
  return undefined;
}

/** Why a request was refused: a small fixed set, so that it can be counted (never shown to the client). */
export const AUTH_FAILURES = ['missing', 'bad_token', ...JWT_FAILURES] as const;
export type AuthFailure = (typeof AUTH_FAILURES)[number];

export type AuthResult = { principal: Principal; failure?: undefined } | { failure: AuthFailure; principal?: undefined };

/**
 * Turns a request's credentials into its principal, or refuses it. The REST
 * hook and the WebSocket upgrade call the same `authenticate`, so a socket
 * and a request with the same token are the same caller.
 */
export interface Authenticator {
  /** Whether a credential is needed at all (false: auth is off). */
  readonly enabled: boolean;
  /** The caller, or why the request must be refused with 401. Never throws. */
  authenticate(headers: IncomingHttpHeaders, url: string | undefined): Promise<AuthResult>;
  /** Reads the token file and JWKS file again; a bad file throws and what was in force stays. */
  reload(): Promise<void>;
}

const OPERATOR = operatorPrincipal('operator-token');
const AUTH_OFF = operatorPrincipal('auth-off');

export interface AuthSources {
  /** The operator's token; '' for none. */
  operatorToken: string;
  /** --token-file's path. */
  tokenFile?: string | undefined;
  jwt?: JwtAuth | undefined;
}

/** The operator token, the token file and JWTs, as one authenticator. */
export class GatewayAuth implements Authenticator {
  private readonly operator: Buffer | undefined;
  private tokens: TokenFile | undefined;
  private readonly jwt: JwtAuth | undefined;

  /** Reads the token file (a ConfigError when it is missing or wrong). With no source at all, auth is off. */
  constructor(private readonly sources: AuthSources) {
    this.operator = sources.operatorToken === '' ? undefined : tokenDigest(sources.operatorToken);
    this.tokens = sources.tokenFile === undefined ? undefined : TokenFile.load(sources.tokenFile);
    this.jwt = sources.jwt;
  }

  get enabled(): boolean {
    return this.operator !== undefined || this.tokens !== undefined || this.jwt !== undefined;
  }

  async authenticate(headers: IncomingHttpHeaders, url: string | undefined): Promise<AuthResult> {
    if (!this.enabled) return { principal: AUTH_OFF };
    const given = tokenFromRequest(headers, url);
    if (given === undefined) return { failure: 'missing' };
    // The static tokens first, for every token: jupyter_server's own token may look like a JWT.
    const d = tokenDigest(given);
    const operator = this.operator !== undefined && timingSafeEqual(d, this.operator);
    const listed = this.tokens?.match(d);
    if (operator) return { principal: OPERATOR };
    if (listed) return { principal: listed };
    if (this.jwt && looksLikeJwt(given)) return this.jwt.verify(given);
    return { failure: 'bad_token' };
  }

  async reload(): Promise<void> {
    // Both read before either is swapped in, so a bad second file leaves the first as it was too.
    const tokens = this.sources.tokenFile === undefined ? undefined : TokenFile.load(this.sources.tokenFile);
    this.jwt?.reload();
    this.tokens = tokens;
  }
}

/** The operator's one token (`--auth-token`) alone; an empty token turns auth off. */
export class TokenAuth extends GatewayAuth {
  constructor(token: string) {
    super({ operatorToken: token });
  }
}

/**
 * The authenticator a config asks for, with `operatorToken` as the operator's
 * token. Reads the token file, the JWT secret and the JWKS file; a missing or
 * malformed one is a ConfigError (kgate does not start).
 */
export function authenticatorFor(config: GatewayConfig, operatorToken: string, log?: Logger): GatewayAuth {
  let jwt: JwtAuth | undefined;
  if (jwtConfigured(config)) {
    jwt = new JwtAuth({
      secret: config.jwtSecretFile === undefined ? undefined : readSecretFile(config.jwtSecretFile),
      jwks: config.jwksFile !== undefined ? { file: config.jwksFile } : config.jwksUrl !== undefined ? { url: new URL(config.jwksUrl) } : undefined,
      issuer: config.jwtIssuer ?? '',
      audience: config.jwtAudience,
      clockToleranceSec: config.jwtClockTolerance,
      algorithms: config.jwtAlgorithms,
      userClaim: config.jwtUserClaim,
      tenantClaim: config.jwtTenantClaim,
      scopeClaim: config.jwtScopeClaim,
      log,
    });
  }
  return new GatewayAuth({ operatorToken, tokenFile: config.tokenFile, jwt });
}
