/**
 * The registry of kernels and their lifecycle: start, interrupt, restart,
 * shutdown, and automatic restart when a kernel dies. Control happens here;
 * the message path (the link and its clients) never waits on it.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { realpath, stat } from 'node:fs/promises';
import { resolve, sep } from 'node:path';
import type { Logger } from 'pino';
import { Heartbeat } from '../bridge/heartbeat.js';
import { channelUrl, KernelLink, type ExecutionState, type KernelLinkOptions } from '../bridge/kernel-link.js';
import { jupyterDate } from '../bridge/messages.js';
import {
  WsClose,
  badRequest,
  kernelNotFound,
  kernelRestarting,
  kernelspecNotFound,
  kernelStartFailed,
  kernelStartTimeout,
  kernelStartCancelled,
  kernelLimit,
  userKernelLimit,
  kernelDead,
} from '../errors.js';
import { isProcessAlive } from '../provisioner/process-alive.js';
import type { ConnectionInfo, KernelSpec, Provisioner } from '../provisioner/types.js';
import { sanitizeEnv, type EnvPolicy } from './env.js';
import type { KernelSpecStore } from './kernelspecs.js';
import { WarmPools } from './pool.js';
import type { KernelStateStore } from './state.js';

export interface KernelModel {
  id: string;
  name: string;
  last_activity: string;
  execution_state: ExecutionState;
  connections: number;
}

export type KernelPhase = 'starting' | 'running' | 'restarting' | 'shutting_down' | 'dead';

export interface KernelManagerOptions {
  specs: KernelSpecStore;
  /** Picks and creates the provisioner a kernelspec asks for. */
  provisionerFor: (spec: KernelSpec) => Provisioner;
  launchTimeoutMs: number;
  shutdownWaitMs: number;
  /** Automatic restarts allowed in a row before a dying kernel is given up as dead. */
  restartLimit: number;
  heartbeat: { intervalMs: number; timeoutMs: number };
  /** How each kernel's ZeroMQ link relays (signatures, queues, iopub limits). */
  link: Omit<KernelLinkOptions, 'log'>;
  envPolicy: EnvPolicy;
  rootDir: string;
  /** Kernels that may run at once (0: no limit); starting ones count. */
  maxKernels: number;
  /** Kernels one user may run at once (0: no limit). */
  maxKernelsPerUser: number;
  /** Where each kernel is recorded for adoption by a later gateway; none: not recorded. */
  state?: KernelStateStore | undefined;
  log: Logger;
}

export interface StartRequest {
  name?: string | undefined;
  env?: Record<string, unknown> | undefined;
  path?: string | undefined;
  /** Who the kernel is for, as the gateway authenticated it (src/principal.ts actingUser). */
  user?: string | undefined;
}

/** A kernel that ran this long before dying resets the count of automatic restarts. */
const STABLE_RUN_MS = 30_000;
const TERMINATE_WAIT_MS = 2000;
/** Fresh starts tried when a probed port was taken before the kernel could bind it. */
const PORT_RACE_ATTEMPTS = 3;
/** How often followed kernels are checked against the state dir. */
const SYNC_INTERVAL_MS = 1000;
const FOLLOW_TIMEOUT_MS = 10_000;
/** How long restarting a followed kernel waits for its owner to bring it back. */
const FOLLOWER_RESTART_WAIT_MS = 60_000;
/**
 * An adopted kernel is asked for kernel_info in rounds of this length until it
 * answers. It is never killed for not answering: one busy in native code
 * answers nothing but its heartbeat, and the heartbeat decides its life.
 */
const ADOPT_NUDGE_MS = 10_000;
/** What a session that was attached before kgate died is told when it reconnects to the adopted kernel. */
export const ADOPTION_NOTICE =
  'kgate restarted while this session was away: output the kernel sent in the meantime may be lost (replies to requests sent before the restart included).\n';
/** Sessions recorded per kernel in the state dir (for the notice above); the rest are not told. */
const MAX_RECORDED_SESSIONS = 256;
/**
 * Wait before automatic restart attempt n (n ≥ 2; the first is immediate):
 * 0.5 s, 1 s, 2 s, 4 s, then 8 s at most, so a kernel that cannot stay up is
 * not relaunched in a tight loop.
 */
export function restartBackoffMs(attempt: number): number {
  return attempt <= 1 ? 0 : Math.min(8000, 500 * 2 ** (attempt - 2));
}

