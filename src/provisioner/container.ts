/**
 * The container provisioner (`provisioner_name: container`): the kernelspec's
 * argv in a rootful podman container of the kernelspec's image
 * (`metadata.kernel_provisioner.config.image`), with no network
 * (`--network none`; with `egress: true`, the sandbox's egress namespace,
 * src/provisioner/egress.ts), a read-only root with a tmpfs /tmp and home, no
 * capabilities, no new privileges, a non-root user, and podman's own memory,
 * CPU and process limits from the launch request.
 *
 * ZeroMQ reaches it as it reaches a sandbox (src/provisioner/sandbox.ts):
 * `ipc://` sockets in a per-kernel host directory bound at /run/kgate, the
 * connection file saying `transport: ipc`. kgate drives the podman CLI with
 * argument arrays only; nothing a client sends becomes an option (its
 * validated KERNEL_* variables reach podman as its environment, named by
 * `--env NAME` without a value). The flags, and the same with Docker, are in
 * docs/operations.md ("Container provisioner").
 *
 * Layout on the host, under the base directory (mode 0711):
 *   <base>/containers.conf              podman's configuration as kgate passes it (CONTAINERS_CONF)
 *   <base>/<kernel id>/                 the kernel's directory, owned by the container's user, mode 0700
 *   <base>/<kernel id>/connection.json  the connection file (the kernel's own key), mode 0600
 *   <base>/<kernel id>/k-1 … k-5        the kernel's ipc sockets
 */
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmdirSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { KgateError, kernelStartFailed } from '../errors.js';
import { formatMemory } from '../kernels/quantity.js';
import { cgroupVersion, createCgroup, isKernelCgroupDir, oomKills, removeCgroup, CGROUP_PREFIX, type KernelCgroup } from './cgroups.js';
import { formatArgv, privateHomeEnv } from './local.js';
import { ensureBaseDir, ipcConnection, KERNEL_DIR, writeKernelDir } from './kernel-dir.js';
import { createEgress, DEFAULT_EGRESS_NET, egressNames, isEgressLink, removeEgress, type EgressLink } from './egress.js';
import { isProcessAlive, exitsWithin } from './process-alive.js';
import type { ConnectionInfo, KernelExit, LaunchContext, LaunchRequest, Provisioner, ProvisionerCapabilities, ProvisionerFactory, ProvisionerInfo } from './types.js';

export interface ContainerProvisionerConfig {
  /** The podman binary (default /usr/bin/podman). */
  podman?: string;
  /** Where the kernels' directories and podman's configuration are made (default: /dev/shm/kgate-container-<uid>, else the temp dir). */
  baseDir?: string;
  /** Tasks a kernel may have when its kernelspec says nothing (default 256). */
  pids?: number;
  /** The `kgate.instance` label of this gateway's containers (default "default"): a gateway adopts and sweeps only its own instance's. */
  instance?: string;
  /** podman's global options before the command (default: cgroupfs, runc, file events; see GLOBAL_ARGS). */
  globalArgs?: readonly string[];
  /** The IPv4 pool of the /30 links of kernels with egress (default 198.18.0.0/16, shared with the sandbox's). */
  egressNet?: string;
}

/** What a kernelspec's config may say (the operator's, never a client's). */
interface SpecConfig {
  image: string;
  pids: number;
  pull: 'never' | 'missing';
  stopTimeout: number;
  /** The sandbox's egress namespace (src/provisioner/egress.ts) as the container's network, instead of none. */
  egress: boolean;
}

const PODMAN = '/usr/bin/podman';
const DEFAULT_PIDS = 256;
const HOME = '/home/kernel';
const INNER_ID = 1000;
const STDERR_TAIL_BYTES = 4096;
const ABANDON_WAIT_MS = 5000;
/** How long a podman command may take (a `run` creates the container's storage; a pull is bounded by the launch timeout instead). */
const PODMAN_TIMEOUT_MS = 60_000;
/** How near its limit the parent's peak must be for an unexplained SIGKILL to count as the OOM killer's (a few pages). */
/** How often a running container's init is looked for in /proc, and the rounds its recorded end is waited for. */
const EXIT_POLL_MS = 200;
const EXIT_RECORD_ROUNDS = 25;
const PEAK_SLACK_BYTES = 64 * 1024;
/**
 * Rootful podman as it works on a cgroup v1 host without systemd: the
 * cgroupfs manager, runc, events to a file (no journald).
 */
