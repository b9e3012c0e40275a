/**
 * The embedded default: a kernel as a child process in its own process group,
 * with a connection file (mode 0600) in kgate's runtime directory, and a
 * private home next to it (mode 0700) that the kernel's HOME, XDG, Jupyter and
 * IPython directories point into. The kernel still runs as kgate's user (the
 * operations docs say what it can still reach); the private home only keeps
 * what one kernel writes "for the user" (a kernelspec, an IPython startup
 * file) away from kgate's kernelspec search path and from the next kernel.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { KgateError, kernelStartFailed } from '../errors.js';
import { exitsWithin, isProcessAlive } from './process-alive.js';
import {
  KernelExited,
  type ConnectionInfo,
  type LaunchContext,
  type LaunchRequest,
  type Provisioner,
  type ProvisionerCapabilities,
  type ProvisionerFactory,
  type ProvisionerInfo,
} from './types.js';

export interface LocalProvisionerConfig {
  runtimeDir: string;
  ip: string;
  /** Environment variables of the gateway that never reach a kernel (its own secrets). */
  scrubEnv: (name: string) => boolean;
}

const STDERR_TAIL_BYTES = 4096;
/** How long a launch that failed waits for the process it killed to be gone. */
const ABANDON_WAIT_MS = 2000;

/**
 * Variables of kgate's environment a kernel never inherits: JPY_PARENT_PID is
 * set by kgate itself (an inherited one names kgate's parent, and ipykernel
 * would exit at once); the Jupyter search paths would point the kernel at
 * directories shared with kgate and every other kernel.
 */
const NOT_INHERITED = new Set(['JPY_PARENT_PID', 'JUPYTER_PATH', 'JUPYTER_CONFIG_PATH']);

/** The per-user directories of a kernel, all inside its private home. */
export function privateHomeEnv(home: string): Record<string, string> {
  return {
    HOME: home,
    XDG_DATA_HOME: join(home, '.local', 'share'),
    XDG_CONFIG_HOME: join(home, '.config'),
    XDG_CACHE_HOME: join(home, '.cache'),
    JUPYTER_DATA_DIR: join(home, '.local', 'share', 'jupyter'),
    JUPYTER_CONFIG_DIR: join(home, '.jupyter'),
    JUPYTER_RUNTIME_DIR: join(home, '.local', 'share', 'jupyter', 'runtime'),
    IPYTHONDIR: join(home, '.ipython'),
  };
}

const SETPRIV = '/usr/bin/setpriv';
let setprivFound: boolean | undefined;

/**
 * argv run under util-linux's setpriv with a parent-death signal, so the
 * kernel is killed when kgate ends, even by `kill -9` (Linux only; elsewhere,
 * or without setpriv, argv as it is, and JPY_PARENT_PID alone tells ipykernel
 * to watch its parent). setpriv sets PR_SET_PDEATHSIG and then execs the
 * kernel, so the kernel keeps the pid kgate spawned.
 *
 * The caveat of PR_SET_PDEATHSIG: it fires when the *thread* that forked the
 * child exits, not the process. Node forks in the thread whose event loop
 * calls spawn(): kgate's main thread, which lives as long as the process.
 * (A provisioner used from a worker thread would see its kernels killed
 * when that worker ends.)
 */
function tiedToParent(argv: string[]): string[] {
  if (process.platform !== 'linux') return argv;
  setprivFound ??= existsSync(SETPRIV);
  return setprivFound ? [SETPRIV, '--pdeathsig', 'KILL', '--', ...argv] : argv;
}
/** Fresh starts tried when a probed port was taken before the kernel could bind it. */
const PORT_RACE_ATTEMPTS = 3;

/** Replaces `{connection_file}` and `{resource_dir}` in argv, as jupyter_client does. */
export function formatArgv(argv: string[], vars: Record<string, string>): string[] {
  return argv.map((a) => a.replace(/\{(connection_file|resource_dir)\}/g, (_, k: string) => vars[k] ?? ''));
}

function commandLineHas(pid: number, needle: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(needle);
  } catch (e) {
    // No /proc (not Linux): fall back to the pid alone.
    return (e as NodeJS.ErrnoException).code !== 'ENOENT' || !existsSync('/proc/self');
  }
}

function ignore(): void {
  // deliberately nothing: see the listener's comment
}

export class LocalProvisioner implements Provisioner {
  readonly name = 'local';
  readonly capabilities: ProvisionerCapabilities = { interrupt: 'signal', restart: 'in-place' };
  private child: ChildProcess | undefined;
  private pid: number | undefined;
  private connectionFile: string | undefined;
  private exitCode: number | undefined;
  private exitPromise: Promise<number> = Promise.resolve(-1);
  private stderrTail = '';
  private home: string | undefined;