/** Waits `ms`, or less if `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (ms <= 0 || signal.aborted) return Promise.resolve();
  return new Promise((done) => {
    const t = setTimeout(finish, ms);
    function finish(): void {
      clearTimeout(t);
      signal.removeEventListener('abort', finish);
      done();
    }
    signal.addEventListener('abort', finish, { once: true });
  });
}

export class ManagedKernel {
  phase: KernelPhase = 'starting';
  restarts = 0;
  startedAt = Date.now();
  /** Bumped on every (re)launch, so exit notices of an older process are ignored. */
  generation = 0;
  link: KernelLink | undefined;
  heartbeat: Heartbeat | undefined;
  conn: ConnectionInfo | undefined;
  /** The operation in progress (restart, shutdown), so concurrent callers share it. */
  pending: Promise<void> | undefined;
  /** Waiting in a warm pool: counted against no one, listed nowhere. */
  pooled = false;
  /**
   * Started by another gateway process on the same state dir, which watches
   * its life (heartbeat, restarts); this one relays its messages and can
   * interrupt, restart or shut it down through the kernel itself.
   */
  follower = false;
  /** The provisioner description last read from the state dir (a follower reloads it when it changes). */
  recordedInfo = '';
  /**
   * The launch in progress (a start, a restart): a shutdown aborts it, so a
   * kernel deleted while starting is never started behind the caller's back.
   */
  launching: AbortController | undefined;
  /** Adopted and not answering kernel_info yet (busy, or still catching up): clients' messages wait. */
  awaitingAnswer = false;
  /** Stops the readiness rounds of an adopted kernel. */
  readiness: AbortController | undefined;
  /** The session keys last written to the state dir, joined, to write them only when they change. */
  recordedSessions = '';
  /** Sessions recorded by the gateway this kernel was adopted from: still told if this one dies too. */
  inheritedSessions: string[] = [];
  private readonly createdActivity = Date.now();

  constructor(
    readonly id: string,
    readonly spec: KernelSpec,
    readonly provisioner: Provisioner,
    readonly env: Record<string, string>,
    public owner: string | undefined,
    readonly cwd: string,
  ) {}

  get name(): string {
    return this.spec.name;
  }

  get executionState(): ExecutionState {
    if (this.phase === 'dead') return 'dead';
    if (this.phase === 'restarting') return 'restarting';
    if (this.phase === 'starting') return 'starting';
    // Adopted and silent: it runs (its process and heartbeat say so) but answers no request yet.
    if (this.awaitingAnswer) return 'busy';
    return this.link?.executionState ?? 'unknown';
  }

  /** Stops watching the process (heartbeat) and asking an adopted kernel whether it answers. */
  stopWatching(): void {
    this.readiness?.abort();
    this.readiness = undefined;
    this.heartbeat?.stop();
  }

  model(): KernelModel {
    return {
      id: this.id,
      name: this.name,
      last_activity: jupyterDate(this.link?.lastActivity ?? this.createdActivity),
      execution_state: this.executionState,
      connections: this.link?.connections ?? 0,
    };
  }
}

export class KernelManager {
  private readonly kernels = new Map<string, ManagedKernel>();
  private readonly removedListeners: Array<(id: string) => void> = [];
  /** Starts in flight that have not entered `kernels` yet, in all and per user. */
  private reserved = 0;
  private readonly reservedBy = new Map<string, number>();
  readonly pools: WarmPools;

  private readonly following = new Map<string, Promise<ManagedKernel | undefined>>();
  private readonly syncTimer: NodeJS.Timeout | undefined;

  constructor(private readonly o: KernelManagerOptions) {
    this.pools = new WarmPools(this, o.log);
    if (o.state) {
      let syncing = false;
      this.syncTimer = setInterval(() => {
        if (syncing) return;
        syncing = true;
        this.syncShared()
          .then(() => this.recordSessions())
          .catch((e: unknown) => o.log.warn({ err: e }, 'state dir sync failed'))
          .finally(() => (syncing = false));
      }, SYNC_INTERVAL_MS);
      this.syncTimer.unref();
    }
  }

  onRemoved(listener: (id: string) => void): void {
    this.removedListeners.push(listener);
  }

  list(): ManagedKernel[] {
    return [...this.kernels.values()];
  }

  get(id: string): ManagedKernel {
    const k = this.kernels.get(id);
    if (!k) throw kernelNotFound(id);
    return k;
  }

  has(id: string): boolean {
    return this.kernels.has(id);
  }

  /**
   * The kernel with this id: one of this gateway's, or one another gateway
   * process on the same state dir runs, followed from now on.
   */
  async find(id: string): Promise<ManagedKernel> {
    const k = this.kernels.get(id) ?? (await this.follow(id));
    if (!k) throw kernelNotFound(id);
    return k;
  }

  /** Every kernel, those of other gateway processes on the same state dir included. */
  async listShared(): Promise<ManagedKernel[]> {
    if (this.o.state) {
      const records = await this.o.state.loadAll();
      await Promise.all(records.filter((r) => !r.pooled && !this.kernels.has(r.id)).map((r) => this.follow(r.id)));
    }
    return this.list();
  }

  private follow(id: string): Promise<ManagedKernel | undefined> {
    if (!this.o.state) return Promise.resolve(undefined);
    let p = this.following.get(id);
    if (!p) {
      p = this.startFollowing(id).finally(() => this.following.delete(id));
      this.following.set(id, p);
    }
    return p;
  }

