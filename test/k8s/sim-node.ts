/**
 * A simulated Kubernetes node, for tests against a real API server and
 * scheduler where no kubelet or container runtime runs. It registers a Node
 * with the capacity it is given (cpu, memory, pods, nvidia.com/gpu,
 * nvidia.com/mig-*), keeps it Ready (a Lease in kube-node-lease and the Ready
 * condition's heartbeat), watches the pods the scheduler binds to it and
 * really runs each one's first container as a host process: in its own
 * network namespace with the pod's IP (test/k8s/netns.ts), with its Secret,
 * ConfigMap and emptyDir volumes mounted at their mountPaths in a private mount
 * namespace, in a cgroup with its memory and CPU limits, and writes pod status
 * (IP, conditions, container states, OOMKilled, exit codes) back through the
 * status subresource, as a kubelet does.
 *
 * Images are not pulled: an image is a name for a mapping of commands to host
 * programs (`localhost/kgate-kernel-python3:bookworm` runs `python3` as the
 * host's Debian /usr/bin/python3). An image not in the map, or whose tag starts
 * with `missing`, fails as a registry would: ErrImagePull, then ImagePullBackOff.
 *
 * Usage: tsx test/k8s/sim-node.ts --kubeconfig K --name N
 *          --capacity cpu=4,memory=8Gi,nvidia.com/mig-3g.20gb=1 --pod-cidr 10.245.1.0/24
 *          [--labels pool=gpu,...] [--taints nvidia.com/gpu=present:NoSchedule,...]
 * Needs root. SIGINT/SIGTERM stop it and remove everything it made.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chownSync, mkdirSync, writeFileSync } from 'node:fs';
import { constants, hostname } from 'node:os';
import { dirname, join, normalize } from 'node:path';
import { parseArgs } from 'node:util';
import * as k8s from '@kubernetes/client-node';
import { addProcess, createCgroup, oomKills, removeCgroup, type KernelCgroup } from '../../src/provisioner/cgroups.js';
import { NodeNetwork, type PodMount, type PodSandbox } from './netns.js';

/** Image → (command name → host program). A command not in the map runs as it is given (an absolute path, or found on PATH). */
export type ImageMap = Record<string, Record<string, string>>;

export const DEFAULT_IMAGES: ImageMap = {
  'localhost/kgate-kernel-python3:bookworm': { python3: '/usr/bin/python3', python: '/usr/bin/python3' },
};

export interface SimNodeOptions {
  kubeconfig: string;
  name: string;
  /** Quantities as Kubernetes writes them: { cpu: '4', memory: '8Gi', 'nvidia.com/mig-3g.20gb': '1' }; `pods` defaults to 110. */
  capacity: Record<string, string>;
  podCidr: string;
  labels?: Record<string, string>;
  taints?: k8s.V1Taint[];
  images?: ImageMap;
  /** How often the Lease is renewed and the Ready condition's heartbeat written. */
  heartbeatSeconds?: number;
  /** The longest a deleted pod's process gets between SIGTERM and SIGKILL, whatever its grace period says. */
  maxGraceSeconds?: number;
  /** Where the agent's own notes go (container output stays in logs()). */
  log?: (line: string) => void;
}

const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const LOG_TAIL_BYTES = 64 * 1024;
const TERMINATION_MESSAGE_BYTES = 4096;
const PULL_BACKOFF_DELAY_MS = 1000;
const STATUS_RETRIES = 8;

const BINARY_SUFFIXES: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60 };
const DECIMAL_SUFFIXES: Record<string, number> = { n: 1e-9, u: 1e-6, m: 1e-3, '': 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18 };

/** A Kubernetes quantity ("64Mi", "500m", "1.5", "2e9") as a number of base units. */
export function parseQuantity(q: string): number {
  const m = /^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$/.exec(q.trim());
  const factor = m ? (BINARY_SUFFIXES[m[2]!] ?? DECIMAL_SUFFIXES[m[2]!]) : undefined;
  if (!m || factor === undefined || Number.isNaN(Number(m[1]))) throw new Error(`not a Kubernetes quantity: ${q}`);
  return Number(m[1]) * factor;
}

/** Whether the simulated registry has the image: named in the map, and not tagged `missing*` (the way tests ask for a pull failure). */
function imageKnown(images: ImageMap, image: string): boolean {
  const tag = image.includes('@') ? '' : (image.split('/').pop()!.split(':')[1] ?? '');
  return !tag.startsWith('missing') && Object.hasOwn(images, image);
}

interface Termination {
  exitCode: number;
  signal?: string | undefined;
  reason: 'Completed' | 'Error' | 'OOMKilled';
  startedAt: Date;
  finishedAt: Date;
  message?: string | undefined;
}

