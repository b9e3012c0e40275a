/**
 * One kernel's supervisor: it owns the kernel's state machine (phases.ts),
 * launches it through its provisioner, watches it (heartbeat and exit),
 * restarts it when it dies (with a count and a backoff), gives it up, and
 * interrupts, restarts and shuts it down when asked. What lies beyond one
 * kernel (the registry, the state dir, the pool) it reaches through its host.
 *
 * Lifecycle events (src/events.ts) are published from here, only when someone
 * subscribes.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { Heartbeat, type HeartbeatOptions } from '../bridge/heartbeat.js';
import { channelUrl, type ExecutionState, type KernelLink } from '../bridge/kernel-link.js';
import { jupyterDate } from '../bridge/messages.js';
import { ErrorCodes, WsClose, KgateError, kernelRestarting, kernelStartCancelled, kernelStartFailed, kernelStartTimeout } from '../errors.js';
import { events, type KernelEvent } from '../events.js';
import {
  KernelExited,
  provisionerMetadata,
  sameAddress,
  type ConnectionInfo,
  type KernelSpec,
  type LaunchContext,
  type LaunchPhase,
  type PortSource,
  type Provisioner,
  type ResourceRequest,
} from '../provisioner/types.js';
import { checkMove, type KernelPhase } from './phases.js';

export interface KernelModel {
  id: string;
  name: string;
  last_activity: string;
  execution_state: ExecutionState;
  connections: number;
  /** kgate's own member (clients ignore members they do not know): nothing the caller could not see already. */
  kgate: KgateKernelModel;
}

export interface KgateKernelModel {
  owner: string | null;
  tenant: string;
  provisioner: string;
  phase: KernelPhase;
  /** When this gateway took the kernel on. */
  started: string;
  resources: ResourceRequest;
  /** The launch's last phase, while starting or restarting. */
  progress?: LaunchPhase;
  /** How the kernel last died, when it has: `out_of_memory` when its memory limit killed it (a sandbox's cgroup saw it). */
  last_death?: { reason: 'out_of_memory' | 'died'; message: string; at: string };
}

/**
 * Wait before automatic restart attempt n (n ≥ 2; the first is immediate):
 * 0.5 s, 1 s, 2 s, 4 s, then 8 s at most, so a kernel that cannot stay up is
 * not relaunched in a tight loop.
 */
export function restartBackoffMs(attempt: number): number {
  return attempt <= 1 ? 0 : Math.min(8000, 500 * 2 ** (attempt - 2));
}

/** A kernel that ran this long before dying resets the count of automatic restarts. */
export const STABLE_RUN_MS = 30_000;
const TERMINATE_WAIT_MS = 2000;

/** What every supervisor of a gateway shares. */
export interface SupervisorOptions {
  launchTimeoutMs: number;
  shutdownWaitMs: number;
  /** Automatic restarts allowed in a row before a dying kernel is given up as dead. */
  restartLimit: number;
  /** Defaults to STABLE_RUN_MS. */
  stableRunMs?: number | undefined;
  /** Defaults to restartBackoffMs. */
  restartBackoff?: ((attempt: number) => number) | undefined;
  heartbeat: HeartbeatOptions;
  /** Makes the kernel's ZeroMQ link (the relay's options are the gateway's). */
  createLink: (conn: ConnectionInfo, log: Logger, kernelId: string) => KernelLink;
  ports: PortSource;
  /** No state dir: nothing could adopt the kernel, so it must not outlive the gateway. */
  endWithGateway: boolean;
  log: Logger;
}

/** What a supervisor asks of the gateway around it. */
export interface SupervisorHost {
  /** Records the kernel for adoption (no-op without a state dir). */
  persist(k: KernelSupervisor): Promise<void>;
  /** Removes the kernel's record. */
  unrecord(k: KernelSupervisor): Promise<void>;
  /** False when the kernel's record is gone: another gateway process shut it down. */
  stillRecorded(k: KernelSupervisor): Promise<boolean>;
  /** The kernel left this gateway (dead, gone): out of the registry, and out of its pool. */
  removed(k: KernelSupervisor): void;
  /** Restarts a kernel another gateway process supervises (replication.ts). */
  restartFollowed(k: KernelSupervisor): Promise<void>;
}

