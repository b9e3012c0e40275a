/**
 * Usage metering: what each tenant, user and kernelspec used, in
 * kernel-seconds, core-seconds and GiB-seconds of what was reserved, and
 * GPU-seconds per extended resource name. A subscriber of the lifecycle
 * events (src/events.ts); the supervisor knows nothing of it.
 *
 * A kernel is charged from when it is ready (launched and answering, or handed
 * out from a warm pool; a kernel waiting in a pool is charged to no one) to
 * its shutdown or final death; a restart does not stop the meter (its
 * resources stay reserved). Only the gateway that supervises a kernel (holds
 * its lease) charges it: a follower replica gets no ready event for it, and
 * every event is checked against this gateway's own registry, since the
 * channels are shared by everything in the process. The running kernels are
 * checkpointed to the store every interval; a gateway that adopts or takes
 * over a kernel charges from its last checkpoint. Two gateways that both
 * recorded one stretch of a kernel's life (one stalled past its lease) are
 * charged once: a report counts the union of each kernel's intervals.
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import { events, type KernelAdoptEvent, type KernelDeathEvent, type KernelReadyEvent, type KernelReleaseEvent, type KernelShutdownEvent } from './events.js';
import { canSee } from './kernels/access.js';
import type { Principal } from './principal.js';
import type { ResourceRequest } from './provisioner/types.js';
import { FileUsageStore, MemoryUsageStore, sameCharge, type UsageInterval, type UsageStore } from './metering-store.js';

const GIB = 2 ** 30;
/** Checkpoint segments kept for a retry while the store refuses writes (a full disk); past it the oldest are dropped, and logged. */
const MAX_UNWRITTEN = 100_000;
/** Intervals listed per report row; the sums always cover them all. */
export const MAX_ROW_INTERVALS = 1000;
/** Stale marks (of kernels no longer recorded) are swept on the first checkpoint and then this often. */
const SWEEP_EVERY_MS = 3_600_000;

/** What the meter reads of this gateway's registry: whether it supervises a kernel now. */
export interface SupervisedKernels {
  peek(id: string): { readonly follower: boolean; readonly pooled: boolean; readonly phase: string } | undefined;
}

/** This gateway supervises the kernel (not a follower of it, not waiting in a pool, not ended: a shutdown still under way holds its resources). */
export function supervisedBy(registry: SupervisedKernels): (id: string) => boolean {
  return (id) => {
    const k = registry.peek(id);
    return k !== undefined && !k.follower && !k.pooled && (k.phase === 'running' || k.phase === 'restarting' || k.phase === 'shutting_down');
  };
}

export interface MeterOptions {
  store: UsageStore;
  /** Between checkpoints of the running kernels (--metering-interval). */
  intervalMs: number;
  supervisedHere: (kernelId: string) => boolean;
  /** Whether a kernel still has a record in the state dir (a mark of one that has none is stale); absent: never swept. */
  recorded?: ((kernelId: string) => Promise<boolean>) | undefined;
  now?: (() => number) | undefined;
  log: Logger;
}

interface Metered {
  kernelId: string;
  tenant: string;
  user: string | null;
  kernelspec: string;
  resources: ResourceRequest;
  /** Charged up to here (the last checkpoint, or the start). */
  since: number;
  /** Adopted, and its last checkpoint not read yet: not checkpointed until it is. */
  resolving: boolean;
}

const hasResources = (r: ResourceRequest | undefined): r is ResourceRequest => r !== undefined && (r.cpu !== undefined || r.memory !== undefined || r.extended !== undefined);

/** What one tenant used, as charged by this gateway since it started (Prometheus counters read it). */
export interface TenantUsage {
  kernelSeconds: number;
  coreSeconds: number;
  gibSeconds: number;
  gpuSeconds: Map<string, number>;
}

