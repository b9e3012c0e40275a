/**
 * The embedded default: a kernel as a child process in its own process group,
 * with a connection file (mode 0600) in kgate's runtime directory.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { kernelStartFailed } from '../errors.js';
import { isProcessAlive } from './process-alive.js';
import type { ConnectionInfo, LaunchRequest, Provisioner, ProvisionerFactory, ProvisionerInfo } from './types.js';

export interface LocalProvisionerConfig {
  runtimeDir: string;
  ip: string;
  /** Environment variables of the gateway that never reach a kernel (its own secrets). */
  scrubEnv: (name: string) => boolean;
}

const STDERR_TAIL_BYTES = 4096;
/** Ports handed out recently, so two kernels starting at once never get the same one. */
const recentPorts = new Set<number>();

async function freePort(ip: string): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const srv = createServer();
      srv.unref();
      srv.once('error', reject);
      srv.listen(0, ip, () => {
        const addr = srv.address();
        srv.close(() => resolve(typeof addr === 'object' && addr ? addr.port : 0));
      });
    });
    if (port !== 0 && !recentPorts.has(port)) {
      recentPorts.add(port);
      if (recentPorts.size > 4096) recentPorts.delete(recentPorts.values().next().value!);
      return port;
    }
  }
}

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

export class LocalProvisioner implements Provisioner {
  readonly name = 'local';
  private child: ChildProcess | undefined;
  private pid: number | undefined;
  private connectionFile: string | undefined;
  private exitCode: number | undefined;
  private exitPromise: Promise<number> = Promise.resolve(-1);
  private stderrTail = '';

  constructor(private readonly config: LocalProvisionerConfig) {}

  async launch(req: LaunchRequest): Promise<ConnectionInfo> {
    const conn: ConnectionInfo = req.reuse ?? {
      transport: 'tcp',
      ip: this.config.ip,
      shell_port: await freePort(this.config.ip),
      iopub_port: await freePort(this.config.ip),
      stdin_port: await freePort(this.config.ip),
      control_port: await freePort(this.config.ip),
      hb_port: await freePort(this.config.ip),
      key: req.key,
      signature_scheme: 'hmac-sha256',
      kernel_name: req.spec.name,
    };
    await mkdir(this.config.runtimeDir, { recursive: true, mode: 0o700 });
    this.connectionFile = join(this.config.runtimeDir, `kernel-${req.kernelId}.json`);
    await writeFile(this.connectionFile, JSON.stringify(conn), { mode: 0o600 });

    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (v !== undefined && !this.config.scrubEnv(k)) env[k] = v;
    }
    Object.assign(env, req.spec.spec.env ?? {}, req.env);
    const argv = formatArgv(req.spec.spec.argv, { connection_file: this.connectionFile, resource_dir: req.spec.resourceDir });
    if (argv.length === 0) throw kernelStartFailed(`kernelspec ${req.spec.name} has an empty argv`);

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
    this.exitPromise = new Promise<number>((resolve) => {
      child.once('exit', (code, signal) => {
        this.exitCode = code ?? (signal ? 128 : -1);
        resolve(this.exitCode);
      });
      child.once('error', (err) => {
        this.stderrTail += `\n${err.message}`;
        this.exitCode = -1;
        resolve(-1);
      });
    });
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', (err) => reject(kernelStartFailed(`could not run ${argv[0]} for kernelspec ${req.spec.name}: ${err.message}`, err)));
    });
    this.pid = child.pid;
    return conn;
  }

  async poll(): Promise<number | undefined> {
    if (this.child) return this.exitCode;
    if (this.pid === undefined) return -1;
    return isProcessAlive(this.pid) ? undefined : -1;
  }

  exited(): Promise<number> {
    return this.exitPromise;
  }

  async wait(timeoutMs: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => {
      timer = setTimeout(resolve, timeoutMs, false);
    });
    try {
      return await Promise.race([this.exitPromise.then(() => true), timeout]);
    } finally {
      clearTimeout(timer);
    }
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
    if (!restart && this.connectionFile) await rm(this.connectionFile, { force: true });
  }

  diagnostics(): string {
    return this.stderrTail.trim();
  }

  getInfo(): ProvisionerInfo {
    return { provisioner: this.name, pid: this.pid ?? null, connectionFile: this.connectionFile ?? null };
  }

  async loadInfo(info: ProvisionerInfo): Promise<void> {
    this.pid = typeof info['pid'] === 'number' ? info['pid'] : undefined;
    this.connectionFile = typeof info['connectionFile'] === 'string' ? info['connectionFile'] : undefined;
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
  return { name: 'local', create: () => new LocalProvisioner(config) };
}
