/**
 * A provisioner that starts no process: its kernel is a minimal Jupyter
 * kernel run in this process on the ports the gateway gives it (or on new
 * ones it picks, as a pod provisioner answers a new pod IP), so the
 * supervisor's launch, nudge, heartbeat and restarts run for real against the
 * wire protocol in a few milliseconds. Tests script its launches and kill or
 * silence its kernel.
 *
 * Its kernel answers kernel_info, interrupt and shutdown requests and echoes
 * heartbeats; it is not the bench kernel (src/bench-kernel), whose shutdown
 * ends its process, which here is the test's.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Publisher, Reply, Router } from 'zeromq';
import { channelUrl } from '../../src/bridge/kernel-link.js';
import { makeMessage } from '../../src/bridge/messages.js';
import { ReplayBudget } from '../../src/bridge/replay.js';
import { KernelSpecStore } from '../../src/kernels/kernelspecs.js';
import { KernelManager, type KernelManagerOptions } from '../../src/kernels/manager.js';
import { createLogger } from '../../src/log.js';
import { Signer, splitWire, toWire, type WireMessage } from '../../src/bridge/wire.js';
import type { ConnectionInfo, LaunchContext, LaunchRequest, Provisioner, ProvisionerCapabilities, ProvisionerFactory, ProvisionerInfo } from '../../src/provisioner/types.js';

/** Small link bounds and no replay: what the control plane's unit tests need of a kernel link. */
export const testLinkOptions = {
  verifySignatures: true,
  maxQueued: 1000,
  maxKernelInputBytes: 1 << 20,
  maxClientInputBytes: 1 << 20,
  iopubHighWaterMark: 1000,
  replay: { maxBytes: 0, maxMs: 0, maxSessions: 0, maxKernelBytes: 0, budget: new ReplayBudget(0) },
};

/** A Jupyter kernel that answers what the gateway asks on its own: kernel_info, interrupt, shutdown, heartbeat. */
export class MiniKernel {
  readonly session = randomBytes(8).toString('hex');
  private readonly signer: Signer;
  private readonly shell = new Router({ linger: 0 });
  private readonly control = new Router({ linger: 0 });
  private readonly stdin = new Router({ linger: 0 });
  private readonly iopub = new Publisher({ linger: 0 });
  private hb: Reply | undefined = new Reply({ linger: 0 });
  private closed = false;
  /** msg_types received, in order, per channel. */
  readonly received: Array<{ channel: 'shell' | 'control'; type: string }> = [];
  onShutdown: (() => void) | undefined;

  constructor(readonly conn: ConnectionInfo) {
    this.signer = new Signer(conn.key, conn.signature_scheme);
  }

  async start(): Promise<void> {
    const c = this.conn;
    await Promise.all([
      this.shell.bind(channelUrl(c, c.shell_port)),
      this.control.bind(channelUrl(c, c.control_port)),
      this.stdin.bind(channelUrl(c, c.stdin_port)),
      this.iopub.bind(channelUrl(c, c.iopub_port)),
      this.hb!.bind(channelUrl(c, c.hb_port)),
    ]);
    void this.serve(this.shell, 'shell');
    void this.serve(this.control, 'control');
    void this.echo(this.hb!);
  }

  /** Stops answering heartbeats (the kernel hangs, as far as the gateway can tell). */
  silenceHeartbeat(): void {
    this.hb?.close();
    this.hb = undefined;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const s of [this.shell, this.control, this.stdin, this.iopub, this.hb]) s?.close();
  }

  private async echo(hb: Reply): Promise<void> {
    try {
      for await (const frames of hb) await hb.send(frames);
    } catch {
      // closed
    }
  }

  private async serve(socket: Router, channel: 'shell' | 'control'): Promise<void> {
    try {
      for await (const frames of socket) {
        const m = splitWire(frames);
        if (!m || !this.signer.verify(m)) continue;
        const type = (JSON.parse(m.header.toString()) as { msg_type: string }).msg_type;
        this.received.push({ channel, type });
        this.status('busy', m);
        if (type === 'kernel_info_request') this.reply(socket, m, 'kernel_info_reply', { status: 'ok', protocol_version: '5.3', implementation: 'fake' });
        else if (type === 'interrupt_request') this.reply(socket, m, 'interrupt_reply', { status: 'ok' });
        else if (type === 'shutdown_request') {
          this.reply(socket, m, 'shutdown_reply', { status: 'ok' });
          this.status('idle', m);
          setTimeout(() => this.onShutdown?.(), 5);
          continue;
        }
        this.status('idle', m);
      }
    } catch {
      // closed
    }
  }

  private reply(socket: Router, m: WireMessage, type: string, content: object): void {
    const { parts } = makeMessage(type, content, this.session);
    parts.parent = m.header;
    const ids = m.identities;
    const frames = toWire(ids[ids.length - 1]!, this.signer, parts);
    if (ids.length > 1) frames.unshift(...ids.slice(0, -1));
    socket.send(frames).catch(() => undefined);
  }

  private status(state: 'busy' | 'idle', m: WireMessage): void {
    const { parts } = makeMessage('status', { execution_state: state }, this.session);
    parts.parent = m.header;
    this.iopub.send(toWire(Buffer.from('status'), this.signer, parts)).catch(() => undefined);
  }
}

