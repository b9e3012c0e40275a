/**
 * The kubernetes provisioner (`provisioner_name: kubernetes`): each kernel is
 * a pod in its tenant's namespace, running the kernelspec's argv in the
 * kernelspec's image (`metadata.kernel_provisioner.config.image`), with the
 * resources of the launch request, listening on fixed ports of its own pod IP
 * (src/provisioner/k8s-objects.ts builds the objects, k8s-status.ts reads
 * them). kgate makes the connection file (the key is the gateway's) and hands
 * it to the pod in a Secret: no callback from the kernel is needed.
 *
 * The pod is created first, held back from the scheduler by a scheduling
 * gate, and its Secret second, owned by the pod (its uid is known only then);
 * then the gate goes. So no Secret ever exists without an owner: when the pod
 * goes, for whatever reason (a cleanup, a gateway that died, an operator's
 * delete), the garbage collector removes the Secret; and no node ever starts
 * the pod before its Secret exists (a kubelet would retry the mount with a
 * backoff). A gateway that dies between the steps leaves a gated pod that
 * never runs, labelled, for adoption or a sweep to find (listKernelPods); the
 * other order could leave a Secret holding a key that nothing would remove.
 *
 * The launch watches the pod: it reports the phases (scheduling, pulling,
 * starting), fails at once with the cluster's own words when the scheduler
 * says the pod fits no node or the image cannot be pulled, and connects once
 * the container runs and the pod has its IP. A kernel in a pod cannot be sent
 * a signal: interrupts are interrupt_request messages, a restart relaunches
 * the pod (which may answer a new IP; the supervisor rebinds the link), a
 * terminate or kill deletes the pod with its grace period or none.
 */
import type { CoreV1Event, V1Pod } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { KgateError, kernelStartFailed, truncate } from '../errors.js';
import type { Policy } from '../kernels/policy.js';
import { clusterOnce, type ClusterOptions, type K8sApis } from './k8s-client.js';
import {
  CONTAINER_NAME,
  KERNEL_SELECTOR,
  LABELS,
  ANNOTATIONS,
  connectionSecret,
  isDnsLabel,
  kernelObjectName,
  kernelPod,
  kubernetesSpecConfig,
  podConnection,
  type KubernetesSpecConfig,
} from './k8s-objects.js';
import { apiStatus, createRefusal, exitOf, phaseOfEvent, readPod } from './k8s-status.js';
import { ensureTenantNamespace } from './k8s-tenant.js';
import { exitsWithin } from './process-alive.js';
import type { ConnectionInfo, KernelExit, LaunchContext, LaunchRequest, Provisioner, ProvisionerCapabilities, ProvisionerFactory, ProvisionerInfo } from './types.js';

export interface KubernetesProvisionerConfig extends ClusterOptions {
  /** A namespace, or a template of one with `{tenant}` (`--k8s-namespace`, default `kgate-{tenant}`). */
  namespace?: string;
  /** kgate may create a tenant's namespace (`--k8s-create-namespaces`). */
  createNamespaces?: boolean;
  /** The image of kernelspecs that name none (`--k8s-kernel-image`). */
  defaultImage?: string | undefined;
  /** The tenant policy: its totals become the namespace's ResourceQuota, its `egress` the NetworkPolicy's. */
  policy?: Policy | undefined;
  /** Make the tenant's NetworkPolicy, ResourceQuota and LimitRange (default true; false: the operator makes them). */
  tenantObjects?: boolean;
  /** The cluster's clients (a test's, or one shared by the gateway); default: made from the options at first use. */
  cluster?: () => Promise<K8sApis>;
}

/** A tenant's objects are brought up to date at most this often, and whenever the policy for them changed. */
const TENANT_REFRESH_MS = 5 * 60_000;
const WATCH_RETRY_MS = 1000;
/** How long a pod of the same name (the kernel's previous one, being deleted) may take to go. */
const OLD_POD_WAIT_MS = 30_000;
/** How long a new namespace's "default" ServiceAccount may take to appear (pods are refused until it does). */
const SERVICE_ACCOUNT_WAIT_MS = 15_000;

