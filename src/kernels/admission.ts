/**
 * Admission: whether a start may go ahead, decided and reserved before the
 * start does anything asynchronous, so that concurrent requests cannot all
 * pass one check: of 100 starts at once against a limit of 10, exactly 10
 * pass and 90 fail at once.
 *
 * One decision (`check`) over what is held, from two places: this gateway's
 * kernels and the starts it has in flight (`admit`, synchronous), and, with
 * a store shared by replicas, every gateway's records and reservations, read
 * under the store's lock (KernelStore.reserve), so replicas share the count.
 *
 * The limits are the gateway's (--max-kernels, --max-kernels-per-user) and
 * the tenant policy's (--policy: kernels, kernels per user, resource totals,
 * what one kernel may ask for, which kernelspecs), keyed on the principal's
 * tenant and the user the kernel is for, never on what a client writes.
 */
import { kernelLimit, kernelspecNotAllowed, tenantQuota, userKernelLimit } from '../errors.js';
import type { Principal } from '../principal.js';
import type { ResourceRequest } from '../provisioner/types.js';
import { NO_POLICY, type Policy } from './policy.js';
import { amounts, formatAmount } from './resources.js';

export interface AdmissionRequest {
  principal: Principal;
  /** The user the kernel is for (the principal's, or the one a trusted front server names). */
  user: string | undefined;
  kernelspec: string;
  resources: ResourceRequest;
}

/** A kernel (or a start in flight) as admission counts it. */
export interface Held {
  readonly owner: string | undefined;
  readonly tenant: string;
  readonly resources: ResourceRequest;
}

/** A slot taken by `admit`: given back once the kernel is registered, or the start failed. Releasing twice is harmless. */
export type Release = () => void;

export interface Admission {
  /**
   * Takes a slot for the request, or throws a KgateError (a limit, a quota).
   * Synchronous on purpose. `running`: the kernels this gateway holds (not the dead ones: they hold nothing).
   */
  admit(req: AdmissionRequest, running: Iterable<Held>): Release;
  /** The same decision over everything `held` (a cluster's kernels and reservations); throws when refused. */
  check(req: AdmissionRequest, held: Iterable<Held>): void;
  /** Reads its policy again, where it has one; throws (keeping the old one) when the new one is bad. */
  reload?(): Promise<void>;
  /** Whether a tenant may start this kernelspec (lists show it only then). */
  kernelspecAllowed?(tenant: string, name: string): boolean;
}

export interface KernelLimitsOptions {
  /** Kernels that may run at once (0: no limit); starting ones count. */
  maxKernels: number;
  /** Kernels one user may run at once (0: no limit). */
  maxKernelsPerUser: number;
  /** The tenant policy (none: only the limits above). */
  policy?: (Policy & { reload?(): Promise<void> }) | undefined;
}

export class KernelLimits implements Admission {
  /** Starts in flight that have not entered the registry yet. */
  private readonly inflight = new Set<Held>();
  private readonly policy: Policy & { reload?(): Promise<void> };

  constructor(private readonly o: KernelLimitsOptions) {
    this.policy = o.policy ?? NO_POLICY;
  }

  async reload(): Promise<void> {
    await this.policy.reload?.();
  }

  kernelspecAllowed(tenant: string, name: string): boolean {
    const specs = this.policy.limitsFor(tenant)?.limits.kernelspecs;
    return !specs || specs.has(name);
  }

  admit(req: AdmissionRequest, running: Iterable<Held>): Release {
    this.check(req, [...running, ...this.inflight]);
    const h: Held = { owner: req.user, tenant: req.principal.tenant, resources: req.resources };
    this.inflight.add(h);
    return () => void this.inflight.delete(h);
  }

  check(req: AdmissionRequest, held: Iterable<Held>): void {
    const tenant = req.principal.tenant;
    const user = req.user;
    let all = 0;
    let ofTenant = 0;
    let ofUser = 0;
    const used = new Map<string, number>();
    for (const h of held) {
      all++;
      if (h.tenant !== tenant) continue;
      ofTenant++;
      if (user !== undefined && h.owner === user) ofUser++;
      for (const [name, n] of amounts(h.resources)) used.set(name, (used.get(name) ?? 0) + n);
    }
    const { maxKernels, maxKernelsPerUser } = this.o;
    if (maxKernels > 0 && all >= maxKernels) throw kernelLimit(maxKernels);
    if (maxKernelsPerUser > 0 && user !== undefined && ofUser >= maxKernelsPerUser) throw userKernelLimit(user, maxKernelsPerUser);

    const found = this.policy.limitsFor(tenant);
    if (!found) return;
    const { limits, where } = found;
    if (limits.kernelspecs && !limits.kernelspecs.has(req.kernelspec)) throw kernelspecNotAllowed(tenant, req.kernelspec, [...limits.kernelspecs]);
    const asked = amounts(req.resources);
    for (const [name, max] of limits.maxPerKernel ?? []) {
      const n = asked.get(name) ?? 0;
      if (n > max) {
        throw tenantQuota(
          `a kernel of tenant ${JSON.stringify(tenant)} may ask for at most ${formatAmount(name, max)} ${name} (${where}.max_per_kernel); this one asks for ${formatAmount(name, n)}`,
        );
      }
    }
    if (limits.maxKernels !== undefined && ofTenant >= limits.maxKernels) {
      throw tenantQuota(`tenant ${JSON.stringify(tenant)} runs its maximum of ${limits.maxKernels} kernels (${where}.max_kernels); shut one down first`);
    }
    if (limits.maxKernelsPerUser !== undefined && user !== undefined && ofUser >= limits.maxKernelsPerUser) {
      throw userKernelLimit(user, limits.maxKernelsPerUser, `${where}.max_kernels_per_user`);
    }
    for (const [name, max] of limits.resources ?? []) {
      const n = asked.get(name) ?? 0;
      const u = used.get(name) ?? 0;
      if (n > 0 && u + n > max) {
        throw tenantQuota(
          `tenant ${JSON.stringify(tenant)} holds ${formatAmount(name, u)} of its ${formatAmount(name, max)} ${name} (${where}.resources); this kernel asks for ${formatAmount(name, n)} more`,
        );
      }
    }
  }
}