function addUsage(to: TenantUsage, r: ResourceRequest, seconds: number): void {
  to.kernelSeconds += seconds;
  to.coreSeconds += (r.cpu ?? 0) * seconds;
  to.gibSeconds += ((r.memory ?? 0) / 2 ** 30) * seconds;
  for (const [name, n] of Object.entries(r.extended ?? {})) to.gpuSeconds.set(name, (to.gpuSeconds.get(name) ?? 0) + n * seconds);
}

const noUsage = (): TenantUsage => ({ kernelSeconds: 0, coreSeconds: 0, gibSeconds: 0, gpuSeconds: new Map() });

export class Meter {
  private readonly running = new Map<string, Metered>();
  /** The segments this gateway closed, summed per tenant. */
  private readonly closedByTenant = new Map<string, TenantUsage>();
  /** Every store write, in order; close() and reports wait for it. */
  private queue: Promise<void> = Promise.resolve();
  private unwritten: UsageInterval[] = [];
  private readonly timer: NodeJS.Timeout;
  private sweptAt = -Infinity;
  private closed = false;
  private readonly now: () => number;

  private readonly onReady = (e: KernelReadyEvent): void => {
    const at = this.now();
    queueMicrotask(() => this.begin(e, e.resources, at, false));
  };
  private readonly onAdopt = (e: KernelAdoptEvent): void => {
    const at = this.now();
    queueMicrotask(() => this.begin(e, e.resources, at, true));
  };
  private readonly onShutdown = (e: KernelShutdownEvent): void => this.ending(e.kernelId, 'ended');
  private readonly onDeath = (e: KernelDeathEvent): void => {
    if (e.final) this.ending(e.kernelId, 'ended');
  };
  private readonly onRelease = (e: KernelReleaseEvent): void => this.ending(e.kernelId, 'released');

  constructor(private readonly o: MeterOptions) {
    this.now = o.now ?? Date.now;
    events.kernelReady.subscribe(this.onReady);
    events.kernelAdopt.subscribe(this.onAdopt);
    events.kernelShutdown.subscribe(this.onShutdown);
    events.kernelDeath.subscribe(this.onDeath);
    events.kernelRelease.subscribe(this.onRelease);
    this.timer = setInterval(() => this.checkpoint(), o.intervalMs);
    this.timer.unref();
  }

  private begin(e: KernelReadyEvent | KernelAdoptEvent, resources: ResourceRequest, at: number, adopted: boolean): void {
    // Another gateway in this process (a test's), a follower, or a kernel already gone again: not charged here.
    if (this.closed || this.running.has(e.kernelId) || !this.o.supervisedHere(e.kernelId)) return;
    const m: Metered = {
      kernelId: e.kernelId,
      tenant: e.owner?.tenant ?? 'default',
      user: e.owner?.user ?? null,
      kernelspec: e.kernelspec,
      resources: { ...resources },
      since: at,
      resolving: adopted,
    };
    this.running.set(e.kernelId, m);
    if (!adopted) {
      this.write(async () => this.o.store.mark({ ...this.charge(m), to: at }));
      return;
    }
    // The kernel ran all along: charged from its last checkpoint, by whichever gateway wrote it.
    this.write(async () => {
      const mark = await this.o.store.lastMark(m.kernelId).catch(() => undefined);
      if (mark) {
        // A checkpoint appends its segments before it moves the mark: a gateway killed
        // between the two left a segment past its mark, charged already, not to be again.
        let charged = mark.to;
        await this.o.store
          .scan(mark.to, m.since + 1, (i) => {
            if (i.kernelId === m.kernelId && i.to > charged) charged = i.to;
          })
          .catch(() => undefined);
        m.since = Math.min(m.since, charged);
        if (!hasResources(m.resources) && hasResources(mark.resources)) m.resources = mark.resources;
      }
      m.resolving = false;
    });
  }

