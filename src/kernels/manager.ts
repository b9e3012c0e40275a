/**
 * The registry of kernels and their lifecycle: start, interrupt, restart,
 * shutdown, and automatic restart when a kernel dies. Control happens here;
 * the message path (the link and its clients) never waits on it.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { stat } from 'node:fs/promises';
import type { Logger } from 'pino';
import { Heartbeat } from '../bridge/heartbeat.js';
import { channelUrl, KernelLink, type ExecutionState, type KernelLinkOptions } from '../bridge/kernel-link.js';
import { jupyterDate } from '../bridge/messages.js';
import {
  WsClose,
  kernelNotFound,
  kernelRestarting,
  kernelspecNotFound,
  kernelStartFailed,
  kernelStartTimeout,
} from '../errors.js';
import type { ConnectionInfo, KernelSpec, Provisioner } from '../provisioner/types.js';
import { sanitizeEnv, type EnvPolicy } from './env.js';
import type { KernelSpecStore } from './kernelspecs.js';

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
  log: Logger;
}

export interface StartRequest {
  name?: string | undefined;
  env?: Record<string, unknown> | undefined;
  path?: string | undefined;
  /** Who asked, from the auth identity or else KERNEL_USERNAME. */
  user?: string | undefined;
}

/** A kernel that ran this long before dying resets the count of automatic restarts. */
const STABLE_RUN_MS = 30_000;
const TERMINATE_WAIT_MS = 2000;

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
  private readonly createdActivity = Date.now();

  constructor(
    readonly id: string,
    readonly spec: KernelSpec,
    readonly provisioner: Provisioner,
    readonly env: Record<string, string>,
    readonly owner: string | undefined,
    readonly cwd: string,
  ) {}

  get name(): string {
    return this.spec.name;
  }

  get executionState(): ExecutionState {
    if (this.phase === 'dead') return 'dead';
    if (this.phase === 'restarting') return 'restarting';
    if (this.phase === 'starting') return 'starting';
    return this.link?.executionState ?? 'unknown';
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

  constructor(private readonly o: KernelManagerOptions) {}

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

  async start(req: StartRequest): Promise<ManagedKernel> {
    await this.o.specs.refresh();
    const name = req.name ?? this.o.specs.defaultName;
    const spec = this.o.specs.get(name);
    if (!spec) throw kernelspecNotFound(name);
    const env = sanitizeEnv(req.env, this.o.envPolicy);
    if (req.path && !env['JPY_SESSION_NAME']) env['JPY_SESSION_NAME'] = req.path;
    const owner = req.user ?? env['KERNEL_USERNAME'];
    const k = new ManagedKernel(randomUUID(), spec, this.o.provisionerFor(spec), env, owner, await this.workingDir(env));
    this.kernels.set(k.id, k);
    try {
      await this.launch(k, this.launchTimeout(env), undefined);
    } catch (e) {
      this.remove(k);
      throw e;
    }
    k.phase = 'running';
    this.o.log.info({ kernel: k.id, name, owner, ms: Date.now() - k.startedAt }, 'kernel started');
    return k;
  }

  async interrupt(id: string): Promise<void> {
    const k = this.get(id);
    if (k.phase !== 'running') throw kernelRestarting(id);
    if (k.spec.spec.interrupt_mode === 'message') {
      await k.link?.request('control', 'interrupt_request', {}, this.o.shutdownWaitMs);
    } else {
      await k.provisioner.sendSignal('SIGINT');
    }
  }

  /** Restarts the kernel on the same connection, so clients keep their sockets. */
  async restart(id: string): Promise<ManagedKernel> {
    const k = this.get(id);
    if (k.phase !== 'running') throw kernelRestarting(id);
    k.phase = 'restarting';
    const op = this.relaunch(k, true);
    k.pending = op;
    try {
      await op;
    } finally {
      k.pending = undefined;
    }
    return k;
  }

  async shutdown(id: string): Promise<void> {
    const k = this.get(id);
    if (k.phase === 'shutting_down' && k.pending) return k.pending;
    const previous = k.pending;
    k.phase = 'shutting_down';
    const op = (async () => {
      await previous?.catch(() => undefined);
      await this.stopProcess(k, false);
      for (const c of k.link?.allClients() ?? []) c.close(WsClose.Normal, 'kernel shut down');
      this.remove(k);
      this.o.log.info({ kernel: k.id }, 'kernel shut down');
    })();
    k.pending = op;
    return op;
  }

  async shutdownAll(): Promise<void> {
    await Promise.allSettled(this.list().map((k) => this.shutdown(k.id)));
  }

  /** Synchronous last resort when the process is exiting: kill every kernel still running. */
  killAllNow(): void {
    for (const k of this.kernels.values()) k.provisioner.killNow?.();
  }

  private remove(k: ManagedKernel): void {
    k.heartbeat?.stop();
    k.link?.close();
    if (this.kernels.get(k.id) === k) {
      this.kernels.delete(k.id);
      for (const l of this.removedListeners) l(k.id);
    }
  }

  private launchTimeout(env: Record<string, string>): number {
    const asked = Number(env['KERNEL_LAUNCH_TIMEOUT']);
    return Number.isFinite(asked) && asked > 0 ? Math.min(asked * 1000, this.o.launchTimeoutMs * 4) : this.o.launchTimeoutMs;
  }

  private async workingDir(env: Record<string, string>): Promise<string> {
    const asked = env['KERNEL_WORKING_DIR'];
    if (asked && asked.startsWith('/')) {
      try {
        if ((await stat(asked)).isDirectory()) return asked;
      } catch {
        // fall through to the root dir
      }
      this.o.log.warn('KERNEL_WORKING_DIR is not a directory here; using the root dir');
    }
    return this.o.rootDir;
  }

  /**
   * Launches (or relaunches, reusing the connection) and waits until the
   * kernel answers `kernel_info_request` and iopub flows, or it dies, or the
   * timeout passes.
   */
  private async launch(k: ManagedKernel, timeoutMs: number, reuse: ConnectionInfo | undefined): Promise<void> {
    const generation = ++k.generation;
    const key = reuse?.key ?? randomBytes(32).toString('hex');
    k.startedAt = Date.now();
    const conn = await k.provisioner.launch({ kernelId: k.id, spec: k.spec, key, env: k.env, cwd: k.cwd, reuse });
    k.conn = conn;
    if (!k.link) {
      k.link = new KernelLink(conn, { ...this.o.link, log: this.o.log.child({ kernel: k.id }) });
      k.link.open();
    }
    const died = new AbortController();
    void k.provisioner.exited().then((code) => died.abort(new Error(`the kernel exited with code ${code} while starting`)));
    try {
      await k.link.nudge(timeoutMs, died.signal);
    } catch (e) {
      // Read before the kill below, whose exit would abort the signal too.
      const exitedWhileStarting = died.signal.aborted;
      const tail = k.provisioner.diagnostics();
      await k.provisioner.kill(false).catch(() => undefined);
      await k.provisioner.cleanup(false).catch(() => undefined);
      const detail = `${e instanceof Error ? e.message : String(e)}${tail ? `; its stderr ends with: ${tail.slice(-1000)}` : ''}`;
      if (exitedWhileStarting) throw kernelStartFailed(`kernel ${k.name} failed to start: ${detail}`, e);
      throw kernelStartTimeout(`kernel ${k.name} did not answer within ${timeoutMs} ms: ${detail}`);
    } finally {
      died.abort();
    }
    k.heartbeat ??= new Heartbeat(channelUrl(conn, conn.hb_port), this.o.heartbeat, () => void this.onDeath(k, generation, 'heartbeat lost'));
    k.heartbeat.start();
    void k.provisioner.exited().then((code) => this.onDeath(k, generation, `process exited with code ${code}`));
  }

  /** Stops the current kernel process: shutdown_request, then SIGTERM, then SIGKILL. */
  private async stopProcess(k: ManagedKernel, restart: boolean): Promise<void> {
    k.generation++;
    k.heartbeat?.stop();
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

  private async relaunch(k: ManagedKernel, graceful: boolean): Promise<void> {
    const conn = k.conn;
    if (graceful) {
      await this.stopProcess(k, true);
    } else {
      k.generation++;
      k.heartbeat?.stop();
      k.link?.suspend();
      await k.provisioner.kill(true);
      await k.provisioner.wait(TERMINATE_WAIT_MS);
      await k.provisioner.cleanup(true);
    }
    try {
      await this.launch(k, this.launchTimeout(k.env), conn);
    } catch (e) {
      this.giveUp(k, e instanceof Error ? e.message : String(e));
      throw e;
    }
    if (k.phase === 'restarting') k.phase = 'running';
  }

  private async onDeath(k: ManagedKernel, generation: number, why: string): Promise<void> {
    if (k.generation !== generation || k.phase !== 'running') return;
    if (Date.now() - k.startedAt > STABLE_RUN_MS) k.restarts = 0;
    if (k.restarts >= this.o.restartLimit) {
      this.giveUp(k, `${why}; ${k.restarts} automatic restarts did not keep it alive`);
      return;
    }
    k.restarts++;
    this.o.log.warn({ kernel: k.id, why, attempt: k.restarts }, 'kernel died; restarting it');
    k.phase = 'restarting';
    k.link?.broadcastStatus('restarting');
    const op = this.relaunch(k, false);
    k.pending = op;
    try {
      await op;
      this.o.log.info({ kernel: k.id }, 'kernel restarted');
    } catch {
      // giveUp already told the clients
    } finally {
      k.pending = undefined;
    }
  }

  private giveUp(k: ManagedKernel, why: string): void {
    this.o.log.error({ kernel: k.id, why }, 'kernel is dead');
    k.phase = 'dead';
    k.link?.broadcastStatus('dead');
    for (const c of k.link?.allClients() ?? []) c.close(WsClose.InternalError, 'kernel died');
    void k.provisioner.cleanup(false).catch(() => undefined);
    this.remove(k);
  }
}

