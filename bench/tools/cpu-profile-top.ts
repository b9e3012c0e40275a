/**
 * Prints the functions with the most self time in a V8 CPU profile (the
 * `.cpuprofile` files `node --cpu-prof` writes), to say where a process's
 * time goes:
 *
 *   BENCH_KGATE_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/kgate-prof" BENCH_ONLY=b BENCH_TARGETS=kgate-json npm run bench
 *   npx tsx bench/tools/cpu-profile-top.ts /tmp/kgate-prof/*.cpuprofile [count]
 */
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { pathToFileURL } from 'node:url';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

function where(url: string): string {
  if (url === '') return '(native)';
  const path = url.replace(/^file:\/\//, '');
  const nm = path.lastIndexOf('node_modules/');
  if (nm >= 0) return path.slice(nm + 'node_modules/'.length);
  return path.startsWith('/') ? relative(process.cwd(), path) : path;
}

export interface TopFrames {
  busyUs: number;
  idleUs: number;
  /** [frame, self µs], most first. */
  frames: Array<[string, number]>;
}

/** A span of CLOCK_MONOTONIC time in µs (`process.hrtime`; V8's profile timestamps are on the same clock). */
export interface Window {
  startUs: number;
  endUs: number;
}

/** Self time per frame (function and place), summed over the profiles; only samples inside `windows` when given. */
export function topFrames(files: readonly string[], windows?: readonly Window[]): TopFrames {
  const self = new Map<string, number>();
  let total = 0;
  let idle = 0;
  for (const file of files) {
    const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;
    const byId = new Map(p.nodes.map((n) => [n.id, n]));
    let at = p.startTime;
    for (let i = 0; i < p.samples.length; i++) {
      const n = byId.get(p.samples[i]!)!;
      const us = p.timeDeltas[i] ?? 0;
      at += us;
      if (windows && !windows.some((w) => at >= w.startUs && at <= w.endUs)) continue;
      const f = n.callFrame;
      if (f.functionName === '(idle)') {
        idle += us;
        continue;
      }
      total += us;
      const key = `${f.functionName || '(anonymous)'}  ${where(f.url)}${f.url ? `:${f.lineNumber + 1}` : ''}`;
      self.set(key, (self.get(key) ?? 0) + us);
    }
  }
  return { busyUs: total, idleUs: idle, frames: [...self.entries()].sort((a, b) => b[1] - a[1]) };
}

/** The top `count` frames as a Markdown table. */
export function topFramesTable(t: TopFrames, count: number): string {
  const out = [
    `busy ${(t.busyUs / 1e6).toFixed(2)} s, idle ${(t.idleUs / 1e6).toFixed(2)} s; top ${count} by self time:`,
    '| self ms | % of busy | function |',
    '| ---: | ---: | --- |',
  ];
  for (const [k, us] of t.frames.slice(0, count)) out.push(`| ${(us / 1000).toFixed(0)} | ${((100 * us) / t.busyUs).toFixed(1)} | \`${k}\` |`);
  return out.join('\n');
}

function main(): void {
  const args = process.argv.slice(2);
  const count = /^\d+$/.test(args[args.length - 1] ?? '') ? Number(args.pop()) : 25;
  if (args.length === 0) {
    process.stderr.write('usage: cpu-profile-top.ts FILE.cpuprofile... [count]\n');
    process.exit(2);
  }
  console.log(topFramesTable(topFrames(args), count));
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) main();