const noop = (): void => undefined;
const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((done) => {
    const t = setTimeout(done, ms);
    signal?.addEventListener(
      'abort',
      () => {
        clearTimeout(t);
        done();
      },
      { once: true },
    );
  });

/** The namespace of a tenant's kernels: the template's `{tenant}` only ever becomes a DNS label, never anything else. */
export function namespaceFor(template: string, tenant: string): string {
  if (!template.includes('{tenant}')) return template;
  const ns = template.replace('{tenant}', tenant);
  if (!isDnsLabel(tenant) || !isDnsLabel(ns)) {
    throw kernelStartFailed(
      `tenant ${JSON.stringify(truncate(tenant))} cannot have a namespace of its own (--k8s-namespace ${template}): a namespace name is a DNS label (lower-case letters, digits and '-', at most 63 in all); give such tenants one namespace, or name them so`,
    );
  }
  return ns;
}

/**
 * Every kernel pod kgate made in `namespace` (every namespace when
 * undefined), as any replica reads them to adopt: by label, with the values
 * kgate wrote (the raw tenant, user and kernelspec are in annotations).
 */
export async function listKernelPods(
  api: K8sApis['core'],
  namespace?: string,
): Promise<
  Array<{
    kernelId: string;
    namespace: string;
    pod: string;
    uid: string;
    phase: string;
    ip: string | undefined;
    tenant: string | undefined;
    user: string | undefined;
    kernelspec: string | undefined;
  }>
> {
  const list =
    namespace === undefined ? await api.listPodForAllNamespaces({ labelSelector: KERNEL_SELECTOR }) : await api.listNamespacedPod({ namespace, labelSelector: KERNEL_SELECTOR });
  return list.items.flatMap((p) => {
    const kernelId = p.metadata?.labels?.[LABELS.kernelId];
    const name = p.metadata?.name;
    if (!kernelId || !name || name !== kernelObjectNameOrUndefined(kernelId)) return [];
    const a = p.metadata?.annotations ?? {};
    return [
      {
        kernelId,
        namespace: p.metadata?.namespace ?? namespace ?? '',
        pod: name,
        uid: p.metadata?.uid ?? '',
        phase: p.status?.phase ?? 'Unknown',
        ip: p.status?.podIP,
        tenant: a[ANNOTATIONS.tenant],
        user: a[ANNOTATIONS.user],
        kernelspec: a[ANNOTATIONS.kernelspec],
      },
    ];
  });
}

function kernelObjectNameOrUndefined(kernelId: string): string | undefined {
  try {
    return kernelObjectName(kernelId);
  } catch {
    return undefined;
  }
}

/**
 * One pod followed by its name through the API server's watch (listed again
 * whenever the watch ends), so its status is at hand without a request per
 * look. Only the pod with `uid` counts once it is known: a later pod of the
 * same name is another generation's.
 */
class PodWatch {
  pod: V1Pod | undefined;
  /** The pod is gone from the API server (deleted, or replaced by another of its name). */
  gone = false;
  private stopped = false;
  private abort: AbortController | undefined;
  private readonly listeners = new Set<() => void>();

  constructor(
    private readonly apis: K8sApis,
    private readonly namespace: string,
    private readonly name: string,
    private readonly uid: string,
    private readonly log: Logger | undefined,
  ) {
    void this.loop();
  }

  onChange(f: () => void): () => void {
    this.listeners.add(f);
    return () => this.listeners.delete(f);
  }

  private notify(): void {
    for (const f of [...this.listeners]) f();
  }