export interface SupervisorInit {
  id: string;
  spec: KernelSpec;
  provisioner: Provisioner;
  env: Record<string, string>;
  owner: string | undefined;
  tenant: string;
  cwd: string;
  resources?: ResourceRequest;
  /** Where it begins: `starting` for a launch, `running` for a kernel adopted or followed. */
  phase?: 'starting' | 'running';
  pooled?: boolean;
  follower?: boolean;
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

function noop(): void {
  // deliberately nothing
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export class KernelSupervisor {
  readonly id: string;
  readonly spec: KernelSpec;
  readonly provisioner: Provisioner;
  readonly env: Record<string, string>;
  readonly cwd: string;
  readonly resources: ResourceRequest;
  /** The user the kernel is for (set when a pooled kernel is handed out). */
  owner: string | undefined;
  tenant: string;
  /** Automatic restart attempts in a row. */
  restarts = 0;
  /** When the current process was launched (the stable-run reset counts from here). */
  startedAt = Date.now();
  /** When the current process last answered its start: a stable run is counted from here, not from the launch (a slow launch is not a long run). */
  runningSince = Date.now();
  /** When this gateway took the kernel on (a start request, an adoption): `ready` and `shutdown` events count from here. */
  readonly createdAt = Date.now();
  /** Bumped on every (re)launch, so exit notices of an older process are ignored. */
  generation = 0;
  link: KernelLink | undefined;
  conn: ConnectionInfo | undefined;
  /** The operation in progress (start, restart, shutdown), so concurrent callers share it. */
  pending: Promise<void> | undefined;
  /** Waiting in a warm pool: counted against no one, listed nowhere. */
  pooled: boolean;
  /**
   * Supervised by another gateway process on the same state dir (it holds the
   * lease): this one relays its messages and can interrupt, restart or shut it
   * down through the kernel itself, but does not watch its life.
   */
  follower: boolean;
  /** The provisioner description last read from the state dir (a follower reloads it when it changes). */
  recordedInfo = '';
  /** The session keys last written to the state dir, joined, to write them only when they change. */
  recordedSessions = '';
  /** Sessions recorded by the gateway this kernel was adopted from: still told if this one dies too. */
  inheritedSessions: string[] = [];
  /** Adopted and not answering kernel_info yet (busy, or still catching up): clients' messages wait. */
  awaitingAnswer = false;
  /** When this gateway last wrote the kernel's lease. */
  leaseRenewedAt = 0;

  private state: KernelPhase;
  private heartbeat: Heartbeat | undefined;
  private heartbeatUrl = '';
  /** The address the link is connected to. */
  private linkConn: ConnectionInfo | undefined;
  /** The launch in progress (a start, a restart): a shutdown aborts it. */
  private launching: AbortController | undefined;
  /** Stops the readiness rounds of an adopted kernel. */
  private readiness: AbortController | undefined;
  private readonly log: Logger;
  /** The current launch's last phase (progress()), for the model while it starts. */
  private launchPhase: LaunchPhase | undefined;
  private lastDeath: KgateKernelModel['last_death'];

  constructor(
    init: SupervisorInit,
    private readonly o: SupervisorOptions,
    private readonly host: SupervisorHost,
  ) {
    this.id = init.id;
    this.spec = init.spec;
    this.provisioner = init.provisioner;
    this.env = init.env;
    this.owner = init.owner;
    this.tenant = init.tenant;
    this.cwd = init.cwd;
    this.resources = init.resources ?? {};
    this.state = init.phase ?? 'starting';
    this.pooled = init.pooled ?? false;
    this.follower = init.follower ?? false;
    this.log = o.log.child({ kernel: init.id });
  }

  get name(): string {
    return this.spec.name;
  }

  get phase(): KernelPhase {
    return this.state;
  }

  /** The one way the state changes; a move not in phases.ts's table throws. */
  transition(to: KernelPhase): void {
    checkMove(this.id, this.state, to);
    this.state = to;
  }

  get executionState(): ExecutionState {
    const s = this.state;
    if (s === 'dead' || s === 'gone') return 'dead';
    if (s === 'restarting') return 'restarting';
    if (s === 'starting') return 'starting';
    // Adopted and silent: it runs (its process and heartbeat say so) but answers no request yet.
    if (this.awaitingAnswer) return 'busy';
    return this.link?.executionState ?? 'unknown';
  }

  model(): KernelModel {
    return {
      id: this.id,
      name: this.name,
      last_activity: jupyterDate(this.link?.lastActivity ?? this.createdAt),
      execution_state: this.executionState,
      connections: this.link?.connections ?? 0,
      kgate: {
        owner: this.owner ?? null,
        tenant: this.tenant,
        provisioner: this.provisioner.name,
        phase: this.state,
        started: jupyterDate(this.createdAt),
        resources: { ...this.resources, ...(this.resources.extended ? { extended: { ...this.resources.extended } } : {}) },
        ...((this.state === 'starting' || this.state === 'restarting') && this.launchPhase ? { progress: this.launchPhase } : {}),
        ...(this.lastDeath ? { last_death: { ...this.lastDeath } } : {}),
      },
    };
  }

  private event(): KernelEvent {
    return { kernelId: this.id, kernelspec: this.name, provisioner: this.provisioner.name, owner: { user: this.owner, tenant: this.tenant } };
  }

  private progress(phase: LaunchPhase, detail?: string): void {
    this.launchPhase = phase;
    // A remote provisioner's waits (scheduling, an image pull) are worth an info line; a local start's steps are not.
    if (phase === 'scheduling' || phase === 'pulling') this.log.info({ phase, detail }, `kernel launch: ${phase}`);
    else this.log.debug({ phase, detail }, `kernel launch: ${phase}`);
    if (events.kernelProgress.hasSubscribers) events.kernelProgress.publish({ ...this.event(), phase, detail });
  }

  /**
   * Launches a kernel just made (phase `starting`) and waits until it answers.
   * A shutdown meanwhile aborts it: then nothing of the kernel is left
   * (process, record, connection file, private home) and this rejects with
   * KG_KERNEL_START_CANCELLED. A start that fails leaves the kernel dead.
   */
  async start(timeoutMs = this.o.launchTimeoutMs): Promise<void> {
    const abort = new AbortController();
    this.launching = abort;
    // A warm pool's own launch is for no one yet: its start and ready are those of the hand-out (handOut()).
    if (!this.pooled && events.kernelStart.hasSubscribers) events.kernelStart.publish({ ...this.event(), pooled: false });
    const op = this.startOnce(timeoutMs, abort);
    // Pending, so a shutdown meanwhile (which aborts the launch) waits for its cleanup.
    const settled = op.then(noop, noop);
    this.pending = settled;
    try {
      await op;
    } finally {
      if (this.pending === settled) this.pending = undefined;
      if (this.launching === abort) this.launching = undefined;
    }
  }

  private async startOnce(timeoutMs: number, abort: AbortController): Promise<void> {
    let launched = false;
    try {
      await this.launch(timeoutMs, undefined, abort.signal);
      launched = true;
      await this.host.persist(this);
      // A shutdown that came while the record was written: no await since, so it stands.
      abort.signal.throwIfAborted();
      this.transition('running');
      if (!this.pooled && events.kernelReady.hasSubscribers) {
        events.kernelReady.publish({ ...this.event(), pooled: false, ms: Date.now() - this.createdAt, resources: this.resources });
      }
    } catch (e) {
      // A launch that failed cleaned up after itself; one that succeeded and was then cancelled has not.
      if (launched) await this.killLaunched(false);
      const cancelled = abort.signal.aborted;
      this.closeClients(cancelled ? WsClose.Normal : WsClose.InternalError, cancelled ? 'kernel shut down' : 'kernel failed to start');
      if (!this.pooled && events.kernelStartFailed.hasSubscribers) {
        const code = cancelled ? ErrorCodes.KERNEL_START_CANCELLED : e instanceof KgateError ? e.code : ErrorCodes.KERNEL_START_FAILED;
        events.kernelStartFailed.publish({ ...this.event(), code, ms: Date.now() - this.createdAt });
      }
      if (cancelled) {
        // The shutdown that aborted the start finishes the kernel (shutting_down → gone).
        this.log.info({ name: this.name }, 'kernel start cancelled: it was shut down while starting');
        throw kernelStartCancelled(this.id);
      }
      this.transition('dead');
      this.detach();
      this.host.removed(this);
      await this.host.unrecord(this).catch(noop);
      throw e;
    }
  }

  /**
   * Launches (or relaunches, reusing the connection) and waits until the
   * kernel answers `kernel_info_request` and iopub flows, or it dies, or the
   * timeout passes (it covers the provisioner's own launch too), or `cancel`
   * aborts (a shutdown). When it rejects, the process it started is gone.
   */
  private async launch(timeoutMs: number, reuse: ConnectionInfo | undefined, cancel: AbortSignal): Promise<void> {
    const generation = ++this.generation;
    this.launchPhase = undefined;
    const key = reuse?.key ?? randomBytes(32).toString('hex');
    this.startedAt = Date.now();
    const deadline = Date.now() + timeoutMs;
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
    const signal = AbortSignal.any([cancel, timeout.signal]);
    let connected: ConnectionInfo | undefined;
    const ctx: LaunchContext = {
      signal,
      onProgress: (phase, detail) => this.progress(phase, detail),
      connect: async (conn) => {
        await this.connect(conn, signal, deadline);
        connected = conn;
      },
    };
    let conn: ConnectionInfo;
    try {
      conn = await this.provisioner.launch(
        {
          kernelId: this.id,
          spec: this.spec,
          key,
          env: this.env,
          cwd: this.cwd,
          principal: { user: this.owner, tenant: this.tenant },
          config: provisionerMetadata(this.spec).config,
          resources: this.resources,
          ports: this.o.ports,
          reuse,
          endWithGateway: this.o.endWithGateway,
        },
        ctx,
      );
      if (connected === undefined || !sameAddress(connected, conn)) {
        this.progress('connecting');
        try {
          await this.connect(conn, signal, deadline);
        } catch (e) {
          await this.killLaunched(reuse !== undefined);
          throw e;
        }
      }
    } catch (e) {
      if (cancel.aborted) throw cancel.reason;
      const tail = this.provisioner.diagnostics();
      const stderr = tail ? `; its stderr ends with: ${tail.slice(-1000)}` : '';
      if (timeout.signal.aborted) throw kernelStartTimeout(`kernel ${this.name} did not answer within ${timeoutMs} ms${stderr}`);
      if (e instanceof KgateError) throw e;
      throw kernelStartFailed(`kernel ${this.name} failed to start: ${messageOf(e)}${stderr}`, e);
    } finally {
      clearTimeout(timer);
    }
    this.conn = conn;
    this.awaitingAnswer = false;
    this.runningSince = Date.now();
    this.watch(generation);
  }

  /** The gateway's readiness check (LaunchContext.connect): the link at `conn`, nudged until the kernel answers. */
  private async connect(conn: ConnectionInfo, signal: AbortSignal, deadline: number): Promise<void> {
    this.bindLink(conn);
    this.conn = conn;
    const died = new AbortController();
    void this.provisioner.exited().then((code) => died.abort(new KernelExited(code)));
    try {
      await this.link!.nudge(Math.max(1, deadline - Date.now()), AbortSignal.any([signal, died.signal]));
    } catch (e) {
      if (died.signal.aborted && !signal.aborted) throw died.signal.reason;
      throw e;
    } finally {
      died.abort();
    }
  }

  /**
   * Points the link at `conn`: made on first use; kept when the address is the
   * same (a restart in place: the clients' sockets never notice); rebound when
   * a relaunch answered a new address (a new pod IP), without closing clients.
   */
  bindLink(conn: ConnectionInfo): void {
    if (!this.link) {
      this.link = this.o.createLink(conn, this.log, this.id);
      this.link.open();
      this.linkConn = conn;
      return;
    }
    if (this.linkConn && sameAddress(this.linkConn, conn)) return;
    this.linkConn = conn;
    this.log.info({ ip: conn.ip }, 'the kernel answered a new address: its link is rebound, clients stay connected');
    this.link.rebind(conn);
  }

  /** Watches a running kernel of this gateway: heartbeat, and the process's exit. */
  watch(generation = this.generation): void {
    const conn = this.conn!;
    const url = channelUrl(conn, conn.hb_port);
    if (!this.heartbeat || this.heartbeatUrl !== url) {
      this.heartbeat?.stop();
      // The callback reads the generation of the moment it fires: a heartbeat kept
      // across restarts must report the death of the current process.
      this.heartbeat = new Heartbeat(url, this.o.heartbeat, () => void this.onDeath(this.generation, 'heartbeat lost'));
      this.heartbeatUrl = url;
    }
    this.heartbeat.start();
    void this.provisioner.exited().then((code) => {
      // Read as the process ends: a provisioner that can tell (a sandbox's cgroup) says whether its memory limit killed it.
      const exit = this.provisioner.lastExit?.();
      if (exit?.reason === 'out_of_memory') void this.onDeath(generation, exit.detail ?? 'the kernel was killed: it reached its memory limit', 'out_of_memory');
      else void this.onDeath(generation, `process exited with code ${code}`);
    });
  }

  /** Stops watching the process (heartbeat) and asking an adopted kernel whether it answers. */
  stopWatching(): void {
    this.readiness?.abort();
    this.readiness = undefined;
    this.heartbeat?.stop();
  }

  /** Stops watching and closes the link (its clients were told, or are let go). */
  private detach(): void {
    this.stopWatching();
    this.link?.close();
  }

  private closeClients(code: number, why: string): void {
    for (const c of this.link?.allClients() ?? []) c.close(code, why);
  }

  /**
   * Asks an adopted kernel for kernel_info, round after round, until it
   * answers; then its clients' held messages go out. It is never killed for
   * not answering (one busy in native code answers only its heartbeat, which
   * decides its life). Stops when the kernel is relaunched, shut down or let go.
   */
  async untilAnswered(nudgeMs: number): Promise<void> {
    const generation = this.generation;
    const abort = new AbortController();
    this.readiness = abort;
    const current = (): boolean => !abort.signal.aborted && this.generation === generation && this.state === 'running';
    let rounds = 0;
    try {
      while (current()) {
        try {
          await this.link!.nudge(nudgeMs, abort.signal);
          this.awaitingAnswer = false;
          this.log.info({ afterMs: rounds * nudgeMs }, 'adopted kernel answers; its clients are relayed');
          return;
        } catch {
          if (!current()) return;
          if (rounds++ === 0) this.log.warn('adopted kernel does not answer yet (busy?); it is kept while its process and heartbeat live, and its clients wait');
        }
      }
    } finally {
      if (this.readiness === abort) this.readiness = undefined;
    }
  }

  /** A pooled kernel handed out to a start request: it now belongs to `owner`. */
  handOut(owner: string | undefined, tenant: string): void {
    this.pooled = false;
    this.owner = owner;
    this.tenant = tenant;
    if (events.kernelStart.hasSubscribers) events.kernelStart.publish({ ...this.event(), pooled: true });
    if (events.kernelReady.hasSubscribers) events.kernelReady.publish({ ...this.event(), pooled: true, ms: 0, resources: this.resources });
  }

  async interrupt(): Promise<void> {
    if (this.state !== 'running') throw kernelRestarting(this.id);
    if (this.spec.spec.interrupt_mode === 'message' || this.provisioner.capabilities.interrupt === 'message') {
      await this.link?.request('control', 'interrupt_request', {}, this.o.shutdownWaitMs);
    } else {
      await this.provisioner.sendSignal('SIGINT');
    }
  }

  /** Restarts the kernel (on the same connection when the provisioner restarts in place), so clients keep their sockets. */
  async restart(): Promise<void> {
    if (this.state !== 'running') throw kernelRestarting(this.id);
    if (this.follower) return this.host.restartFollowed(this);
    this.transition('restarting');
    if (events.kernelRestart.hasSubscribers) events.kernelRestart.publish({ ...this.event(), cause: 'request', attempt: 1 });
    const abort = new AbortController();
    this.launching = abort;
    const op = this.relaunch(true, abort.signal);
    const settled = op.catch(noop);
    this.pending = settled;
    try {
      await op;
    } catch (e) {
      // A shutdown came meanwhile: it stops and removes the kernel.
      if (abort.signal.aborted) throw kernelStartCancelled(this.id, 'restart');
      this.giveUp(messageOf(e));
      throw e;
    } finally {
      if (this.launching === abort) this.launching = undefined;
      // A shutdown that came meanwhile made its own operation the pending one: it stays.
      if (this.pending === settled) this.pending = undefined;
    }
  }

  /**
   * Shuts the kernel down. One that is still starting or restarting has its
   * launch aborted first (the start answers KG_KERNEL_START_CANCELLED), and
   * the shutdown completes once that launch has cleaned up.
   */
  async shutdown(why = 'kernel shut down'): Promise<void> {
    // A followed kernel's record goes first, so its supervisor takes the exit for a shutdown, not a crash.
    if (this.follower) await this.host.unrecord(this);
    if (this.state === 'shutting_down' && this.pending) return this.pending;
    if (this.state === 'dead' || this.state === 'gone' || this.state === 'shutting_down') return;
    const previous = this.pending;
    this.transition('shutting_down');
    this.launching?.abort(kernelStartCancelled(this.id));
    const op = (async () => {
      await previous?.catch(noop);
      await this.stopProcess(false);
      this.closeClients(WsClose.Normal, why);
      this.transition('gone');
      this.detach();
      this.host.removed(this);
      // Awaited here: the gateway may be about to exit.
      await this.host.unrecord(this).catch(noop);
      this.log.info({ why }, 'kernel shut down');
      if (events.kernelShutdown.hasSubscribers) events.kernelShutdown.publish({ ...this.event(), reason: why, ms: Date.now() - this.createdAt });
    })();
    this.pending = op;
    return op;
  }

  /** Lets go of a kernel without stopping it (another gateway shut it down, or this one is leaving), telling its clients here. */
  forget(why: string, code: number = WsClose.Normal): void {
    if (this.state !== 'running' && this.state !== 'restarting') return;
    this.transition('gone');
    this.generation++;
    this.launching?.abort(kernelStartCancelled(this.id, 'restart'));
    this.closeClients(code, why);
    this.detach();
    this.host.removed(this);
    if (events.kernelRelease.hasSubscribers) events.kernelRelease.publish({ ...this.event(), how: 'released', reason: why });
  }

  /**
   * Another gateway holds the kernel's lease now (this one did not renew it in
   * time): stop supervising, and follow. A restart in progress is abandoned to
   * the new supervisor.
   */
  stepDown(): void {
    this.follower = true;
    this.generation++;
    this.launching?.abort(kernelStartCancelled(this.id, 'restart'));
    this.stopWatching();
    if (this.state === 'restarting') this.transition('running');
    if (events.kernelRelease.hasSubscribers) events.kernelRelease.publish({ ...this.event(), how: 'stepped_down', reason: 'another gateway holds its lease' });
  }

  /**
   * Undoes a launch that will not be used (it failed to answer, or was
   * cancelled once up): kill, wait for the end, clean up; nothing of it may
   * throw past here, since the caller is already reporting why.
   */
  private async killLaunched(restart: boolean): Promise<void> {
    await this.provisioner.kill(false).catch(noop);
    await this.provisioner.wait(TERMINATE_WAIT_MS);
    await this.provisioner.cleanup(restart).catch(noop);
  }

  /** Stops the current kernel process: shutdown_request, then SIGTERM, then SIGKILL. */
  private async stopProcess(restart: boolean): Promise<void> {
    this.generation++;
    this.stopWatching();
    this.link?.suspend();
    const p = this.provisioner;
    if ((await p.poll()) === undefined) {
      void this.link?.request('control', 'shutdown_request', { restart }, this.o.shutdownWaitMs);
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

  /** Stops the process (gracefully, or at once when it died) and launches it again, on the same connection where it can. */
  private async relaunch(graceful: boolean, signal: AbortSignal): Promise<void> {
    const conn = this.conn;
    if (graceful) {
      await this.stopProcess(true);
    } else {
      this.generation++;
      this.stopWatching();
      this.link?.suspend();
      await this.provisioner.kill(true);
      await this.provisioner.wait(TERMINATE_WAIT_MS);
      await this.provisioner.cleanup(true);
    }
    signal.throwIfAborted();
    await this.launch(this.launchTimeout(), conn, signal);
    signal.throwIfAborted();
    if (this.state === 'restarting') this.transition('running');
    await this.host.persist(this);
  }

  /** The launch timeout, or the client's KERNEL_LAUNCH_TIMEOUT (seconds), at most four times it. */
  launchTimeout(): number {
    const asked = Number(this.env['KERNEL_LAUNCH_TIMEOUT']);
    return Number.isFinite(asked) && asked > 0 ? Math.min(asked * 1000, this.o.launchTimeoutMs * 4) : this.o.launchTimeoutMs;
  }

  /**
   * The kernel died (its process exited, or its heartbeat stopped): it is
   * restarted, up to --restart-limit attempts in a row (a kernel that ran
   * stableRunMs since it last answered its start starts the count again). A replacement
   * that dies while it starts is one failed attempt, and the next one follows
   * after the backoff.
   */
  private async onDeath(generation: number, why: string, reason: 'out_of_memory' | 'died' = 'died'): Promise<void> {
    if (this.generation !== generation || this.state !== 'running') return;
    this.lastDeath = { reason, message: why, at: jupyterDate(Date.now()) };
    // Its clients are told why, in the output of whatever they ran: a kernel killed for memory is not a mystery exit.
    if (reason === 'out_of_memory') this.link?.broadcastNotice(`kgate: ${why}; it is being restarted (its variables are lost)\n`);
    if (!(await this.host.stillRecorded(this))) {
      // Another gateway process on the state dir shut it down.
      this.forget('kernel shut down');
      return;
    }
    if (this.generation !== generation || this.state !== 'running') return;
    if (Date.now() - this.runningSince > (this.o.stableRunMs ?? STABLE_RUN_MS)) this.restarts = 0;
    this.transition('restarting');
    if (events.kernelDeath.hasSubscribers) events.kernelDeath.publish({ ...this.event(), reason: why, final: false });
    this.link?.broadcastStatus('restarting');
    const abort = new AbortController();
    this.launching = abort;
    const op = this.restartAfterDeath(why, abort.signal);
    this.pending = op;
    try {
      await op;
    } finally {
      if (this.launching === abort) this.launching = undefined;
      if (this.pending === op) this.pending = undefined;
    }
  }

  private async restartAfterDeath(why: string, signal: AbortSignal): Promise<void> {
    const limit = this.o.restartLimit;
    const backoff = this.o.restartBackoff ?? restartBackoffMs;
    let reason = why;
    for (;;) {
      if (this.restarts >= limit) {
        this.giveUp(`${reason}; ${this.restarts} automatic restart attempts in a row (--restart-limit ${limit}) did not keep it alive`);
        return;
      }
      const attempt = ++this.restarts;
      const waitMs = backoff(attempt);
      const msg = attempt === 1 || reason === why ? `kernel died; restart attempt ${attempt} of ${limit}` : `restart attempt ${attempt} of ${limit} in ${waitMs} ms`;
      this.log.warn({ why: reason, attempt, limit, waitMs }, msg);
      await sleep(waitMs, signal);
      if (signal.aborted) return;
      if (events.kernelRestart.hasSubscribers) events.kernelRestart.publish({ ...this.event(), cause: 'death', attempt });
      try {
        await this.relaunch(false, signal);
        this.log.info({ attempt, limit }, `kernel restarted (attempt ${attempt} of ${limit})`);
        return;
      } catch (e) {
        // A shutdown came meanwhile: it stops and removes the kernel.
        if (signal.aborted) return;
        reason = messageOf(e);
        this.log.warn({ attempt, limit, err: reason }, `restart attempt ${attempt} of ${limit} failed`);
      }
    }
  }

  private giveUp(why: string): void {
    this.log.error({ why }, 'kernel is dead');
    this.transition('dead');
    if (events.kernelDeath.hasSubscribers) events.kernelDeath.publish({ ...this.event(), reason: why, final: true });
    this.link?.broadcastStatus('dead');
    this.closeClients(WsClose.InternalError, 'kernel died');
    void this.provisioner.cleanup(false).catch(noop);
    this.detach();
    void this.host.unrecord(this).catch(noop);
    this.host.removed(this);
  }
}