/** What one launch does: start a kernel (the default), or fail with this error, or hang until aborted, or start a kernel that dies at once. */
export type LaunchScript = 'ok' | 'hang' | 'die' | Error | ((req: LaunchRequest, ctx: LaunchContext) => Promise<ConnectionInfo>);

export interface FakeOptions {
  capabilities?: Partial<ProvisionerCapabilities>;
  /** A restart answers a new address (as a pod provisioner does after a relaunch). */
  newAddressOnRestart?: boolean;
  /** The outcome of launch n (from 1); past the end: 'ok'. */
  script?: LaunchScript[];
  /** Phases to report before starting, as a remote provisioner would. */
  phases?: Array<'scheduling' | 'pulling'>;
}

/** One run of a fake kernel: its MiniKernel (none while it has not bound) and its exit. */
export class FakeProcess {
  kernel: MiniKernel | undefined;
  exitCode: number | undefined;
  readonly exitPromise: Promise<number>;
  private resolveExit!: (code: number) => void;

  constructor() {
    this.exitPromise = new Promise<number>((resolve) => (this.resolveExit = resolve));
  }

  die(code: number): void {
    this.kernel?.close();
    this.kernel = undefined;
    if (this.exitCode !== undefined) return;
    this.exitCode = code;
    this.resolveExit(code);
  }
}

/**
 * Where fake kernels run, shared by the provisioners of several gateways (as
 * a cluster is): a provisioner that loads a kernel's info finds its process
 * here, so another gateway can follow, adopt and take it over.
 */
export class FakeCluster {
  readonly processes = new Map<string, FakeProcess>();
}

export class FakeProvisioner implements Provisioner {
  readonly name = 'fake';
  readonly capabilities: ProvisionerCapabilities;
  launches = 0;
  /** Every launch request, as given. */
  readonly requests: LaunchRequest[] = [];
  readonly signals: string[] = [];
  private proc: FakeProcess | undefined;
  private kernelId: string | undefined;

  constructor(
    private readonly o: FakeOptions = {},
    private readonly cluster?: FakeCluster,
  ) {
    this.capabilities = { interrupt: 'message', restart: o.newAddressOnRestart ? 'relaunch' : 'in-place', ...o.capabilities };
  }

  get kernel(): MiniKernel | undefined {
    return this.proc?.kernel;
  }