  private apply(type: string, pod: V1Pod | undefined): void {
    if (this.stopped) return;
    if (pod?.metadata?.uid !== undefined && pod.metadata.uid !== this.uid) {
      // Another pod of the name: ours is gone.
      if (type !== 'DELETED') this.gone = true;
    } else if (type === 'DELETED' || pod === undefined) {
      this.gone = true;
    } else {
      this.pod = pod;
    }
    this.notify();
  }

  private async loop(): Promise<void> {
    const fieldSelector = `metadata.name=${this.name}`;
    while (!this.stopped && !this.gone) {
      try {
        const list = await this.apis.core.listNamespacedPod({ namespace: this.namespace, fieldSelector });
        this.apply('LIST', list.items[0]);
        if (this.stopped || this.gone) return;
        await new Promise<void>((ended) => {
          this.apis.watch
            .watch(
              `/api/v1/namespaces/${this.namespace}/pods`,
              { fieldSelector, resourceVersion: list.metadata?.resourceVersion, allowWatchBookmarks: true },
              (type: string, obj: V1Pod) => {
                if (type === 'ERROR') {
                  // A resourceVersion too old (410): listed again.
                  this.abort?.abort();
                  ended();
                } else if (type !== 'BOOKMARK') {
                  this.apply(type, obj);
                }
              },
              () => ended(),
            )
            .then(
              (ac) => {
                this.abort = ac;
                if (this.stopped) ac.abort();
              },
              () => ended(),
            );
        });
      } catch (e) {
        this.log?.debug({ status: apiStatus(e) ?? String(e) }, 'kernel pod watch failed; retrying');
      }
      if (!this.stopped && !this.gone) await sleep(WATCH_RETRY_MS);
    }
  }

  stop(): void {
    this.stopped = true;
    this.abort?.abort();
    this.listeners.clear();
  }
}

export class KubernetesProvisioner implements Provisioner {
  readonly name = 'kubernetes';
  readonly capabilities: ProvisionerCapabilities = { interrupt: 'message', restart: 'relaunch' };
  private apis: K8sApis | undefined;
  private namespace: string | undefined;
  private podName: string | undefined;
  private uid: string | undefined;
  private image: string | undefined;
  private memoryLimit: number | undefined;
  private watch: PodWatch | undefined;
  private exitCode: number | undefined;
  private exit: KernelExit | undefined;
  private exitPromise: Promise<number> = Promise.resolve(-1);
  private lastMessage = '';
  /** Resolves exited() when the pod is no longer followed (cleaned up) before its end was seen. */
  private endFollow: ((code: number) => void) | undefined;

  constructor(
    private readonly o: Required<Pick<KubernetesProvisionerConfig, 'namespace' | 'createNamespaces' | 'tenantObjects'>> &
      Pick<KubernetesProvisionerConfig, 'defaultImage' | 'policy'> & { cluster: () => Promise<K8sApis>; tenants: TenantSetup },
    private readonly log?: Logger,
  ) {}

