/**
 * The sandbox provisioner (`provisioner_name: sandbox`): the kernelspec's argv
 * inside Debian's bubblewrap, with every namespace of its own (so a network
 * namespace with only a loopback; with egress allowed, one kgate made, with a
 * veth and a deny list: src/provisioner/egress.ts), a read-only view of the system's programs
 * and libraries and nothing else of the host, a private /tmp and home
 * (tmpfs), and its own cgroup for memory, CPU and a process count.
 *
 * ZeroMQ reaches it through `ipc://` sockets in a per-kernel directory, the
 * only host directory the kernel can write: the connection file says
 * `transport: ipc`, and ipykernel binds `{ip}-{port}` there. kgate connects to
 * the same sockets by their host path. Which view of the host, and why, is in
 * docs/operations.md ("Sandbox provisioner").
 *
 * Layout on the host, under the base directory (mode 0711: traversable by the
 * sandbox's user, not listable):
 *   <base>/<kernel id>/                 the kernel's directory, owned by the sandbox's user, mode 0700,
 *                                       bound at /run/kgate in the sandbox (and nothing else of <base>)
 *   <base>/<kernel id>/connection.json  the connection file (the kernel's own key), mode 0600
 *   <base>/<kernel id>/k-1 … k-5        the kernel's ipc sockets
 * The kernel can write that directory, so kgate only ever writes a file there
 * exclusively (O_EXCL: a symlink the kernel planted is never followed) and
 * removes it without following links.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, lstatSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { KgateError, kernelStartFailed } from '../errors.js';
import { formatMemory } from '../kernels/quantity.js';
import { addProcess, cgroupProcs, createCgroup, isKernelCgroupDir, oomKills, removeCgroup, type KernelCgroup } from './cgroups.js';
import { formatArgv, privateHomeEnv } from './local.js';
import { ensureBaseDir, ipcConnection, KERNEL_DIR, writeKernelDir } from './kernel-dir.js';
import { createEgress, DEFAULT_EGRESS_NET, egressNames, isEgressLink, removeEgress, type EgressLink } from './egress.js';
import { exitsWithin, isProcessAlive } from './process-alive.js';
import {
  type ConnectionInfo,
  type KernelExit,
  type LaunchContext,
  type LaunchRequest,
  type Provisioner,
  type ProvisionerCapabilities,
  type ProvisionerFactory,
  type ProvisionerInfo,
} from './types.js';

export interface SandboxProvisionerConfig {
  /** Where the kernels' directories are made (default: $XDG_RUNTIME_DIR, else /dev/shm, else the temp dir; a tmpfs, so what a kernel writes there is charged to its memory limit). */
  baseDir?: string;
  /** The bubblewrap binary (default /usr/bin/bwrap). */
  bwrap?: string;
  /** Tasks a kernel may have when its kernelspec says nothing (default 256). */
  pids?: number;
  /** Host paths a sandbox never sees even inside a bound directory (kgate's state and runtime dirs, its token and JWT secret files). */
  hide?: readonly string[];
  /** The host user the sandbox runs as (default: 65534 "nobody" when kgate runs as root, else kgate's own user). */
  runAs?: { uid: number; gid: number };
  /** Egress to public addresses for kernels whose kernelspec says nothing (`--sandbox-egress`; default false). */
  egress?: boolean;
  /** The IPv4 pool of the kernels' /30 links when they have egress (`--egress-net`; default 198.18.0.0/16). */
  egressNet?: string;
}

export type WorkingDirMode = 'none' | 'read-only' | 'read-write';

/** What a kernelspec's `metadata.kernel_provisioner.config` may say (the operator's, never a client's). */
interface SpecConfig {
  workingDir: WorkingDirMode;
  pids: number;
  roPaths: string[];
  cgroupParent: string | undefined;
  /** A network namespace of kgate's making with a veth and the deny list (src/provisioner/egress.ts), instead of bwrap's loopback-only one. */
  egress: boolean;
}

