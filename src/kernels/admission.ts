/**
 * Admission: whether a start may go ahead, decided and reserved before
 * anything asynchronous, so that concurrent requests cannot all pass one
 * check. Today's policy is the gateway's limits (--max-kernels,
 * --max-kernels-per-user) keyed on the user the principal gives; the quota
 * work (tenants, resources) replaces the implementation behind `Admission`.
 */
import { kernelLimit, userKernelLimit } from '../errors.js';
import type { Principal } from '../principal.js';
import type { ResourceRequest } from '../provisioner/types.js';

export interface AdmissionRequest {
  principal: Principal;
  /** The user the kernel is for (the principal's, or the one a trusted front server names). */
  user: string | undefined;
  kernelspec: string;
  resources: ResourceRequest;
}

/** What admission reads of the kernels already running. */
export interface AdmissionView {
  readonly size: number;
  ownedBy(user: string): number;
}

/** A slot taken by `admit`: given back once the kernel is registered, or the start failed. Releasing twice is harmless. */
export type Release = () => void;

export interface Admission {
  /** Takes a slot for the request, or throws a KgateError (a limit, a quota). Synchronous on purpose. */
  admit(req: AdmissionRequest, running: AdmissionView): Release;
}

export interface KernelLimitsOptions {
  /** Kernels that may run at once (0: no limit); starting ones count. */
  maxKernels: number;
  /** Kernels one user may run at once (0: no limit). */
  maxKernelsPerUser: number;
}

export class KernelLimits implements Admission {
  /** Starts in flight that have not entered the registry yet, in all and per user. */
  private reserved = 0;
  private readonly reservedBy = new Map<string, number>();

  constructor(private readonly o: KernelLimitsOptions) {}

  admit(req: AdmissionRequest, running: AdmissionView): Release {
    const { maxKernels, maxKernelsPerUser } = this.o;
    const user = req.user;
    if (maxKernels > 0 && running.size + this.reserved >= maxKernels) throw kernelLimit(maxKernels);
    if (maxKernelsPerUser > 0 && user !== undefined) {
      const n = (this.reservedBy.get(user) ?? 0) + running.ownedBy(user);
      if (n >= maxKernelsPerUser) throw userKernelLimit(user, maxKernelsPerUser);
    }
    this.reserved++;
    if (user !== undefined) this.reservedBy.set(user, (this.reservedBy.get(user) ?? 0) + 1);
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      this.reserved--;
      if (user !== undefined) {
        const n = this.reservedBy.get(user)! - 1;
        if (n > 0) this.reservedBy.set(user, n);
        else this.reservedBy.delete(user);
      }
    };
  }
}
