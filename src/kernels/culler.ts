/**
 * Idle culling with jupyter_server's meaning: every `interval`, a kernel whose
 * last activity (a message either way) is older than `idleTimeout` is shut
 * down, unless it has clients and `cullConnected` is off, or it is busy and
 * `cullBusy` is off. Its clients are told with a close reason that says why.
 */
import type { Logger } from 'pino';
import { events } from '../events.js';
import { operatorPrincipal } from '../principal.js';
import type { KernelManager } from './manager.js';

/** The culler acts as the operator: it may shut down any kernel. */
const CULLER = operatorPrincipal();

export interface CullOptions {
  idleTimeoutMs: number;
  intervalMs: number;
  cullConnected: boolean;
  cullBusy: boolean;
}

export class KernelCuller {
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly kernels: KernelManager,
    private readonly o: CullOptions,
    private readonly log: Logger,
  ) {
    this.timer = setInterval(() => this.cull(), o.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** One pass; returns the ids it shut down. */
  cull(now = Date.now()): string[] {
    const culled: string[] = [];
    for (const k of this.kernels.list()) {
      if (k.phase !== 'running' || !k.link) continue;
      const idleMs = now - k.link.lastActivity;
      if (idleMs < this.o.idleTimeoutMs) continue;
      if (!this.o.cullConnected && k.link.connections > 0) continue;
      if (!this.o.cullBusy && k.link.executionState === 'busy') continue;
      culled.push(k.id);
      const idleS = Math.round(idleMs / 1000);
      this.log.info({ kernel: k.id, idleS, connections: k.link.connections, state: k.link.executionState }, 'culling idle kernel');
      if (events.kernelCull.hasSubscribers) {
        events.kernelCull.publish({ kernelId: k.id, kernelspec: k.name, provisioner: k.provisioner.name, owner: { user: k.owner, tenant: k.tenant }, idleMs });
      }
      this.kernels.shutdown(k.id, CULLER, `kernel culled after ${idleS} s idle`).catch((e: unknown) => this.log.warn({ err: e, kernel: k.id }, 'culling failed'));
    }
    return culled;
  }
}