const GLOBAL_ARGS = ['--cgroup-manager=cgroupfs', '--runtime=runc', '--events-backend=file'];
/** The machine's hard ulimits may be lower than podman's default ones, which would fail every start. */
const CONTAINERS_CONF = '[containers]\ndefault_ulimits = []\n';
/** kgate's variables podman runs with, besides PATH and CONTAINERS_CONF. */
const PODMAN_ENV = ['HOME', 'LANG', 'TZ', 'TMPDIR'];
const LABEL_KERNEL = 'kgate.kernel-id';
const LABEL_INSTANCE = 'kgate.instance';
/** Set on a container that must not outlive its gateway (no state dir): `<pid>:<start time>` of that gateway. */
const LABEL_GATEWAY = 'kgate.ends-with-gateway';
const CONTAINER_ID = /^[0-9a-f]{64}$/;
/** An image reference as podman takes it: never an option, nothing but a name, tag and digest. */
const IMAGE_REF = /^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

function defaultBaseDir(): string {
  const uid = process.getuid?.() ?? 'user';
  return join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), `kgate-container-${uid}`);
}

/** Reads the kernelspec's config; a mistake is the operator's, named as such. */
export function containerSpecConfig(specName: string, raw: Record<string, unknown>, defaults: { pids: number }): SpecConfig {
  const problems: string[] = [];
  const where = `kernelspec ${specName}: metadata.kernel_provisioner.config`;
  const image = raw['image'];
  if (typeof image !== 'string' || !IMAGE_REF.test(image) || image.length > 255)
    problems.push(`${where}.image must be an image reference (localhost/kgate-kernel-python3:bookworm)`);
  const pids = raw['pids'] ?? defaults.pids;
  if (typeof pids !== 'number' || !Number.isInteger(pids) || pids < 16 || pids > 1_000_000) problems.push(`${where}.pids must be a whole number from 16 to 1000000`);
  const pull = raw['pull'] ?? 'never';
  if (pull !== 'never' && pull !== 'missing') problems.push(`${where}.pull must be "never" or "missing"`);
  const stop = raw['stop_timeout'] ?? 5;
  if (typeof stop !== 'number' || !Number.isInteger(stop) || stop < 0 || stop > 300) problems.push(`${where}.stop_timeout must be whole seconds from 0 to 300`);
  const egress = raw['egress'] ?? false;
  if (typeof egress !== 'boolean') problems.push(`${where}.egress must be true or false`);
  if (problems.length > 0) throw kernelStartFailed(problems.join('; '));
  return { image: image as string, pids: pids as number, pull: pull as 'never' | 'missing', stopTimeout: stop as number, egress: egress as boolean };
}

