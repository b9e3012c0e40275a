/**
 * A kernel's own cgroup, for the sandbox provisioner: memory, CPU and a
 * process count, on cgroup v2 where it is mounted alone at /sys/fs/cgroup
 * (the usual case) and on cgroup v1 otherwise (one directory per controller,
 * as on this project's machines; a hybrid host's empty v2 hierarchy is not
 * used). The cgroup is made under kgate's own (so the kernel's limits nest in
 * whatever kgate was given), or under `parent` when the operator names one.
 *
 * Everything here is synchronous file I/O on cgroupfs: a few small writes per
 * launch, and a read of a counter when a kernel ends (from an exit handler).
 */
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join, resolve, sep } from 'node:path';

export interface CgroupLimits {
  /** Bytes; swap is limited to the same total where the kernel accounts it, so a kernel cannot page its way past it. */
  memory?: number | undefined;
  /** Cores (0.5: half of one core's time), as a CFS quota over a 100 ms period. */
  cpu?: number | undefined;
  /** Tasks (processes and threads) in the cgroup. */
  pids?: number | undefined;
}

export interface KernelCgroup {
  version: 1 | 2;
  /** v2: one directory; v1: one per controller, in CONTROLLERS order where mounted. */
  dirs: string[];
}

const ROOT = '/sys/fs/cgroup';
const CONTROLLERS = ['memory', 'cpu', 'pids'] as const;
const CFS_PERIOD_US = 100_000;
/** Bounded: a cgroup whose last task is dying can take a moment to empty. */
const REMOVE_ROUNDS = 50;
const REMOVE_PAUSE_MS = 20;

/** Only directories this module makes are ever removed (a record read back from the state dir is checked against it). */
export const CGROUP_PREFIX = 'kgate-kernel-';

function read(path: string): string {
  return readFileSync(path, 'utf8');
}

/** The cgroup of this process in a hierarchy: v2's `0::/path`, or v1's `N:controllers:/path` naming `controller`. */
function ownPath(controller: string | undefined): string {
  for (const line of read('/proc/self/cgroup').split('\n')) {
    const [, names, path] = line.match(/^\d+:([^:]*):(.*)$/) ?? [];
    if (path === undefined) continue;
    if (controller === undefined ? names === '' : names!.split(',').includes(controller)) return path;
  }
  return '/';
}

/** v1 mount points by controller, from /proc/self/mountinfo (a `cpu,cpuacct` mount serves `cpu`). */
function v1Mounts(): Map<string, { mountPoint: string; root: string }> {
  const out = new Map<string, { mountPoint: string; root: string }>();
  for (const line of read('/proc/self/mountinfo').split('\n')) {
    const [pre, post] = line.split(' - ');
    if (!pre || !post) continue;
    const [fstype, , superOpts] = post.split(' ');
    if (fstype !== 'cgroup' || !superOpts) continue;
    const f = pre.split(' ');
    for (const opt of superOpts.split(',')) {
      if ((CONTROLLERS as readonly string[]).includes(opt) && !out.has(opt)) out.set(opt, { root: f[3]!, mountPoint: f[4]! });
    }
  }
  return out;
}

export function cgroupVersion(): 1 | 2 {
  return existsSync(join(ROOT, 'cgroup.controllers')) ? 2 : 1;
}

/** Where a path of a hierarchy (as /proc/self/cgroup names it) is in the mounted tree; the mount itself when it is not visible (a container's view). */
function mountedDir(mountPoint: string, mountRoot: string, path: string): string {
  const rel = mountRoot !== '/' && path.startsWith(mountRoot) ? path.slice(mountRoot.length) : path;
  const dir = join(mountPoint, rel);
  return existsSync(dir) ? dir : mountPoint;
}

/**
 * Makes the kernel's cgroup `CGROUP_PREFIX + name` and sets its limits. A
 * cgroup left by an earlier process of the same kernel is reused. Throws
 * with the reason when it cannot be made (no cgroupfs, not writable, v2
 * without a delegated parent).
 */