const BWRAP = '/usr/bin/bwrap';
const NSENTER = '/usr/bin/nsenter';
const DEFAULT_PIDS = 256;
/** Inside the sandbox: the kernel's home, its user. */
const HOME = '/home/kernel';
const INNER_ID = 1000;
const NOBODY = 65534;
const STDERR_TAIL_BYTES = 4096;
const ABANDON_WAIT_MS = 2000;

/**
 * What of the host's /etc a Python kernel needs: the dynamic loader's cache,
 * the time zone, certificates, Python's and matplotlib's own configuration,
 * the alternatives symlinks some programs resolve through. Not passwd, shadow,
 * hosts of the network or anything an operator keeps there.
 */
const ETC = ['ld.so.cache', 'ld.so.conf', 'ld.so.conf.d', 'localtime', 'timezone', 'alternatives', 'ssl', 'ca-certificates', 'mime.types', 'fonts', 'matplotlibrc'];

/**
 * Runs its arguments once a line comes on stdin: kgate moves this process into
 * the kernel's cgroup first, so bwrap and all it starts are inside it before
 * any of the kernel's code runs. A constant script: the arguments are "$@",
 * never part of it.
 */
const WAIT_THEN_EXEC = 'read -r _ && exec "$@"';

function defaultBaseDir(): string {
  const uid = process.getuid?.() ?? 'user';
  const runtime = process.env['XDG_RUNTIME_DIR'];
  if (runtime) return join(runtime, 'kgate-sandbox');
  return join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), `kgate-sandbox-${uid}`);
}

function defaultRunAs(): { uid: number; gid: number } {
  const uid = process.getuid?.() ?? NOBODY;
  return uid === 0 ? { uid: NOBODY, gid: NOBODY } : { uid, gid: process.getgid?.() ?? uid };
}

/** Reads the kernelspec's config; a mistake is the operator's, named as such. */
export function sandboxSpecConfig(specName: string, raw: Record<string, unknown>, defaults: { pids: number; egress?: boolean }): SpecConfig {
  const problems: string[] = [];
  const where = `kernelspec ${specName}: metadata.kernel_provisioner.config`;
  const wd = raw['working_dir'] ?? 'none';
  if (wd !== 'none' && wd !== 'read-only' && wd !== 'read-write') problems.push(`${where}.working_dir must be "none", "read-only" or "read-write"`);
  const pids = raw['pids'] ?? defaults.pids;
  if (typeof pids !== 'number' || !Number.isInteger(pids) || pids < 16 || pids > 1_000_000) problems.push(`${where}.pids must be a whole number from 16 to 1000000`);
  const ro = raw['ro_paths'] ?? [];
  if (!Array.isArray(ro) || !ro.every((p): p is string => typeof p === 'string' && isAbsolute(p) && !p.includes('\0')))
    problems.push(`${where}.ro_paths must be a list of absolute paths`);
  const parent = raw['cgroup_parent'];
  if (parent !== undefined && (typeof parent !== 'string' || parent.split('/').includes('..')))
    problems.push(`${where}.cgroup_parent must be a path below the cgroup root, without ".."`);
  const egress = raw['egress'] ?? defaults.egress ?? false;
  if (typeof egress !== 'boolean') problems.push(`${where}.egress must be true or false`);
  if (problems.length > 0) throw kernelStartFailed(problems.join('; '));
  return { workingDir: wd as WorkingDirMode, pids: pids as number, roPaths: ro as string[], cgroupParent: parent as string | undefined, egress: egress as boolean };
}

/** An argument bwrap reads as a path: absolute (so never taken for an option), without NUL. */
function pathArg(p: string, what: string): string {
  if (!isAbsolute(p) || p.includes('\0')) throw kernelStartFailed(`the sandbox cannot bind ${what} ${JSON.stringify(p)}: not an absolute path`);
  return resolve(p);
}

/** `--ro-bind` for a path that is a directory or file, `--symlink` for a symlink (so /lib → usr/lib stays one). */
function systemBind(path: string): string[] {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return [];
  }
  if (st.isSymbolicLink()) return ['--symlink', readlinkSync(path), path];
  return ['--ro-bind', path, path];
}

function isUnder(child: string, parent: string): boolean {
  const c = resolve(child);
  const p = resolve(parent);
  return c === p || c.startsWith(p.endsWith('/') ? p : `${p}/`);
}

