/**
 * Run-time knobs, all from the environment:
 * - `BENCH_SCALE`: `full` (default) or `tiny` (a smoke run in well under a minute);
 * - `BENCH_ONLY=execute,flood-small,...` (or letters `a,b,...`): the scenarios to run;
 * - `BENCH_TARGETS=direct,kgate-json,...`: the targets to measure (default all);
 * - `BENCH_OUT`: where the JSON results go;
 * - `BENCH_KGATE_NODE_ARGS`, `BENCH_KGATE_ARGS`: extra `node` and kgate options
 *   (e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof` to profile kgate);
 * - `BENCH_KGATE_CLI`: another kgate build's `dist/cli.js` (default this checkout's);
 * - `BENCH_SCRAPE_SECONDS=1`: scrape every kgate's `GET /metrics` this often
 *   while it runs, as Prometheus would (default 0: never);
 * - `BENCH_KERNELS`, `BENCH_PEER_KERNELS`, `BENCH_STEP_SECONDS`, `BENCH_IDLE_SECONDS`,
 *   `BENCH_START_RATE` (each client's requests/s in (h)'s first step): the sizes of the
 *   scale scenarios (h, i).
 */
import { TARGETS, type Target } from './lab.js';

export type Scale = 'tiny' | 'full';

export const SCENARIO_IDS = ['execute', 'flood-small', 'flood-large', 'parallel', 'sockets', 'slow-client', 'start', 'many-kernels', 'idle'] as const;
export type ScenarioId = (typeof SCENARIO_IDS)[number];
export const LETTERS: Record<ScenarioId, string> = {
  execute: 'a',
  'flood-small': 'b',
  'flood-large': 'c',
  parallel: 'd',
  sockets: 'e',
  'slow-client': 'f',
  start: 'g',
  'many-kernels': 'h',
  idle: 'i',
};

export interface Sizes {
  /** (a) sequential executes of `x`, after a warm-up. */
  execute: { warmup: number; count: number; timeoutMs: number };
  /** (b), (c) `flood N SIZE`, repeated; the median is quoted. */
  floodSmall: { n: number; size: number; warmupN: number; repeats: number; timeoutMs: number };
  floodLarge: { n: number; size: number; warmupN: number; repeats: number; timeoutMs: number };
  /** (d) kernels in parallel, each running sequential executes for `seconds`. */
  parallel: { kernels: number; seconds: number; timeoutMs: number };
  /** (e) WebSockets opened on one kernel, in batches; jupyter server is expected to stop near 249. */
  sockets: { kgate: number; jupyter: number; batch: number; jupyterBatch: number; settleMs: number; timeoutMs: number };
  /**
   * (f) the flood (N × SIZE) that runs past a client that does not read; `maxClientBuffer` for kgate when set;
   * `closeWaitMs`: how long the slow client, reading again, is watched for the gateway closing it.
   */
  slow: { n: number; size: number; maxClientBuffer: number | undefined; closeWaitMs: number; timeoutMs: number };
  /** (g) starts per kernel and target. */
  start: { runs: number; timeoutMs: number };
  /**
   * (h), (i) kernels (BENCH_KERNELS), capped for the Python servers (BENCH_PEER_KERNELS); (h): clients per
   * kernel, per-client requests/s of the first step (doubled each step), seconds per step, at most this many
   * steps and seconds in all; (i): seconds idle (BENCH_IDLE_SECONDS).
   */
  scale: {
    kernels: number;
    peerKernels: number;
    clientsEach: number;
    startRate: number;
    stepSeconds: number;
    maxSteps: number;
    budgetSeconds: number;
    idleSeconds: number;
  };
  /** Servers of their own for the scenarios that read memory (e, f), or the shared ones. */
  freshServers: boolean;
}

const FULL: Sizes = {
  execute: { warmup: 200, count: 2000, timeoutMs: 10_000 },
  floodSmall: { n: 100_000, size: 100, warmupN: 5_000, repeats: 5, timeoutMs: 120_000 },
  floodLarge: { n: 4000, size: 65_536, warmupN: 200, repeats: 5, timeoutMs: 120_000 },
  parallel: { kernels: 32, seconds: 5, timeoutMs: 10_000 },
  sockets: { kgate: 10_000, jupyter: 1000, batch: 500, jupyterBatch: 25, settleMs: 1000, timeoutMs: 300_000 },
  slow: { n: 16_384, size: 65_536, maxClientBuffer: undefined, closeWaitMs: 1500, timeoutMs: 240_000 },
  start: { runs: 5, timeoutMs: 60_000 },
  scale: { kernels: 200, peerKernels: 40, clientsEach: 5, startRate: 0.5, stepSeconds: 10, maxSteps: 10, budgetSeconds: 150, idleSeconds: 60 },
  freshServers: true,
};