  private charge(m: Metered): Omit<UsageInterval, 'from' | 'to'> {
    return { kernelId: m.kernelId, tenant: m.tenant, user: m.user, kernelspec: m.kernelspec, resources: m.resources };
  }

  /**
   * A kernel's metering may end (shut down, dead, let go, stepped down): once
   * this gateway's own state says it no longer supervises it (read after the
   * publisher's synchronous work, so an event of another gateway in the
   * process does not end this one's).
   */
  private ending(kernelId: string, how: 'ended' | 'released'): void {
    if (!this.running.has(kernelId)) return;
    const at = this.now();
    queueMicrotask(() => {
      const m = this.running.get(kernelId);
      if (!m || this.o.supervisedHere(kernelId)) return;
      this.end(m, at, how);
    });
  }

  private end(m: Metered, at: number, how: 'ended' | 'released' | 'lost'): void {
    this.running.delete(m.kernelId);
    const recorded = this.o.recorded;
    // Counted now, so the per-tenant counters never dip while the write waits; an adopted
    // kernel whose mark is not read yet has its start known only in the queue.
    const countNow = !m.resolving;
    if (countNow) this.counted({ ...this.charge(m), from: m.since, to: Math.max(at, m.since) });
    this.write(async () => {
      // An adopted kernel ended before its mark was read: it is read in the queue ahead of this.
      const segment: UsageInterval = { ...this.charge(m), from: m.since, to: Math.max(at, m.since) };
      if (!countNow) this.counted(segment);
      await this.appendWithRetry(segment.to > segment.from ? [segment] : []);
      // A kernel that runs on (let go for the next gateway) keeps its mark, for whoever adopts it.
      if (how === 'ended' || (how === 'released' && recorded && !(await recorded(m.kernelId)))) await this.o.store.unmark(m.kernelId);
      else await this.o.store.mark({ ...this.charge(m), to: segment.to });
    });
  }

  /** Writes what the running kernels used since the last checkpoint, and their marks. */
  checkpoint(): void {
    if (this.closed) return;
    const at = this.now();
    const segments: UsageInterval[] = [];
    const marks: Metered[] = [];
    for (const m of [...this.running.values()]) {
      // Let go without an event reaching here: charged to now, and no more.
      if (!this.o.supervisedHere(m.kernelId)) {
        this.end(m, at, 'lost');
        continue;
      }
      if (m.resolving || at <= m.since) continue;
      const segment = { ...this.charge(m), from: m.since, to: at };
      segments.push(segment);
      this.counted(segment);
      m.since = at;
      marks.push(m);
    }
    this.write(async () => {
      await this.appendWithRetry(segments);
      for (const m of marks) await this.o.store.mark({ ...this.charge(m), to: at });
      if (at - this.sweptAt >= SWEEP_EVERY_MS) {
        this.sweptAt = at;
        await this.sweep();
      }
    });
  }

  private counted(i: UsageInterval): void {
    let t = this.closedByTenant.get(i.tenant);
    if (!t) this.closedByTenant.set(i.tenant, (t = noUsage()));
    addUsage(t, i.resources, (i.to - i.from) / 1000);
  }

  /**
   * What each tenant used as charged by this gateway since it started, the
   * running kernels up to now: it only grows (a running kernel's share moves
   * into the closed sums at each checkpoint), as a Prometheus counter must.
   */
  usageByTenant(): Map<string, TenantUsage> {
    const out = new Map<string, TenantUsage>();
    for (const [tenant, t] of this.closedByTenant) out.set(tenant, { ...t, gpuSeconds: new Map(t.gpuSeconds) });
    const at = this.now();
    for (const m of this.running.values()) {
      if (m.resolving || at <= m.since) continue;
      let t = out.get(m.tenant);
      if (!t) out.set(m.tenant, (t = noUsage()));
      addUsage(t, m.resources, (at - m.since) / 1000);
    }
    return out;
  }