function commandLineHas(pid: number, needle: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(needle);
  } catch {
    return false;
  }
}

function comm(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

function ignore(): void {
  // deliberately nothing: see the listener's comment
}

export class SandboxProvisioner implements Provisioner {
  readonly name = 'sandbox';
  // SIGINT goes to the kernel's own processes in the cgroup (not to bwrap, which would end the sandbox).
  readonly capabilities: ProvisionerCapabilities = { interrupt: 'signal', restart: 'in-place' };
  private child: ChildProcess | undefined;
  /** bwrap's pid (the wrapper shell execs it). */
  private pid: number | undefined;
  private dir: string | undefined;
  private cgroup: KernelCgroup | undefined;
  private oomBaseline = 0;
  private memoryLimit: number | undefined;
  private exitCode: number | undefined;
  private exit: KernelExit | undefined;
  private exitPromise: Promise<number> = Promise.resolve(-1);
  private stderrTail = '';
  /** The kernel's own network namespace and link when it has egress; kept across in-place restarts, removed at the final cleanup. */
  private egress: EgressLink | undefined;
  private readonly baseDir: string;
  private readonly runAs: { uid: number; gid: number };

  constructor(
    private readonly config: SandboxProvisionerConfig = {},
    private readonly log?: Logger,
  ) {
    this.baseDir = resolve(config.baseDir ?? defaultBaseDir());
    this.runAs = config.runAs ?? defaultRunAs();
  }

  async launch(req: LaunchRequest, ctx: LaunchContext): Promise<ConnectionInfo> {
    const { signal } = ctx;
    signal.throwIfAborted();
    const spec = sandboxSpecConfig(req.spec.name, req.config, { pids: this.config.pids ?? DEFAULT_PIDS, egress: this.config.egress ?? false });
    this.dir = join(this.baseDir, req.kernelId);
    const conn = ipcConnection(req, this.dir, 'sandbox');
    this.child = undefined;
    this.pid = undefined;
    try {
      await this.prepareDir(conn);
      signal.throwIfAborted();
      this.memoryLimit = req.resources.memory;
      try {
        this.cgroup = createCgroup(req.kernelId, { memory: req.resources.memory, cpu: req.resources.cpu, pids: spec.pids }, spec.cgroupParent);
      } catch (e) {
        throw kernelStartFailed(`the sandbox could not make the kernel's cgroup (memory, CPU and process limits): ${(e as Error).message}`, e);
      }
      this.oomBaseline = oomKills(this.cgroup);
      signal.throwIfAborted();
      if (spec.egress && !this.egress) {
        this.egress = await createEgress(req.kernelId, this.config.egressNet ?? DEFAULT_EGRESS_NET, () =>
          this.log?.warn('sandbox egress: turned on IPv4 forwarding (net.ipv4.ip_forward), as Docker and podman do; it stays on'),
        );
        signal.throwIfAborted();
      }
      ctx.onProgress('starting');
      await this.spawn(req, spec);
      signal.throwIfAborted();
      ctx.onProgress('connecting');
      await ctx.connect(conn);
      return conn;
    } catch (e) {
      await this.abandon(req.reuse !== undefined);
      if (signal.aborted) throw signal.reason;
      if (e instanceof KgateError) throw e;
      const tail = this.diagnostics();
      const detail = `${e instanceof Error ? e.message : String(e)}${tail ? `; its stderr ends with: ${tail.slice(-1000)}` : ''}`;
      throw kernelStartFailed(`sandboxed kernel ${req.spec.name} failed to start: ${detail}`, e);
    }
  }

  /** The base (0711) and the kernel's directory (the sandbox user's, 0700), and a fresh connection file in it, written exclusively. */
  private async prepareDir(conn: ConnectionInfo): Promise<void> {
    await ensureBaseDir(this.baseDir, 'sandbox');
    await writeKernelDir(this.dir!, conn, this.runAs, 'sandbox');
  }

  /** bwrap's arguments: paths only from the operator (kernelspec, gateway) or validated by the gateway (the working dir), each after its option. */
  private bwrapArgs(req: LaunchRequest, spec: SpecConfig): string[] {
    // With egress the network namespace is kgate's (entered before bwrap runs); every other namespace is the sandbox's own either way.
    const unshare = spec.egress ? ['--unshare-user', '--unshare-ipc', '--unshare-pid', '--unshare-uts', '--unshare-cgroup-try'] : ['--unshare-all', '--unshare-user'];
    const a: string[] = [...unshare, '--uid', String(INNER_ID), '--gid', String(INNER_ID), '--cap-drop', 'ALL', '--new-session', '--hostname', 'kernel'];
    // With a state dir the kernel must outlive a gateway that is killed, to be adopted.
    if (req.endWithGateway) a.push('--die-with-parent');
    a.push('--ro-bind', '/usr', '/usr');
    for (const p of ['/bin', '/sbin', '/lib', '/lib32', '/lib64', '/libx32']) a.push(...systemBind(p));
    for (const e of ETC) a.push(...systemBind(join('/etc', e)));
    for (const p of spec.roPaths) if (existsSync(p)) a.push('--ro-bind', pathArg(p, 'ro_paths entry'), resolve(p));
    a.push('--proc', '/proc', '--dev', '/dev');
    if (req.resources.memory) a.push('--size', String(req.resources.memory));
    a.push('--tmpfs', '/tmp');
    if (req.resources.memory) a.push('--size', String(req.resources.memory));
    a.push('--tmpfs', HOME);
    const resourceDir = pathArg(req.spec.resourceDir, 'the kernelspec directory');
    if (existsSync(resourceDir)) a.push('--ro-bind', resourceDir, resourceDir);
    let chdir = HOME;
    if (spec.workingDir !== 'none' && req.cwd !== undefined) {
      const cwd = pathArg(req.cwd, 'the working directory');
      if (cwd === '/') throw kernelStartFailed(`kernelspec ${req.spec.name}: the sandbox will not bind / as the working directory`);
      a.push(spec.workingDir === 'read-write' ? '--bind' : '--ro-bind', cwd, cwd);
      chdir = cwd;
    }
    // What must stay out of sight even where a bound directory holds it: kgate's own files, and every kernel's directory.
    const bound = [resourceDir, ...spec.roPaths, ...(chdir !== HOME ? [chdir] : [])];
    for (const h of [this.baseDir, ...(this.config.hide ?? [])]) {
      if (!isAbsolute(h) || !existsSync(h) || !bound.some((b) => isUnder(h, b))) continue;
      if (bound.some((b) => isUnder(b, h)))
        throw kernelStartFailed(`kernelspec ${req.spec.name}: the sandbox would bind ${bound.find((b) => isUnder(b, h))}, which holds kgate's ${h}`);
      a.push(...(statSync(h).isDirectory() ? ['--tmpfs', resolve(h)] : ['--ro-bind', '/dev/null', resolve(h)]));
    }
    a.push('--bind', this.dir!, KERNEL_DIR, '--remount-ro', '/', '--chdir', chdir);
    return a;
  }

  private environment(req: LaunchRequest): Record<string, string> {
    // Nothing of kgate's environment but the locale: the kernel's is its kernelspec's and the client's validated KERNEL_*.
    const env: Record<string, string> = { PATH: '/usr/local/bin:/usr/bin:/bin', USER: 'kernel', LOGNAME: 'kernel' };
    for (const k of ['LANG', 'LC_ALL', 'TZ']) if (process.env[k]) env[k] = process.env[k]!;
    Object.assign(env, privateHomeEnv(HOME), req.spec.spec.env ?? {}, req.env);
    // This environment also runs the wrapper shell and bwrap, on the host: nothing that changes how they load or start.
    for (const k of Object.keys(env)) if (k.startsWith('LD_') || k === 'ENV' || k === 'BASH_ENV' || k === 'GCONV_PATH') delete env[k];
    return env;
  }

  private async spawn(req: LaunchRequest, spec: SpecConfig): Promise<void> {
    const argv = formatArgv(req.spec.spec.argv, { connection_file: `${KERNEL_DIR}/connection.json`, resource_dir: req.spec.resourceDir });
    if (argv.length === 0) throw kernelStartFailed(`kernelspec ${req.spec.name} has an empty argv`);
    const args = this.bwrapArgs(req, spec);
    const bwrap = this.config.bwrap ?? BWRAP;
    if (!existsSync(bwrap)) throw kernelStartFailed(`the sandbox needs bubblewrap at ${bwrap} (Debian: apt-get install bubblewrap)`);
    this.stderrTail = '';
    this.exitCode = undefined;
    // "--" ends bwrap's options: the kernel's argv is never read as one.
    const wrapper = ['/bin/sh', '-c', WAIT_THEN_EXEC, 'kgate-sandbox', bwrap, ...args, '--', ...argv];
    const asRoot = process.getuid?.() === 0;
    // With egress, nsenter (as root) joins the kernel's network namespace, then becomes the sandbox's user, without groups, and execs the wrapper.
    const [cmd, ...cmdArgs] = this.egress
      ? [NSENTER, `--net=/run/netns/${this.egress.netns}`, '-S', String(this.runAs.uid), '-G', String(this.runAs.gid), '--', ...wrapper]
      : wrapper;
    const child = spawn(cmd!, cmdArgs, {
      env: this.environment(req),
      cwd: '/',
      detached: true,
      stdio: ['pipe', 'ignore', 'pipe'],
      ...(asRoot && !this.egress ? { uid: this.runAs.uid, gid: this.runAs.gid } : {}),
    });
    this.child = child;
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      this.stderrTail = (this.stderrTail + chunk).slice(-STDERR_TAIL_BYTES);
    });
    // As in local.ts: a pipe or process error is diagnostics, never an unhandled 'error'.
    child.stderr!.on('error', ignore);
    child.stdin!.on('error', ignore);
    this.exitPromise = new Promise<number>((done) => {
      child.once('exit', (code, sig) => {
        this.exitCode = code ?? (sig ? 128 : -1);
        this.noteExit(this.exitCode);
        done(this.exitCode);
      });
      child.on('error', (err) => {
        this.stderrTail += `\n${err.message}`;
        if (this.exitCode === undefined && child.pid === undefined) {
          this.exitCode = -1;
          done(-1);
        }
      });
    });
    await new Promise<void>((ok, fail) => {
      child.once('spawn', ok);
      child.once('error', (err) => fail(kernelStartFailed(`could not run bubblewrap for kernelspec ${req.spec.name}: ${err.message}`, err)));
    });
    this.pid = child.pid;
    // Into the cgroup before bwrap runs at all, then let it go.
    addProcess(this.cgroup!, child.pid!);
    child.stdin!.end('go\n');
  }

  /** Records why the process ended: the cgroup's OOM count rose since the launch means the memory limit killed it. */
  private noteExit(code: number): void {
    const killed = this.cgroup !== undefined && oomKills(this.cgroup) > this.oomBaseline;
    if (!killed) {
      this.exit = { code, reason: 'exited' };
      return;
    }
    const limit = this.memoryLimit ? ` of ${formatMemory(this.memoryLimit)}` : '';
    const detail = `the kernel was killed: it reached its memory limit${limit}`;
    this.exit = { code, reason: 'out_of_memory', detail };
    this.stderrTail = `${this.stderrTail}\n${detail}`.slice(-STDERR_TAIL_BYTES);
    this.log?.warn({ code, memoryLimit: this.memoryLimit }, detail);
  }

  private async abandon(relaunch: boolean): Promise<void> {
    if (this.child?.pid !== undefined && this.exitCode === undefined) {
      await this.kill();
      await this.wait(ABANDON_WAIT_MS);
    }
    await this.cleanup(relaunch).catch(() => undefined);
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

  /**
   * SIGKILL: everything in the cgroup, bwrap too. Any other signal: the
   * kernel's own processes only (bwrap would end the sandbox on SIGINT, and
   * pass nothing on), so an interrupt reaches the kernel and its children.
   */
  async sendSignal(sig: NodeJS.Signals): Promise<void> {
    if (this.pid === undefined || this.exitCode !== undefined) return;
    const all = this.cgroup ? cgroupProcs(this.cgroup) : [];
    const targets = sig === 'SIGKILL' ? [this.pid, ...all] : all.filter((p) => p !== this.pid && comm(p) !== 'bwrap');
    for (const p of targets) {
      try {
        process.kill(p, sig);
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

  killNow(): void {
    if (this.pid === undefined || this.exitCode !== undefined) return;
    for (const p of [this.pid, ...(this.cgroup ? cgroupProcs(this.cgroup) : [])]) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }

  /**
   * After the process ended: the cgroup goes (whatever is left in it is
   * killed first; a restart makes a fresh one, so its OOM count is the new
   * process's), and at a final cleanup the kernel's directory too.
   */
  async cleanup(restart: boolean): Promise<void> {
    if (this.cgroup) {
      if (!(await removeCgroup(this.cgroup))) this.log?.warn({ cgroup: this.cgroup.dirs }, 'the sandbox cgroup could not be removed');
      else this.cgroup = undefined;
    }
    if (!restart && this.dir) await rm(this.dir, { recursive: true, force: true });
    if (!restart && this.egress) {
      const left = await removeEgress(this.egress);
      if (left.length > 0) this.log?.warn({ left }, 'the sandbox egress namespace or rules could not all be removed');
      else this.egress = undefined;
    }
  }

  diagnostics(): string {
    return this.stderrTail.trim();
  }

  /** Kept across a restart until the next process ends: the supervisor reads it after relaunching a kernel that died. */
  lastExit(): KernelExit | undefined {
    return this.exit;
  }

  getInfo(): ProvisionerInfo {
    return {
      provisioner: this.name,
      pid: this.pid ?? null,
      dir: this.dir ?? null,
      cgroup: this.cgroup ?? null,
      memoryLimit: this.memoryLimit ?? null,
      oomBaseline: this.oomBaseline,
      egress: this.egress ?? null,
    };
  }

  async loadInfo(info: ProvisionerInfo): Promise<void> {
    this.pid = typeof info['pid'] === 'number' ? info['pid'] : undefined;
    // Only a directory and cgroup where this provisioner makes them are ever removed by cleanup().
    const dir = info['dir'];
    this.dir = typeof dir === 'string' && resolve(dirname(dir)) === this.baseDir && basename(dir) !== '' ? dir : undefined;
    const cg = info['cgroup'] as { version?: unknown; dirs?: unknown } | null;
    const dirs = Array.isArray(cg?.dirs) && cg.dirs.every((d): d is string => typeof d === 'string' && isKernelCgroupDir(d)) ? cg.dirs : [];
    this.cgroup = (cg?.version === 1 || cg?.version === 2) && dirs.length > 0 ? { version: cg.version, dirs } : undefined;
    this.memoryLimit = typeof info['memoryLimit'] === 'number' ? info['memoryLimit'] : undefined;
    this.oomBaseline = typeof info['oomBaseline'] === 'number' ? info['oomBaseline'] : 0;
    // Only the link made for this kernel (its names are the hash of its id, the name of its directory).
    const link = info['egress'];
    this.egress = this.dir && isEgressLink(link) && link.netns === egressNames(basename(this.dir)).netns ? link : undefined;
    // A recorded pid may since belong to another process: it is the sandbox only if its command line binds the kernel's directory.
    if (this.pid !== undefined && (!this.dir || !commandLineHas(this.pid, this.dir))) this.pid = undefined;
    const pid = this.pid;
    if (pid === undefined) {
      this.exitCode = -1;
      this.exitPromise = Promise.resolve(-1);
      return;
    }
    this.exitCode = undefined;
    // An adopted sandbox is not our child: its end is seen by polling.
    this.exitPromise = new Promise<number>((done) => {
      const t = setInterval(() => {
        if (!isProcessAlive(pid)) {
          clearInterval(t);
          this.exitCode = -1;
          this.noteExit(-1);
          done(-1);
        }
      }, 1000);
      t.unref();
    });
  }
}

export function sandboxProvisionerFactory(config: SandboxProvisionerConfig = {}): ProvisionerFactory {
  return { name: 'sandbox', create: (_spec, { log }) => new SandboxProvisioner(config, log) };
}