  async launch(req: LaunchRequest, ctx: LaunchContext): Promise<ConnectionInfo> {
    const { signal } = ctx;
    signal.throwIfAborted();
    const config = kubernetesSpecConfig(req.spec.name, req.config, { image: this.o.defaultImage });
    const namespace = namespaceFor(this.o.namespace, req.principal.tenant);
    const apis = await this.o.cluster();
    this.apis = apis;
    this.namespace = namespace;
    this.podName = kernelObjectName(req.kernelId);
    this.image = config.image;
    this.memoryLimit = req.resources.memory;
    this.uid = undefined;
    this.exitCode = undefined;
    this.exit = undefined;
    this.lastMessage = '';
    ctx.onProgress('scheduling');
    try {
      if (this.o.tenantObjects) await this.o.tenants.ensure(apis, req.principal.tenant, namespace, this.o.namespace.includes('{tenant}'));
      signal.throwIfAborted();
      const pod = await this.createPod(apis, kernelPod({ req, namespace, config }), signal);
      this.uid = pod.metadata!.uid!;
      this.follow(apis, namespace, this.podName, this.uid);
      await apis.core.createNamespacedSecret({ namespace, body: connectionSecret(req, namespace, { name: this.podName, uid: this.uid }) }).catch((e: unknown) => {
        throw createRefusal(e, 'Secret') ?? e;
      });
      signal.throwIfAborted();
      // Its Secret is there: the scheduler may place it now.
      await apis.core.patchNamespacedPod({ namespace, name: this.podName, body: [{ op: 'remove', path: '/spec/schedulingGates' }] }).catch((e: unknown) => {
        throw createRefusal(e, 'pod (its scheduling gate)') ?? e;
      });
      const ip = await this.untilRunning(apis, config, ctx);
      const conn = podConnection(req, ip);
      ctx.onProgress('connecting', ip);
      await ctx.connect(conn);
      return conn;
    } catch (e) {
      await this.removeObjects().catch(noop);
      if (signal.aborted) throw signal.reason;
      if (e instanceof KgateError) throw e;
      const why = this.lastMessage ? `; ${this.lastMessage}` : '';
      throw kernelStartFailed(`kernel ${req.spec.name} failed to start as a pod in ${namespace}: ${e instanceof Error ? e.message : String(e)}${why}`, e);
    }
  }

  /** Creates the pod; one of its name still there (the kernel's previous pod, being deleted) is waited for, or removed. */
  private async createPod(apis: K8sApis, body: V1Pod, signal: AbortSignal): Promise<V1Pod> {
    const namespace = body.metadata!.namespace!;
    const name = body.metadata!.name!;
    const saDeadline = Date.now() + SERVICE_ACCOUNT_WAIT_MS;
    for (let attempt = 0; ; attempt++) {
      try {
        return await apis.core.createNamespacedPod({ namespace, body });
      } catch (e) {
        const s = apiStatus(e);
        // A namespace just made has no "default" ServiceAccount until its controller makes one, a moment later.
        if (s?.code === 403 && /error looking up service account/.test(s.message) && Date.now() < saDeadline) {
          await sleep(200, signal);
          signal.throwIfAborted();
          attempt--;
          continue;
        }
        if (s?.code !== 409 || attempt > 0) throw createRefusal(e, 'pod') ?? e;
      }
      // Only a pod of this kernel's (its label says so) is removed for it.
      const old = await apis.core.readNamespacedPod({ namespace, name }).catch(() => undefined);
      if (old && old.metadata?.labels?.[LABELS.kernelId] !== body.metadata!.labels![LABELS.kernelId]) {
        throw kernelStartFailed(`a pod named ${name} that is not this kernel's is in the namespace ${namespace}`);
      }
      if (old) await apis.core.deleteNamespacedPod({ namespace, name, gracePeriodSeconds: 0 }).catch(noop);
      const until = Date.now() + OLD_POD_WAIT_MS;
      while (Date.now() < until && !signal.aborted) {
        const still = await apis.core.readNamespacedPod({ namespace, name }).then(
          () => true,
          (e: unknown) => apiStatus(e)?.code !== 404,
        );
        if (!still) break;
        await sleep(100, signal);
      }
      signal.throwIfAborted();
    }
  }

  /** Follows the pod from now on: its end resolves exited(). */
  private follow(apis: K8sApis, namespace: string, name: string, uid: string): void {
    this.watch?.stop();
    const watch = new PodWatch(apis, namespace, name, uid, this.log);
    this.watch = watch;
    this.exitPromise = new Promise<number>((done) => {
      this.endFollow = done;
      const check = (): void => {
        if (this.watch !== watch) return;
        let ended: { exit: KernelExit; message: string } | undefined;
        if (watch.pod) {
          const v = readPod(watch.pod, { image: this.image ?? '', memoryLimit: this.memoryLimit });
          if (v.kind === 'ended') ended = v;
          else if (v.kind === 'failed') this.lastMessage = v.error.message;
        }
        if (!ended && watch.gone) {
          // Deleted before its container's end was recorded.
          const t = watch.pod?.status?.containerStatuses?.find((c) => c.name === CONTAINER_NAME)?.state?.terminated;
          ended = t ? exitOf(t, this.memoryLimit) : { exit: { code: -1, reason: 'exited' }, message: "the kernel's pod was deleted" };
        }
        if (!ended || this.exitCode !== undefined) return;
        this.exitCode = ended.exit.code;
        this.exit = ended.exit;
        this.lastMessage = ended.message;
        if (ended.exit.reason === 'out_of_memory') this.log?.warn({ pod: name, memoryLimit: this.memoryLimit }, ended.message);
        else this.log?.debug({ pod: name, code: ended.exit.code }, ended.message);
        done(ended.exit.code);
      };
      watch.onChange(check);
    });
  }

