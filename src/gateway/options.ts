/**
 * The gateway's options: where and how it listens (HTTP bounds), who may call
 * it (the operator token, the token file, JWTs), and which browser pages may (origins, framing, the demo page).
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { bool, ConfigError, opt, seconds, slice, type ConfigOf } from '../options.js';
import { allowedAlgorithms } from './jwt.js';
import { normalizeFrameAncestor, normalizeOrigin } from './origin.js';

/** A list from repeated flags, each of which may itself be a comma- or space-separated list. */
const words = z.union([z.array(z.string()), z.string()]).transform((v) => (Array.isArray(v) ? v : [v]).flatMap((s) => s.split(/[\s,]+/)).filter(Boolean));
const origins = words.pipe(
  z.array(
    z
      .string()
      .transform((s, ctx) => normalizeOrigin(s) ?? (ctx.addIssue({ code: 'custom', message: `${JSON.stringify(s)} is not an origin like http://host:port, or *` }), z.NEVER)),
  ),
);
const frameAncestors = words
  .pipe(
    z.array(
      z.string().transform((s, ctx) => normalizeFrameAncestor(s) ?? (ctx.addIssue({ code: 'custom', message: `${JSON.stringify(s)} is not a frame-ancestors source` }), z.NEVER)),
    ),
  )
  .refine((a) => a.length > 0 && (!a.includes("'none'") || a.length === 1), "'none' stands alone, and at least one source is needed");
/** `gw`, `/gw` and `/gw/` all mean `/gw/`; segments of plain path characters (no `:` or `*`, which routers read as parameters). */
const baseUrl = z
  .string()
  .max(512)
  .transform((s) => {
    const inner = s.replace(/^\/+|\/+$/g, '');
    return inner === '' ? '/' : `/${inner}/`;
  })
  .refine(
    (s) =>
      s === '/' ||
      s
        .slice(1, -1)
        .split('/')
        .every((seg) => /^[A-Za-z0-9._~@-]+$/.test(seg) && !/^\.+$/.test(seg)),
    {
      message: 'must be a URL path such as /gw/: segments of A-Z a-z 0-9 . _ ~ @ -, none empty, "." or ".."',
    },
  );

/** A JWT claim's name. */
const claimName = z.string().regex(/^[A-Za-z0-9_:./-]{1,128}$/, 'must be a claim name: 1 to 128 of A-Z a-z 0-9 _ : . / -');

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;

const OPTIONS = {
  ip: opt('ip', 'string', 'address to listen on (default 127.0.0.1)', z.string().min(1).default('127.0.0.1')),
  port: opt('port', 'string', 'port to listen on; 0 picks a free one (default 8888)', z.coerce.number().int().min(0).max(65535).default(8888)),
  baseUrl: opt('base-url', 'string', 'path prefix every route is served under, for a deployment behind a proxy (default /)', baseUrl.default('/')),
  authToken: opt(
    'auth-token',
    'string',
    'token every request must carry (Authorization: token X, or ?token=X); a random one is made and printed when none is given; "" turns auth off',
    z.string().max(1024).optional(),
  ),
  authTokenFile: opt(
    'auth-token-file',
    'string',
    'read the token from this file (its first line) instead of --auth-token: a token on the command line or in the environment can be read by local kernels from /proc',
    z.string().min(1).optional(),
  ),
  tokenFile: opt(
    'token-file',
    'string',
    'YAML file of static tokens for services, each as the SHA-256 digest of the token with its user, tenant and scopes (docs/auth.md); read at start and on SIGHUP',
    z.string().min(1).optional(),
  ),
  jwtSecretFile: opt(
    'jwt-secret-file',
    'string',
    'file holding the shared secret that HS256/384/512 JWTs are signed with (at least 32 bytes; a trailing newline is dropped)',
    z.string().min(1).optional(),
  ),
  jwksUrl: opt(
    'jwks-url',
    'string',
    'https URL (http only on loopback) of the JWKS whose public keys sign JWTs (RS*, PS*, ES*, EdDSA); cached, refetched every 10 minutes and on an unknown kid at most once per 30 s',
    z
      .url({ protocol: /^https?$/, error: 'must be an http(s) URL' })
      .max(2048)
      .refine((s) => new URL(s).protocol === 'https:' || LOOPBACK.test(new URL(s).hostname.replace(/^\[|\]$/g, '')), 'must be https (plain http only to a loopback address)')
      .optional(),
  ),
  jwksFile: opt('jwks-file', 'string', 'JSON file of the JWKS whose public keys sign JWTs (RS*, PS*, ES*, EdDSA); read at start and on SIGHUP', z.string().min(1).optional()),
  jwtIssuer: opt('jwt-issuer', 'string', 'the iss every JWT must carry (required with any JWT source)', z.string().min(1).max(1024).optional()),
  jwtAudience: opt('jwt-audience', 'string', 'the aud a JWT must carry, one of these (repeatable or comma list; required with any JWT source)', words.default([]), true),
  jwtClockTolerance: opt('jwt-clock-tolerance', 'string', "seconds of clock skew allowed on a JWT's exp and nbf (default 30)", z.coerce.number().min(0).max(3600).default(30)),
  jwtAlgorithms: opt(
    'jwt-algorithms',
    'string',
    'JWT algorithms accepted (repeatable or comma list; default: HS256/384/512 with --jwt-secret-file, the public-key ones with a JWKS); none is never accepted',
    words.optional(),
    true,
  ),
  jwtUserClaim: opt('jwt-user-claim', 'string', 'the JWT claim that names the user (default sub)', claimName.default('sub')),
  jwtTenantClaim: opt(
    'jwt-tenant-claim',
    'string',
    'the JWT claim that names the tenant; a JWT without it is of the tenant "default" (default tenant)',
    claimName.default('tenant'),
  ),
  jwtScopeClaim: opt('jwt-scope-claim', 'string', 'the JWT claim that holds the scopes, a space-separated string or an array (default scope)', claimName.default('scope')),
  allowUnauthenticated: opt('allow-unauthenticated', 'boolean', 'allow an empty --auth-token on an address other than loopback', bool.default(false)),
  allowOrigin: opt(
    'allow-origin',
    'string',
    'browser origins (http://host:port) whose pages may call kgate, REST (CORS) and WebSocket alike; * for any (repeatable or comma list; default none: only non-browser clients and same-origin pages)',
    origins.default([]),
    true,
  ),
  checkOriginWithToken: opt(
    'check-origin-with-token',
    'string',
    "true or false: refuse a browser page's WebSocket whose Origin is not allowed (--allow-origin) even when it carries a valid token (default false, as jupyter_server: a page that holds the token is authorised)",
    bool.default(false),
  ),
  frameAncestors: opt(
    'frame-ancestors',
    'string',
    "pages that may show kgate's responses in a frame: the Content-Security-Policy frame-ancestors sources (repeatable or comma list; default 'none')",
    frameAncestors.default(["'none'"]),
    true,
  ),
  demoPort: opt(
    'demo-port',
    'string',
    'also serve the demo page on this port of --ip, as a second origin that kgate allows (0 picks a free one; default off)',
    z.coerce.number().int().min(0).max(65535).optional(),
  ),
  wsDeflate: opt('ws-deflate', 'string', 'true or false: offer permessage-deflate on the channels WebSocket (default false: it costs CPU on every frame)', bool.default(false)),
  requestTimeout: opt(
    'request-timeout',
    'string',
    'seconds a client may take to send a whole request, headers and body; then it gets 408 and the connection is closed (only receiving counts: a start waiting for its kernel is never cut off) (default 30)',
    seconds.default(30),
  ),
  headersTimeout: opt('headers-timeout', 'string', "seconds a client may take to send a request's headers (default 10)", seconds.default(10)),
  keepAliveTimeout: opt('keep-alive-timeout', 'string', 'seconds an idle keep-alive connection is kept open (default 5)', seconds.default(5)),
  maxRequestsPerSocket: opt(
    'max-requests-per-socket',
    'string',
    'requests served on one keep-alive connection before it is closed (default 1000; 0: no limit)',
    z.coerce.number().int().min(0).max(1_000_000).default(1000),
  ),
} as const;

