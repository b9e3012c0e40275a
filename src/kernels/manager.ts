/**
 * The kernel manager: a thin facade over the control plane's parts, with the
 * API the routes, sessions, the culler and the channels endpoint call. Each
 * part has one concern:
 *
 *   registry.ts     the kernels by id, and their removal
 *   supervisor.ts   one kernel's life: launch, watch, restart, give up, shut down
 *   phases.ts       the states of a kernel and the legal moves between them
 *   admission.ts    whether a start may go ahead (limits; quotas later)
 *   access.ts       which kernels a principal may see and act on (tenancy)
 *   replication.ts  records and leases in a KernelStore: following, adoption, takeover
 *   pool.ts         warm pools, on supervisors only
 *
 * Control happens here; the message path (the link and its clients) never waits on it.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { KernelLink, type KernelLinkOptions } from '../bridge/kernel-link.js';
import { kernelNotFound, kernelspecNotFound } from '../errors.js';
import { actingUser, operatorPrincipal, type Principal } from '../principal.js';
import { FreePorts } from '../provisioner/ports.js';
import type { ConnectionInfo, KernelSpec, PortSource, Provisioner, ResourceRequest } from '../provisioner/types.js';
import { canSee } from './access.js';
import { KernelLimits, type Admission, type AdmissionRequest } from './admission.js';
import { sanitizeEnv, type EnvPolicy } from './env.js';
import type { KernelSpecStore } from './kernelspecs.js';
import { WarmPools } from './pool.js';
import type { Policy } from './policy.js';
import { KernelRegistry } from './registry.js';
import { kernelspecResources, requestedResources } from './resources.js';
import { Replication } from './replication.js';
import type { KernelStore } from './store.js';
import { KernelSupervisor, type SupervisorHost, type SupervisorInit, type SupervisorOptions } from './supervisor.js';
import { workingDir } from './working-dir.js';

export type { KernelModel } from './supervisor.js';
export type { KernelPhase } from './phases.js';
export { restartBackoffMs } from './supervisor.js';
export { ADOPTION_NOTICE } from './replication.js';
export { canSee } from './access.js';
/** The kernel as the routes see it: its supervisor. */
export type ManagedKernel = KernelSupervisor;

export interface KernelManagerOptions {
  specs: KernelSpecStore;
  /** Picks and creates the provisioner a kernelspec asks for (a test passes a fake one here). */
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
  /** The tenant policy (--policy), held with the limits above. */
  policy?: (Policy & { reload?(): Promise<void> }) | undefined;
  /** Replaces the limits and the policy above with another admission (a test's). */
  admission?: Admission | undefined;
  /** Where each kernel is recorded for adoption and replicas; none: not recorded. */
  store?: KernelStore | undefined;
  /** The gateway's free ports for local kernels (one per gateway). */
  ports?: PortSource | undefined;
  /** Makes a kernel's link; a test may wrap it. */
  createLink?: ((conn: ConnectionInfo, log: Logger, kernelId: string) => KernelLink) | undefined;
  /** For tests: the run after which the restart count resets, and the wait before restart attempt n. */
  stableRunMs?: number | undefined;
  restartBackoff?: ((attempt: number) => number) | undefined;
  log: Logger;
}

export interface StartRequest {
  name?: string | undefined;
  env?: Record<string, unknown> | undefined;
  path?: string | undefined;
  /** Who asks; the operator when the caller has none. */
  principal?: Principal | undefined;
  /** The resources asked for, in place of those the kernelspec and KERNEL_CPUS, KERNEL_MEMORY, KERNEL_GPUS give. */
  resources?: ResourceRequest | undefined;
}

/** The user a start request names in KERNEL_USERNAME (a front server's): identity only for a caller allowed to impersonate. */
function requestedUser(env: Record<string, unknown> | undefined): string | undefined {
  const u = env?.['KERNEL_USERNAME'];
  return typeof u === 'string' ? u : undefined;
}

const OPERATOR = operatorPrincipal();

export class KernelManager {
  readonly registry = new KernelRegistry();
  readonly pools: WarmPools;
  private readonly admission: Admission;
  private readonly replication: Replication | undefined;
  private readonly supervision: SupervisorOptions;
  private readonly host: SupervisorHost;

