/**
 * The provisioner contract, modelled on jupyter_client's
 * `provisioning/provisioner_base.py`: a provisioner turns a kernelspec and a
 * launch request into a running kernel with its connection info, can later
 * poll, signal, terminate, kill and clean it up, and describes itself
 * (`getInfo`) so that another gateway process can adopt the kernel
 * (`loadInfo`). Provisioners throw domain errors, never HTTP ones.
 */

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

export interface LaunchRequest {
  kernelId: string;
  spec: KernelSpec;
  /** The kernel's HMAC key, made by the gateway. */
  key: string;
  /** Validated `KERNEL_*` variables from the client, merged over the spec's env. */
  env: Record<string, string>;
  cwd?: string;
  /** On restart: the connection to reuse, so clients' links reconnect by themselves. */
  reuse?: ConnectionInfo;
  /**
   * Aborted when the kernel is shut down before the launch completes: the
   * provisioner then stops what it started, removes what it wrote (the
   * connection file holds the key) and rejects with `signal.reason`.
   */
  signal?: AbortSignal;
  /**
   * The kernel must not outlive the gateway process: nothing could adopt it
   * (no state dir). A local provisioner ties it to the gateway's life.
   */
  endWithGateway?: boolean;
}

/** What a provisioner records about a kernel: JSON-serialisable, without the key. */
export type ProvisionerInfo = { provisioner: string } & Record<string, unknown>;

export interface Provisioner {
  readonly name: string;
  /**
   * Starts the kernel and answers its connection info (ports bound or about to
   * be). When it rejects, for whatever reason, nothing it started or wrote is
   * left behind.
   */
  launch(req: LaunchRequest): Promise<ConnectionInfo>;
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
  getInfo(): ProvisionerInfo;
  loadInfo(info: ProvisionerInfo): Promise<void>;
}

export interface ProvisionerFactory {
  readonly name: string;
  create(): Provisioner;
}
