/**
 * Kernel lifecycle figures, with real ipykernels through a kgate process:
 * POST /api/kernels to 201 for a pooled kernel next to a cold one, 20
 * concurrent cold starts next to one, and how many kernels a new kgate adopts
 * after `kill -9` of the one that started them.
 *
 *   npm run bench:lifecycle        (BENCH_RUNS=N, default 7; BENCH_CONCURRENT=N, default 20)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fmt, median } from './lib/stats.js';

const RUNS = Number(process.env['BENCH_RUNS'] ?? 7);
const CONCURRENT = Number(process.env['BENCH_CONCURRENT'] ?? 20);
const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const TOKEN = 'bench-lifecycle';
const dir = mkdtempSync(join(tmpdir(), 'kgate-bench-life-'));
const started = new Set<ChildProcess>();

interface Gateway {
  child: ChildProcess;
  url: string;
  exited: Promise<void>;
}

async function kgate(args: string[]): Promise<Gateway> {
  const child = spawn(process.execPath, [CLI, '--port', '0', '--auth-token', TOKEN, '--runtime-dir', join(dir, 'rt'), '--log-level', 'warn', ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  started.add(child);
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('kgate did not start within 30 s')), 30_000);
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const m = /kgate listening on (\S+)/.exec(buf);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
  });
  return { child, url, exited };
}

async function api(g: Gateway, path: string, init: RequestInit = {}): Promise<Response> {
  return fetch(new URL(path, g.url), { ...init, headers: { Authorization: `token ${TOKEN}` } });
}

async function post(g: Gateway, env: Record<string, string> = {}): Promise<{ ms: number; id: string }> {
  const t0 = performance.now();
  const r = await api(g, 'api/kernels', { method: 'POST', body: JSON.stringify({ name: 'python3', env }) });
  const ms = performance.now() - t0;
  if (r.status !== 201) throw new Error(`start failed: ${r.status} ${await r.text()}`);
  return { ms, id: ((await r.json()) as { id: string }).id };
}

async function poolReady(g: Gateway, n: number, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = (await (await api(g, 'api/status')).json()) as { pools: Record<string, { ready: number }> };
    if ((s.pools['python3']?.ready ?? 0) >= n) return;
    if (Date.now() > deadline) throw new Error('the pool did not fill');
    await new Promise((r) => setTimeout(r, 100));
  }
}

const del = (g: Gateway, id: string): Promise<Response> => api(g, `api/kernels/${id}`, { method: 'DELETE' });

function kernelProcesses(): number {
  let n = 0;
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      if (readFileSync(`/proc/${e}/cmdline`, 'utf8').includes(join(dir, 'rt'))) n++;
    } catch {
      // ended meanwhile
    }
  }
  return n;
}

async function main(): Promise<void> {
  const rows: Array<[string, string, string]> = [];

  // Cold and pooled starts, alternating so both see the same machine load.
  const pooled = await kgate(['--pool', 'python3=1']);
  await poolReady(pooled, 1);
  const cold: number[] = [];
  const warm: number[] = [];
  await del(pooled, (await post(pooled, { KERNEL_X: 'cold' })).id); // warm-up
  for (let i = 0; i < RUNS; i++) {
    const c = await post(pooled, { KERNEL_X: 'cold' }); // an env the pool cannot honour: a cold start
    cold.push(c.ms);
    await del(pooled, c.id);
    await poolReady(pooled, 1);
    const w = await post(pooled, { KERNEL_USERNAME: 'bench' });
    warm.push(w.ms);
    await del(pooled, w.id);
    await poolReady(pooled, 1);
  }
  rows.push(['cold start, POST → 201 (p50)', `${fmt(median(cold))} ms`, `min ${fmt(Math.min(...cold))}, max ${fmt(Math.max(...cold))}`]);
  rows.push(['pooled start, POST → 201 (p50)', `${fmt(median(warm))} ms`, `${fmt(median(cold) / median(warm))}× faster`]);
  pooled.child.kill('SIGTERM');
  await pooled.exited;

  // Concurrent cold starts: the gateway never serialises them.
  const g = await kgate([]);
  const one = await post(g);
  await del(g, one.id);
  const t0 = performance.now();
  const many = await Promise.all(Array.from({ length: CONCURRENT }, () => post(g)));
  const total = performance.now() - t0;
  rows.push([
    `${CONCURRENT} concurrent cold starts, all 201`,
    `${fmt(total)} ms`,
    `one alone: ${fmt(one.ms)} ms; ${fmt(total / one.ms)}× (serialised would be ~${CONCURRENT}×, on ${
      readFileSync('/proc/cpuinfo', 'utf8')
        .split('\n')
        .filter((l) => l.startsWith('processor')).length
    } cores)`,
  ]);
  await Promise.all(many.map((k) => del(g, k.id)));
  g.child.kill('SIGTERM');
  await g.exited;

  // Adoption after kill -9.
  const stateDir = join(dir, 'state');
  const first = await kgate(['--state-dir', stateDir]);
  const ids = (await Promise.all(Array.from({ length: 5 }, () => post(first)))).map((k) => k.id);
  first.child.kill('SIGKILL');
  await first.exited;
  const runningAfterKill = kernelProcesses();
  const second = await kgate(['--state-dir', stateDir]);
  const listed = ((await (await api(second, 'api/kernels')).json()) as Array<{ id: string }>).map((k) => k.id);
  const adopted = ids.filter((id) => listed.includes(id)).length;
  rows.push(['kernels adopted after kill -9 of kgate', `${adopted} of ${runningAfterKill}`, `${ids.length} started, ${runningAfterKill} still running after the kill`]);
  await Promise.all(listed.map((id) => del(second, id)));
  second.child.kill('SIGTERM');
  await second.exited;

  console.log(`kgate kernel lifecycle, ipykernel, ${RUNS} runs`);
  console.log('| measure | value | note |');
  console.log('| --- | ---: | --- |');
  for (const [a, b, c] of rows) console.log(`| ${a} | ${b} | ${c} |`);
}

function cleanup(): void {
  for (const c of started) c.kill('SIGKILL');
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      if (readFileSync(`/proc/${e}/cmdline`, 'utf8').includes(dir)) process.kill(Number(e), 'SIGKILL');
    } catch {
      // ended meanwhile
    }
  }
  rmSync(dir, { recursive: true, force: true });
}

main()
  .catch((e: unknown) => {
    console.error(e);
    process.exitCode = 1;
  })
  .finally(cleanup);
