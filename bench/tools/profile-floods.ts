/**
 * Profiles kgate (`node --cpu-prof`) over the 100-byte flood (b) and the
 * 64 KiB flood (c), one benchmark run each with kgate JSON alone (or the
 * targets in BENCH_TARGETS), and prints the top self-time frames of each.
 * Only the samples taken during the measured floods count (the benchmark
 * writes their spans to BENCH_WINDOWS_FILE; V8's profile timestamps and
 * `process.hrtime` are both CLOCK_MONOTONIC), so kgate's start-up, the
 * warm-up and shutdown are left out; the busy/idle line says how much of the
 * floods' time kgate's main thread was working.
 *
 *   npx tsx bench/tools/profile-floods.ts [out-dir] [count]     (BENCH_SCALE=tiny for a quick check)
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { topFrames, topFramesTable, type Window } from './cpu-profile-top.js';

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const out = resolve(process.argv[2] ?? '/tmp/kgate-flood-profiles');
const count = Number(process.argv[3] ?? '10');
const FLOODS = [
  ['b', 'flood-small', '100-byte flood'],
  ['c', 'flood-large', '64 KiB flood'],
] as const;

for (const [letter, id, title] of FLOODS) {
  const dir = join(out, id);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  process.stderr.write(`profiling kgate over (${letter}) ${title} into ${dir}\n`);
  execFileSync(process.execPath, [join(REPO, 'node_modules/tsx/dist/cli.mjs'), 'bench/run.ts'], {
    cwd: REPO,
    stdio: ['ignore', 'ignore', 'inherit'],
    timeout: 600_000,
    env: {
      ...process.env,
      BENCH_ONLY: letter,
      BENCH_TARGETS: process.env['BENCH_TARGETS'] || 'kgate-json',
      BENCH_KGATE_NODE_ARGS: `--cpu-prof --cpu-prof-dir=${dir}`,
      BENCH_OUT: join(dir, 'results.json'),
      BENCH_WINDOWS_FILE: join(dir, 'windows.jsonl'),
    },
  });
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.cpuprofile'))
    .map((f) => join(dir, f));
  if (files.length === 0) throw new Error(`no .cpuprofile in ${dir}: did kgate exit cleanly?`);
  const windows = readFileSync(join(dir, 'windows.jsonl'), 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Window);
  const seconds = windows.reduce((a, w) => a + (w.endUs - w.startUs) / 1e6, 0);
  console.log(`\n### (${letter}) ${title}: kgate, ${files.length} profile(s), ${windows.length} measured flood(s), ${seconds.toFixed(2)} s\n`);
  console.log(topFramesTable(topFrames(files, windows), count));
}
