/**
 * The provisioner contract (v2), modelled on jupyter_client's
 * `provisioning/provisioner_base.py` and fit for kernels that are not
 * children of kgate (sandboxes, containers, pods): a provisioner turns a
 * kernelspec and a launch request into a running kernel with its connection
 * info, can later poll, signal, terminate, kill and clean it up, and
 * describes itself (`getInfo`) so that another gateway process can adopt the
 * kernel (`loadInfo`). Provisioners throw domain errors (src/errors.ts:
 * kernelStartFailed, kernelUnschedulable, kernelImageUnavailable,
 * kernelLaunchRetryable, tenantQuota), never HTTP ones.
 *
 * Who makes the connection info: the gateway always makes the key (it is in
 * the request); for a kernel that binds ports the gateway can reach directly
 * (local, sandbox) the gateway's port source (`request.ports`) makes the ports
 * too; a remote provisioner (a pod) answers its own host and ports. A restart
 * may answer new connection info (a new pod IP): the supervisor then rebinds
 * the link and the heartbeat, and the clients' sockets stay open.
 */
import type { Logger } from 'pino';

/** A kernel's connection file (https://jupyter-client.readthedocs.io/en/stable/kernels.html#connection-files). */
export interface ConnectionInfo {
  transport: 'tcp' | 'ipc';
  ip: string;
  shell_port: number;
  iopub_port: number;
  stdin_port: number;
  control_port: number;
  hb_port: number;
  key: string;
  signature_scheme: string;
  kernel_name: string;
}

/** The address part of a connection: where the kernel listens, without the key. */
export type KernelPorts = Pick<ConnectionInfo, 'transport' | 'ip' | 'shell_port' | 'iopub_port' | 'stdin_port' | 'control_port' | 'hb_port'>;

/** Whether two connections reach the kernel at the same place (the key is not compared: the gateway keeps it). */
export function sameAddress(a: KernelPorts, b: KernelPorts): boolean {
  return (
    a.transport === b.transport &&
    a.ip === b.ip &&
    a.shell_port === b.shell_port &&
    a.iopub_port === b.iopub_port &&
    a.stdin_port === b.stdin_port &&
    a.control_port === b.control_port &&
    a.hb_port === b.hb_port
  );
}

export interface KernelSpecFile {
  argv: string[];
  display_name: string;
  language: string;
  interrupt_mode?: 'signal' | 'message';
  env?: Record<string, string>;
  metadata?: Record<string, unknown>;
}

export interface KernelSpec {
  name: string;
  /** The directory holding kernel.json and its logos. */
  resourceDir: string;
  spec: KernelSpecFile;
}

/**
 * What a kernel asks for, already bounded by policy (admission). Empty today
 * (no option asks for resources yet); the quota work fills and bounds it, and
 * a container or pod provisioner turns it into limits.
 */
export interface ResourceRequest {
  /** CPU cores (0.5: half a core). */
  cpu?: number;
  /** Memory in bytes. */
  memory?: number;
  /** Extended resources by their Kubernetes names: `{ 'nvidia.com/gpu': 1 }`, `{ 'nvidia.com/mig-3g.20gb': 1 }`. */
  extended?: Record<string, number>;
}

/** Who the kernel is for, as the gateway authenticated it (src/principal.ts), without scopes. */
export interface LaunchPrincipal {
  user: string | undefined;
  tenant: string;
}

/** The phases a launch reports, in order; each reaches the log and events.kernelProgress. */
export type LaunchPhase = 'scheduling' | 'pulling' | 'starting' | 'connecting';

/** The gateway's source of free ports, shared by every kernel so two starting at once never get the same one. */
export interface PortSource {
  take(ip: string): Promise<KernelPorts>;
}

export interface LaunchRequest {
  kernelId: string;
  spec: KernelSpec;
  /** The kernel's HMAC key, made by the gateway. */
  key: string;
  /** Validated `KERNEL_*` variables from the client, merged over the spec's env. */
  env: Record<string, string>;
  cwd?: string;
  principal: LaunchPrincipal;
  /** The kernelspec's `metadata.kernel_provisioner.config` (an empty object when it has none). */
  config: Record<string, unknown>;
  resources: ResourceRequest;
  /** Ports made by the gateway, for a provisioner whose kernels bind them (and again after a port race). */
  ports: PortSource;
  /**
   * On restart: the connection in force. A provisioner that restarts in place
   * reuses it (clients' links reconnect by themselves); one that relaunches
   * may answer another address with the same key.
   */
  reuse?: ConnectionInfo;
  /**
   * The kernel must not outlive the gateway process: nothing could adopt it
   * (no state dir). A local provisioner ties it to the gateway's life.
   */
  endWithGateway?: boolean;
}

