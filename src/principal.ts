/**
 * Who is calling: made once per request (or WebSocket) by the gateway's
 * authenticator, and passed to every kernel and session operation. The
 * control plane decides ownership, listing and admission from it, never from
 * what a client writes in a request (such as `KERNEL_USERNAME`).
 */

/** What a principal may do beyond its own kernels and sessions. */
export const Scopes = {
  /** Everything, in every tenant. */
  ADMIN: 'kgate:admin',
  /** Everything of its own tenant. */
  TENANT_ADMIN: 'kgate:tenant-admin',
  /** A trusted front server (a notebook server) that starts kernels for the user it names in `KERNEL_USERNAME`. */
  IMPERSONATE: 'kgate:impersonate',
} as const;

export type Scope = (typeof Scopes)[keyof typeof Scopes];

export interface Principal {
  /** The authenticated user; the operator's token has none of its own. */
  readonly user: string | undefined;
  readonly tenant: string;
  readonly scopes: ReadonlySet<string>;
  /** How it was authenticated, for logs and audit (never the token itself). */
  readonly via: 'operator-token' | 'auth-off' | 'static-token' | 'jwt';
}

export const DEFAULT_TENANT = 'default';

/** The holder of `--auth-token` (or anyone, with auth off): all tenants, all scopes. */
export function operatorPrincipal(via: 'operator-token' | 'auth-off' = 'operator-token'): Principal {
  return { user: undefined, tenant: DEFAULT_TENANT, scopes: new Set<string>(Object.values(Scopes)), via };
}

export function hasScope(p: Principal, scope: Scope): boolean {
  return p.scopes.has(scope);
}

/**
 * The user a start is for: the authenticated one, or, for a caller allowed to
 * impersonate, the `KERNEL_USERNAME` it names. Anyone else's `KERNEL_USERNAME`
 * is not identity (the kernel's environment gets the authenticated user).
 */
export function actingUser(p: Principal, requestedUser: string | undefined): string | undefined {
  if (requestedUser !== undefined && requestedUser !== '' && hasScope(p, Scopes.IMPERSONATE)) return requestedUser;
  return p.user;
}