/** One pod this node runs, from the moment it is seen until its sandbox is gone. */
interface PodRun {
  key: string;
  uid: string;
  namespace: string;
  name: string;
  /** Serialises this pod's work (start, status writes, termination). */
  chain: Promise<void>;
  deleting: boolean;
  sandbox?: PodSandbox | undefined;
  cgroup?: KernelCgroup | undefined;
  child?: ChildProcess | undefined;
  exited?: Promise<Termination> | undefined;
  logs: Buffer[];
  logBytes: number;
  startedAt?: Date | undefined;
  containerId: string;
  /** Set once the pod's whole life on this node is over (sandbox removed). */
  done: boolean;
}

function podKey(pod: k8s.V1Pod): string {
  return `${pod.metadata?.namespace ?? ''}/${pod.metadata?.name ?? ''}`;
}

function isConflict(e: unknown): boolean {
  return e instanceof k8s.ApiException && e.code === 409;
}

function isNotFound(e: unknown): boolean {
  return e instanceof k8s.ApiException && e.code === 404;
}

function errorText(e: unknown): string {
  if (e instanceof k8s.ApiException) return `HTTP ${e.code}: ${typeof e.body === 'string' ? e.body : JSON.stringify(e.body)}`;
  return e instanceof Error ? e.message : String(e);
}

/** `$(VAR)` in command and args, as the kubelet expands it (`$$(VAR)` stays literal); an undefined name is left as it is. */
export function expandVars(text: string, env: Record<string, string>): string {
  return text.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)/g, (all, name: string | undefined) => {
    if (name === undefined) return '$';
    return Object.hasOwn(env, name) ? env[name]! : all;
  });
}

export class SimNode {
  readonly name: string;
  readonly network: NodeNetwork;
  private readonly opts: SimNodeOptions;
  private readonly images: ImageMap;
  private readonly core: k8s.CoreV1Api;
  private readonly coordination: k8s.CoordinationV1Api;
  private readonly kc: k8s.KubeConfig;
  private readonly pods = new Map<string, PodRun>();
  private watch?: k8s.ListWatch<k8s.V1Pod> | undefined;
  private heartbeat?: NodeJS.Timeout | undefined;
  private stopped = false;
  private readonly log: (line: string) => void;

  constructor(opts: SimNodeOptions) {
    this.opts = opts;
    this.name = opts.name;
    this.images = opts.images ?? DEFAULT_IMAGES;
    this.kc = new k8s.KubeConfig();
    this.kc.loadFromFile(opts.kubeconfig);
    this.core = this.kc.makeApiClient(k8s.CoreV1Api);
    this.coordination = this.kc.makeApiClient(k8s.CoordinationV1Api);
    this.network = new NodeNetwork(opts.name, opts.podCidr);
    this.log = opts.log ?? (() => {});
  }

  /** The address the node reports (InternalIP, and every pod's hostIP): its bridge's, the pods' gateway. */
  get address(): string {
    return this.network.gateway;
  }

  async start(): Promise<void> {
    await this.network.up();
    await this.register();
    await this.renewLease();
    const every = (this.opts.heartbeatSeconds ?? 10) * 1000;
    this.heartbeat = setInterval(() => void this.beat(), every);
    const fieldSelector = `spec.nodeName=${this.name}`;
    this.watch = new k8s.ListWatch<k8s.V1Pod>('/api/v1/pods', new k8s.Watch(this.kc), () => this.core.listPodForAllNamespaces({ fieldSelector }), false, undefined, fieldSelector);
    this.watch.on('add', (p) => this.onPod(p));
    this.watch.on('update', (p) => this.onPod(p));
    this.watch.on('delete', (p) => this.onPodGone(p));
    this.watch.on('error', (e) => {
      if (this.stopped) return;
      this.log(`pod watch ended (${errorText(e)}); restarting`);
      setTimeout(() => void this.watch?.start().catch(() => {}), 1000);
    });
    await this.watch.start();
  }

  /** The tail of a pod's container output (stdout and stderr interleaved). */
  logs(namespace: string, name: string): string {
    const run = this.pods.get(`${namespace}/${name}`);
    return run ? Buffer.concat(run.logs).toString('utf8') : '';
  }

  /** The PIDs of processes the node is running for its pods. */
  pids(): number[] {
    return [...this.pods.values()].flatMap((r) => (r.child?.pid !== undefined && r.child.exitCode === null && r.child.signalCode === null ? [r.child.pid] : []));
  }

  // --- the Node object and its heartbeats ---

