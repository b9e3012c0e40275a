/**
 * Which kernels a principal may see and act on. What it may not see is not
 * found (404), the same as what does not exist (DESIGN.md, Identity). Today
 * every caller is the operator (all scopes); JWT tenancy makes this bite.
 */
import { hasScope, Scopes, type Principal } from '../principal.js';

/** What access reads of a kernel. */
export interface OwnedKernel {
  readonly owner: string | undefined;
  readonly tenant: string;
}

/**
 * An admin sees every kernel; a tenant admin its tenant's; so does a front
 * server that may impersonate (it starts kernels for any user of its tenant
 * it names, so it could act as each of them anyway, and its client, such as
 * jupyter_server's GatewayClient, reads back what it started); anyone else
 * its own.
 */
export function canSee(p: Principal, k: OwnedKernel): boolean {
  if (hasScope(p, Scopes.ADMIN)) return true;
  if (k.tenant !== p.tenant) return false;
  return hasScope(p, Scopes.TENANT_ADMIN) || hasScope(p, Scopes.IMPERSONATE) || (p.user !== undefined && k.owner === p.user);
}