  constructor(private readonly o: KernelManagerOptions) {
    this.admission = o.admission ?? new KernelLimits({ maxKernels: o.maxKernels, maxKernelsPerUser: o.maxKernelsPerUser, policy: o.policy });
    this.supervision = {
      launchTimeoutMs: o.launchTimeoutMs,
      shutdownWaitMs: o.shutdownWaitMs,
      restartLimit: o.restartLimit,
      stableRunMs: o.stableRunMs,
      restartBackoff: o.restartBackoff,
      heartbeat: o.heartbeat,
      // The link names its kernel in the events it publishes (client attach, drops).
      createLink: o.createLink ?? ((conn, log, kernelId) => new KernelLink(conn, { ...o.link, log, kernelId })),
      ports: o.ports ?? new FreePorts(),
      endWithGateway: !o.store,
      log: o.log,
    };
    this.pools = new WarmPools((name) => this.startPooled(name), o.log);
    this.replication = o.store
      ? new Replication({
          store: o.store,
          registry: this.registry,
          // Read at call time, so what the options hold now is what launches.
          provisionerFor: (spec) => this.o.provisionerFor(spec),
          supervise: (init) => this.supervise(init),
          pooled: () => this.pools.kernels(),
          log: o.log,
        })
      : undefined;
    const replication = this.replication;
    this.host = {
      persist: async (k) => replication?.persist(k),
      unrecord: async (k) => replication?.unrecord(k),
      stillRecorded: async (k) => (replication ? replication.stillRecorded(k) : true),
      removed: (k) => {
        this.registry.remove(k);
        if (k.pooled) this.pools.lost(k);
      },
      restartFollowed: async (k) => replication?.restartFollowed(k),
    };
  }

  private supervise(init: SupervisorInit): KernelSupervisor {
    return new KernelSupervisor(init, this.supervision, this.host);
  }

  onRemoved(listener: (id: string) => void): void {
    this.registry.onRemoved(listener);
  }

  /** This gateway's kernels (its own and those it follows), whoever they belong to. */
  list(): KernelSupervisor[] {
    return this.registry.list();
  }

  get(id: string): KernelSupervisor {
    return this.registry.get(id);
  }

  has(id: string): boolean {
    return this.registry.has(id);
  }

  /**
   * The kernel with this id that `principal` may see: one of this gateway's,
   * or one another gateway process on the same state dir runs, followed from
   * now on.
   */
  async find(id: string, principal: Principal = OPERATOR): Promise<KernelSupervisor> {
    const k = this.registry.peek(id) ?? (await this.replication?.follow(id));
    if (!k || !canSee(principal, k)) throw kernelNotFound(id);
    return k;
  }

  /** Every kernel `principal` may see, those of other gateway processes on the same state dir included. */
  async listShared(principal: Principal = OPERATOR): Promise<KernelSupervisor[]> {
    await this.replication?.followAll();
    return this.list().filter((k) => canSee(principal, k));
  }

  async start(req: StartRequest): Promise<KernelSupervisor> {
    const principal = req.principal ?? OPERATOR;
    const trace = this.o.log.isLevelEnabled('debug')
      ? (what: string): void => this.o.log.debug({ at: performance.timeOrigin + performance.now() }, `kernel start: ${what}`)
      : undefined;
    trace?.('asked');
    // Who the kernel is for: the authenticated user, or for a caller that may
    // impersonate (a front server) the KERNEL_USERNAME it names.
    const owner = actingUser(principal, requestedUser(req.env));
    await this.o.specs.refresh();
    const name = req.name ?? this.defaultKernelspec(principal);
    const spec = this.o.specs.get(name);
    if (!spec) throw kernelspecNotFound(name);
    const resources = req.resources ?? requestedResources(spec, req.env);
    const asked: AdmissionRequest = { principal, user: owner, kernelspec: name, resources };
    // Checked and a slot taken in one synchronous step, so concurrent requests cannot
    // all pass the check: past a limit they fail at once, before anything is launched.
    const release = this.admission.admit(asked, this.registry.held());
    let unreserve: (() => Promise<void>) | undefined;
    // The kernel's id, known before it is launched so the cluster-wide reservation and the record name the same kernel.
    const id = randomUUID();
    try {
      // Replicas on one store: the same check over every gateway's kernels, under the store's lock.
      unreserve = await this.o.store?.reserve?.({ id, owner, tenant: principal.tenant, resources }, (all) => this.admission.check(asked, all), 4 * this.o.launchTimeoutMs + 30_000);
      const env = sanitizeEnv(req.env, this.o.envPolicy);
      // The kernel's KERNEL_USERNAME is who it is for, whatever the request said: a
      // name from a caller that may not impersonate is not identity.
      if (owner !== undefined) env['KERNEL_USERNAME'] = owner;
      else delete env['KERNEL_USERNAME'];
      const pooled = req.resources === undefined ? this.pools.take(name, env) : undefined;
      if (pooled) {
        pooled.handOut(owner, principal.tenant);
        this.registry.add(pooled);
        release();
        await this.replication?.persist(pooled);
        this.o.log.info({ kernel: pooled.id, name, owner }, 'kernel handed out from the warm pool');
        return pooled;
      }
      if (req.path && !env['JPY_SESSION_NAME']) env['JPY_SESSION_NAME'] = req.path;
      const cwd = await workingDir(env, this.o.rootDir);
      const k = this.supervise({ id, spec, provisioner: this.o.provisionerFor(spec), env, owner, tenant: principal.tenant, cwd, resources });
      this.registry.add(k);
      release();
      trace?.('launching');
      await k.start(k.launchTimeout());
      trace?.('ready');
      this.o.log.info({ kernel: k.id, name, owner, ms: Date.now() - k.createdAt }, 'kernel started');
      return k;
    } finally {
      release();
      // After the kernel's record is written (it counts from then on), or after its start failed.
      await unreserve?.().catch(() => undefined);
    }
  }