export type GatewayConfig = ConfigOf<typeof OPTIONS>;

/** Whether any JWT source is configured. */
export const jwtConfigured = (c: Pick<GatewayConfig, 'jwtSecretFile' | 'jwksUrl' | 'jwksFile'>): boolean =>
  c.jwtSecretFile !== undefined || c.jwksUrl !== undefined || c.jwksFile !== undefined;

function readTokenFile(path: string): string {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError(`--auth-token-file: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  const token = (text.split(/\r?\n/, 1)[0] ?? '').trim();
  if (token === '') throw new ConfigError(`--auth-token-file: ${path} holds no token on its first line`);
  if (token.length > 1024) throw new ConfigError(`--auth-token-file: the token in ${path} is longer than 1024 characters`);
  return token;
}

export const GATEWAY_OPTIONS = slice('HTTP, authentication and browser origins', OPTIONS, (config: GatewayConfig) => {
  if (config.authTokenFile !== undefined) {
    if (config.authToken !== undefined) throw new ConfigError('give --auth-token or --auth-token-file, not both');
    (config as { authToken: string | undefined }).authToken = readTokenFile(config.authTokenFile);
  }
  if (config.headersTimeout > config.requestTimeout) throw new ConfigError('--headers-timeout must not be longer than --request-timeout');
  if (jwtConfigured(config)) {
    if (config.jwksUrl !== undefined && config.jwksFile !== undefined) throw new ConfigError('give --jwks-url or --jwks-file, not both');
    const missing = [config.jwtIssuer === undefined ? '--jwt-issuer' : '', config.jwtAudience.length === 0 ? '--jwt-audience' : ''].filter(Boolean);
    if (missing.length > 0)
      throw new ConfigError(`JWT auth (--jwt-secret-file, --jwks-url or --jwks-file) needs ${missing.join(' and ')}: a token of another issuer or audience must not be accepted`);
    allowedAlgorithms(config.jwtAlgorithms, config.jwtSecretFile !== undefined, config.jwksUrl !== undefined || config.jwksFile !== undefined);
  } else {
    // A JWT setting with no JWT source is a mistake (a source left out), not a setting to ignore.
    const stray = [
      config.jwtIssuer !== undefined ? '--jwt-issuer' : '',
      config.jwtAudience.length > 0 ? '--jwt-audience' : '',
      config.jwtAlgorithms !== undefined ? '--jwt-algorithms' : '',
    ].filter(Boolean);
    if (stray.length > 0) throw new ConfigError(`${stray.join(', ')} given, but no JWT source (--jwt-secret-file, --jwks-url or --jwks-file)`);
  }
  const otherCredentials = config.tokenFile !== undefined || jwtConfigured(config);
  if (config.authToken === '' && !otherCredentials && !LOOPBACK.test(config.ip) && !config.allowUnauthenticated) {
    throw new ConfigError(`refusing to serve ${config.ip} without a token: give --auth-token, or --allow-unauthenticated if something in front of kgate authenticates`);
  }
});
