/**
 * Replication: kernels recorded in a KernelStore (store.ts) so that other
 * gateways can serve them. This gateway records its kernels and renews their
 * leases; follows the kernels another gateway supervises (relays them, can
 * interrupt, restart or shut them down through the kernel); takes a kernel
 * over when its lease lapses; and, when it starts, adopts the kernels of a
 * gateway that is gone. All of it on one timer or at control time, never per
 * message.
 */
import type { Logger } from 'pino';
import { WsClose, kernelDead } from '../errors.js';
import { events } from '../events.js';
import { DEFAULT_TENANT } from '../principal.js';
import type { KernelSpec, Provisioner } from '../provisioner/types.js';
import type { KernelPhase } from './phases.js';
import type { KernelRegistry } from './registry.js';
import type { KernelRecord, KernelStore } from './store.js';
import type { KernelSupervisor, SupervisorInit } from './supervisor.js';

/** How often followed kernels are checked against the store, leases renewed and sessions recorded (more often for a short lease). */
const SYNC_INTERVAL_MS = 1000;
const FOLLOW_TIMEOUT_MS = 10_000;
/** How long restarting a followed kernel waits for its supervisor to bring it back. */
const FOLLOWER_RESTART_WAIT_MS = 60_000;
/**
 * An adopted kernel is asked for kernel_info in rounds of this length until it
 * answers. It is never killed for not answering: one busy in native code
 * answers nothing but its heartbeat, and the heartbeat decides its life.
 */
export const ADOPT_NUDGE_MS = 10_000;
/** What a session that was attached before kgate died is told when it reconnects to the adopted kernel. */
export const ADOPTION_NOTICE =
  'kgate restarted while this session was away: output the kernel sent in the meantime may be lost (replies to requests sent before the restart included).\n';
/** Sessions recorded per kernel (for the notice above); the rest are not told. */
const MAX_RECORDED_SESSIONS = 256;
const TERMINATE_WAIT_MS = 2000;
/**
 * How often a running gateway looks for records that no gateway holds and
 * none here serves (their supervisor died, and no client of this gateway
 * asked for them, so they are not followed): without it such a kernel would
 * stay unsupervised, and a death of it unrestarted, until a client came.
 */
const ORPHAN_SCAN_MS = 5000;

export interface ReplicationDeps {
  store: KernelStore;
  registry: KernelRegistry;
  provisionerFor: (spec: KernelSpec) => Provisioner;
  /** Makes the supervisor of a recorded kernel (adopted or followed). */
  supervise: (init: SupervisorInit) => KernelSupervisor;
  /** The kernels waiting in warm pools (recorded too, their leases renewed). */
  pooled: () => KernelSupervisor[];
  log: Logger;
}

export class Replication {
  private readonly following = new Map<string, Promise<KernelSupervisor | undefined>>();
  private readonly timer: NodeJS.Timeout;
  private stopped = false;
  /** When orphans were last looked for; undefined until the gateway's own adoption at start has run (the scan must not race it). */
  private lastOrphanScan: number | undefined;