  private nodeStatus(): k8s.V1NodeStatus {
    const capacity: Record<string, string> = { pods: '110', ...this.opts.capacity };
    const now = new Date();
    return {
      capacity,
      allocatable: { ...capacity },
      addresses: [
        { type: 'InternalIP', address: this.address },
        { type: 'Hostname', address: this.name },
      ],
      conditions: [
        { type: 'Ready', status: 'True', reason: 'KubeletReady', message: 'simulated node is posting ready status', lastHeartbeatTime: now, lastTransitionTime: now },
        ...(['MemoryPressure', 'DiskPressure', 'PIDPressure'] as const).map((type) => ({
          type,
          status: 'False',
          reason: `KubeletHasNo${type}`,
          message: `simulated node has no ${type}`,
          lastHeartbeatTime: now,
          lastTransitionTime: now,
        })),
      ],
      nodeInfo: {
        architecture: process.arch === 'x64' ? 'amd64' : process.arch,
        bootID: '',
        containerRuntimeVersion: 'kgsim://0.1',
        kernelVersion: '',
        kubeProxyVersion: '',
        kubeletVersion: 'v0.0.0-kgsim',
        machineID: '',
        operatingSystem: 'linux',
        osImage: `simulated node on ${hostname()}`,
        systemUUID: '',
      },
    };
  }

  private async register(): Promise<void> {
    const node: k8s.V1Node = {
      apiVersion: 'v1',
      kind: 'Node',
      metadata: {
        name: this.name,
        labels: {
          'kubernetes.io/hostname': this.name,
          'kubernetes.io/os': 'linux',
          'kubernetes.io/arch': process.arch === 'x64' ? 'amd64' : process.arch,
          ...this.opts.labels,
        },
      },
      spec: { podCIDR: this.opts.podCidr, podCIDRs: [this.opts.podCidr], taints: this.opts.taints ?? [] },
      status: this.nodeStatus(),
    };
    try {
      await this.core.createNode({ body: node });
    } catch (e) {
      if (!isConflict(e)) throw e;
      // A Node of this name is left from an earlier agent: take it over with this one's spec.
      await this.core.deleteNode({ name: this.name, gracePeriodSeconds: 0 });
      await this.core.createNode({ body: node });
    }
    // The create may drop status fields on some versions; write it through the subresource too.
    await this.writeNodeStatus();
  }

  private async writeNodeStatus(): Promise<void> {
    for (let i = 0; i < STATUS_RETRIES; i++) {
      const node = await this.core.readNode({ name: this.name });
      const status = this.nodeStatus();
      // Keep the transition times the node already has, so a heartbeat is not a transition.
      for (const c of status.conditions ?? []) {
        const old = node.status?.conditions?.find((o) => o.type === c.type && o.status === c.status);
        if (old?.lastTransitionTime) c.lastTransitionTime = old.lastTransitionTime;
      }
      node.status = { ...node.status, ...status };
      try {
        await this.core.replaceNodeStatus({ name: this.name, body: node });
        return;
      } catch (e) {
        if (!isConflict(e)) throw e;
      }
    }
  }

  private async renewLease(): Promise<void> {
    const namespace = 'kube-node-lease';
    const spec: k8s.V1LeaseSpec = { holderIdentity: this.name, leaseDurationSeconds: 40, renewTime: new k8s.V1MicroTime() };
    try {
      const lease = await this.coordination.readNamespacedLease({ name: this.name, namespace });
      lease.spec = { ...lease.spec, ...spec };
      await this.coordination.replaceNamespacedLease({ name: this.name, namespace, body: lease });
    } catch (e) {
      if (!isNotFound(e)) throw e;
      const node = await this.core.readNode({ name: this.name });
      await this.coordination.createNamespacedLease({
        namespace,
        body: {
          metadata: {
            name: this.name,
            namespace,
            // Owned by the Node, as the kubelet's lease is, so it goes when the Node does.
            ownerReferences: [{ apiVersion: 'v1', kind: 'Node', name: this.name, uid: node.metadata!.uid! }],
          },
          spec,
        },
      });
    }
  }

  private async beat(): Promise<void> {
    if (this.stopped) return;
    try {
      await this.renewLease();
      await this.writeNodeStatus();
    } catch (e) {
      this.log(`heartbeat failed: ${errorText(e)}`);
    }
  }

  // --- pods ---

  private onPod(pod: k8s.V1Pod): void {
    if (this.stopped || pod.spec?.nodeName !== this.name) return;
    const key = podKey(pod);
    let run = this.pods.get(key);
    if (run && run.uid !== pod.metadata?.uid) run = undefined; // a new pod of the same name; the old one's DELETE will clean up
    if (!run) {
      if (this.pods.has(key)) return;
      const phase = pod.status?.phase;
      if (phase === 'Succeeded' || phase === 'Failed') {
        if (pod.metadata?.deletionTimestamp) void this.finalDelete(pod);
        return;
      }
      run = {
        key,
        uid: pod.metadata!.uid!,
        namespace: pod.metadata!.namespace!,
        name: pod.metadata!.name!,
        chain: Promise.resolve(),
        deleting: false,
        logs: [],
        logBytes: 0,
        containerId: `kgsim://${pod.metadata!.uid!}`,
        done: false,
      };
      this.pods.set(key, run);
      const r = run;
      this.enqueue(r, () => this.startPod(r, pod));
    }
    if (pod.metadata?.deletionTimestamp && !run.deleting) {
      run.deleting = true;
      const grace = Math.min(pod.metadata.deletionGracePeriodSeconds ?? pod.spec?.terminationGracePeriodSeconds ?? 30, this.opts.maxGraceSeconds ?? 10);
      const r = run;
      // Not queued behind the start: a pod deleted while it starts must not wait for the start to finish.
      void this.terminate(r, grace).then(() => this.finalDelete(pod));
    }
  }