  private async startFollowing(id: string): Promise<ManagedKernel | undefined> {
    const r = await this.o.state!.load(id);
    if (!r || r.pooled || r.gateway.instance === this.o.state!.instance || this.kernels.has(id)) return this.kernels.get(id);
    const p = this.o.provisionerFor(r.spec);
    await p.loadInfo(r.provisioner);
    if ((await p.poll()) !== undefined) return undefined;
    const k = new ManagedKernel(r.id, r.spec, p, r.env, r.owner ?? undefined, r.cwd);
    k.follower = true;
    k.conn = r.conn;
    k.recordedInfo = JSON.stringify(r.provisioner);
    k.link = new KernelLink(r.conn, { ...this.o.link, log: this.o.log.child({ kernel: k.id }) });
    k.link.open();
    try {
      await k.link.nudge(FOLLOW_TIMEOUT_MS);
    } catch {
      k.link.close();
      return undefined;
    }
    k.phase = 'running';
    this.kernels.set(k.id, k);
    this.o.log.info({ kernel: k.id, owner: r.gateway.pid }, 'following a kernel of another gateway process');
    return k;
  }

  /**
   * Keeps followed kernels in step with the state dir: gone there means shut
   * down by another gateway; a restart there means a new process to signal;
   * an owner gateway that died means this one takes the kernel over.
   */
  private async syncShared(): Promise<void> {
    const state = this.o.state!;
    for (const k of [...this.kernels.values()]) {
      if (!k.follower || k.phase !== 'running') continue;
      const r = await state.load(k.id);
      if (!r) {
        this.forget(k, 'kernel shut down');
        continue;
      }
      const info = JSON.stringify(r.provisioner);
      if (info !== k.recordedInfo) {
        k.recordedInfo = info;
        await k.provisioner.loadInfo(r.provisioner);
      }
      if (r.gateway.instance !== state.instance && !isProcessAlive(r.gateway.pid)) {
        k.follower = false;
        await this.persist(k);
        this.watch(k, ++k.generation, k.conn!);
        this.o.log.warn({ kernel: k.id, previousOwner: r.gateway.pid }, 'took over a kernel whose gateway process is gone');
      }
    }
  }

  /** Lets go of a kernel that another gateway shut down, telling its clients here. */
  private forget(k: ManagedKernel, why: string): void {
    k.phase = 'dead';
    for (const c of k.link?.allClients() ?? []) c.close(WsClose.Normal, why);
    k.stopWatching();
    k.link?.close();
    if (this.kernels.get(k.id) === k) {
      this.kernels.delete(k.id);
      for (const l of this.removedListeners) l(k.id);
    }
  }

  async start(req: StartRequest): Promise<ManagedKernel> {
    // The gateway decided who this is for (src/principal.ts actingUser); a client's
    // KERNEL_USERNAME is identity only when its caller may impersonate.
    const owner = req.user;
    // The limits are checked and a slot taken before the first await, so concurrent
    // requests cannot all pass the check: past the limit they fail at once.
    const release = this.reserve(owner);
    try {
      await this.o.specs.refresh();
      const name = req.name ?? this.o.specs.defaultName;
      const spec = this.o.specs.get(name);
      if (!spec) throw kernelspecNotFound(name);
      const env = sanitizeEnv(req.env, this.o.envPolicy);
      const pooled = this.pools.take(name, env);
      if (pooled) {
        pooled.owner = owner;
        this.kernels.set(pooled.id, pooled);
        await this.persist(pooled);
        this.o.log.info({ kernel: pooled.id, name, owner }, 'kernel handed out from the warm pool');
        return pooled;
      }
      if (req.path && !env['JPY_SESSION_NAME']) env['JPY_SESSION_NAME'] = req.path;
      const k = new ManagedKernel(randomUUID(), spec, this.o.provisionerFor(spec), env, owner, await this.workingDir(env));
      this.kernels.set(k.id, k);
      release();
      // Pending, so a shutdown meanwhile (which aborts the launch) waits for its cleanup.
      const op = this.launchNew(k);
      const settled = op.then(
        () => undefined,
        () => undefined,
      );
      k.pending = settled;
      try {
        await op;
      } finally {
        if (k.pending === settled) k.pending = undefined;
      }
      this.o.log.info({ kernel: k.id, name, owner, ms: Date.now() - k.startedAt }, 'kernel started');
      return k;
    } finally {
      release();
    }
  }

