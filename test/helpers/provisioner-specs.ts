/**
 * Kernelspecs a test writes for a provisioner (Debian's python3 ipykernel
 * argv, with `metadata.kernel_provisioner` naming the provisioner), and what a
 * test reads from outside to find a kernel's processes and cgroups on the
 * host: /proc and /sys/fs/cgroup, never the provisioner's own bookkeeping.
 */
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CGROUP_PREFIX } from '../../src/provisioner/cgroups.js';
import type { KernelSpecFile } from '../../src/provisioner/types.js';

/** Debian's python3 kernelspec argv (/usr/share/jupyter/kernels/python3/kernel.json). */
export const IPYKERNEL_ARGV = ['/usr/bin/python3', '-m', 'ipykernel_launcher', '-f', '{connection_file}'];

export interface SpecOptions {
  provisioner: string;
  /** `metadata.kernel_provisioner.config`. */
  config?: Record<string, unknown>;
  /** `metadata.kgate.resources` (quantities as a kernelspec writes them: `256Mi`, `0.5`). */
  resources?: Record<string, string>;
  interruptMode?: 'signal' | 'message';
  argv?: string[];
}

/** Writes `<dir>/<name>/kernel.json` (directories mode 0755: a sandbox running as "nobody" binds and reads it). */
export function writeKernelspec(dir: string, name: string, o: SpecOptions): void {
  const d = join(dir, name);
  mkdirSync(d, { recursive: true, mode: 0o755 });
  const spec: KernelSpecFile = {
    argv: o.argv ?? IPYKERNEL_ARGV,
    display_name: name,
    language: 'python',
    ...(o.interruptMode ? { interrupt_mode: o.interruptMode } : {}),
    metadata: {
      kernel_provisioner: { provisioner_name: o.provisioner, config: o.config ?? {} },
      ...(o.resources ? { kgate: { resources: o.resources } } : {}),
    },
  };
  writeFileSync(join(d, 'kernel.json'), JSON.stringify(spec));
}

function readOr(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

/** Live (not zombie) processes, with their command lines and cgroup files, read from /proc once. */
export function hostProcesses(): Array<{ pid: number; cmdline: string; cgroup: string }> {
  const out: Array<{ pid: number; cmdline: string; cgroup: string }> = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    const status = readOr(`/proc/${entry}/status`);
    if (status === '' || /^State:\s+Z/m.test(status)) continue;
    out.push({ pid: Number(entry), cmdline: readOr(`/proc/${entry}/cmdline`).replace(/\0/g, ' ').trim(), cgroup: readOr(`/proc/${entry}/cgroup`) });
  }
  return out;
}

/** Pids of the processes in kernel `id`'s sandbox cgroup (any hierarchy, v1 or v2), from each process's /proc/PID/cgroup. */
export function pidsInKernelCgroup(id: string): number[] {
  const leaf = `/${CGROUP_PREFIX}${id}`;
  return hostProcesses()
    .filter((p) => p.cgroup.split('\n').some((l) => l.endsWith(leaf)))
    .map((p) => p.pid);
}

/** Every cgroup directory of kernel `id`'s sandbox under /sys/fs/cgroup (v1: one per controller; v2: one). */
export function kernelCgroupDirs(id: string): string[] {
  return cgroupDirsNamed((name) => name === CGROUP_PREFIX + id);
}

/** Cgroup directories under /sys/fs/cgroup whose own name matches, at any depth up to 7. */
export function cgroupDirsNamed(match: (name: string) => boolean): string[] {
  const found: string[] = [];
  const walk = (d: string, depth: number): void => {
    if (depth > 6) return;
    let entries;
    try {
      entries = readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (!e.isDirectory()) continue;
      if (match(e.name)) found.push(join(d, e.name));
      // Into a match too: a container's cgroup may sit in a kernel cgroup kgate made (its --cgroup-parent).
      walk(join(d, e.name), depth + 1);
    }
  };
  walk('/sys/fs/cgroup', 0);
  return found;
}