  /** Until the pod runs with its IP; a pod that will never run (unschedulable, no image) fails at once, in the cluster's words. */
  private untilRunning(apis: K8sApis, config: KubernetesSpecConfig, ctx: LaunchContext): Promise<string> {
    const watch = this.watch!;
    let last = 'scheduling';
    const events = this.watchEvents(apis, (phase) => {
      // An event's 'pulling' goes before the status's 'starting'; its 'starting' (Pulled, Started) ends the pull.
      if (phase === 'pulling' && last !== 'pulling') {
        last = phase;
        ctx.onProgress('pulling', config.image);
      } else if (phase === 'starting' && last === 'pulling') {
        last = phase;
        ctx.onProgress('starting');
      }
    });
    let off = noop as () => unknown;
    let onAbort = noop;
    return new Promise<string>((resolve, reject) => {
      const check = (): void => {
        if (ctx.signal.aborted) return reject(ctx.signal.reason as Error);
        if (this.exitCode !== undefined) return reject(kernelStartFailed(`the kernel's pod ended while starting: ${this.lastMessage}`));
        if (watch.gone) return reject(kernelStartFailed("the kernel's pod was deleted while starting"));
        if (!watch.pod) return;
        const v = readPod(watch.pod, { image: config.image, memoryLimit: this.memoryLimit });
        if (v.kind === 'running') resolve(v.ip);
        else if (v.kind === 'failed') reject(v.error);
        else if (v.kind === 'ended') reject(kernelStartFailed(`the kernel's pod ended while starting: ${v.message}`));
        else if (v.phase !== last && !(last === 'pulling' && v.phase === 'starting')) {
          // 'starting' after an event's 'pulling' is the status not knowing of the pull yet.
          last = v.phase;
          ctx.onProgress(v.phase, v.detail);
        }
      };
      off = watch.onChange(check);
      onAbort = check;
      ctx.signal.addEventListener('abort', onAbort, { once: true });
      check();
    }).finally(() => {
      off();
      ctx.signal.removeEventListener('abort', onAbort);
      events.abort();
    });
  }

  /** The kubelet's events about the pod while it starts (it says "Pulling" only there); none when kgate may not read events. */
  private watchEvents(apis: K8sApis, onPhase: (phase: 'pulling' | 'starting') => void): AbortController {
    const stop = new AbortController();
    void apis.watch
      .watch(
        `/api/v1/namespaces/${this.namespace}/events`,
        { fieldSelector: `involvedObject.kind=Pod,involvedObject.name=${this.podName}` },
        (type: string, e: CoreV1Event) => {
          if (type !== 'ADDED' && type !== 'MODIFIED') return;
          if (e.involvedObject?.uid !== undefined && e.involvedObject.uid !== this.uid) return;
          const phase = phaseOfEvent(e);
          if (phase) onPhase(phase);
        },
        noop,
      )
      .then((ac) => {
        if (stop.signal.aborted) ac.abort();
        else stop.signal.addEventListener('abort', () => ac.abort(), { once: true });
      }, noop);
    return stop;
  }

