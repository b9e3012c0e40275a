/**
 * Which browser pages may use kgate. One policy serves both doors: CORS on the
 * REST routes (preflights answered without a token, since browsers send them
 * without credentials) and the `Origin` check on the channels WebSocket.
 *
 * A request with no `Origin` header is not from a browser page (jupyter_server,
 * Python, Node clients) and passes; so does a same-origin one (its Origin names
 * the host the request was sent to). Any other origin must be listed with
 * `--allow-origin`, or is refused with 403: auth still guards every route, but
 * a refusal also protects a gateway run with auth off from any page a user visits.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { forbiddenOrigin } from '../errors.js';

export const CORS_ALLOW_METHODS = 'GET, POST, PATCH, DELETE, OPTIONS';
export const CORS_ALLOW_HEADERS = 'Authorization, Content-Type, X-XSRFToken, X-Requested-With';
/** Seconds a browser may cache a preflight answer (Chromium caps this at 7200). */
export const CORS_MAX_AGE = 7200;

/** `scheme://host[:port]` as a browser writes it in `Origin`, `*` as is, or undefined when `s` is neither. */
export function normalizeOrigin(s: string): string | undefined {
  if (s === '*') return s;
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    return undefined;
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') return undefined;
  if (u.username || u.password || u.search || u.hash || u.pathname !== '/' || s.endsWith('?') || s.endsWith('#')) return undefined;
  return u.origin;
}

const SCHEME_SOURCE = /^[a-z][a-z0-9+.-]*:$/i;
const HOST_SOURCE = /^(?:[a-z][a-z0-9+.-]*:\/\/)?(?:\*\.)?[a-z0-9-]+(?:\.[a-z0-9-]+)*(?::(?:\d{1,5}|\*))?(?:\/[\w\-./~%]*)?$/i;

/** One `frame-ancestors` source (`'none'`, `'self'`, `*`, `https:`, `https://app.example.com`), or undefined. Bare none/self get their quotes. */
export function normalizeFrameAncestor(s: string): string | undefined {
  const k = s.toLowerCase();
  if (k === "'none'" || k === 'none') return "'none'";
  if (k === "'self'" || k === 'self') return "'self'";
  if (s === '*' || SCHEME_SOURCE.test(s) || HOST_SOURCE.test(s)) return s;
  return undefined;
}

export function frameAncestorsPolicy(sources: readonly string[]): string {
  return `frame-ancestors ${sources.length > 0 ? sources.join(' ') : "'none'"}`;
}

export type OriginVerdict = 'absent' | 'allowed' | 'refused';

function hostOf(header: string | undefined): URL | undefined {
  if (!header) return undefined;
  try {
    return new URL(`http://${header}`);
  } catch {
    return undefined;
  }
}

export class OriginPolicy {
  private readonly any: boolean;
  private readonly exact: ReadonlySet<string>;

  /**
   * @param allowed exact origins, or `*` for any
   * @param siblingPorts ports of kgate's own pages (the demo server): an origin on the
   *   same host name as the request's `Host`, at one of these ports, is allowed
   */
  constructor(
    allowed: readonly string[],
    private readonly siblingPorts: readonly number[] = [],
  ) {
    this.any = allowed.includes('*');
    this.exact = new Set(allowed);
  }

  /** True when every origin is allowed (`--allow-origin '*'`). */
  get anyOrigin(): boolean {
    return this.any;
  }

  check(headers: IncomingHttpHeaders): OriginVerdict {
    const origin = headers.origin;
    if (origin === undefined) return 'absent';
    if (this.any || this.exact.has(origin)) return 'allowed';
    const host = hostOf(headers.host);
    if (host === undefined || origin === 'null') return 'refused';
    let o: URL;
    try {
      o = new URL(origin);
    } catch {
      return 'refused';
    }
    // Same origin: the page was served by the host it is talking to (the scheme is not
    // compared, since a TLS proxy in front of kgate changes it).
    if (o.host === host.host) return 'allowed';
    if (o.hostname === host.hostname && this.siblingPorts.some((p) => o.port === String(p))) return 'allowed';
    return 'refused';
  }

  /**
   * The CORS part of the REST `onRequest` hook: sets the CORS headers, refuses a
   * listed-nowhere origin, and answers a preflight (before auth, which it does not need).
   * Returns true when the reply has been sent.
   */
  applyCors(req: FastifyRequest, reply: FastifyReply): boolean {
    if (!this.any) reply.header('Vary', 'Origin');
    const verdict = this.check(req.headers);
    if (verdict === 'absent') return false;
    if (verdict === 'refused') throw forbiddenOrigin(req.headers.origin ?? '');
    reply.header('Access-Control-Allow-Origin', this.any ? '*' : req.headers.origin!);
    if (req.method === 'OPTIONS' && req.headers['access-control-request-method'] !== undefined) {
      reply.header('Access-Control-Allow-Methods', CORS_ALLOW_METHODS);
      reply.header('Access-Control-Allow-Headers', CORS_ALLOW_HEADERS);
      reply.header('Access-Control-Max-Age', String(CORS_MAX_AGE));
      // Chromium's Private Network Access: a public page asking a private-address gateway.
      if (req.headers['access-control-request-private-network'] === 'true') reply.header('Access-Control-Allow-Private-Network', 'true');
      void reply.code(204).header('Content-Length', '0').send();
      return true;
    }
    reply.header('Access-Control-Expose-Headers', 'Location');
    return false;
  }
}