const TINY: Sizes = {
  execute: { warmup: 5, count: 15, timeoutMs: 10_000 },
  floodSmall: { n: 2000, size: 100, warmupN: 100, repeats: 1, timeoutMs: 20_000 },
  floodLarge: { n: 40, size: 65_536, warmupN: 4, repeats: 1, timeoutMs: 20_000 },
  parallel: { kernels: 2, seconds: 0.5, timeoutMs: 10_000 },
  sockets: { kgate: 40, jupyter: 20, batch: 20, jupyterBatch: 10, settleMs: 200, timeoutMs: 30_000 },
  // A small send bound, so that kgate's slow-client policy is exercised at this size too.
  slow: { n: 400, size: 65_536, maxClientBuffer: 4 * 1024 * 1024, closeWaitMs: 300, timeoutMs: 30_000 },
  start: { runs: 1, timeoutMs: 30_000 },
  scale: { kernels: 2, peerKernels: 2, clientsEach: 2, startRate: 4, stepSeconds: 0.5, maxSteps: 2, budgetSeconds: 5, idleSeconds: 1 },
  freshServers: false,
};

export interface RunConfig {
  scale: Scale;
  sizes: Sizes;
  scenarios: ScenarioId[];
  targets: Target[];
  out: string | undefined;
  kgateNodeArgs: string[];
  kgateArgs: string[];
  /** Seconds between scrapes of each kgate's /metrics; 0: none. */
  scrapeSeconds: number;
}

function scrapeSeconds(s: string | undefined): number {
  const n = Number(s || '0');
  if (!Number.isFinite(n) || n < 0 || n > 3600) throw new Error(`BENCH_SCRAPE_SECONDS must be seconds between 0 and 3600, not ${s}`);
  return n;
}

function count(name: string, s: string | undefined, fallback: number, max: number): number {
  if (s === undefined || s === '') return fallback;
  const n = Number(s);
  if (!Number.isFinite(n) || n <= 0 || n > max) throw new Error(`${name} must be a number above 0 and at most ${max}, not ${s}`);
  return n;
}

/** The scale scenarios' sizes with the environment's overrides. */
function scaleSizes(base: Sizes['scale'], env: NodeJS.ProcessEnv): Sizes['scale'] {
  return {
    ...base,
    kernels: Math.round(count('BENCH_KERNELS', env['BENCH_KERNELS'], base.kernels, 2000)),
    peerKernels: Math.round(count('BENCH_PEER_KERNELS', env['BENCH_PEER_KERNELS'], base.peerKernels, 2000)),
    startRate: count('BENCH_START_RATE', env['BENCH_START_RATE'], base.startRate, 1000),
    stepSeconds: count('BENCH_STEP_SECONDS', env['BENCH_STEP_SECONDS'], base.stepSeconds, 600),
    idleSeconds: count('BENCH_IDLE_SECONDS', env['BENCH_IDLE_SECONDS'], base.idleSeconds, 3600),
  };
}

function words(s: string | undefined): string[] {
  return (s ?? '').split(/[\s,]+/).filter(Boolean);
}

export function readConfig(env: NodeJS.ProcessEnv = process.env): RunConfig {
  const scale = (env['BENCH_SCALE'] || 'full') as Scale;
  if (scale !== 'tiny' && scale !== 'full') throw new Error(`BENCH_SCALE must be tiny or full, not ${scale}`);
  const only = words(env['BENCH_ONLY']);
  const scenarios =
    only.length === 0
      ? [...SCENARIO_IDS]
      : only.map((w) => {
          const id = SCENARIO_IDS.find((s) => s === w || LETTERS[s] === w);
          if (id === undefined) throw new Error(`BENCH_ONLY: unknown scenario ${w} (know ${SCENARIO_IDS.join(', ')}, or a..i)`);
          return id;
        });
  const wanted = words(env['BENCH_TARGETS']);
  for (const w of wanted) {
    if (!TARGETS.some((t) => t.id === w)) throw new Error(`BENCH_TARGETS: unknown target ${w} (know ${TARGETS.map((t) => t.id).join(', ')})`);
  }
  return {
    scale,
    sizes: { ...(scale === 'tiny' ? TINY : FULL), scale: scaleSizes((scale === 'tiny' ? TINY : FULL).scale, env) },
    scenarios: SCENARIO_IDS.filter((s) => scenarios.includes(s)),
    targets: TARGETS.filter((t) => wanted.length === 0 || wanted.includes(t.id)),
    out: env['BENCH_OUT'] || undefined,
    kgateNodeArgs: words(env['BENCH_KGATE_NODE_ARGS']),
    kgateArgs: words(env['BENCH_KGATE_ARGS']),
    scrapeSeconds: scrapeSeconds(env['BENCH_SCRAPE_SECONDS']),
  };
}