  private async appendWithRetry(segments: UsageInterval[]): Promise<void> {
    const batch = this.unwritten.length > 0 ? [...this.unwritten, ...segments] : segments;
    if (batch.length === 0) return;
    try {
      await this.o.store.append(batch);
      this.unwritten = [];
    } catch (e) {
      const dropped = Math.max(0, batch.length - MAX_UNWRITTEN);
      this.unwritten = batch.slice(dropped);
      this.o.log.error({ err: e, pending: this.unwritten.length, dropped }, 'could not write usage to the state dir; retried at the next checkpoint');
    }
  }

  /** Removes the marks of kernels that are no longer recorded (they died while no gateway ran). */
  private async sweep(): Promise<void> {
    const recorded = this.o.recorded;
    if (!recorded) return;
    // Bounded by the marks on disk: one per kernel metered and not ended.
    for (const id of await this.o.store.marked()) if (!this.running.has(id) && !(await recorded(id))) await this.o.store.unmark(id);
  }

  private write(op: () => Promise<void>): void {
    this.queue = this.queue.then(op).catch((e: unknown) => this.o.log.error({ err: e }, 'usage metering: a write to its store failed'));
  }

  /** Waits for the events already published and every write they made. */
  async flush(): Promise<void> {
    await Promise.resolve();
    await this.queue;
  }

  /**
   * The usage `principal` may see in [since, until): its own, its tenant's
   * (tenant-admin) or everyone's (admin), grouped by tenant, user and
   * kernelspec. Kernels this gateway supervises count up to now; those of
   * another replica up to their last checkpoint.
   */
  async report(principal: Principal, since: number, until: number): Promise<UsageReport> {
    const at = this.now();
    const acc = new UsageAccumulator(since, until, (i) => canSee(principal, { owner: i.user ?? undefined, tenant: i.tenant }));
    // Taken before the store is read: a checkpoint written meanwhile overlaps it, and the union counts it once.
    for (const m of this.running.values()) if (at > m.since) acc.add({ ...this.charge(m), from: m.since, to: at });
    await this.flush();
    await this.o.store.scan(since, until, (i) => acc.add(i));
    return acc.report();
  }

  /** Stops metering: the kernels still metered are checkpointed, then every write is waited for. */
  async close(): Promise<void> {
    await this.flush();
    this.checkpoint();
    this.closed = true;
    clearInterval(this.timer);
    events.kernelReady.unsubscribe(this.onReady);
    events.kernelAdopt.unsubscribe(this.onAdopt);
    events.kernelShutdown.unsubscribe(this.onShutdown);
    events.kernelDeath.unsubscribe(this.onDeath);
    events.kernelRelease.unsubscribe(this.onRelease);
    await this.queue;
  }
}

/**
 * The gateway's meter: on `<stateDir>/usage/` (the kernels' records decide
 * which marks are stale), or in memory without a state dir.
 */
export async function startMetering(o: {
  stateDir: string | undefined;
  intervalSeconds: number;
  registry: SupervisedKernels;
  records?: { load(id: string): Promise<unknown> } | undefined;
  log: Logger;
}): Promise<Meter> {
  let store: UsageStore;
  if (o.stateDir) {
    const files = new FileUsageStore(join(o.stateDir, 'usage'));
    await files.init();
    store = files;
  } else {
    store = new MemoryUsageStore();
  }
  const records = o.records;
  return new Meter({
    store,
    intervalMs: o.intervalSeconds * 1000,
    supervisedHere: supervisedBy(o.registry),
    recorded: records ? async (id) => (await records.load(id)) !== undefined : undefined,
    log: o.log,
  });
}

/** One group of a report: a tenant, a user and a kernelspec. */
export interface UsageRow {
  tenant: string;
  user: string | null;
  kernelspec: string;
  kernels: number;
  kernel_seconds: number;
  core_seconds: number;
  gib_seconds: number;
  gpu_seconds: Record<string, number>;
  intervals: Array<{ kernel_id: string; from: string; to: string; resources: ResourceRequest }>;
  /** More than MAX_ROW_INTERVALS intervals: the first ones are listed, the sums cover all. */
  intervals_truncated?: boolean;
}