  private onPodGone(pod: k8s.V1Pod): void {
    const run = this.pods.get(podKey(pod));
    if (!run || run.uid !== pod.metadata?.uid) return;
    run.deleting = true;
    void this.terminate(run, 0);
  }

  private enqueue(run: PodRun, work: () => Promise<void>): void {
    run.chain = run.chain.then(work).catch((e: unknown) => this.log(`pod ${run.key}: ${errorText(e)}`));
  }

  /** Reads the pod, lets `edit` change its status, and writes it through the status subresource (retried on conflicts). */
  private async writeStatus(run: PodRun, edit: (status: k8s.V1PodStatus, pod: k8s.V1Pod) => void): Promise<void> {
    for (let i = 0; i < STATUS_RETRIES; i++) {
      let pod: k8s.V1Pod;
      try {
        pod = await this.core.readNamespacedPodStatus({ name: run.name, namespace: run.namespace });
      } catch (e) {
        if (isNotFound(e)) return;
        throw e;
      }
      if (pod.metadata?.uid !== run.uid) return;
      const status = pod.status ?? {};
      edit(status, pod);
      pod.status = status;
      try {
        await this.core.replaceNamespacedPodStatus({ name: run.name, namespace: run.namespace, body: pod });
        return;
      } catch (e) {
        if (isNotFound(e)) return;
        if (!isConflict(e)) throw e;
      }
    }
    throw new Error(`pod ${run.key}: status kept conflicting`);
  }

  private containerStatus(pod: k8s.V1Pod, run: PodRun, state: k8s.V1ContainerState, ready: boolean): k8s.V1ContainerStatus[] {
    const containers = pod.spec?.containers ?? [];
    return containers.map((c, i) =>
      i === 0
        ? {
            name: c.name,
            image: c.image ?? '',
            imageID: '',
            ready,
            started: state.running !== undefined,
            restartCount: 0,
            state,
            ...(state.running || state.terminated ? { containerID: run.containerId } : {}),
          }
        : {
            name: c.name,
            image: c.image ?? '',
            imageID: '',
            ready: false,
            started: false,
            restartCount: 0,
            state: { waiting: { reason: 'CreateContainerError', message: 'the simulated node runs only the first container of a pod' } },
          },
    );
  }

  private static setConditions(status: k8s.V1PodStatus, values: Record<string, boolean>, reason?: string): void {
    const now = new Date();
    const conditions = status.conditions ?? [];
    for (const [type, on] of Object.entries(values)) {
      const want = on ? 'True' : 'False';
      const old = conditions.find((c) => c.type === type);
      if (old) {
        if (old.status !== want) {
          old.status = want;
          old.lastTransitionTime = now;
        }
        if (!on && reason) old.reason = reason;
        else if (on) delete old.reason;
      } else {
        conditions.push({ type, status: want, lastTransitionTime: now, ...(!on && reason ? { reason } : {}) });
      }
    }
    status.conditions = conditions;
  }