  constructor(
    private readonly config: LocalProvisionerConfig,
    private readonly log?: Logger,
  ) {}

  /**
   * Spawns the kernel and waits until it answers at its address (the
   * gateway's `connect`). Ports are probed free by the gateway, then bound by
   * the kernel: another process can take one in between. A fresh start whose
   * kernel exits with "address already in use" simply starts again with new
   * ports (PORT_RACE_ATTEMPTS in all); a restart keeps its address, so there
   * it is a failure.
   */
  async launch(req: LaunchRequest, ctx: LaunchContext): Promise<ConnectionInfo> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.launchOnce(req, ctx);
      } catch (e) {
        if (ctx.signal.aborted) throw ctx.signal.reason;
        const raced = e instanceof KernelExited && /address already in use/i.test(this.stderrTail);
        if (raced && !req.reuse && attempt < PORT_RACE_ATTEMPTS) {
          this.log?.warn({ kernel: req.kernelId, attempt }, 'a kernel port was taken before the kernel bound it; starting again with new ports');
          continue;
        }
        if (e instanceof KgateError) throw e;
        const tail = this.diagnostics();
        const detail = `${e instanceof Error ? e.message : String(e)}${tail ? `; its stderr ends with: ${tail.slice(-1000)}` : ''}`;
        throw kernelStartFailed(`kernel ${req.spec.name} failed to start: ${detail}`, e);
      }
    }
  }

  private async launchOnce(req: LaunchRequest, ctx: LaunchContext): Promise<ConnectionInfo> {
    const { signal } = ctx;
    signal.throwIfAborted();
    const conn: ConnectionInfo = req.reuse ?? { ...(await req.ports.take(this.config.ip)), key: req.key, signature_scheme: 'hmac-sha256', kernel_name: req.spec.name };
    this.trace('kernel ports taken');
    this.connectionFile = join(this.config.runtimeDir, `kernel-${req.kernelId}.json`);
    this.home = join(this.config.runtimeDir, `home-${req.kernelId}`);
    this.child = undefined;
    this.pid = undefined;
    try {
      signal.throwIfAborted();
      await mkdir(this.config.runtimeDir, { recursive: true, mode: 0o700 });
      await writeFile(this.connectionFile, JSON.stringify(conn), { mode: 0o600 });
      // Kept across restarts (a relaunch finds it there), removed by cleanup().
      await mkdir(this.home, { recursive: true, mode: 0o700 });
      this.trace('connection file written');
      signal.throwIfAborted();
      ctx.onProgress('starting');
      await this.spawn(req, this.connectionFile, this.home);
      if (this.log?.isLevelEnabled('debug')) {
        // For bench/tools/start-trace.ts: when the process exists, and which ports to watch for its bind.
        this.log.debug(
          { at: performance.timeOrigin + performance.now(), pid: this.pid, shell: conn.shell_port, iopub: conn.iopub_port, control: conn.control_port },
          'kernel spawned',
        );
      }
      signal.throwIfAborted();
      ctx.onProgress('connecting');
      await ctx.connect(conn);
      return conn;
    } catch (e) {
      await this.abandon(req.reuse !== undefined);
      if (signal.aborted) throw signal.reason;
      if (e instanceof KgateError || e instanceof KernelExited) throw e;
      throw kernelStartFailed(`could not run kernelspec ${req.spec.name}: ${e instanceof Error ? e.message : String(e)}`, e);
    }
  }

  /** A step of a start, for bench/tools/start-trace.ts (debug level; a few lines per start). */
  private trace(what: string): void {
    if (this.log?.isLevelEnabled('debug')) this.log.debug({ at: performance.timeOrigin + performance.now() }, what);
  }

  private environment(req: LaunchRequest, home: string): Record<string, string> {
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (v !== undefined && !this.config.scrubEnv(k) && !NOT_INHERITED.has(k)) env[k] = v;
    }
    // The private home first: the kernelspec's env and the client's KERNEL_* still apply over it.
    Object.assign(env, privateHomeEnv(home), req.spec.spec.env ?? {}, req.env);
    // As jupyter_client sets it: ipykernel then exits when its parent changes.
    if (req.endWithGateway) env['JPY_PARENT_PID'] = String(process.pid);
    return env;
  }

  private async spawn(req: LaunchRequest, connectionFile: string, home: string): Promise<void> {
    const env = this.environment(req, home);
    let argv = formatArgv(req.spec.spec.argv, { connection_file: connectionFile, resource_dir: req.spec.resourceDir });
    if (argv.length === 0) throw kernelStartFailed(`kernelspec ${req.spec.name} has an empty argv`);
    const shown = argv[0]!;
    if (req.endWithGateway) argv = tiedToParent(argv);

    this.stderrTail = '';
    this.exitCode = undefined;
    const child = spawn(argv[0]!, argv.slice(1), {
      env,
      cwd: req.cwd,
      detached: true, // its own process group, so signals reach the kernel's children too
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    this.child = child;
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      this.stderrTail = (this.stderrTail + chunk).slice(-STDERR_TAIL_BYTES);
    });
    // A pipe or process error must never reach the process as an unhandled 'error':
    // the stderr tail is only diagnostics, and a failed kill is seen by polling.
    child.stderr!.on('error', ignore);
    this.exitPromise = new Promise<number>((resolve) => {
      child.once('exit', (code, signal) => {
        this.exitCode = code ?? (signal ? 128 : -1);
        resolve(this.exitCode);
      });
      child.on('error', (err) => {
        this.stderrTail += `\n${err.message}`;
        if (this.exitCode === undefined && child.pid === undefined) {
          this.exitCode = -1;
          resolve(-1);
        }
      });
    });
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', (err) => reject(kernelStartFailed(`could not run ${shown} for kernelspec ${req.spec.name}: ${err.message}`, err)));
    });
    this.pid = child.pid;
  }

  /**
   * Undoes a launch that failed or was cancelled: the process (if one started)
   * is killed and waited for, the connection file (it holds the key) removed,
   * and the private home too unless this was a relaunch, whose next attempt
   * keeps it.
   */
  private async abandon(relaunch: boolean): Promise<void> {
    if (this.child?.pid !== undefined && this.exitCode === undefined) {
      this.pid = this.child.pid;
      await this.kill();
      await this.wait(ABANDON_WAIT_MS);
    }
    if (this.connectionFile) await rm(this.connectionFile, { force: true }).catch(() => undefined);
    if (!relaunch && this.home) await rm(this.home, { recursive: true, force: true }).catch(() => undefined);
  }

  async poll(): Promise<number | undefined> {
    if (this.child) return this.exitCode;
    if (this.pid === undefined) return -1;
    return isProcessAlive(this.pid) ? undefined : -1;
  }

  exited(): Promise<number> {
    return this.exitPromise;
  }

  wait(timeoutMs: number): Promise<boolean> {
    return exitsWithin(this.exitPromise, timeoutMs);
  }

  async sendSignal(signal: NodeJS.Signals): Promise<void> {
    if (this.pid === undefined || this.exitCode !== undefined) return;
    try {
      process.kill(-this.pid, signal);
    } catch {
      try {
        process.kill(this.pid, signal);
      } catch {
        // already gone
      }
    }
  }

  terminate(): Promise<void> {
    return this.sendSignal('SIGTERM');
  }

  kill(): Promise<void> {
    return this.sendSignal('SIGKILL');
  }

  /** Kills what is left synchronously: for the gateway's last moment in `process.on('exit')`. */
  killNow(): void {
    if (this.pid !== undefined && this.exitCode === undefined) {
      try {
        process.kill(-this.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }

  async cleanup(restart: boolean): Promise<void> {
    if (restart) return;
    if (this.connectionFile) await rm(this.connectionFile, { force: true });
    if (this.home) await rm(this.home, { recursive: true, force: true });
  }

  diagnostics(): string {
    return this.stderrTail.trim();
  }

  getInfo(): ProvisionerInfo {
    return { provisioner: this.name, pid: this.pid ?? null, connectionFile: this.connectionFile ?? null, home: this.home ?? null };
  }

  async loadInfo(info: ProvisionerInfo): Promise<void> {
    this.pid = typeof info['pid'] === 'number' ? info['pid'] : undefined;
    this.connectionFile = typeof info['connectionFile'] === 'string' ? info['connectionFile'] : undefined;
    // Only a home where this provisioner makes them is ever removed by cleanup().
    const home = info['home'];
    this.home = typeof home === 'string' && resolve(dirname(home)) === resolve(this.config.runtimeDir) && basename(home).startsWith('home-') ? home : undefined;
    // A recorded pid may since have been reused by an unrelated process: it is the
    // kernel only if its command line names the kernel's connection file.
    if (this.pid !== undefined && this.connectionFile && !commandLineHas(this.pid, this.connectionFile)) this.pid = undefined;
    const pid = this.pid;
    if (pid === undefined) {
      this.exitCode = -1;
      this.exitPromise = Promise.resolve(-1);
      return;
    }
    // An adopted kernel is not our child: its end is seen by polling.
    this.exitPromise = new Promise<number>((resolve) => {
      const t = setInterval(() => {
        if (!isProcessAlive(pid)) {
          clearInterval(t);
          this.exitCode = -1;
          resolve(-1);
        }
      }, 1000);
      t.unref();
    });
  }
}

export function localProvisionerFactory(config: LocalProvisionerConfig): ProvisionerFactory {
  return { name: 'local', create: (_spec, { log }) => new LocalProvisioner(config, log) };
}