export interface LaunchContext {
  /**
   * Aborted when the kernel is shut down before the launch completes, or when
   * the launch timeout passes (it covers the provisioner's own launch: the
   * scheduling, the image pull, the start): the provisioner then stops what it
   * started, removes what it wrote (a connection file holds the key) and
   * rejects with `signal.reason`.
   */
  signal: AbortSignal;
  onProgress(phase: LaunchPhase, detail?: string): void;
  /**
   * The gateway's readiness check: opens (or rebinds) the kernel's link at
   * `conn` and resolves once the kernel answers kernel_info and iopub flows.
   * It rejects with KernelExited if the kernel ends meanwhile, or with
   * `signal.reason`. A provisioner that does not call it is connected after
   * `launch` resolves; one that does sees a kernel that dies at once (a port
   * race) inside its own launch, and can start it again.
   */
  connect(conn: ConnectionInfo): Promise<void>;
}

/** The kernel ended before it answered (from `LaunchContext.connect`); internal, never shown to a client as such. */
export class KernelExited extends Error {
  constructor(readonly exitCode: number) {
    super(`the kernel exited with code ${exitCode} while starting`);
    this.name = 'KernelExited';
  }
}

/** How a kernel's process ended: `out_of_memory` when its memory limit's OOM killer ended it; `detail` is for the user (the limit, in words). */
export interface KernelExit {
  code: number;
  reason: 'out_of_memory' | 'exited';
  detail?: string;
}

/** What a provisioner records about a kernel: JSON-serialisable, without the key. */
export type ProvisionerInfo = { provisioner: string } & Record<string, unknown>;

/** What a provisioner can do, so the supervisor asks only for that. */
export interface ProvisionerCapabilities {
  /** 'signal': SIGINT reaches the kernel (a local process); 'message': only an interrupt_request on control does. */
  interrupt: 'signal' | 'message';
  /** 'in-place': a restart keeps the kernel's address; 'relaunch': it may answer a new one (a new pod). */
  restart: 'in-place' | 'relaunch';
}

export interface Provisioner {
  readonly name: string;
  readonly capabilities: ProvisionerCapabilities;
  /**
   * Starts the kernel and answers its connection info (ports bound or about to
   * be), with the request's key. When it rejects, for whatever reason, nothing
   * it started or wrote is left behind.
   */
  launch(req: LaunchRequest, ctx: LaunchContext): Promise<ConnectionInfo>;
  /** `undefined` while the kernel runs, else its exit code (or -1 when unknown). */
  poll(): Promise<number | undefined>;
  /** Resolves when the kernel ends, with its exit code (or -1); never rejects. */
  exited(): Promise<number>;
  /** Waits up to `timeoutMs` for the kernel to end; true if it did. */
  wait(timeoutMs: number): Promise<boolean>;
  sendSignal(signal: NodeJS.Signals): Promise<void>;
  terminate(restart: boolean): Promise<void>;
  kill(restart: boolean): Promise<void>;
  cleanup(restart: boolean): Promise<void>;
  /** The last lines the kernel wrote to stderr, for error messages (never the key). */
  diagnostics(): string;
  /** Last-moment synchronous kill, from `process.on('exit')`, where it can be done. */
  killNow?(): void;
  /** How the kernel's last process to end ended, where the provisioner can tell (a cgroup saw its memory limit kill it); `undefined` until one has, or when unknown. */
  lastExit?(): KernelExit | undefined;
  getInfo(): ProvisionerInfo;
  loadInfo(info: ProvisionerInfo): Promise<void>;
}

/** What a factory gets besides the kernelspec: a logger, and the spec's `metadata.kernel_provisioner.config`. */
export interface ProvisionerDeps {
  log: Logger;
  config: Record<string, unknown>;
}

export interface ProvisionerFactory {
  readonly name: string;
  create(spec: KernelSpec, deps: ProvisionerDeps): Provisioner;
}

/** The kernelspec's `metadata.kernel_provisioner` block, as jupyter_client reads it. */
export function provisionerMetadata(spec: KernelSpec): { name: string | undefined; config: Record<string, unknown> } {
  const kp = spec.spec.metadata?.['kernel_provisioner'] as { provisioner_name?: unknown; config?: unknown } | undefined;
  const config = kp?.config !== null && typeof kp?.config === 'object' && !Array.isArray(kp.config) ? (kp.config as Record<string, unknown>) : {};
  return { name: typeof kp?.provisioner_name === 'string' ? kp.provisioner_name : undefined, config };
}