  /**
   * The launch of a kernel just registered (phase `starting`). A shutdown
   * meanwhile aborts it: then nothing of the kernel is left (process, state
   * record, connection file, private home) and this rejects with
   * KG_KERNEL_START_CANCELLED.
   */
  private async launchNew(k: ManagedKernel): Promise<void> {
    const abort = new AbortController();
    k.launching = abort;
    let launched = false;
    try {
      await this.launch(k, this.launchTimeout(k.env), undefined, abort.signal);
      launched = true;
      await this.persist(k);
      // A shutdown that came while the record was written: no await since, so it stands.
      abort.signal.throwIfAborted();
      k.phase = 'running';
    } catch (e) {
      // A launch that failed cleaned up after itself; one that succeeded and was then cancelled has not.
      if (launched) {
        await k.provisioner.kill(false).catch(() => undefined);
        await k.provisioner.wait(TERMINATE_WAIT_MS);
        await k.provisioner.cleanup(false).catch(() => undefined);
      }
      const cancelled = abort.signal.aborted;
      for (const c of k.link?.allClients() ?? []) c.close(cancelled ? WsClose.Normal : WsClose.InternalError, cancelled ? 'kernel shut down' : 'kernel failed to start');
      this.remove(k);
      await this.o.state?.remove(k.id).catch(() => undefined);
      if (cancelled) {
        this.o.log.info({ kernel: k.id, name: k.name }, 'kernel start cancelled: it was shut down while starting');
        throw kernelStartCancelled(k.id);
      }
      throw e;
    } finally {
      if (k.launching === abort) k.launching = undefined;
    }
  }

  /** Starts a kernel for a warm pool: no owner, no env, the root dir. */
  async startPooled(name: string): Promise<ManagedKernel> {
    await this.o.specs.refresh();
    const spec = this.o.specs.get(name);
    if (!spec) throw kernelspecNotFound(name);
    const k = new ManagedKernel(randomUUID(), spec, this.o.provisionerFor(spec), {}, undefined, this.o.rootDir);
    k.pooled = true;
    await this.launch(k, this.o.launchTimeoutMs, undefined);
    k.phase = 'running';
    await this.persist(k);
    return k;
  }

  /** Stops a kernel that is not in the registry (a pooled one). */
  async stopUnlisted(k: ManagedKernel): Promise<void> {
    k.phase = 'shutting_down';
    await this.stopProcess(k, false);
    k.stopWatching();
    k.link?.close();
    await this.o.state?.remove(k.id).catch(() => undefined);
  }

  /**
   * Records the kernel so another gateway process can adopt it, with the
   * sessions attached to it (or parked for their reconnect) for the notice
   * they get if this gateway dies.
   */
  private async persist(k: ManagedKernel): Promise<void> {
    if (!this.o.state || !k.conn) return;
    const sessions = this.sessionsOf(k);
    k.recordedSessions = sessions.join('\n');
    try {
      await this.o.state.save({
        id: k.id,
        spec: k.spec,
        env: k.env,
        owner: k.owner ?? null,
        cwd: k.cwd,
        conn: k.conn,
        provisioner: k.provisioner.getInfo(),
        pooled: k.pooled,
        sessions,
      });
    } catch (e) {
      this.o.log.error({ err: e, kernel: k.id }, 'could not record the kernel in the state dir');
    }
  }

  /** The sessions to record for a kernel: attached or parked now, and those inherited at adoption. */
  private sessionsOf(k: ManagedKernel): string[] {
    const keys = new Set([...(k.link?.sessionKeys() ?? []), ...k.inheritedSessions]);
    return [...keys].sort().slice(0, MAX_RECORDED_SESSIONS);
  }

  /**
   * On the state dir's sync timer (never per message): rewrites the record of
   * each running kernel of this gateway whose sessions changed since.
   */
  private async recordSessions(): Promise<void> {
    for (const k of [...this.kernels.values()]) {
      if (k.follower || k.phase !== 'running' || !k.link) continue;
      if (this.sessionsOf(k).join('\n') === k.recordedSessions) continue;
      await this.persist(k);
      // Shut down while the record was written: it must not outlive the kernel.
      if (this.kernels.get(k.id) !== k || (k.phase as KernelPhase) === 'shutting_down') await this.o.state?.remove(k.id).catch(() => undefined);
    }
  }