  async launch(req: LaunchRequest, ctx: LaunchContext): Promise<ConnectionInfo> {
    const n = ++this.launches;
    this.requests.push(req);
    this.kernelId = req.kernelId;
    ctx.signal.throwIfAborted();
    for (const phase of this.o.phases ?? []) ctx.onProgress(phase);
    const script = this.o.script?.[n - 1] ?? 'ok';
    if (script instanceof Error) throw script;
    if (typeof script === 'function') return script(req, ctx);
    if (script === 'hang') {
      return new Promise((_, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason as Error), { once: true }));
    }
    const ports = req.reuse && !this.o.newAddressOnRestart ? req.reuse : await req.ports.take('127.0.0.1');
    const conn: ConnectionInfo = { ...ports, key: req.key, signature_scheme: 'hmac-sha256', kernel_name: req.spec.name };
    ctx.onProgress('starting');
    const proc = new FakeProcess();
    this.proc = proc;
    this.cluster?.processes.set(req.kernelId, proc);
    if (script === 'die') {
      setTimeout(() => proc.die(1), 5);
      return conn;
    }
    // A restart in place binds the ports the previous kernel just closed, which ZeroMQ's
    // I/O thread frees a moment later: a bind that finds one still in use tries again.
    for (let attempt = 1; ; attempt++) {
      const kernel = new MiniKernel(conn);
      kernel.onShutdown = () => proc.die(0);
      proc.kernel = kernel;
      try {
        await kernel.start();
        return conn;
      } catch (e) {
        kernel.close();
        if (attempt >= 100 || ctx.signal.aborted) throw e;
        await new Promise((r) => setTimeout(r, 10));
      }
    }
  }

  /** The kernel ends (a crash when code ≠ 0). */
  die(code = 137): void {
    this.proc?.die(code);
  }

  async poll(): Promise<number | undefined> {
    return this.proc ? this.proc.exitCode : -1;
  }

  exited(): Promise<number> {
    return this.proc?.exitPromise ?? Promise.resolve(-1);
  }

  async wait(timeoutMs: number): Promise<boolean> {
    if (!this.proc || this.proc.exitCode !== undefined) return true;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => (timer = setTimeout(resolve, timeoutMs, false)));
    try {
      return await Promise.race([this.proc.exitPromise.then(() => true), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  async sendSignal(signal: NodeJS.Signals): Promise<void> {
    this.signals.push(signal);
  }

  async terminate(): Promise<void> {
    this.die(143);
  }

  async kill(): Promise<void> {
    this.die(137);
  }

  async cleanup(): Promise<void> {
    // nothing written
  }

  diagnostics(): string {
    return '';
  }

  getInfo(): ProvisionerInfo {
    return { provisioner: this.name, kernel: this.kernelId ?? null };
  }

  async loadInfo(info: ProvisionerInfo): Promise<void> {
    const id = typeof info['kernel'] === 'string' ? info['kernel'] : undefined;
    this.kernelId = id;
    this.proc = id !== undefined ? this.cluster?.processes.get(id) : undefined;
  }
}

/** A factory for createServer's overrides: each kernel gets a new FakeProvisioner, kept in `made`. */
export function fakeProvisionerFactory(options: FakeOptions = {}, name = 'local'): ProvisionerFactory & { made: FakeProvisioner[] } {
  const made: FakeProvisioner[] = [];
  return {
    name,
    made,
    create: () => {
      const p = new FakeProvisioner(options);
      made.push(p);
      return p;
    },
  };
}

/** A kernelspec directory holding one spec, `fake`, for a KernelSpecStore. */
export function fakeKernelspecDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'kgate-fake-specs-'));
  mkdirSync(join(dir, 'fake'));
  writeFileSync(join(dir, 'fake', 'kernel.json'), JSON.stringify({ argv: ['fake', '{connection_file}'], display_name: 'Fake', language: 'text', interrupt_mode: 'message' }));
  return dir;
}

export interface FakeManager {
  manager: KernelManager;
  /** The provisioners made, one per kernel, in order. */
  made: FakeProvisioner[];
  close(): Promise<void>;
}

/**
 * A KernelManager on fake provisioners, built through its options as the
 * gateway builds it (no private field patched): fast timeouts, no state dir.
 */
export function fakeManager(fake: FakeOptions | ((n: number) => FakeOptions) = {}, options: Partial<KernelManagerOptions> = {}, cluster?: FakeCluster): FakeManager {
  const made: FakeProvisioner[] = [];
  const manager = new KernelManager({
    specs: new KernelSpecStore([fakeKernelspecDir()], 'fake'),
    provisionerFor: () => {
      const p = new FakeProvisioner(typeof fake === 'function' ? fake(made.length + 1) : fake, cluster);
      made.push(p);
      return p;
    },
    launchTimeoutMs: 2000,
    shutdownWaitMs: 200,
    restartLimit: 3,
    // Generous, so a loaded machine's event loop is not taken for a dead kernel; tests of the heartbeat pass their own.
    heartbeat: { intervalMs: 20, timeoutMs: 1000 },
    link: testLinkOptions,
    envPolicy: { allow: new Set() },
    rootDir: tmpdir(),
    maxKernels: 0,
    maxKernelsPerUser: 0,
    log: createLogger(process.env['KGATE_TEST_LOG'] ? 'debug' : 'silent'),
    ...options,
  });
  return { manager, made, close: () => manager.shutdownAll() };
}