  /** Deletes the pod (no grace: it is not used any more) and its Secret (the garbage collector would too); a 404 is fine. */
  private async removeObjects(): Promise<void> {
    const apis = this.apis;
    const namespace = this.namespace;
    const name = this.podName;
    this.watch?.stop();
    this.watch = undefined;
    this.exitCode ??= -1;
    this.endFollow?.(this.exitCode);
    this.endFollow = undefined;
    if (!apis || !namespace || !name) return;
    const gone = (e: unknown): void => {
      if (apiStatus(e)?.code !== 404) throw e;
    };
    const problems: unknown[] = [];
    // Only our generation's pod (its uid as a precondition), never a newer one of the same name.
    await apis.core
      .deleteNamespacedPod({ namespace, name, gracePeriodSeconds: 0, ...(this.uid ? { body: { preconditions: { uid: this.uid } } } : {}) })
      .catch(gone)
      .catch((e: unknown) => (apiStatus(e)?.code === 409 ? undefined : problems.push(e)));
    await apis.core
      .deleteNamespacedSecret({ namespace, name })
      .catch(gone)
      .catch((e: unknown) => problems.push(e));
    if (problems.length > 0) {
      const s = apiStatus(problems[0]);
      this.log?.warn({ pod: name, namespace, status: s ?? String(problems[0]) }, "the kernel's pod or Secret could not be deleted");
      throw problems[0];
    }
  }

  async poll(): Promise<number | undefined> {
    if (this.uid === undefined) return this.exitCode ?? -1;
    return this.exitCode;
  }

  exited(): Promise<number> {
    return this.exitPromise;
  }

  wait(timeoutMs: number): Promise<boolean> {
    return exitsWithin(this.exitPromise, timeoutMs);
  }

  /**
   * A pod's process cannot be signalled from outside: SIGTERM deletes the pod
   * with its grace period (the kubelet sends SIGTERM, then SIGKILL), SIGKILL
   * deletes it at once. SIGINT is never asked for (interrupts are messages).
   */
  async sendSignal(sig: NodeJS.Signals): Promise<void> {
    const apis = this.apis;
    if (!apis || !this.namespace || !this.podName || this.uid === undefined || this.exitCode !== undefined) return;
    if (sig !== 'SIGTERM' && sig !== 'SIGKILL') {
      this.log?.debug({ signal: sig }, 'a kernel pod cannot be sent a signal; ignored');
      return;
    }
    await apis.core
      .deleteNamespacedPod({
        namespace: this.namespace,
        name: this.podName,
        ...(sig === 'SIGKILL' ? { gracePeriodSeconds: 0 } : {}),
        body: { preconditions: { uid: this.uid } },
      })
      .catch((e: unknown) => {
        const s = apiStatus(e);
        if (s?.code !== 404 && s?.code !== 409) this.log?.warn({ pod: this.podName, status: s ?? String(e) }, "the kernel's pod could not be deleted");
      });
  }

  terminate(): Promise<void> {
    return this.sendSignal('SIGTERM');
  }

  kill(): Promise<void> {
    return this.sendSignal('SIGKILL');
  }

  /** The pod goes (and its Secret with it, explicitly too); a relaunch makes new ones. */
  async cleanup(): Promise<void> {
    await this.removeObjects();
    this.uid = undefined;
  }

  diagnostics(): string {
    return this.lastMessage;
  }

  lastExit(): KernelExit | undefined {
    return this.exit;
  }

  getInfo(): ProvisionerInfo {
    return {
      provisioner: this.name,
      namespace: this.namespace ?? null,
      pod: this.podName ?? null,
      uid: this.uid ?? null,
      image: this.image ?? null,
      memoryLimit: this.memoryLimit ?? null,
    };
  }