export interface UsageReport {
  since: string;
  until: string;
  usage: UsageRow[];
}

const round = (x: number): number => Math.round(x * 1000) / 1000;

/**
 * Sums intervals into a report: each clipped to [since, until), each kernel's
 * counted as the union of its intervals (a stretch recorded twice counts
 * once, charged as the interval that began first), grouped by tenant, user
 * and kernelspec.
 */
export class UsageAccumulator {
  /** Per kernel, its intervals, those that follow on with the same charge joined as they come. */
  private readonly byKernel = new Map<string, UsageInterval[]>();

  constructor(
    private readonly since: number,
    private readonly until: number,
    private readonly visible: (i: UsageInterval) => boolean,
  ) {}

  add(i: UsageInterval): void {
    const from = Math.max(i.from, this.since);
    const to = Math.min(i.to, this.until);
    if (to <= from || !this.visible(i)) return;
    const list = this.byKernel.get(i.kernelId) ?? [];
    const last = list[list.length - 1];
    if (last && from <= last.to && to >= last.from && sameCharge(last, i)) {
      last.from = Math.min(last.from, from);
      last.to = Math.max(last.to, to);
    } else {
      list.push({ ...i, from, to });
    }
    this.byKernel.set(i.kernelId, list);
  }

  report(): UsageReport {
    const rows = new Map<string, UsageRow>();
    const kernels = new Map<string, Set<string>>();
    for (const [kernelId, list] of this.byKernel) {
      list.sort((a, b) => a.from - b.from || b.to - a.to);
      let covered = -Infinity;
      for (const i of list) {
        const from = Math.max(i.from, covered);
        if (i.to <= from) continue;
        covered = i.to;
        const key = JSON.stringify([i.tenant, i.user, i.kernelspec]);
        let row = rows.get(key);
        if (!row) {
          row = { tenant: i.tenant, user: i.user, kernelspec: i.kernelspec, kernels: 0, kernel_seconds: 0, core_seconds: 0, gib_seconds: 0, gpu_seconds: {}, intervals: [] };
          rows.set(key, row);
          kernels.set(key, new Set());
        }
        kernels.get(key)!.add(kernelId);
        const s = (i.to - from) / 1000;
        row.kernel_seconds += s;
        row.core_seconds += s * (i.resources.cpu ?? 0);
        row.gib_seconds += (s * (i.resources.memory ?? 0)) / GIB;
        for (const [name, n] of Object.entries(i.resources.extended ?? {})) row.gpu_seconds[name] = (row.gpu_seconds[name] ?? 0) + s * n;
        const prev = row.intervals[row.intervals.length - 1];
        if (prev && prev.kernel_id === kernelId && Date.parse(prev.to) === from && JSON.stringify(prev.resources) === JSON.stringify(i.resources)) {
          prev.to = new Date(i.to).toISOString();
        } else if (row.intervals.length < MAX_ROW_INTERVALS) {
          row.intervals.push({ kernel_id: kernelId, from: new Date(from).toISOString(), to: new Date(i.to).toISOString(), resources: i.resources });
        } else {
          row.intervals_truncated = true;
        }
      }
    }
    const usage = [...rows.entries()]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([key, row]) => ({
        ...row,
        kernels: kernels.get(key)!.size,
        kernel_seconds: round(row.kernel_seconds),
        core_seconds: round(row.core_seconds),
        gib_seconds: round(row.gib_seconds),
        gpu_seconds: Object.fromEntries(Object.entries(row.gpu_seconds).map(([n, v]) => [n, round(v)])),
      }));
    return { since: new Date(this.since).toISOString(), until: new Date(this.until).toISOString(), usage };
  }
}
