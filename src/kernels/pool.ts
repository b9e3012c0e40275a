/**
 * Warm pools: N started kernels per kernelspec, kept ready and handed out by
 * `POST /api/kernels` (kernel_gateway's prespawn only starts them). A
 * replacement starts in the background at once; starts run in parallel.
 *
 * A pooled kernel was launched with no request env, in the root dir, so it is
 * handed out only to requests that ask for nothing it lacks: an env holding at
 * most the names in POOL_COMPATIBLE_ENV. Any other request starts cold.
 *
 * The pool knows kernels only as supervisors (supervisor.ts) and starts them
 * through the function it is given: it depends on nothing above it.
 */
import type { Logger } from 'pino';
import type { KernelSupervisor } from './supervisor.js';

/** Starts a kernel for a pool: launched and running, or rejects. */
export type PooledStart = (name: string) => Promise<KernelSupervisor>;

/**
 * Request env names a pooled kernel honours without having been launched with
 * them: KERNEL_USERNAME only names the kernel's owner to kgate (the kernel's
 * own environment does not get it), KERNEL_LAUNCH_TIMEOUT only steers the
 * start, which has happened. jupyter_server's GatewayClient sends both.
 */
export const POOL_COMPATIBLE_ENV = new Set(['KERNEL_USERNAME', 'KERNEL_LAUNCH_TIMEOUT']);

const MAX_BACKOFF_MS = 30_000;

interface Pool {
  target: number;
  ready: KernelSupervisor[];
  starting: number;
  failures: number;
}

export class WarmPools {
  private readonly pools = new Map<string, Pool>();
  private closed = false;

  constructor(
    private readonly startPooled: PooledStart,
    private readonly log: Logger,
  ) {}

  /** Sets the pool sizes (`{python3: 2}`) and starts filling them. */
  configure(sizes: Record<string, number>): void {
    for (const [name, target] of Object.entries(sizes)) {
      this.pools.set(name, { target, ready: [], starting: 0, failures: 0 });
      this.fill(name);
    }
  }

  /** Counts for /api/status: ready and starting per kernelspec. */
  stats(): Record<string, { target: number; ready: number; starting: number }> {
    const out: Record<string, { target: number; ready: number; starting: number }> = {};
    for (const [name, p] of this.pools) out[name] = { target: p.target, ready: p.ready.length, starting: p.starting };
    return out;
  }

  /** Hands out a ready kernel of `name` if the request's env allows it, and starts its replacement. */
  take(name: string, env: Record<string, string>): KernelSupervisor | undefined {
    const p = this.pools.get(name);
    if (!p || p.ready.length === 0) return undefined;
    for (const key of Object.keys(env)) if (!POOL_COMPATIBLE_ENV.has(key)) return undefined;
    // The oldest ready kernel first; one that is restarting after a crash is skipped.
    const i = p.ready.findIndex((k) => k.phase === 'running');
    if (i < 0) return undefined;
    const [k] = p.ready.splice(i, 1);
    this.fill(name);
    return k;
  }

  /** A pooled kernel died for good: drop it and start another. */
  lost(k: KernelSupervisor): void {
    const p = this.pools.get(k.name);
    if (!p) return;
    const i = p.ready.indexOf(k);
    if (i >= 0) p.ready.splice(i, 1);
    this.fill(k.name);
  }

  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.pools.values()].flatMap((p) => p.ready.splice(0));
    await Promise.allSettled(all.map((k) => k.shutdown('the warm pool closed')));
  }

  /** Every kernel waiting in a pool (their records' leases are renewed too). */
  kernels(): KernelSupervisor[] {
    return [...this.pools.values()].flatMap((p) => p.ready);
  }

  killAllNow(): void {
    for (const p of this.pools.values()) for (const k of p.ready) k.provisioner.killNow?.();
  }

  private fill(name: string): void {
    const p = this.pools.get(name);
    if (!p || this.closed) return;
    while (p.ready.length + p.starting < p.target) {
      p.starting++;
      void this.startOne(name, p);
    }
  }

  private async startOne(name: string, p: Pool): Promise<void> {
    try {
      const k = await this.startPooled(name);
      p.starting--;
      if (this.closed) {
        await k.shutdown('the warm pool closed');
        return;
      }
      p.failures = 0;
      p.ready.push(k);
      this.log.info({ kernel: k.id, name, ready: p.ready.length }, 'pooled kernel ready');
    } catch (e) {
      p.starting--;
      p.failures++;
      // A kernelspec that cannot start must not be retried in a tight loop.
      const wait = Math.min(MAX_BACKOFF_MS, 500 * 2 ** p.failures);
      this.log.error({ err: e, name, retryInMs: wait }, 'could not start a pooled kernel');
      setTimeout(() => this.fill(name), wait).unref();
    }
  }
}