/** A process as `<pid>:<start time>`: a pid alone could be reused by the time it is read again. */
function processToken(pid: number): string | undefined {
  try {
    // Field 22 of /proc/<pid>/stat, after the command (which may hold spaces and parentheses).
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return `${pid}:${stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]}`;
  } catch {
    return undefined;
  }
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

export class ContainerProvisioner implements Provisioner {
  readonly name = 'container';
  readonly capabilities: ProvisionerCapabilities = { interrupt: 'signal', restart: 'in-place' };
  private containerId: string | undefined;
  private dir: string | undefined;
  private image: string | undefined;
  private kernelId: string | undefined;
  private stopTimeout = 5;
  private memoryLimit: number | undefined;
  /** cgroup v1 only: the kernel's parent cgroup, which holds its memory limit (see oomParent). */
  private cgroup: KernelCgroup | undefined;
  /** The kernel's network namespace and link when it has egress; kept across restarts, removed at the final cleanup. */
  private egress: EgressLink | undefined;
  private oomBaseline = 0;
  /** kgate itself sent SIGKILL (or removed the container): such an end is never taken for the OOM killer's. */
  private killSent = false;
  private exitCode: number | undefined;
  private exit: KernelExit | undefined;
  private exitPromise: Promise<number> = Promise.resolve(-1);
  private watcher: NodeJS.Timeout | undefined;
  private stderrTail = '';
  private readonly baseDir: string;
  private readonly podman: string;

  constructor(
    private readonly config: ContainerProvisionerConfig = {},
    private readonly log?: Logger,
  ) {
    this.baseDir = resolve(config.baseDir ?? defaultBaseDir());
    this.podman = config.podman ?? PODMAN;
  }

  private get instance(): string {
    return this.config.instance ?? 'default';
  }

  /** podman's environment: its configuration file, and (for `run`) the kernel's variables, which `--env NAME` takes from here. */
  private env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
    return { ...extra, ...this.podmanEnv() };
  }

  /** What podman itself runs with (these names, when the kernel has them too, go to it as `--env=NAME=value`). */
  private podmanEnv(): Record<string, string> {
    const env: Record<string, string> = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', CONTAINERS_CONF: join(this.baseDir, 'containers.conf') };
    for (const k of PODMAN_ENV) if (process.env[k]) env[k] = process.env[k]!;
    return env;
  }

  private args(cmd: string[]): string[] {
    return [...(this.config.globalArgs ?? GLOBAL_ARGS), ...cmd];
  }

  /** Runs podman with an argument array; never rejects (the code says how it went). */
  private run(cmd: string[], opts: { env?: Record<string, string>; timeoutMs?: number; signal?: AbortSignal } = {}): Promise<Run> {
    return new Promise((done) => {
      execFile(
        this.podman,
        this.args(cmd),
        // In a directory of kgate's: conmon may leave files (an `oom` marker) in its working directory.
        { cwd: tmpdir(), env: this.env(opts.env), timeout: opts.timeoutMs ?? PODMAN_TIMEOUT_MS, maxBuffer: 4 * 1024 * 1024, signal: opts.signal },
        (err, stdout, stderr) => {
          const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code as number) : -1) : 0;
          done({ code, stdout: String(stdout), stderr: String(stderr || (err && code === -1 ? err.message : '')) });
        },
      );
    });
  }

  private async ensureBase(): Promise<void> {
    await ensureBaseDir(this.baseDir, 'container');
    const conf = join(this.baseDir, 'containers.conf');
    let current = '';
    try {
      current = readFileSync(conf, 'utf8');
    } catch {
      // written below
    }
    if (current !== CONTAINERS_CONF) {
      await rm(conf, { force: true });
      await writeFile(conf, CONTAINERS_CONF, { mode: 0o644, flag: 'wx' });
    }
  }

  async launch(req: LaunchRequest, ctx: LaunchContext): Promise<ConnectionInfo> {
    const { signal } = ctx;
    signal.throwIfAborted();
    const spec = containerSpecConfig(req.spec.name, req.config, { pids: this.config.pids ?? DEFAULT_PIDS });
    if (!existsSync(this.podman)) throw kernelStartFailed(`the container provisioner needs podman at ${this.podman} (Debian: apt-get install podman runc)`);
    this.kernelId = req.kernelId;
    this.image = spec.image;
    this.stopTimeout = spec.stopTimeout;
    this.dir = join(this.baseDir, req.kernelId);
    const conn = ipcConnection(req, this.dir, 'container');
    this.containerId = undefined;
    this.exitCode = undefined;
    this.killSent = false;
    try {
      await this.ensureBase();
      sweepOnce(this);
      await this.ensureImage(spec, ctx);
      signal.throwIfAborted();
      await writeKernelDir(this.dir, conn, { uid: INNER_ID, gid: INNER_ID }, 'container');
      signal.throwIfAborted();
      this.memoryLimit = req.resources.memory;
      this.oomParent(req);
      if (spec.egress && !this.egress) {
        this.egress = await createEgress(req.kernelId, this.config.egressNet ?? DEFAULT_EGRESS_NET, () =>
          this.log?.warn('container egress: turned on IPv4 forwarding (net.ipv4.ip_forward), as Docker and podman do; it stays on'),
        );
        signal.throwIfAborted();
      }
      ctx.onProgress('starting');
      await this.create(req, spec, signal);
      signal.throwIfAborted();
      ctx.onProgress('connecting');
      await ctx.connect(conn);
      return conn;
    } catch (e) {
      await this.abandon(req.reuse !== undefined);
      if (signal.aborted) throw signal.reason;
      if (e instanceof KgateError) throw e;
      const tail = this.diagnostics();
      const detail = `${e instanceof Error ? e.message : String(e)}${tail ? `; its output ends with: ${tail.slice(-1000)}` : ''}`;
      // Which program in which image: podman's init only says "failed to exec pid1" when argv[0] is not there.
      const program = `${JSON.stringify(req.spec.spec.argv[0] ?? '')} in image ${spec.image}`;
      throw kernelStartFailed(`containerised kernel ${req.spec.name} (${program}) failed to start: ${detail}`, e);
    }
  }

  /** The image must be there already (`pull: never`, the default: no registry is assumed), or is pulled (`pull: missing`). */
  private async ensureImage(spec: SpecConfig, ctx: LaunchContext): Promise<void> {
    const exists = await this.run(['image', 'exists', spec.image], { signal: ctx.signal });
    if (exists.code === 0) return;
    if (exists.code !== 1) throw kernelStartFailed(`podman cannot check the image ${spec.image}: ${exists.stderr.trim().slice(-500)}`);
    if (spec.pull === 'never') {
      throw kernelStartFailed(`the kernel image ${spec.image} is not on this host (pull: never): build it with scripts/build-kernel-image.sh, or load it`);
    }
    ctx.onProgress('pulling', spec.image);
    // Bounded by the launch timeout (the signal), not by PODMAN_TIMEOUT_MS: a large image takes what it takes.
    const pulled = await this.run(['pull', '--quiet', spec.image], { signal: ctx.signal, timeoutMs: 0 });
    ctx.signal.throwIfAborted();
    if (pulled.code !== 0) throw kernelStartFailed(`the kernel image ${spec.image} could not be pulled: ${pulled.stderr.trim().slice(-500)}`);
  }

  /**
   * On cgroup v1, podman 4's conmon does not see the OOM killer end a
   * container (State.OOMKilled stays false), and the container's cgroup is
   * gone by the time `podman wait` returns. So there the memory limit goes on
   * a parent cgroup kgate makes (`--cgroup-parent`), whose `oom_kill` count
   * kgate reads when the kernel ends. On v2 podman's own `--memory` is used
   * and State.OOMKilled tells.
   */
  private oomParent(req: LaunchRequest): void {
    this.cgroup = undefined;
    this.oomBaseline = 0;
    if (!req.resources.memory || cgroupVersion() !== 1 || process.getuid?.() !== 0) return;
    try {
      this.cgroup = createCgroup(req.kernelId, { memory: req.resources.memory }, '/');
    } catch (e) {
      throw kernelStartFailed(`the container provisioner could not make the kernel's parent cgroup (its memory limit): ${(e as Error).message}`, e);
    }
    this.oomBaseline = oomKills(this.cgroup);
  }

  /**
   * cgroup v1: the OOM killer counts its kill in the victim's own cgroup (the
   * container's, removed with it), not in the parent whose limit it enforced.
   * So an end by SIGKILL that kgate did not send, with the parent's peak at
   * its limit, is a kill for memory; the parent's `oom_kill` count where the
   * kernel does count it there.
   */
  private parentSawOom(code: number): boolean {
    const cg = this.cgroup;
    if (!cg) return false;
    if (oomKills(cg) > this.oomBaseline) return true;
    if (code !== 137 || this.killSent || !this.memoryLimit) return false;
    const memDir = cg.dirs.find((d) => d.includes('/memory/'));
    try {
      const peak = Number(readFileSync(join(memDir!, 'memory.max_usage_in_bytes'), 'utf8').trim());
      return peak >= this.memoryLimit - PEAK_SLACK_BYTES;
    } catch {
      return false;
    }
  }

  /** The parent cgroup goes after its container: kgate's directories, and those podman made in the other v1 controllers. */
  private async removeParent(): Promise<void> {
    const cg = this.cgroup;
    if (!cg) return;
    // podman puts conmon in <parent>/conmon, and the container in <parent>/libpod-<id>: empty once it is removed,
    // which on a loaded machine can be a moment after `podman rm` returns (a child left makes the parent busy).
    let removed = false;
    for (let round = 0; round < PARENT_REMOVE_ROUNDS && !removed; round++) {
      removeChildren(cg.dirs[0]!.split('/').pop()!);
      removed = await removeCgroup(cg);
    }
    if (!removed) {
      this.log?.warn({ cgroup: cg.dirs }, "the kernel container's parent cgroup could not be removed");
      return;
    }
    this.cgroup = undefined;
    const leaf = cg.dirs[0]!.split('/').pop()!;
    for (const mount of v1MountPoints()) {
      try {
        rmdirSync(join(mount, leaf));
      } catch {
        // not made there, or already gone
      }
    }
  }

  /** The kernel's variables: the spec's, the client's validated KERNEL_*, a private home; never kgate's own. */
  private kernelEnv(req: LaunchRequest): Record<string, string> {
    const env: Record<string, string> = { PATH: '/usr/local/bin:/usr/bin:/bin', USER: 'kernel', LOGNAME: 'kernel' };
    Object.assign(env, privateHomeEnv(HOME), req.spec.spec.env ?? {}, req.env);
    for (const k of Object.keys(env)) if (!ENV_NAME.test(k)) delete env[k];
    return env;
  }

  /** `podman run -d`: every value after `=` in its own argument, the image after the options, the kernel's argv after the image. */
  private runArgs(req: LaunchRequest, spec: SpecConfig, env: Record<string, string>): string[] {
    const a = ['run', '--detach', `--name=kgate-${req.kernelId}`, `--label=${LABEL_KERNEL}=${req.kernelId}`, `--label=${LABEL_INSTANCE}=${this.instance}`];
    if (req.endWithGateway) {
      const token = processToken(process.pid);
      if (token) a.push(`--label=${LABEL_GATEWAY}=${token}`);
    }
    // With egress, the namespace kgate made (its deny list inside it, as for a sandbox); the container has no CAP_NET_ADMIN to change it.
    a.push(this.egress ? `--network=ns:/run/netns/${this.egress.netns}` : '--network=none');
    a.push('--hostname=kernel', '--init', '--read-only', '--read-only-tmpfs=false', '--cap-drop=ALL', '--security-opt=no-new-privileges');
    a.push(`--user=${INNER_ID}:${INNER_ID}`, `--workdir=${HOME}`, '--log-driver=k8s-file', '--log-opt=max-size=1mb');
    const size = req.resources.memory ? `,size=${req.resources.memory}` : '';
    a.push(`--tmpfs=/tmp:rw,nosuid,nodev,mode=1777${size}`, `--tmpfs=${HOME}:rw,nosuid,nodev,mode=0700,U${size}`);
    a.push(`--mount=type=bind,source=${this.dir!},destination=${KERNEL_DIR}`);
    a.push(`--pids-limit=${spec.pids}`);
    if (this.cgroup) a.push(`--cgroup-parent=/${CGROUP_PREFIX}${req.kernelId}`);
    else if (req.resources.memory) a.push(`--memory=${req.resources.memory}`, `--memory-swap=${req.resources.memory}`);
    if (req.resources.cpu) a.push(`--cpus=${req.resources.cpu}`);
    // A name only: podman takes the value from its own environment, so a client's value is never parsed as part of an option.
    // The names podman needs for itself (PATH, HOME, …) are kgate's or the kernelspec's, never a client's (only KERNEL_* are): those go with their value.
    const own = this.podmanEnv();
    for (const [k, v] of Object.entries(env)) a.push(k in own ? `--env=${k}=${v}` : `--env=${k}`);
    a.push(`--stop-timeout=${spec.stopTimeout}`, spec.image);
    return a;
  }

  private async create(req: LaunchRequest, spec: SpecConfig, signal: AbortSignal): Promise<void> {
    const argv = formatArgv(req.spec.spec.argv, { connection_file: `${KERNEL_DIR}/connection.json`, resource_dir: req.spec.resourceDir });
    if (argv.length === 0) throw kernelStartFailed(`kernelspec ${req.spec.name} has an empty argv`);
    if (this.dir!.includes(',')) throw kernelStartFailed(`the container base directory ${this.baseDir} must not hold a comma (podman's --mount syntax)`);
    this.stderrTail = '';
    // A container of a kernel that ended without cleanup (the same id, a restart whose rm failed) would block the name.
    await this.run(['rm', '--force', '--time=0', `kgate-${req.kernelId}`]);
    const env = this.kernelEnv(req);
    const r = await this.run([...this.runArgs(req, spec, env), ...argv], { env, signal });
    const id = r.stdout.trim().split('\n').pop() ?? '';
    if (r.code !== 0 || !CONTAINER_ID.test(id)) {
      this.stderrTail = r.stderr.slice(-STDERR_TAIL_BYTES);
      // A container may have been created though it could not start.
      if (CONTAINER_ID.test(id)) this.containerId = id;
      throw kernelStartFailed(`podman could not start the kernel ${req.spec.name} in ${spec.image}: ${r.stderr.trim().slice(-1000)}`);
    }
    this.containerId = id;
    this.log?.debug({ kernel: req.kernelId, container: id.slice(0, 12), image: spec.image }, 'kernel container started');
    this.follow(id);
  }

  /**
   * Follows the container to its end by its init's host pid (and that
   * process's start time, so a reused pid is not taken for it): a poll of
   * /proc, not a `podman wait` process per kernel (about 30 MB each). Then
   * reads why it ended, before anyone removes it.
   */
  private follow(id: string): void {
    clearInterval(this.watcher);
    this.exitCode = undefined;
    this.exitPromise = new Promise<number>((done) => {
      void (async () => {
        const r = await this.run(['inspect', '--type=container', '--format={{.State.Pid}}', id]);
        const pid = Number(r.stdout.trim());
        const token = r.code === 0 && Number.isInteger(pid) && pid > 0 ? processToken(pid) : undefined;
        if (token !== undefined) {
          await new Promise<void>((gone) => {
            this.watcher = setInterval(() => {
              if (processToken(pid) === token) return;
              clearInterval(this.watcher);
              this.watcher = undefined;
              gone();
            }, EXIT_POLL_MS);
            this.watcher.unref();
          });
        }
        const code = await this.noteExit(id, -1);
        if (this.containerId === id) this.exitCode = code;
        done(code);
      })();
    });
  }

  /** Why the container ended: podman's inspect says whether the memory limit's OOM killer ended it. */
  private async noteExit(id: string, waited: number): Promise<number> {
    let r: Run = { code: -1, stdout: '', stderr: '' };
    // conmon records the exit a moment after the process is gone: until then podman still says running (bounded).
    for (let i = 0; i < EXIT_RECORD_ROUNDS; i++) {
      r = await this.run(['inspect', '--type=container', '--format={{.State.OOMKilled}} {{.State.ExitCode}} {{.State.Running}}', id]);
      if (r.code !== 0 || !r.stdout.trim().endsWith(' true')) break;
      await new Promise((ok) => setTimeout(ok, EXIT_POLL_MS));
    }
    const [oom, exitCode] = r.stdout.trim().split(' ');
    const code = r.code === 0 && exitCode !== undefined && /^-?\d+$/.test(exitCode) ? Number(exitCode) : waited;
    if (r.code === 0) {
      const logs = await this.run(['logs', '--tail=40', id]);
      if (logs.code === 0) this.stderrTail = (logs.stdout + logs.stderr).slice(-STDERR_TAIL_BYTES);
    }
    const killed = oom === 'true' || this.parentSawOom(code);
    if (!killed) {
      this.exit = { code, reason: 'exited' };
      return code;
    }
    const limit = this.memoryLimit ? ` of ${formatMemory(this.memoryLimit)}` : '';
    const detail = `the kernel was killed: it reached its memory limit${limit}`;
    this.exit = { code, reason: 'out_of_memory', detail };
    this.stderrTail = `${this.stderrTail}\n${detail}`.slice(-STDERR_TAIL_BYTES);
    this.log?.warn({ code, memoryLimit: this.memoryLimit }, detail);
    return code;
  }

  private async abandon(relaunch: boolean): Promise<void> {
    if (this.containerId !== undefined && this.exitCode === undefined) {
      await this.kill();
      await this.wait(ABANDON_WAIT_MS);
    }
    await this.cleanup(relaunch).catch(() => undefined);
  }

  async poll(): Promise<number | undefined> {
    if (this.containerId === undefined) return this.exitCode ?? -1;
    return this.exitCode;
  }

  exited(): Promise<number> {
    return this.exitPromise;
  }

  wait(timeoutMs: number): Promise<boolean> {
    return exitsWithin(this.exitPromise, timeoutMs);
  }

  /** `podman kill --signal`: with `--init`, the container's init passes it on to the kernel (SIGINT interrupts it). */
  async sendSignal(sig: NodeJS.Signals): Promise<void> {
    if (this.containerId === undefined || this.exitCode !== undefined) return;
    if (sig === 'SIGKILL') this.killSent = true;
    const r = await this.run(['kill', `--signal=${sig}`, this.containerId]);
    if (r.code !== 0 && this.exitCode === undefined) this.log?.debug({ signal: sig, stderr: r.stderr.trim().slice(-300) }, 'podman kill failed (the container may have ended)');
  }

  /** `podman stop` in its first half (SIGTERM): the supervisor waits and kills, as for any provisioner. */
  terminate(): Promise<void> {
    return this.sendSignal('SIGTERM');
  }

  kill(): Promise<void> {
    return this.sendSignal('SIGKILL');
  }

  /** At the gateway's exit, for a container that must end with it: podman, synchronously. */
  killNow(): void {
    if (this.containerId === undefined || this.exitCode !== undefined) return;
    this.killSent = true;
    try {
      execFileSync(this.podman, this.args(['rm', '--force', '--time=0', this.containerId]), { env: this.env(), stdio: 'ignore', timeout: 10_000 });
    } catch {
      // the gateway is exiting; the next one's sweep removes what is left
    }
  }

  /** After the kernel ended: its container goes (once its end was read), and at a final cleanup its directory too. */
  async cleanup(restart: boolean): Promise<void> {
    const id = this.containerId;
    if (id !== undefined) {
      if (this.exitCode === undefined) await this.wait(ABANDON_WAIT_MS);
      if (this.exitCode === undefined) this.killSent = true;
      const r = await this.run(['rm', '--force', `--time=${this.stopTimeout}`, id]);
      if (r.code !== 0 && !/no such container/i.test(r.stderr))
        this.log?.warn({ container: id.slice(0, 12), stderr: r.stderr.trim().slice(-300) }, 'the kernel container could not be removed');
      else if (this.containerId === id) this.containerId = undefined;
    }
    if (this.containerId === undefined) await this.removeParent();
    if (!restart && this.dir) await rm(this.dir, { recursive: true, force: true });
    if (!restart && this.egress && this.containerId === undefined) {
      const left = await removeEgress(this.egress);
      if (left.length > 0) this.log?.warn({ left }, 'the container egress namespace or rules could not all be removed');
      else this.egress = undefined;
    }
  }

  diagnostics(): string {
    return this.stderrTail.trim();
  }

  lastExit(): KernelExit | undefined {
    return this.exit;
  }

  getInfo(): ProvisionerInfo {
    return {
      provisioner: this.name,
      container: this.containerId ?? null,
      kernelId: this.kernelId ?? null,
      dir: this.dir ?? null,
      image: this.image ?? null,
      memoryLimit: this.memoryLimit ?? null,
      cgroup: this.cgroup ?? null,
      oomBaseline: this.oomBaseline,
      stopTimeout: this.stopTimeout,
      egress: this.egress ?? null,
    };
  }

  /**
   * Adoption: the recorded container if it still carries this kernel's
   * labels, else the one podman finds by them (a record written before the
   * container id was known). A running one is followed again; an ended one is
   * left for cleanup(), which removes it.
   */
  async loadInfo(info: ProvisionerInfo): Promise<void> {
    const dir = info['dir'];
    this.dir = typeof dir === 'string' && resolve(dirname(dir)) === this.baseDir && basename(dir) !== '' ? dir : undefined;
    const kid = info['kernelId'];
    this.kernelId = typeof kid === 'string' && this.dir && basename(this.dir) === kid ? kid : undefined;
    this.image = typeof info['image'] === 'string' ? info['image'] : undefined;
    this.memoryLimit = typeof info['memoryLimit'] === 'number' ? info['memoryLimit'] : undefined;
    this.stopTimeout = typeof info['stopTimeout'] === 'number' ? info['stopTimeout'] : 5;
    // Only a cgroup this provisioner makes is ever removed by cleanup().
    const cg = info['cgroup'] as { version?: unknown; dirs?: unknown } | null;
    const dirs = Array.isArray(cg?.dirs) && cg.dirs.every((d): d is string => typeof d === 'string' && isKernelCgroupDir(d)) ? cg.dirs : [];
    this.cgroup = cg?.version === 1 && dirs.length > 0 ? { version: 1, dirs } : undefined;
    this.oomBaseline = typeof info['oomBaseline'] === 'number' ? info['oomBaseline'] : 0;
    // Only the link made for this kernel (its names are the hash of its id).
    const link = info['egress'];
    this.egress = this.kernelId && isEgressLink(link) && link.netns === egressNames(this.kernelId).netns ? link : undefined;
    this.containerId = undefined;
    this.exitCode = -1;
    this.exitPromise = Promise.resolve(-1);
    if (this.kernelId === undefined) return;
    const recorded = typeof info['container'] === 'string' && CONTAINER_ID.test(info['container']) ? info['container'] : undefined;
    const found = await this.findByLabels(this.kernelId);
    const id = found.find((c) => c.id === recorded) ?? found[0];
    if (!id) return;
    // Others of the same kernel (a relaunch interrupted midway) are not followed by anyone.
    for (const c of found) if (c !== id) await this.run(['rm', '--force', '--time=0', c.id]);
    this.containerId = id.id;
    if (id.running) {
      this.follow(id.id);
    } else {
      this.exitCode = await this.noteExit(id.id, -1);
      this.exitPromise = Promise.resolve(this.exitCode);
    }
  }

  /** This instance's containers of a kernel (or all of this instance's), as podman lists them by label. */
  async findByLabels(kernelId?: string): Promise<Array<{ id: string; running: boolean; labels: Record<string, string> }>> {
    const filters = [`--filter=label=${LABEL_INSTANCE}=${this.instance}`, ...(kernelId ? [`--filter=label=${LABEL_KERNEL}=${kernelId}`] : [])];
    const r = await this.run(['ps', '--all', '--no-trunc', ...filters, '--format=json']);
    if (r.code !== 0) {
      this.log?.warn({ stderr: r.stderr.trim().slice(-300) }, 'podman cannot list the kernel containers');
      return [];
    }
    let rows: Array<{ Id?: unknown; State?: unknown; Labels?: unknown }>;
    try {
      rows = JSON.parse(r.stdout || '[]') as typeof rows;
    } catch {
      return [];
    }
    return rows
      .filter((c): c is { Id: string; State: unknown; Labels: Record<string, string> } => typeof c.Id === 'string' && CONTAINER_ID.test(c.Id))
      .map((c) => ({ id: c.Id, running: c.State === 'running', labels: c.Labels ?? {} }));
  }

  /**
   * Removes this instance's containers that were to end with a gateway that is
   * gone (it was killed without a state dir, so nothing recorded them to adopt).
   */
  async sweep(): Promise<number> {
    const mine = processToken(process.pid);
    let removed = 0;
    for (const c of await this.findByLabels()) {
      const owner = c.labels[LABEL_GATEWAY];
      if (owner === undefined || owner === mine) continue;
      const pid = Number(owner.split(':')[0]);
      if (Number.isInteger(pid) && pid > 0 && isProcessAlive(pid) && processToken(pid) === owner) continue;
      const r = await this.run(['rm', '--force', '--time=0', c.id]);
      if (r.code === 0) removed++;
      const kid = c.labels[LABEL_KERNEL];
      if (!kid || basename(kid) !== kid || kid === '.' || kid === '..') continue;
      await rm(join(this.baseDir, kid), { recursive: true, force: true });
      // Its parent cgroup (cgroup v1), empty now.
      removeChildren(CGROUP_PREFIX + kid);
      for (const mount of v1MountPoints()) {
        try {
          rmdirSync(join(mount, CGROUP_PREFIX + kid));
        } catch {
          // not made there, or already gone
        }
      }
    }
    if (removed > 0) this.log?.info({ removed }, 'removed kernel containers of a gateway that is gone');
    return removed;
  }
}

