/**
 * Processes the benchmark starts: every child is registered so that none
 * outlives the run (SIGTERM, a bounded wait, then SIGKILL of its process
 * group), plus free ports and memory readings from /proc.
 */
import { execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';

const children = new Set<ChildProcess>();
/** Strings (temp dirs) in the command line of anything the run started, even indirectly. */
const needles = new Set<string>();

/** Ports handed out in this run: kernels started side by side must never get the same one. */
const handedOut = new Set<number>();
const MAX_PROBES = 100;

/** A port free on 127.0.0.1 right now (bind port 0 and read it back), never one handed out before. */
export async function freePort(): Promise<number> {
  for (let i = 0; i < MAX_PROBES; i++) {
    const port = await new Promise<number>((resolve, reject) => {
      const srv = createServer();
      srv.once('error', reject);
      srv.listen(0, '127.0.0.1', () => {
        const a = srv.address();
        srv.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
      });
    });
    if (port !== 0 && !handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error(`no fresh free port in ${MAX_PROBES} probes`);
}

/**
 * Spawns a child in its own process group and registers it. `needle` is a
 * string that the command lines of its descendants contain (their runtime
 * dir), so that kernels the child started are found and killed too.
 */
export function spawnTracked(cmd: string, args: string[], opts: SpawnOptions, needle?: string): ChildProcess {
  const child = spawn(cmd, args, { ...opts, detached: true });
  children.add(child);
  if (needle !== undefined) needles.add(needle);
  child.once('exit', () => children.delete(child));
  child.once('error', () => children.delete(child));
  return child;
}

export function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/** Resolves true when the child has exited, false after `ms`. */
export function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (exited(child)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      child.off('exit', onExit);
      resolve(false);
    }, ms);
    function onExit(): void {
      clearTimeout(t);
      resolve(true);
    }
    child.once('exit', onExit);
  });
}

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}

/** SIGTERM, wait up to `graceMs`, then SIGKILL of the child's process group. */
export async function stopChild(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.pid === undefined || exited(child)) return;
  killGroup(child.pid, 'SIGTERM');
  if (!(await waitExit(child, graceMs))) {
    killGroup(child.pid, 'SIGKILL');
    await waitExit(child, 2000);
  }
}

/** Pids of live processes whose command line contains `needle` (read from /proc). */
export function processesMatching(needle: string): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${entry}/cmdline`, 'utf8').replace(/\0/g, ' ');
      if (!cmd.includes(needle)) continue;
      const state = /^State:\s+(\w)/m.exec(readFileSync(`/proc/${entry}/status`, 'utf8'))?.[1];
      if (state !== 'Z') out.push(Number(entry));
    } catch {
      // the process ended while we looked
    }
  }
  return out;
}

/** SIGKILLs, by pid, every process whose command line holds `needle`; returns how many. */
export function killMatching(needle: string): number {
  const pids = processesMatching(needle);
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
  }
  return pids.length;
}

/** Kills everything the run started that is still alive: called on every way out. */
export function killEverything(): number {
  let n = 0;
  for (const child of children) {
    if (child.pid !== undefined && !exited(child)) {
      killGroup(child.pid, 'SIGKILL');
      n++;
    }
  }
  for (const needle of needles) n += killMatching(needle);
  return n;
}

function statusField(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no ${field} for pid ${pid}`);
  return Number(m[1]) * 1024;
}

/** Resident set size in bytes. */
export function rssBytes(pid: number): number {
  return statusField(pid, 'VmRSS');
}

/** Peak resident set size since the process started, in bytes. */
export function peakRssBytes(pid: number): number {
  return statusField(pid, 'VmHWM');
}

/**
 * Samples a process's RSS every `everyMs` until stopped; `peakGrowth()` is
 * the highest RSS seen (or VmHWM, when the kernel's own peak moved during the
 * watch) minus the RSS at the start.
 */
export class RssWatch {
  readonly baseline: number;
  private readonly hwmAtStart: number;
  private max: number;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly pid: number,
    everyMs = 20,
  ) {
    this.baseline = rssBytes(pid);
    this.hwmAtStart = peakRssBytes(pid);
    this.max = this.baseline;
    this.timer = setInterval(() => this.sample(), everyMs);
  }

  private sample(): void {
    try {
      this.max = Math.max(this.max, rssBytes(this.pid));
    } catch {
      clearInterval(this.timer);
    }
  }

  /** Stops sampling; answers the peak growth in bytes. */
  stop(): number {
    this.sample();
    clearInterval(this.timer);
    try {
      const hwm = peakRssBytes(this.pid);
      if (hwm > this.hwmAtStart) this.max = Math.max(this.max, hwm);
    } catch {
      // the process is gone; keep what was sampled
    }
    return this.max - this.baseline;
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Rejects with `what` after `ms` unless `p` settles first. */
export async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        t = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(t);
  }
}

/** Clock ticks per second of /proc/PID/stat's times (`getconf CLK_TCK`; 100 on Linux). */
let ticksPerSecond: number | undefined;
function clockTicks(): number {
  if (ticksPerSecond === undefined) {
    let n = Number.NaN;
    try {
      n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8', timeout: 5000 }).trim());
    } catch {
      // no getconf: Linux's USER_HZ
    }
    ticksPerSecond = Number.isFinite(n) && n > 0 ? n : 100;
  }
  return ticksPerSecond;
}

/**
 * CPU time a process has used, user + system, over all its threads (ZeroMQ's
 * I/O thread, libuv's pool, V8's GC threads included), in seconds: fields 14
 * and 15 of /proc/PID/stat, in clock ticks (10 ms each). Not its children's:
 * a server's kernels are not counted.
 */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) is in parentheses and may hold spaces: count from after it.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / clockTicks();
}

/** This process's own CPU time (the benchmark's clients), in seconds, microsecond resolution. */
export function ownCpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/**
 * CPU used by a process (when given) and by the benchmark itself between
 * `new CpuWatch(pid)` and `stop()`, in seconds.
 */
export class CpuWatch {
  private readonly server0: number | undefined;
  private readonly own0 = ownCpuSeconds();
  private readonly t0 = performance.now();

  constructor(private readonly pid: number | undefined) {
    this.server0 = pid === undefined ? undefined : cpuSeconds(pid);
  }

  stop(): { server: number | undefined; own: number; wall: number } {
    return {
      server: this.pid === undefined || this.server0 === undefined ? undefined : cpuSeconds(this.pid) - this.server0,
      own: ownCpuSeconds() - this.own0,
      wall: (performance.now() - this.t0) / 1000,
    };
  }
}