  /**
   * Adopts the kernels recorded in the state dir by a gateway that is gone,
   * and returns as soon as the records are read: the gateway listens at once.
   * A recorded kernel whose process is alive is taken over (same id, same
   * process, same connection) and listed at once; it is never killed for not
   * answering (a kernel busy in native code answers only its heartbeat, which
   * decides its life as for any kernel). Until it answers kernel_info, its
   * clients' messages wait in the link. Sessions that were attached are told,
   * when they reconnect, that output may have been lost. Dead kernels are
   * cleaned up; live ones that waited in a pool are stopped in the background
   * (the pool starts fresh ones). Kernels of another gateway process that is
   * still alive on the same state dir are left to it (they are followed).
   */
  async adopt(nudgeMs = ADOPT_NUDGE_MS): Promise<{ adopted: string[]; cleaned: string[] }> {
    const adopted: string[] = [];
    const cleaned: string[] = [];
    const state = this.o.state;
    if (!state) return { adopted, cleaned };
    const records = await state.loadAll();
    await Promise.all(
      records.map(async (r) => {
        if (this.kernels.has(r.id)) return;
        if (r.gateway.instance !== state.instance && r.gateway.pid !== process.pid && isProcessAlive(r.gateway.pid)) return;
        let p: Provisioner;
        try {
          p = this.o.provisionerFor(r.spec);
          await p.loadInfo(r.provisioner);
        } catch (e) {
          this.o.log.warn({ err: e, kernel: r.id }, 'cannot adopt a recorded kernel: its provisioner is not available');
          return;
        }
        const alive = (await p.poll()) === undefined;
        if (alive && !r.pooled) {
          const k = new ManagedKernel(r.id, r.spec, p, r.env, r.owner ?? undefined, r.cwd);
          k.conn = r.conn;
          k.link = new KernelLink(r.conn, { ...this.o.link, log: this.o.log.child({ kernel: k.id }) });
          // Before any client can attach: those that were attached get the notice on reconnect.
          k.inheritedSessions = (r.sessions ?? []).filter((key) => typeof key === 'string').slice(0, MAX_RECORDED_SESSIONS);
          if (k.inheritedSessions.length > 0) k.link.markSessionsLost(k.inheritedSessions, ADOPTION_NOTICE);
          k.link.open();
          const generation = ++k.generation;
          k.phase = 'running';
          k.awaitingAnswer = true;
          this.kernels.set(k.id, k);
          // Recorded again at once: this gateway watches it from now on.
          await this.persist(k);
          this.watch(k, generation, r.conn);
          void this.untilAnswered(k, generation, nudgeMs);
          adopted.push(k.id);
          return;
        }
        cleaned.push(r.id);
        if (alive) {
          void this.stopAdopted(p, r.id);
          return;
        }
        await p.cleanup(false).catch(() => undefined);
        await state.remove(r.id);
      }),
    );
    if (records.length > 0) this.o.log.info({ adopted: adopted.length, cleaned: cleaned.length }, 'adopted the kernels of an earlier gateway');
    return { adopted, cleaned };
  }

  /** Stops a recorded kernel that is not taken over (it waited in a pool). */
  private async stopAdopted(p: Provisioner, id: string): Promise<void> {
    try {
      await p.terminate(false);
      if (!(await p.wait(TERMINATE_WAIT_MS))) await p.kill(false);
      await p.cleanup(false).catch(() => undefined);
      await this.o.state?.remove(id);
    } catch (e) {
      this.o.log.warn({ err: e, kernel: id }, 'could not stop a recorded pooled kernel');
    }
  }

  /**
   * Asks an adopted kernel for kernel_info, round after round, until it
   * answers; then its clients' held messages go out. Stops when the kernel is
   * relaunched, shut down or let go (its generation moves on, or stopWatching()).
   */
  private async untilAnswered(k: ManagedKernel, generation: number, nudgeMs: number): Promise<void> {
    const abort = new AbortController();
    k.readiness = abort;
    const current = (): boolean => !abort.signal.aborted && k.generation === generation && this.kernels.get(k.id) === k;
    let rounds = 0;
    try {
      while (current()) {
        try {
          await k.link!.nudge(nudgeMs, abort.signal);
          k.awaitingAnswer = false;
          this.o.log.info({ kernel: k.id, afterMs: rounds * nudgeMs }, 'adopted kernel answers; its clients are relayed');
          return;
        } catch {
          if (!current()) return;
          if (rounds++ === 0) this.o.log.warn({ kernel: k.id }, 'adopted kernel does not answer yet (busy?); it is kept while its process and heartbeat live, and its clients wait');
        }
      }
    } finally {
      if (k.readiness === abort) k.readiness = undefined;
    }
  }

  /**
   * Lets go of every kernel without stopping it (`--keep-kernels`): their
   * records stay in the state dir for the next gateway to adopt.
   */
  async releaseAll(): Promise<void> {
    clearInterval(this.syncTimer);
    // A start not completed has no record to adopt: it is cancelled, not left running unrecorded.
    await Promise.allSettled(this.list().filter((k) => k.phase === 'starting').map((k) => this.shutdown(k.id)));
    for (const k of [...this.kernels.values()]) {
      // The sessions as they are now, so the next gateway tells them what they missed.
      if (!k.follower && k.phase === 'running') await this.persist(k);
      k.generation++;
      k.stopWatching();
      for (const c of k.link?.allClients() ?? []) c.close(WsClose.GoingAway, 'kgate is restarting; the kernel keeps running');
      k.link?.close();
    }
    this.kernels.clear();
    await this.pools.close();
  }