/** Tries at removing a kernel's parent cgroup and what podman made in it, each up to a second (removeCgroup). */
const PARENT_REMOVE_ROUNDS = 5;

/** Where the cgroup v1 hierarchies are mounted (podman makes a --cgroup-parent in each). */
function v1MountPoints(): string[] {
  try {
    return readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .filter((l) => / - cgroup2? /.test(l))
      .map((l) => l.split(' ')[4]!)
      .filter((m) => m.startsWith('/sys/fs/cgroup/'));
  } catch {
    return [];
  }
}

/** Removes the empty cgroups podman made under a kernel's parent (its conmon's, its container's), in every v1 hierarchy. */
function removeChildren(leaf: string): void {
  for (const mount of v1MountPoints()) {
    let entries: string[];
    try {
      entries = readdirSync(join(mount, leaf), { withFileTypes: true })
        .filter((e) => e.isDirectory())
        .map((e) => e.name);
    } catch {
      continue;
    }
    for (const e of entries) {
      try {
        rmdirSync(join(mount, leaf, e));
      } catch {
        // not empty yet: removeCgroup's rounds report it
      }
    }
  }
}

/** One sweep per base directory and instance in this process, at the first launch. */
const swept = new Set<string>();
function sweepOnce(p: ContainerProvisioner): void {
  const key = `${p['baseDir']}\0${p['instance']}`;
  if (swept.has(key)) return;
  swept.add(key);
  void p.sweep().catch(() => undefined);
}

export function containerProvisionerFactory(config: ContainerProvisionerConfig = {}): ProvisionerFactory {
  return { name: 'container', create: (_spec, { log }) => new ContainerProvisioner(config, log) };
}