  /**
   * Adoption, by another replica or a restarted gateway: the pod by its name
   * in its namespace, if it is still this kernel's (its label). A running one
   * is followed; one that ended is left for cleanup(), which removes it.
   */
  async loadInfo(info: ProvisionerInfo): Promise<void> {
    const namespace = typeof info['namespace'] === 'string' && isDnsLabel(info['namespace']) ? info['namespace'] : undefined;
    const pod = typeof info['pod'] === 'string' && /^kgate-kernel-[0-9a-f-]{36}$/.test(info['pod']) ? info['pod'] : undefined;
    this.image = typeof info['image'] === 'string' ? info['image'] : undefined;
    this.memoryLimit = typeof info['memoryLimit'] === 'number' ? info['memoryLimit'] : undefined;
    this.namespace = namespace;
    this.podName = pod;
    this.uid = undefined;
    this.exitCode = -1;
    this.exitPromise = Promise.resolve(-1);
    if (!namespace || !pod) return;
    const apis = await this.o.cluster();
    this.apis = apis;
    const found = await apis.core.readNamespacedPod({ namespace, name: pod }).catch((e: unknown) => {
      if (apiStatus(e)?.code === 404) return undefined;
      throw e;
    });
    if (!found?.metadata?.uid || found.metadata.labels?.[LABELS.kernelId] !== pod.slice('kgate-kernel-'.length)) return;
    this.uid = found.metadata.uid;
    const v = readPod(found, { image: this.image ?? '', memoryLimit: this.memoryLimit });
    if (v.kind === 'ended') {
      this.exit = v.exit;
      this.exitCode = v.exit.code;
      this.lastMessage = v.message;
      this.exitPromise = Promise.resolve(v.exit.code);
      return;
    }
    this.exitCode = undefined;
    this.follow(apis, namespace, pod, this.uid);
  }
}

/** Each tenant namespace's objects, made once per policy and refreshed now and then, shared by every kernel of a gateway. */
class TenantSetup {
  private readonly done = new Map<string, { key: string; at: number; p: Promise<void> }>();

  constructor(
    private readonly o: { createNamespaces: boolean; policy: Policy | undefined },
    private readonly log: Logger | undefined,
  ) {}

  ensure(apis: K8sApis, tenant: string, namespace: string, perTenant: boolean): Promise<void> {
    const found = this.o.policy?.limitsFor(tenant);
    const limits = found?.limits;
    const egress = limits?.egress === true;
    // In a namespace shared by every tenant, no one tenant's totals or egress apply.
    const key = JSON.stringify([perTenant ? tenant : '', perTenant ? [limits?.maxKernels, [...(limits?.resources ?? [])], [...(limits?.maxPerKernel ?? [])], egress] : []]);
    const seen = this.done.get(namespace);
    if (seen && seen.key === key && Date.now() - seen.at < TENANT_REFRESH_MS) return seen.p;
    const p = ensureTenantNamespace(apis, tenant, {
      namespace,
      create: this.o.createNamespaces,
      perTenant,
      limits: perTenant ? limits : undefined,
      egress: perTenant && egress,
    }).then(
      () => this.log?.debug({ namespace }, "the tenant's namespace objects are in place"),
      (e: unknown) => {
        this.done.delete(namespace);
        throw e;
      },
    );
    this.done.set(namespace, { key, at: Date.now(), p });
    return p;
  }
}

export function kubernetesProvisionerFactory(config: KubernetesProvisionerConfig = {}): ProvisionerFactory {
  const cluster = config.cluster ?? clusterOnce({ kubeconfig: config.kubeconfig });
  const createNamespaces = config.createNamespaces ?? false;
  let tenants: TenantSetup | undefined;
  return {
    name: 'kubernetes',
    create: (_spec, { log }) => {
      tenants ??= new TenantSetup({ createNamespaces, policy: config.policy }, log);
      return new KubernetesProvisioner(
        {
          namespace: config.namespace ?? 'kgate-{tenant}',
          createNamespaces,
          tenantObjects: config.tenantObjects ?? true,
          defaultImage: config.defaultImage,
          policy: config.policy,
          cluster,
          tenants,
        },
        log,
      );
    },
  };
}