  /** Takes a slot under the limits, or throws; the returned function gives it back (once). */
  private reserve(owner: string | undefined): () => void {
    const { maxKernels, maxKernelsPerUser } = this.o;
    if (maxKernels > 0 && this.kernels.size + this.reserved >= maxKernels) throw kernelLimit(maxKernels);
    if (maxKernelsPerUser > 0 && owner !== undefined) {
      let n = this.reservedBy.get(owner) ?? 0;
      for (const k of this.kernels.values()) if (k.owner === owner) n++;
      if (n >= maxKernelsPerUser) throw userKernelLimit(owner, maxKernelsPerUser);
    }
    this.reserved++;
    if (owner !== undefined) this.reservedBy.set(owner, (this.reservedBy.get(owner) ?? 0) + 1);
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      this.reserved--;
      if (owner !== undefined) {
        const n = this.reservedBy.get(owner)! - 1;
        if (n > 0) this.reservedBy.set(owner, n);
        else this.reservedBy.delete(owner);
      }
    };
  }

  async interrupt(id: string): Promise<void> {
    const k = await this.find(id);
    if (k.phase !== 'running') throw kernelRestarting(id);
    if (k.spec.spec.interrupt_mode === 'message') {
      await k.link?.request('control', 'interrupt_request', {}, this.o.shutdownWaitMs);
    } else {
      await k.provisioner.sendSignal('SIGINT');
    }
  }

  /** Restarts the kernel on the same connection, so clients keep their sockets. */
  async restart(id: string): Promise<ManagedKernel> {
    const k = await this.find(id);
    if (k.phase !== 'running') throw kernelRestarting(id);
    if (k.follower) return this.restartFollowed(k);
    k.phase = 'restarting';
    const abort = new AbortController();
    k.launching = abort;
    const op = this.relaunch(k, true, abort.signal);
    const settled = op.catch(() => undefined);
    k.pending = settled;
    try {
      await op;
    } catch (e) {
      // A shutdown came meanwhile: it stops and removes the kernel.
      if (abort.signal.aborted) throw kernelStartCancelled(k.id, 'restart');
      this.giveUp(k, e instanceof Error ? e.message : String(e));
      throw e;
    } finally {
      if (k.launching === abort) k.launching = undefined;
      // A shutdown that came meanwhile made its own operation the pending one: it stays.
      if (k.pending === settled) k.pending = undefined;
    }
    return k;
  }

  /**
   * Shuts the kernel down. One that is still starting or restarting has its
   * launch aborted first (the start answers KG_KERNEL_START_CANCELLED), and
   * the shutdown completes once that launch has cleaned up.
   */
  async shutdown(id: string, why = 'kernel shut down'): Promise<void> {
    const k = await this.find(id);
    // A followed kernel's record goes first, so its owner takes the exit for a shutdown, not a crash.
    if (k.follower) await this.o.state?.remove(k.id);
    if (k.phase === 'shutting_down' && k.pending) return k.pending;
    const previous = k.pending;
    k.phase = 'shutting_down';
    k.launching?.abort(kernelStartCancelled(k.id));
    const op = (async () => {
      await previous?.catch(() => undefined);
      await this.stopProcess(k, false);
      for (const c of k.link?.allClients() ?? []) c.close(WsClose.Normal, why);
      this.remove(k);
      // Awaited here (remove() cannot): the gateway may be about to exit.
      await this.o.state?.remove(k.id).catch(() => undefined);
      this.o.log.info({ kernel: k.id, why }, 'kernel shut down');
    })();
    k.pending = op;
    return op;
  }

  /**
   * Restarts a kernel another gateway watches: its process is killed, and its
   * owner restarts it as after a crash, on the same connection; this waits
   * until it answers again.
   */
  private async restartFollowed(k: ManagedKernel): Promise<ManagedKernel> {
    k.phase = 'restarting';
    k.link?.broadcastStatus('restarting');
    k.link?.suspend();
    const before = k.recordedInfo;
    try {
      await k.provisioner.kill(true);
      const deadline = Date.now() + FOLLOWER_RESTART_WAIT_MS;
      while (k.recordedInfo === before && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100));
        const r = await this.o.state!.load(k.id);
        if (!r) throw kernelDead(k.id);
        k.recordedInfo = JSON.stringify(r.provisioner);
        if (k.recordedInfo !== before) await k.provisioner.loadInfo(r.provisioner);
      }
      await k.link!.nudge(Math.max(1000, deadline - Date.now()));
      k.phase = 'running';
      return k;
    } catch (e) {
      if (k.phase === 'restarting') k.phase = 'running';
      throw e;
    }
  }

  async shutdownAll(): Promise<void> {
    clearInterval(this.syncTimer);
    // Kernels another gateway process watches are let go, not stopped.
    for (const k of this.list()) if (k.follower) this.forget(k, 'kgate is shutting down');
    await Promise.allSettled([...this.list().map((k) => this.shutdown(k.id)), this.pools.close()]);
  }

  /** Synchronous last resort when the process is exiting: kill every kernel still running. */
  killAllNow(): void {
    for (const k of this.kernels.values()) k.provisioner.killNow?.();
    this.pools.killAllNow();
  }

  private remove(k: ManagedKernel): void {
    k.stopWatching();
    k.link?.close();
    void this.o.state?.remove(k.id).catch(() => undefined);
    if (this.kernels.get(k.id) === k) {
      this.kernels.delete(k.id);
      for (const l of this.removedListeners) l(k.id);
    }
  }

  private launchTimeout(env: Record<string, string>): number {
    const asked = Number(env['KERNEL_LAUNCH_TIMEOUT']);
    return Number.isFinite(asked) && asked > 0 ? Math.min(asked * 1000, this.o.launchTimeoutMs * 4) : this.o.launchTimeoutMs;
  }

  /**
   * The kernel's working directory: KERNEL_WORKING_DIR confined to the root
   * dir (--root-dir), symlinks followed (realpath), relative names taken under
   * the root; the root itself when none is asked for. Anything else is a 400
   * that states the rule and never echoes the value.
   */
  private async workingDir(env: Record<string, string>): Promise<string> {
    const asked = env['KERNEL_WORKING_DIR'];
    if (asked === undefined || asked === '') return this.o.rootDir;
    const refused = badRequest('KERNEL_WORKING_DIR must name an existing directory inside the root dir (--root-dir); a relative name is taken under it');
    const root = await realpath(this.o.rootDir).catch(() => resolve(this.o.rootDir));
    let real: string;
    try {
      real = await realpath(resolve(root, asked));
      if (!(await stat(real)).isDirectory()) throw refused;
    } catch {
      throw refused;
    }
    const inside = root.endsWith(sep) ? root : root + sep;
    if (real !== root && !real.startsWith(inside)) throw refused;
    return real;
  }

  /**
   * Launches (or relaunches, reusing the connection) and waits until the
   * kernel answers `kernel_info_request` and iopub flows, or it dies, or the
   * timeout passes, or `signal` aborts (a shutdown). When it rejects, the
   * process it started is gone (killed and waited for).
   */
  private async launch(k: ManagedKernel, timeoutMs: number, reuse: ConnectionInfo | undefined, signal?: AbortSignal, attempt = 1): Promise<void> {
    const generation = ++k.generation;
    const key = reuse?.key ?? randomBytes(32).toString('hex');
    k.startedAt = Date.now();
    // Without a state dir nothing can adopt a kernel, so it must not outlive this gateway.
    const conn = await k.provisioner.launch({ kernelId: k.id, spec: k.spec, key, env: k.env, cwd: k.cwd, reuse, signal, endWithGateway: !this.o.state });
    k.conn = conn;
    if (!k.link) {
      k.link = new KernelLink(conn, { ...this.o.link, log: this.o.log.child({ kernel: k.id }) });
      k.link.open();
    }
    const died = new AbortController();
    void k.provisioner.exited().then((code) => died.abort(new Error(`the kernel exited with code ${code} while starting`)));
    try {
      await k.link.nudge(timeoutMs, signal ? AbortSignal.any([died.signal, signal]) : died.signal);
    } catch (e) {
      // Read before the kill below, whose exit would abort the signal too.
      const exitedWhileStarting = died.signal.aborted;
      const tail = k.provisioner.diagnostics();
      await k.provisioner.kill(false).catch(() => undefined);
      await k.provisioner.wait(TERMINATE_WAIT_MS);
      // A relaunch keeps what the next attempt reuses (the connection file is rewritten, the private home kept).
      await k.provisioner.cleanup(reuse !== undefined).catch(() => undefined);
      if (signal?.aborted) throw signal.reason;
      // Ports are probed free, then bound by the kernel: another process can take one in
      // between. A fresh start then simply tries again with new ports.
      if (exitedWhileStarting && !reuse && attempt < PORT_RACE_ATTEMPTS && /address already in use/i.test(tail)) {
        this.o.log.warn({ kernel: k.id, attempt }, 'a kernel port was taken before the kernel bound it; starting again with new ports');
        k.link?.close();
        k.link = undefined;
        return this.launch(k, timeoutMs, undefined, signal, attempt + 1);
      }
      const detail = `${e instanceof Error ? e.message : String(e)}${tail ? `; its stderr ends with: ${tail.slice(-1000)}` : ''}`;
      if (exitedWhileStarting) throw kernelStartFailed(`kernel ${k.name} failed to start: ${detail}`, e);
      throw kernelStartTimeout(`kernel ${k.name} did not answer within ${timeoutMs} ms: ${detail}`);
    } finally {
      died.abort();
    }
    k.awaitingAnswer = false;
    this.watch(k, generation, conn);
  }

  /** Watches a running kernel: heartbeat, and the process's exit. */
  private watch(k: ManagedKernel, generation: number, conn: ConnectionInfo): void {
    // The callback reads the generation of the moment it fires: a heartbeat kept
    // across restarts must report the death of the current process.
    k.heartbeat ??= new Heartbeat(channelUrl(conn, conn.hb_port), this.o.heartbeat, () => void this.onDeath(k, k.generation, 'heartbeat lost'));
    k.heartbeat.start();
    void k.provisioner.exited().then((code) => this.onDeath(k, generation, `process exited with code ${code}`));
  }

  /** Stops the current kernel process: shutdown_request, then SIGTERM, then SIGKILL. */
  private async stopProcess(k: ManagedKernel, restart: boolean): Promise<void> {
    k.generation++;
    k.stopWatching();
    k.link?.suspend();
    const p = k.provisioner;
    if ((await p.poll()) === undefined) {
      void k.link?.request('control', 'shutdown_request', { restart }, this.o.shutdownWaitMs);
      if (!(await p.wait(this.o.shutdownWaitMs))) {
        await p.terminate(restart);
        if (!(await p.wait(TERMINATE_WAIT_MS))) {
          await p.kill(restart);
          await p.wait(TERMINATE_WAIT_MS);
        }
      }
    }
    await p.cleanup(restart);
  }

  /** Stops the process (gracefully, or at once when it died) and launches it again on the same connection. */
  private async relaunch(k: ManagedKernel, graceful: boolean, signal: AbortSignal): Promise<void> {
    const conn = k.conn;
    if (graceful) {
      await this.stopProcess(k, true);
    } else {
      k.generation++;
      k.stopWatching();
      k.link?.suspend();
      await k.provisioner.kill(true);
      await k.provisioner.wait(TERMINATE_WAIT_MS);
      await k.provisioner.cleanup(true);
    }
    signal.throwIfAborted();
    await this.launch(k, this.launchTimeout(k.env), conn, signal);
    signal.throwIfAborted();
    if (k.phase === 'restarting') k.phase = 'running';
    await this.persist(k);
  }

  /**
   * A kernel of this gateway died (its process exited, or its heartbeat
   * stopped): it is restarted on the same connection, up to --restart-limit
   * attempts in a row (a kernel that ran STABLE_RUN_MS since its last launch
   * starts the count again). A replacement that dies while it starts is one
   * failed attempt, and the next one follows after restartBackoffMs().
   */
  private async onDeath(k: ManagedKernel, generation: number, why: string): Promise<void> {
    if (k.generation !== generation || k.phase !== 'running') return;
    if (this.o.state && !(await this.o.state.load(k.id))) {
      // Another gateway process on the state dir shut it down.
      this.forget(k, 'kernel shut down');
      return;
    }
    if (k.generation !== generation || k.phase !== 'running') return;
    if (Date.now() - k.startedAt > STABLE_RUN_MS) k.restarts = 0;
    k.phase = 'restarting';
    k.link?.broadcastStatus('restarting');
    const abort = new AbortController();
    k.launching = abort;
    const op = this.restartAfterDeath(k, why, abort.signal);
    k.pending = op;
    try {
      await op;
    } finally {
      if (k.launching === abort) k.launching = undefined;
      if (k.pending === op) k.pending = undefined;
    }
  }

  private async restartAfterDeath(k: ManagedKernel, why: string, signal: AbortSignal): Promise<void> {
    const limit = this.o.restartLimit;
    let reason = why;
    for (;;) {
      if (k.restarts >= limit) {
        this.giveUp(k, `${reason}; ${k.restarts} automatic restart attempts in a row (--restart-limit ${limit}) did not keep it alive`);
        return;
      }
      const attempt = ++k.restarts;
      const waitMs = restartBackoffMs(attempt);
      const msg = attempt === 1 || reason === why ? `kernel died; restart attempt ${attempt} of ${limit}` : `restart attempt ${attempt} of ${limit} in ${waitMs} ms`;
      this.o.log.warn({ kernel: k.id, why: reason, attempt, limit, waitMs }, msg);
      await sleep(waitMs, signal);
      if (signal.aborted) return;
      try {
        await this.relaunch(k, false, signal);
        this.o.log.info({ kernel: k.id, attempt, limit }, `kernel restarted (attempt ${attempt} of ${limit})`);
        return;
      } catch (e) {
        // A shutdown came meanwhile: it stops and removes the kernel.
        if (signal.aborted) return;
        reason = e instanceof Error ? e.message : String(e);
        this.o.log.warn({ kernel: k.id, attempt, limit, err: reason }, `restart attempt ${attempt} of ${limit} failed`);
      }
    }
  }

  private giveUp(k: ManagedKernel, why: string): void {
    this.o.log.error({ kernel: k.id, why }, 'kernel is dead');
    k.phase = 'dead';
    k.link?.broadcastStatus('dead');
    for (const c of k.link?.allClients() ?? []) c.close(WsClose.InternalError, 'kernel died');
    void k.provisioner.cleanup(false).catch(() => undefined);
    this.remove(k);
    if (k.pooled) this.pools.lost(k);
  }
}