export function createCgroup(name: string, limits: CgroupLimits, parent?: string): KernelCgroup {
  const leaf = CGROUP_PREFIX + name;
  if (cgroupVersion() === 2) {
    const base = parent !== undefined ? join(ROOT, parent) : mountedDir(ROOT, '/', ownPath(undefined));
    // The controllers must be enabled for the parent's children; this fails (EBUSY) when
    // the parent itself holds processes, which is why an operator may name a delegated parent.
    const available = read(join(base, 'cgroup.controllers')).split(/\s+/);
    const wanted = CONTROLLERS.filter((c) => available.includes(c));
    const enabled = read(join(base, 'cgroup.subtree_control')).split(/\s+/);
    const missing = wanted.filter((c) => !enabled.includes(c));
    if (missing.length > 0) writeFileSync(join(base, 'cgroup.subtree_control'), missing.map((c) => `+${c}`).join(' '));
    const dir = join(base, leaf);
    mkdirSync(dir, { recursive: true });
    const cg: KernelCgroup = { version: 2, dirs: [dir] };
    try {
      if (limits.memory) {
        writeFileSync(join(dir, 'memory.max'), String(limits.memory));
        if (existsSync(join(dir, 'memory.swap.max'))) writeFileSync(join(dir, 'memory.swap.max'), '0');
      }
      if (limits.cpu) writeFileSync(join(dir, 'cpu.max'), `${Math.max(1000, Math.round(limits.cpu * CFS_PERIOD_US))} ${CFS_PERIOD_US}`);
      if (limits.pids) writeFileSync(join(dir, 'pids.max'), String(limits.pids));
    } catch (e) {
      removeCgroupDirs(cg);
      throw e;
    }
    return cg;
  }
  const mounts = v1Mounts();
  const dirs: string[] = [];
  const cg: KernelCgroup = { version: 1, dirs };
  try {
    for (const c of CONTROLLERS) {
      const m = mounts.get(c);
      if (!m) {
        // A limit that cannot be applied is a failure, not a silent absence.
        if (limits[c]) throw new Error(`the cgroup v1 ${c} controller is not mounted, so the ${c} limit cannot be applied`);
        continue;
      }
      const base = parent !== undefined ? join(m.mountPoint, parent) : mountedDir(m.mountPoint, m.root, ownPath(c));
      const dir = join(base, leaf);
      mkdirSync(dir, { recursive: true });
      dirs.push(dir);
      if (c === 'memory' && limits.memory) {
        writeFileSync(join(dir, 'memory.limit_in_bytes'), String(limits.memory));
        // After the memory limit: the kernel refuses memsw below it.
        if (existsSync(join(dir, 'memory.memsw.limit_in_bytes'))) writeFileSync(join(dir, 'memory.memsw.limit_in_bytes'), String(limits.memory));
      }
      if (c === 'cpu' && limits.cpu) {
        writeFileSync(join(dir, 'cpu.cfs_period_us'), String(CFS_PERIOD_US));
        writeFileSync(join(dir, 'cpu.cfs_quota_us'), String(Math.max(1000, Math.round(limits.cpu * CFS_PERIOD_US))));
      }
      if (c === 'pids' && limits.pids) writeFileSync(join(dir, 'pids.max'), String(limits.pids));
    }
    if (dirs.length === 0) throw new Error('no cgroup controller (memory, cpu, pids) is mounted');
  } catch (e) {
    removeCgroupDirs(cg);
    throw e;
  }
  return cg;
}

/** Moves a process (and so everything it starts afterwards) into the cgroup. */
export function addProcess(cg: KernelCgroup, pid: number): void {
  for (const dir of cg.dirs) writeFileSync(join(dir, 'cgroup.procs'), String(pid));
}

/** The processes in the cgroup (the first directory's: every v1 directory holds the same ones). */
export function cgroupProcs(cg: KernelCgroup): number[] {
  const dir = cg.dirs[0];
  if (!dir) return [];
  try {
    return read(join(dir, 'cgroup.procs'))
      .split('\n')
      .filter((l) => l !== '')
      .map(Number);
  } catch {
    return [];
  }
}

/** How often the OOM killer killed a task of the cgroup's (v2 memory.events, v1 memory.oom_control), 0 when unknown. */
export function oomKills(cg: KernelCgroup): number {
  const dir = cg.version === 2 ? cg.dirs[0] : cg.dirs.find((d) => d.includes(`${sep}memory${sep}`));
  if (!dir) return 0;
  try {
    const text = read(join(dir, cg.version === 2 ? 'memory.events' : 'memory.oom_control'));
    return Number(text.match(/^oom_kill (\d+)$/m)?.[1] ?? 0);
  } catch {
    return 0;
  }
}

/** Whether a recorded cgroup directory is one this module made (so it may be killed and removed). */
export function isKernelCgroupDir(dir: string): boolean {
  const r = resolve(dir);
  return r.startsWith(`${ROOT}/`) && (r.split('/').pop() ?? '').startsWith(CGROUP_PREFIX);
}

function killAll(cg: KernelCgroup): void {
  const v2kill = cg.version === 2 ? join(cg.dirs[0]!, 'cgroup.kill') : undefined;
  if (v2kill && existsSync(v2kill)) {
    try {
      writeFileSync(v2kill, '1');
      return;
    } catch {
      // fall back to one kill per process
    }
  }
  for (const pid of cgroupProcs(cg)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

function removeCgroupDirs(cg: KernelCgroup): boolean {
  let all = true;
  for (const dir of cg.dirs) {
    try {
      rmdirSync(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') all = false;
    }
  }
  return all;
}

/** Kills whatever is still in the cgroup and removes it; true when it is gone. Bounded: about a second at most. */
export async function removeCgroup(cg: KernelCgroup): Promise<boolean> {
  for (let round = 0; round < REMOVE_ROUNDS; round++) {
    killAll(cg);
    if (removeCgroupDirs(cg)) return true;
    await new Promise((r) => setTimeout(r, REMOVE_PAUSE_MS));
  }
  return false;
}