  constructor(private readonly d: ReplicationDeps) {
    let syncing = false;
    this.timer = setInterval(
      () => {
        if (syncing) return;
        syncing = true;
        this.sync()
          .catch((e: unknown) => d.log.warn({ err: e }, 'state dir sync failed'))
          .finally(() => (syncing = false));
      },
      Math.min(SYNC_INTERVAL_MS, d.store.leaseMs / 3),
    );
    this.timer.unref();
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.timer);
  }

  private async sync(): Promise<void> {
    await this.syncFollowed();
    await this.renewAndRecord();
    if (this.lastOrphanScan !== undefined && Date.now() - this.lastOrphanScan >= Math.min(ORPHAN_SCAN_MS, this.d.store.leaseMs / 3)) {
      this.lastOrphanScan = Date.now();
      await this.adopt(ADOPT_NUDGE_MS, true);
    }
  }

  /**
   * Records the kernel so another gateway can adopt it, with this gateway's
   * lease renewed, and the sessions attached to it (or parked for their
   * reconnect) for the notice they get if this gateway dies.
   */
  async persist(k: KernelSupervisor, release = false): Promise<void> {
    if (!k.conn) return;
    const sessions = this.sessionsOf(k);
    k.recordedSessions = sessions.join('\n');
    try {
      await this.d.store.save(
        {
          id: k.id,
          spec: k.spec,
          env: k.env,
          owner: k.owner ?? null,
          tenant: k.tenant,
          cwd: k.cwd,
          resources: k.resources,
          conn: k.conn,
          provisioner: k.provisioner.getInfo(),
          pooled: k.pooled,
          sessions,
        },
        { release },
      );
      k.leaseRenewedAt = Date.now();
    } catch (e) {
      this.d.log.error({ err: e, kernel: k.id }, 'could not record the kernel in the state dir');
    }
  }

  unrecord(k: KernelSupervisor): Promise<void> {
    return this.d.store.remove(k.id);
  }

  async stillRecorded(k: KernelSupervisor): Promise<boolean> {
    return (await this.d.store.load(k.id)) !== undefined;
  }

  /** The sessions to record for a kernel: attached or parked now, and those inherited at adoption. */
  private sessionsOf(k: KernelSupervisor): string[] {
    const keys = new Set([...(k.link?.sessionKeys() ?? []), ...k.inheritedSessions]);
    return [...keys].sort().slice(0, MAX_RECORDED_SESSIONS);
  }

  /**
   * Rewrites the record of each kernel this gateway supervises whose lease is
   * due for renewal (at a third of its length), or, running, whose sessions
   * changed. One whose lease another gateway took meanwhile (this one stalled
   * past its lease) is followed from then on, not supervised.
   */
  private async renewAndRecord(): Promise<void> {
    const store = this.d.store;
    const renewBefore = Date.now() - store.leaseMs / 3;
    for (const k of [...this.d.registry.list(), ...this.d.pooled()]) {
      // A restart can outlast a lease (backoff, then a launch timeout): its lease is renewed too.
      if (k.follower || (k.phase !== 'running' && k.phase !== 'restarting') || !k.link) continue;
      const due = k.leaseRenewedAt < renewBefore;
      if (!due && (k.phase !== 'running' || this.sessionsOf(k).join('\n') === k.recordedSessions)) continue;
      if (due) {
        const r = await store.load(k.id);
        if (r && !k.pooled && !store.holds(r) && store.heldElsewhere(r)) {
          k.stepDown();
          k.recordedInfo = JSON.stringify(r.provisioner);
          this.d.log.warn({ kernel: k.id }, "another gateway took this kernel's lease (this one did not renew it in time): it is followed from now on");
          continue;
        }
      }
      await this.persist(k);
      // Shut down while the record was written: it must not outlive the kernel.
      // Read again: the write above awaited, and a shutdown may have come meanwhile.
      const phase = k.phase as KernelPhase;
      if ((this.d.registry.peek(k.id) !== k && !k.pooled) || phase === 'shutting_down' || phase === 'gone') await store.remove(k.id).catch(() => undefined);
    }
  }

  /** The kernel with this id that another gateway supervises, followed from now on; undefined when there is none. */
  follow(id: string): Promise<KernelSupervisor | undefined> {
    let p = this.following.get(id);
    if (!p) {
      p = this.startFollowing(id).finally(() => this.following.delete(id));
      this.following.set(id, p);
    }
    return p;
  }

  /** Follows every recorded kernel not served here yet. */
  async followAll(): Promise<void> {
    const records = await this.d.store.loadAll();
    await Promise.all(records.filter((r) => !r.pooled && !this.d.registry.has(r.id)).map((r) => this.follow(r.id)));
  }

  private async startFollowing(id: string): Promise<KernelSupervisor | undefined> {
    const { store, registry } = this.d;
    const r = await store.load(id);
    if (!r || r.pooled || store.holds(r) || registry.has(id)) return registry.peek(id);
    const p = this.d.provisionerFor(r.spec);
    await p.loadInfo(r.provisioner);
    if ((await p.poll()) !== undefined) return undefined;
    const k = this.fromRecord(r, p, true);
    k.recordedInfo = JSON.stringify(r.provisioner);
    k.conn = r.conn;
    k.bindLink(r.conn);
    try {
      await k.link!.nudge(FOLLOW_TIMEOUT_MS);
    } catch {
      k.link!.close();
      return undefined;
    }
    if (registry.has(id)) {
      k.link!.close();
      return registry.peek(id);
    }
    registry.add(k);
    this.d.log.info({ kernel: k.id, supervisor: r.lease?.holder ?? r.gateway.instance }, 'following a kernel of another gateway process');
    return k;
  }

  private fromRecord(r: KernelRecord, p: Provisioner, follower: boolean): KernelSupervisor {
    return this.d.supervise({
      id: r.id,
      spec: r.spec,
      provisioner: p,
      env: r.env,
      owner: r.owner ?? undefined,
      tenant: r.tenant ?? DEFAULT_TENANT,
      cwd: r.cwd,
      resources: r.resources ?? {},
      phase: 'running',
      follower,
    });
  }

  /**
   * Keeps followed kernels in step with the store: gone there means shut
   * down by another gateway; a new provisioner description means a restarted
   * process to signal; a lease that lapsed means this gateway takes the kernel over.
   */
  private async syncFollowed(): Promise<void> {
    const store = this.d.store;
    for (const k of this.d.registry.list()) {
      if (!k.follower || k.phase !== 'running') continue;
      const r = await store.load(k.id);
      if (!r) {
        k.forget('kernel shut down');
        continue;
      }
      const info = JSON.stringify(r.provisioner);
      if (info !== k.recordedInfo) {
        k.recordedInfo = info;
        await k.provisioner.loadInfo(r.provisioner);
      }
      if (!store.heldElsewhere(r) && (await store.takeOver(r))) {
        if (!k.follower || k.phase !== 'running') continue;
        k.follower = false;
        k.leaseRenewedAt = Date.now();
        k.generation++;
        k.watch();
        this.d.log.warn({ kernel: k.id, previous: r.lease?.holder ?? r.gateway.instance }, 'took over a kernel whose lease lapsed (its gateway is gone)');
        if (events.kernelAdopt.hasSubscribers) {
          events.kernelAdopt.publish({
            kernelId: k.id,
            kernelspec: k.name,
            provisioner: k.provisioner.name,
            owner: { user: k.owner, tenant: k.tenant },
            how: 'takeover',
            resources: k.resources,
          });
        }
      }
    }
  }

  /**
   * Restarts a kernel another gateway supervises: its process is killed, and
   * its supervisor restarts it as after a crash, on the same connection; this
   * waits until it answers again.
   */
  async restartFollowed(k: KernelSupervisor): Promise<void> {
    k.transition('restarting');
    k.link?.broadcastStatus('restarting');
    k.link?.suspend();
    const before = k.recordedInfo;
    try {
      await k.provisioner.kill(true);
      const deadline = Date.now() + FOLLOWER_RESTART_WAIT_MS;
      while (k.recordedInfo === before && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100));
        const r = await this.d.store.load(k.id);
        if (!r) throw kernelDead(k.id);
        k.recordedInfo = JSON.stringify(r.provisioner);
        if (k.recordedInfo !== before) {
          await k.provisioner.loadInfo(r.provisioner);
          k.conn = r.conn;
          k.bindLink(r.conn);
        }
      }
      await k.link!.nudge(Math.max(1000, deadline - Date.now()));
      if (k.phase === 'restarting') k.transition('running');
    } catch (e) {
      if (k.phase === 'restarting') k.transition('running');
      throw e;
    }
  }

  /**
   * Adopts the kernels recorded by a gateway that is gone (no one holds their
   * lease), and returns as soon as the records are read: the gateway listens
   * at once. A recorded kernel whose process is alive is taken over (same id,
   * same process, same connection) and listed at once; it is never killed for
   * not answering. Until it answers kernel_info, its clients' messages wait in
   * the link. Sessions that were attached are told, when they reconnect, that
   * output may have been lost. Dead kernels are cleaned up; live ones that
   * waited in a pool are stopped in the background (the pool starts fresh
   * ones). Kernels whose lease another gateway holds are left to it (followed).
   * Run once when the gateway starts, then as `orphans` every ORPHAN_SCAN_MS:
   * records another gateway left unheld since (it died, or let go of them).
   */
  async adopt(nudgeMs = ADOPT_NUDGE_MS, orphans = false): Promise<{ adopted: string[]; cleaned: string[] }> {
    const adopted: string[] = [];
    const cleaned: string[] = [];
    const { store, registry } = this.d;
    const records = await store.loadAll();
    // This gateway's own (a kernel starting, or waiting in its pool, is recorded before the registry knows it) are not orphans.
    const ours = (r: KernelRecord): boolean => registry.has(r.id) || (orphans && (store.holds(r) || this.d.pooled().some((k) => k.id === r.id)));
    await Promise.all(
      records.map(async (r) => {
        if (ours(r) || store.heldElsewhere(r)) return;
        let p: Provisioner;
        try {
          p = this.d.provisionerFor(r.spec);
          await p.loadInfo(r.provisioner);
        } catch (e) {
          this.d.log.warn({ err: e, kernel: r.id }, 'cannot adopt a recorded kernel: its provisioner is not available');
          return;
        }
        if (!(await store.takeOver(r))) return;
        // A client asked for it meanwhile, so it is followed here: holding its lease now, syncFollowed makes it this gateway's.
        if (registry.has(r.id) || (orphans && this.stopped)) return;
        const alive = (await p.poll()) === undefined;
        if (alive && !r.pooled) {
          const k = this.fromRecord(r, p, false);
          k.conn = r.conn;
          k.bindLink(r.conn);
          // Before any client can attach: those that were attached get the notice on reconnect.
          k.inheritedSessions = (r.sessions ?? []).filter((key) => typeof key === 'string').slice(0, MAX_RECORDED_SESSIONS);
          if (k.inheritedSessions.length > 0) k.link!.markSessionsLost(k.inheritedSessions, ADOPTION_NOTICE);
          k.generation++;
          k.awaitingAnswer = true;
          registry.add(k);
          // Recorded again at once: this gateway supervises it from now on.
          await this.persist(k);
          k.watch();
          void k.untilAnswered(nudgeMs);
          adopted.push(k.id);
          if (events.kernelAdopt.hasSubscribers) {
            events.kernelAdopt.publish({
              kernelId: k.id,
              kernelspec: k.name,
              provisioner: p.name,
              owner: { user: k.owner, tenant: k.tenant },
              how: 'adopted',
              resources: k.resources,
            });
          }
          return;
        }
        cleaned.push(r.id);
        if (alive) {
          void this.stopAdopted(p, r.id);
          return;
        }
        await p.cleanup(false).catch(() => undefined);
        await store.remove(r.id);
      }),
    );
    if (orphans ? adopted.length + cleaned.length > 0 : records.length > 0) {
      this.d.log.info({ adopted: adopted.length, cleaned: cleaned.length }, orphans ? 'adopted kernels whose gateway is gone' : 'adopted the kernels of an earlier gateway');
    }
    this.lastOrphanScan ??= Date.now();
    return { adopted, cleaned };
  }

  /** Stops a recorded kernel that is not taken over (it waited in a pool). */
  private async stopAdopted(p: Provisioner, id: string): Promise<void> {
    try {
      await p.terminate(false);
      if (!(await p.wait(TERMINATE_WAIT_MS))) await p.kill(false);
      await p.cleanup(false).catch(() => undefined);
      await this.d.store.remove(id);
    } catch (e) {
      this.d.log.warn({ err: e, kernel: id }, 'could not stop a recorded pooled kernel');
    }
  }

  /**
   * Lets go of every kernel without stopping it (`--keep-kernels`): their
   * records stay, with the lease given up, for the next gateway to adopt.
   */
  async releaseAll(): Promise<void> {
    this.stop();
    for (const k of this.d.registry.list()) {
      // The sessions as they are now, so the next gateway tells them what they missed.
      if (!k.follower && k.phase === 'running') await this.persist(k, true);
      k.forget('kgate is restarting; the kernel keeps running', WsClose.GoingAway);
    }
  }
}