  /** Starts a kernel for a warm pool: no owner, no env, the root dir. */
  private async startPooled(name: string): Promise<KernelSupervisor> {
    await this.o.specs.refresh();
    const spec = this.o.specs.get(name);
    if (!spec) throw kernelspecNotFound(name);
    const k = this.supervise({
      id: randomUUID(),
      spec,
      provisioner: this.o.provisionerFor(spec),
      env: {},
      owner: undefined,
      tenant: OPERATOR.tenant,
      cwd: this.o.rootDir,
      resources: kernelspecResources(spec),
      pooled: true,
    });
    await k.start(this.o.launchTimeoutMs);
    return k;
  }

  async interrupt(id: string, principal: Principal = OPERATOR): Promise<void> {
    await (await this.find(id, principal)).interrupt();
  }

  /** Restarts the kernel on the same connection where its provisioner can, so clients keep their sockets. */
  async restart(id: string, principal: Principal = OPERATOR): Promise<KernelSupervisor> {
    const k = await this.find(id, principal);
    await k.restart();
    return k;
  }

  /**
   * Shuts the kernel down. One that is still starting or restarting has its
   * launch aborted first (the start answers KG_KERNEL_START_CANCELLED).
   */
  async shutdown(id: string, principal: Principal = OPERATOR, why = 'kernel shut down'): Promise<void> {
    await (await this.find(id, principal)).shutdown(why);
  }

  /** Whether the principal's tenant may start kernelspec `name` (GET /api/kernelspecs lists only those). */
  kernelspecAllowed(principal: Principal, name: string): boolean {
    return this.admission.kernelspecAllowed?.(principal.tenant, name) ?? true;
  }

  /** The kernelspec a start that names none gets: the gateway's default, or else the first the tenant may start. */
  defaultKernelspec(principal: Principal): string {
    const d = this.o.specs.defaultName;
    if (this.kernelspecAllowed(principal, d)) return d;
    return this.o.specs.names().find((n) => this.kernelspecAllowed(principal, n)) ?? d;
  }

  /** Reads the tenant policy file again (SIGHUP); a bad file is refused and the policy in force stays. */
  async reloadPolicy(): Promise<void> {
    await this.admission.reload?.();
  }

  /** Adopts the kernels recorded by a gateway that is gone (see Replication.adopt). */
  async adopt(nudgeMs?: number): Promise<{ adopted: string[]; cleaned: string[] }> {
    return this.replication ? this.replication.adopt(nudgeMs) : { adopted: [], cleaned: [] };
  }

  async shutdownAll(): Promise<void> {
    this.replication?.stop();
    // Kernels another gateway process supervises are let go, not stopped.
    for (const k of this.list()) if (k.follower) k.forget('kgate is shutting down');
    await Promise.allSettled([...this.list().map((k) => k.shutdown()), this.pools.close()]);
  }

  /**
   * Lets go of every kernel without stopping it (`--keep-kernels`): their
   * records stay in the state dir for the next gateway to adopt.
   */
  async releaseAll(): Promise<void> {
    this.replication?.stop();
    // A start not completed has no record to adopt: it is cancelled, not left running unrecorded.
    await Promise.allSettled(
      this.list()
        .filter((k) => k.phase === 'starting')
        .map((k) => k.shutdown()),
    );
    await this.replication?.releaseAll();
    this.registry.clear();
    await this.pools.close();
  }

  /** Synchronous last resort when the process is exiting: kill every kernel still running. */
  killAllNow(): void {
    for (const k of this.list()) k.provisioner.killNow?.();
    this.pools.killAllNow();
  }
}
