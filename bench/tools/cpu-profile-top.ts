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

function main(): void {
  const args = process.argv.slice(2);
  const count = /^\d+$/.test(args[args.length - 1] ?? '') ? Number(args.pop()) : 25;
  if (args.length === 0) {
    process.stderr.write('usage: cpu-profile-top.ts FILE.cpuprofile... [count]\n');
    process.exit(2);
  }
  const self = new Map<string, number>();
  let total = 0;
  let idle = 0;
  for (const file of args) {
    const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;
    const byId = new Map(p.nodes.map((n) => [n.id, n]));
    for (let i = 0; i < p.samples.length; i++) {
      const n = byId.get(p.samples[i]!)!;
      const us = p.timeDeltas[i] ?? 0;
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
  console.log(`busy ${(total / 1e6).toFixed(2)} s, idle ${(idle / 1e6).toFixed(2)} s; top ${count} by self time:`);
  console.log('| self ms | % of busy | function |');
  console.log('| ---: | ---: | --- |');
  for (const [k, us] of [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, count)) {
    console.log(`| ${(us / 1000).toFixed(0)} | ${((100 * us) / total).toFixed(1)} | \`${k}\` |`);
  }
}

main();
