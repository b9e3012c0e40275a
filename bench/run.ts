/**
 * kgate's benchmark: in one run, on one build of the bench kernel, compares
 * direct ZeroMQ (the ceiling), kgate (JSON and v1 WebSockets) and Debian's
 * jupyter server (defaults, and with its iopub rate limit off) over the
 * scenarios in bench/scenarios, then prints one table with ratios and writes
 * it as JSON. See bench/README.md.
 *
 *   npm run bench                       (BENCH_SCALE=tiny for a smoke run; BENCH_ONLY=a,b,...)
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, tmpdir, totalmem } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { LETTERS, readConfig, SCENARIO_IDS, type RunConfig } from './lib/config.js';
import { Lab, TARGETS } from './lib/lab.js';
import { killEverything } from './lib/procs.js';
import { checksText, Report } from './lib/report.js';
import { KGATE_CLI, PEERS_DIR, PYTHON, REPO } from './lib/servers.js';
import { SCENARIOS } from './scenarios/index.js';
import { errorText, runScenario, type Context } from './scenarios/types.js';

function tryRun(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 10_000 }).trim();
  } catch {
    return 'unknown';
  }
}

function machine(): Record<string, string | number> {
  let debian = 'unknown';
  try {
    debian = readFileSync('/etc/debian_version', 'utf8').trim();
  } catch {
    // not Debian
  }
  const py = tryRun(PYTHON, ['-c', 'import ipykernel, jupyter_server, zmq; print(ipykernel.__version__, jupyter_server.__version__, zmq.__version__, zmq.zmq_version())']).split(
    ' ',
  );
  const zeromqJs = (JSON.parse(readFileSync(join(REPO, 'node_modules/zeromq/package.json'), 'utf8')) as { version: string }).version;
  const dirty = tryRun('git', ['-C', REPO, 'status', '--porcelain', 'src']) !== '';
  // What scripts/setup-bench-peers.sh installed (its stamp: the pinned spec).
  const peer = (name: string): string => {
    try {
      return readFileSync(join(PEERS_DIR, name, 'kgate-pin'), 'utf8').split(' ')[0] ?? 'unknown';
    } catch {
      return 'not installed';
    }
  };
  return {
    cpus: availableParallelism(),
    cpuModel: cpus()[0]?.model ?? 'unknown',
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    debian,
    ipykernel: py[0] ?? 'unknown',
    jupyterServer: py[1] ?? 'unknown',
    pyzmq: py[2] ?? 'unknown',
    libzmq: py[3] ?? 'unknown',
    zeromqJs,
    peers: ['jupyter-server', 'kernel-gateway', 'enterprise-gateway'].map(peer).join(', '),
    kgateCommit: `${tryRun('git', ['-C', REPO, 'rev-parse', '--short', 'HEAD'])}${dirty ? ' + uncommitted changes in src/' : ''}`,
    kgateBuilt: statSync(KGATE_CLI).mtime.toISOString(),
  };
}

function outPath(cfg: RunConfig): string {
  if (cfg.out) return cfg.out;
  const complete = cfg.scale === 'full' && cfg.scenarios.length === SCENARIO_IDS.length && cfg.targets.length === TARGETS.length;
  return join(REPO, 'bench/results', complete ? 'latest.json' : 'last-run.json');
}

async function main(): Promise<void> {
  const cfg = readConfig();
  const root = mkdtempSync(join(tmpdir(), 'kgate-bench-'));
  const started = new Date();
  const t0 = performance.now();
  const log = (m: string): void => {
    process.stderr.write(`[bench ${((performance.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${m}\n`);
  };
  const onSignal = (): void => {
    killEverything();
    rmSync(root, { recursive: true, force: true });
    process.exit(130);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('exit', () => killEverything());

  const info = machine();
  console.log(`kgate benchmark, scale ${cfg.scale}: ${cfg.scenarios.map((s) => `${LETTERS[s]} ${s}`).join(', ')}`);
  if (cfg.scrapeSeconds > 0) console.log(`kgate's /metrics scraped every ${cfg.scrapeSeconds} s (BENCH_SCRAPE_SECONDS)`);
  console.log(
    `machine: ${info['cpus']} cpus (${info['cpuModel']}), ${info['memoryGiB']} GiB, node ${info['node']}, Debian ${info['debian']}, ipykernel ${info['ipykernel']}, jupyter_server ${info['jupyterServer']}, peers ${info['peers']}, kgate ${info['kgateCommit']} (dist built ${info['kgateBuilt']})`,
  );

  const lab = new Lab(root, { nodeArgs: cfg.kgateNodeArgs, args: cfg.kgateArgs, scrapeSeconds: cfg.scrapeSeconds, log });
  const report = new Report();
  const ctx: Context = { lab, sizes: cfg.sizes, report, targets: cfg.targets, log };
  // The shared servers start side by side while the first scenario begins.
  for (const kind of new Set(cfg.targets.map((t) => t.server))) {
    if (kind !== 'direct') lab.server(kind).catch((e: unknown) => log(`${kind} did not start: ${errorText(e)}`));
  }
  try {
    for (const id of cfg.scenarios) {
      const s = SCENARIOS[id];
      log(`${LETTERS[id]} ${s.title}`);
      await runScenario(ctx, s);
    }
  } finally {
    await lab.close();
    const left = killEverything();
    if (left > 0) log(`killed ${left} process(es) left over`);
  }

  const checks = report.checks(cfg.sizes.sockets.kgate);
  console.log('');
  console.log(report.table());
  console.log('');
  console.log('÷ direct ZMQ: value over direct ZeroMQ; ÷ jupyter-server: value over jupyter server with its rate limit off, same protocol (JSON for direct).');
  console.log('MB = 10^6 bytes of stream text; MiB, KiB = 2^20, 2^10 bytes of RSS.');
  if (checks.length) {
    console.log('');
    console.log(`targets (issue 4), scale ${cfg.scale}:`);
    console.log(checksText(checks));
  }
  const out = outPath(cfg);
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(
    out,
    `${JSON.stringify({ version: 1, scale: cfg.scale, scenarios: cfg.scenarios, targets: cfg.targets.map((t) => t.id), started: started.toISOString(), seconds: Math.round((performance.now() - t0) / 1000), machine: info, sizes: cfg.sizes, rows: report.rated(), checks }, null, 1)}\n`,
  );
  console.log('');
  console.log(`results: ${relative(process.cwd(), out) || out}; took ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  rmSync(root, { recursive: true, force: true });
}

main().catch((e: unknown) => {
  console.error(e);
  killEverything();
  process.exit(1);
});