  private async startPod(run: PodRun, pod: k8s.V1Pod): Promise<void> {
    const container = pod.spec?.containers?.[0];
    if (!container) return;
    const image = container.image ?? '';
    await this.writeStatus(run, (status, p) => {
      status.phase = 'Pending';
      status.hostIP = this.address;
      status.hostIPs = [{ ip: this.address }];
      status.startTime ??= new Date();
      SimNode.setConditions(status, { PodScheduled: true, PodReadyToStartContainers: false, Initialized: true, ContainersReady: false, Ready: false }, 'ContainersNotReady');
      status.containerStatuses = this.containerStatus(p, run, { waiting: { reason: 'ContainerCreating' } }, false);
    });
    if (run.deleting) return;

    if (!imageKnown(this.images, image)) {
      const pullError = `failed to pull and unpack image "${image}": not found (simulated registry)`;
      await this.writeStatus(run, (status, p) => {
        const message = `Failed to pull image "${image}": rpc error: code = NotFound desc = ${pullError}`;
        status.containerStatuses = this.containerStatus(p, run, { waiting: { reason: 'ErrImagePull', message } }, false);
      });
      await new Promise((r) => setTimeout(r, PULL_BACKOFF_DELAY_MS));
      if (run.deleting) return;
      await this.writeStatus(run, (status, p) => {
        status.containerStatuses = this.containerStatus(
          p,
          run,
          { waiting: { reason: 'ImagePullBackOff', message: `Back-off pulling image "${image}": ErrImagePull: ${pullError}` } },
          false,
        );
      });
      return;
    }

    let argv: string[];
    let env: Record<string, string>;
    try {
      run.sandbox = await this.network.addPod(`${run.key}/${run.uid}`, (dataDir) => this.volumeMounts(pod, container, dataDir));
      if (container.securityContext?.readOnlyRootFilesystem) await this.network.readOnlyRoot(run.sandbox);
      env = await this.containerEnv(pod, container, run.sandbox.ip);
      argv = this.containerArgv(pod, container, env, run.sandbox);
      run.cgroup = createCgroup(`sim-${run.uid}`, {
        memory: container.resources?.limits?.['memory'] ? parseQuantity(container.resources.limits['memory']) : undefined,
        cpu: container.resources?.limits?.['cpu'] ? parseQuantity(container.resources.limits['cpu']) : undefined,
      });
    } catch (e) {
      this.log(`pod ${run.key}: cannot create the container: ${errorText(e)}`);
      await this.writeStatus(run, (status, p) => {
        status.containerStatuses = this.containerStatus(p, run, { waiting: { reason: 'CreateContainerError', message: errorText(e) } }, false);
      });
      await this.cleanup(run);
      return;
    }
    if (run.deleting) {
      await this.cleanup(run);
      return;
    }

    const child = spawn(argv[0]!, argv.slice(1), { env, stdio: ['ignore', 'pipe', 'pipe'] });
    run.child = child;
    const startedAt = new Date();
    run.startedAt = startedAt;
    // At once, before the program gets far: its memory is charged to the pod's cgroup from here on.
    if (child.pid !== undefined) addProcess(run.cgroup, child.pid);
    const keep = (chunk: Buffer): void => {
      run.logs.push(chunk);
      run.logBytes += chunk.length;
      while (run.logBytes > LOG_TAIL_BYTES && run.logs.length > 1) run.logBytes -= run.logs.shift()!.length;
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    run.exited = new Promise<Termination>((resolve) => {
      child.on('error', (err) => {
        keep(Buffer.from(`${err.message}\n`));
      });
      child.on('close', (code, signal) => {
        const oom = run.cgroup !== undefined && oomKills(run.cgroup) > 0;
        const exitCode = oom ? 137 : (code ?? 128 + (signal ? (signalNumber(signal) ?? 9) : 9));
        const reason = oom ? 'OOMKilled' : exitCode === 0 ? 'Completed' : 'Error';
        const tail = Buffer.concat(run.logs).subarray(-TERMINATION_MESSAGE_BYTES).toString('utf8');
        const fallback = container.terminationMessagePolicy === 'FallbackToLogsOnError' && exitCode !== 0;
        resolve({ exitCode, signal: signal ?? undefined, reason, startedAt, finishedAt: new Date(), message: fallback ? tail : undefined });
      });
    });
    void run.exited.then((t) => this.enqueue(run, () => this.onExit(run, t)));

    await this.writeStatus(run, (status, p) => {
      status.phase = 'Running';
      status.podIP = run.sandbox!.ip;
      status.podIPs = [{ ip: run.sandbox!.ip }];
      SimNode.setConditions(status, { PodReadyToStartContainers: true, Initialized: true, ContainersReady: true, Ready: true });
      status.containerStatuses = this.containerStatus(p, run, { running: { startedAt } }, true);
    });
  }

  private async onExit(run: PodRun, t: Termination): Promise<void> {
    await this.writeStatus(run, (status, p) => {
      status.phase = t.exitCode === 0 ? 'Succeeded' : 'Failed';
      SimNode.setConditions(status, { PodReadyToStartContainers: false, ContainersReady: false, Ready: false }, 'PodCompleted');
      status.containerStatuses = this.containerStatus(
        p,
        run,
        {
          terminated: {
            exitCode: t.exitCode,
            reason: t.reason,
            startedAt: t.startedAt,
            finishedAt: t.finishedAt,
            containerID: run.containerId,
            ...(t.signal ? { signal: signalNumber(t.signal) } : {}),
            ...(t.message ? { message: t.message } : {}),
          },
        },
        false,
      );
    });
    // restartPolicy Never is all this node runs: a finished pod's sandbox goes (its object stays).
    await this.cleanup(run);
  }

  /** SIGTERM, up to `graceSeconds`, then SIGKILL to everything in the pod's cgroup; then the sandbox goes. */
  private async terminate(run: PodRun, graceSeconds: number): Promise<void> {
    // Let a start in progress get as far as it will (it checks `deleting` between steps).
    await run.chain;
    const child = run.child;
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const exited = await Promise.race([run.exited!.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), graceSeconds * 1000))]);
      if (!exited) {
        if (run.cgroup) await removeCgroup(run.cgroup);
        child.kill('SIGKILL');
        await run.exited;
      }
    }
    // The exit's status write was queued on the chain; wait for it before the sandbox goes.
    await run.chain;
    await this.cleanup(run);
    if (this.pods.get(run.key) === run) this.pods.delete(run.key);
    // A new pod of the same name (a kernel's restart) that arrived meanwhile was put off
    // (its sandbox has the same name): nothing shows it to the node again, so look now.
    if (this.stopped) return;
    const next = await this.core.readNamespacedPod({ namespace: run.namespace, name: run.name }).catch(() => undefined);
    if (next && next.metadata?.uid !== run.uid) this.onPod(next);
  }

  private async cleanup(run: PodRun): Promise<void> {
    if (run.done) return;
    run.done = true;
    if (run.cgroup) {
      if (!(await removeCgroup(run.cgroup))) this.log(`pod ${run.key}: cgroup not removed`);
      run.cgroup = undefined;
    }
    if (run.sandbox) await this.network.removePod(run.sandbox.key);
    run.sandbox = undefined;
  }

  /** What the kubelet does last: the pod object goes, with no further grace. */
  private async finalDelete(pod: k8s.V1Pod): Promise<void> {
    try {
      await this.core.deleteNamespacedPod({
        name: pod.metadata!.name!,
        namespace: pod.metadata!.namespace!,
        gracePeriodSeconds: 0,
        body: { preconditions: { uid: pod.metadata!.uid! }, gracePeriodSeconds: 0 },
      });
    } catch (e) {
      if (!isNotFound(e) && !isConflict(e)) this.log(`pod ${podKey(pod)}: final delete failed: ${errorText(e)}`);
    }
  }

  // --- the container: volumes, environment, argv ---

  private async volumeMounts(pod: k8s.V1Pod, container: k8s.V1Container, dataDir: string): Promise<PodMount[]> {
    const namespace = pod.metadata!.namespace!;
    const sc = container.securityContext;
    const uid = sc?.runAsUser ?? pod.spec?.securityContext?.runAsUser;
    const gid = pod.spec?.securityContext?.fsGroup ?? sc?.runAsGroup ?? pod.spec?.securityContext?.runAsGroup ?? uid;
    const mounts: PodMount[] = [];
    for (const vm of container.volumeMounts ?? []) {
      const volume = pod.spec?.volumes?.find((v) => v.name === vm.name);
      if (!volume) throw new Error(`volume ${vm.name} is not in the pod`);
      if (vm.subPath) throw new Error(`volume ${vm.name}: subPath is not supported by the simulated node`);
      const dir = join(dataDir, 'volumes', String(mounts.length));
      if (volume.emptyDir) {
        if (volume.emptyDir.medium === 'Memory') {
          mounts.push({ kind: 'tmpfs', target: vm.mountPath, sizeBytes: volume.emptyDir.sizeLimit ? parseQuantity(volume.emptyDir.sizeLimit) : undefined });
          continue;
        }
        mkdirSync(dir, { recursive: true, mode: 0o777 });
      } else if (volume.secret || volume.configMap) {
        const files = await this.volumeFiles(namespace, volume);
        const defaultMode = (volume.secret ?? volume.configMap)!.defaultMode ?? 0o644;
        mkdirSync(dir, { recursive: true, mode: 0o755 });
        for (const f of files) {
          const rel = normalize(f.path);
          if (rel.startsWith('..') || rel.startsWith('/')) throw new Error(`volume ${vm.name}: bad item path ${f.path}`);
          const target = join(dir, rel);
          mkdirSync(dirname(target), { recursive: true, mode: 0o755 });
          writeFileSync(target, f.data, { mode: f.mode ?? defaultMode });
          if (uid !== undefined) chownSync(target, uid, gid ?? uid);
        }
      } else if (volume.projected || volume.downwardAPI) {
        // A service account token or pod fields: nothing the simulated node provides; an empty directory stands for it.
        mkdirSync(dir, { recursive: true, mode: 0o755 });
      } else {
        throw new Error(`volume ${vm.name}: only secret, configMap and emptyDir volumes are supported by the simulated node`);
      }
      if (uid !== undefined) chownSync(dir, uid, gid ?? uid);
      const readOnly = vm.readOnly === true || volume.secret !== undefined || volume.configMap !== undefined;
      mounts.push({ kind: 'bind', source: dir, target: vm.mountPath, readOnly });
    }
    return mounts;
  }

  private async volumeFiles(namespace: string, volume: k8s.V1Volume): Promise<{ path: string; data: Buffer; mode?: number | undefined }[]> {
    let data: Record<string, Buffer>;
    let items: k8s.V1KeyToPath[] | undefined;
    let optional: boolean;
    try {
      if (volume.secret) {
        items = volume.secret.items;
        optional = volume.secret.optional === true;
        const s = await this.core.readNamespacedSecret({ name: volume.secret.secretName!, namespace });
        data = Object.fromEntries(Object.entries(s.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64')]));
      } else {
        items = volume.configMap!.items;
        optional = volume.configMap!.optional === true;
        const cm = await this.core.readNamespacedConfigMap({ name: volume.configMap!.name!, namespace });
        data = Object.fromEntries([
          ...Object.entries(cm.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'utf8')] as const),
          ...Object.entries(cm.binaryData ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64')] as const),
        ]);
      }
    } catch (e) {
      if (isNotFound(e) && (volume.secret?.optional || volume.configMap?.optional)) return [];
      throw new Error(`volume ${volume.name}: ${errorText(e)}`, { cause: e });
    }
    if (!items) return Object.entries(data).map(([k, v]) => ({ path: k, data: v }));
    return items.flatMap((it) => {
      const d = data[it.key];
      if (d === undefined) {
        if (optional) return [];
        throw new Error(`volume ${volume.name}: key ${it.key} is not there`);
      }
      return [{ path: it.path, data: d, mode: it.mode }];
    });
  }

  private async containerEnv(pod: k8s.V1Pod, container: k8s.V1Container, podIP: string): Promise<Record<string, string>> {
    const env: Record<string, string> = { PATH: DEFAULT_PATH, HOSTNAME: pod.metadata!.name!, HOME: '/' };
    const namespace = pod.metadata!.namespace!;
    for (const e of container.env ?? []) {
      if (e.valueFrom === undefined) {
        env[e.name] = expandVars(e.value ?? '', env);
        continue;
      }
      const f = e.valueFrom;
      if (f.fieldRef) {
        const field = f.fieldRef.fieldPath;
        const labelOrAnnotation = /^metadata\.(labels|annotations)\['(.+)'\]$/.exec(field);
        const fields: Record<string, string | undefined> = {
          'metadata.name': pod.metadata?.name,
          'metadata.namespace': namespace,
          'metadata.uid': pod.metadata?.uid,
          'spec.nodeName': this.name,
          'spec.serviceAccountName': pod.spec?.serviceAccountName,
          'status.podIP': podIP,
          'status.podIPs': podIP,
          'status.hostIP': this.address,
          'status.hostIPs': this.address,
        };
        const value = labelOrAnnotation ? pod.metadata?.[labelOrAnnotation[1] as 'labels' | 'annotations']?.[labelOrAnnotation[2]!] : fields[field];
        env[e.name] = value ?? '';
      } else if (f.secretKeyRef || f.configMapKeyRef) {
        const ref = (f.secretKeyRef ?? f.configMapKeyRef)!;
        try {
          if (f.secretKeyRef) {
            const s = await this.core.readNamespacedSecret({ name: ref.name!, namespace });
            const v = s.data?.[ref.key];
            if (v === undefined) throw new Error(`key ${ref.key} is not in secret ${ref.name}`);
            env[e.name] = Buffer.from(v, 'base64').toString('utf8');
          } else {
            const cm = await this.core.readNamespacedConfigMap({ name: ref.name!, namespace });
            const v = cm.data?.[ref.key];
            if (v === undefined) throw new Error(`key ${ref.key} is not in configmap ${ref.name}`);
            env[e.name] = v;
          }
        } catch (err) {
          if (!ref.optional) throw new Error(`env ${e.name}: ${errorText(err)}`, { cause: err });
        }
      } else if (f.resourceFieldRef) {
        const limits = container.resources?.limits ?? {};
        const resource = f.resourceFieldRef.resource;
        const [kind, name] = resource.split('.') as [string, string];
        const q = (kind === 'limits' ? limits : (container.resources?.requests ?? {}))[name] ?? this.opts.capacity[name];
        const divisor = f.resourceFieldRef.divisor ? parseQuantity(f.resourceFieldRef.divisor) : 1;
        env[e.name] = q === undefined ? '' : String(Math.ceil(parseQuantity(q) / divisor));
      }
    }
    return env;
  }

  private containerArgv(pod: k8s.V1Pod, container: k8s.V1Container, env: Record<string, string>, sandbox: PodSandbox): string[] {
    const words = [...(container.command ?? []), ...(container.args ?? [])].map((w) => expandVars(w, env));
    if (words.length === 0) throw new Error('the simulated node needs a command: images have no entrypoint here');
    const mapping = this.images[container.image ?? ''] ?? {};
    const program = mapping[words[0]!] ?? words[0]!;
    if (program.includes('=')) throw new Error(`a command may not contain "=": ${program}`);
    const sc = container.securityContext;
    const psc = pod.spec?.securityContext;
    const uid = sc?.runAsUser ?? psc?.runAsUser;
    const gid = sc?.runAsGroup ?? psc?.runAsGroup ?? uid;
    const setpriv: string[] = [];
    if (uid !== undefined) {
      setpriv.push(`--reuid=${uid}`, `--regid=${gid ?? uid}`);
      if (psc?.fsGroup !== undefined) setpriv.push(`--groups=${psc.fsGroup}`);
      else setpriv.push('--clear-groups');
    }
    if (sc?.allowPrivilegeEscalation === false) setpriv.push('--no-new-privs');
    if (sc?.capabilities?.drop?.includes('ALL')) setpriv.push('--inh-caps=-all', '--bounding-set=-all');
    return [
      ...this.network.enterArgv(sandbox),
      ...(setpriv.length > 0 ? ['setpriv', ...setpriv, '--'] : []),
      // env -C: the working directory must be found inside the pod's mount namespace, after it is entered.
      'env',
      `--chdir=${container.workingDir ?? '/'}`,
      '--',
      program,
      ...words.slice(1),
    ];
  }

  // --- stop ---

  /** Stops every pod's process (their pods marked Failed, as a node shutdown does), removes every namespace, veth and the bridge, and deletes the Node. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.heartbeat);
    await this.watch?.stop();
    const runs = [...this.pods.values()];
    await Promise.all(
      runs.map(async (run) => {
        run.deleting = true;
        await this.terminate(run, 0);
      }),
    );
    await Promise.all(
      runs.map((run) =>
        this.writeStatus(run, (status) => {
          if (status.phase === 'Succeeded' || status.phase === 'Failed') return;
          status.phase = 'Failed';
          status.reason = 'Terminated';
          status.message = 'Pod was terminated in response to the simulated node stopping.';
        }).catch(() => {}),
      ),
    );
    this.pods.clear();
    await this.network.down();
    try {
      await this.core.deleteNode({ name: this.name, gracePeriodSeconds: 0 });
    } catch (e) {
      if (!isNotFound(e)) this.log(`node delete failed: ${errorText(e)}`);
    }
    try {
      await this.coordination.deleteNamespacedLease({ name: this.name, namespace: 'kube-node-lease' });
    } catch {
      // owned by the Node: the garbage collector takes it when it did not go here
    }
  }
}

function signalNumber(signal: string): number | undefined {
  return (constants.signals as Record<string, number>)[signal];
}

/** `a=1,b=2` → { a: '1', b: '2' }. */
function parseList(text: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of (text ?? '').split(',')) {
    if (part === '') continue;
    const i = part.indexOf('=');
    if (i <= 0) throw new Error(`expected key=value: ${part}`);
    out[part.slice(0, i)] = part.slice(i + 1);
  }
  return out;
}

