/**
 * Token auth on every route, REST and WebSocket alike: `Authorization: token X`
 * (or `Bearer X`, as jupyter_server accepts) or `?token=X`. Compared in
 * constant time over digests, so neither content nor length leaks.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { operatorPrincipal, type Principal } from '../principal.js';

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

const digest = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

/**
 * Turns a request's credentials into its principal, or refuses it. The REST
 * hook and the WebSocket upgrade call the same `authenticate`, so a socket
 * and a request with the same token are the same caller.
 */
export interface Authenticator {
  /** Whether a credential is needed at all (false: auth is off). */
  readonly enabled: boolean;
  /** The caller, or undefined when the request must be refused with 401. */
  authenticate(headers: IncomingHttpHeaders, url: string | undefined): Principal | undefined;
}

const OPERATOR = operatorPrincipal('operator-token');
const AUTH_OFF = operatorPrincipal('auth-off');

/** The operator's one token (`--auth-token`): its holder is the operator principal, with every scope. */
export class TokenAuth implements Authenticator {
  private readonly expected: Buffer | undefined;

  /** An empty token turns auth off (refused by the config unless bound to loopback or explicitly allowed). */
  constructor(token: string) {
    this.expected = token === '' ? undefined : digest(token);
  }

  get enabled(): boolean {
    return this.expected !== undefined;
  }

  authenticate(headers: IncomingHttpHeaders, url: string | undefined): Principal | undefined {
    if (this.expected === undefined) return AUTH_OFF;
    const given = tokenFromRequest(headers, url);
    if (given === undefined) return undefined;
    return timingSafeEqual(digest(given), this.expected) ? OPERATOR : undefined;
  }
}