/** `key=value:Effect` or `key:Effect`, comma-separated. */
function parseTaints(text: string | undefined): k8s.V1Taint[] {
  return (text ?? '')
    .split(',')
    .filter((t) => t !== '')
    .map((t) => {
      const m = /^([^=:]+)(?:=([^:]*))?:(NoSchedule|PreferNoSchedule|NoExecute)$/.exec(t);
      if (!m) throw new Error(`a taint is key[=value]:NoSchedule|PreferNoSchedule|NoExecute: ${t}`);
      return { key: m[1]!, ...(m[2] !== undefined ? { value: m[2] } : {}), effect: m[3]! };
    });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      kubeconfig: { type: 'string' },
      name: { type: 'string' },
      capacity: { type: 'string' },
      'pod-cidr': { type: 'string' },
      labels: { type: 'string' },
      taints: { type: 'string' },
    },
  });
  if (!values.kubeconfig || !values.name || !values['pod-cidr']) throw new Error('usage: sim-node --kubeconfig K --name N --capacity cpu=4,memory=8Gi --pod-cidr 10.245.1.0/24');
  const node = new SimNode({
    kubeconfig: values.kubeconfig,
    name: values.name,
    capacity: parseList(values.capacity ?? 'cpu=4,memory=8Gi'),
    podCidr: values['pod-cidr'],
    labels: parseList(values.labels),
    taints: parseTaints(values.taints),
    log: (line) => process.stderr.write(`sim-node ${values.name}: ${line}\n`),
  });
  await node.start();
  process.stderr.write(`sim-node ${node.name}: ready (pods on ${node.network.bridge}, gateway ${node.address})\n`);
  const shutdown = (): void => {
    void node.stop().then(
      () => process.exit(0),
      (e: unknown) => {
        process.stderr.write(`sim-node ${node.name}: stop failed: ${errorText(e)}\n`);
        process.exit(1);
      },
    );
  };
  process.once('SIGINT', shutdown);
  process.once('SIGTERM', shutdown);
}

if (process.argv[1] !== undefined && import.meta.url === new URL(`file://${process.argv[1]}`).href) {
  main().catch((e: unknown) => {
    process.stderr.write(`sim-node: ${errorText(e)}\n`);
    process.exit(1);
  });
}
