/**
 * uWebSockets.js against ws (issue 16): the same ClientRelay, the same kernel
 * link, the same kernel, the same client; only the WebSocket server differs.
 *
 * One child process (bench/tools/ws-engines-gateway.ts) runs the real kgate
 * gateway, whose channels endpoint is ws, and beside it a uWS App on a second
 * 127.0.0.1 port that attaches a ClientRelay with a UwsClientSocket to the
 * same kernel's link. One `kgate-bench` kernel; one client at a time (iopub
 * goes to every client of a kernel), alternating engines (ws first in odd
 * repeats, uWS first in even ones), for the JSON and v1 protocols. Each block
 * measures:
 * - the execute round trip (`x`, sequential; p50 and p99 of `--executes`);
 * - a flood of `--small` 100-byte stream messages: msgs/s, and the gateway
 *   process's CPU (user + system, all threads, /proc/PID/stat) per message;
 * - a flood of `--large` 64 KiB stream messages: MB/s, and its CPU per MiB.
 * The table holds the median over `--repeats` blocks of each figure, and
 * uWS/ws (below 1 is uWS better for times and CPU, above 1 for rates).
 *
 * uWS is optional and not a dependency: it is loaded from `--uws DIR` (a dir
 * with node_modules/@trufflesuite/uws-js-unofficial, e.g. after
 * `npm install --prefix /tmp/uws @trufflesuite/uws-js-unofficial@20.30.0-unofficial.0`),
 * else $KGATE_UWS_DIR, else the repository's node_modules; absent, the tool
 * says so and exits 0. Needs `npm run build` (the bench kernel).
 *
 *   npx tsx bench/tools/ws-engines.ts --uws /tmp/uws [--repeats 5] [--executes 2000] [--small 100000] [--large 4000] [--json out.json]
 *   npx tsx bench/tools/ws-engines.ts --uws /tmp/uws --tiny     # a check that it works, in seconds
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, createWriteStream } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { kernelInfoHandshake } from '../lib/lab.js';
import { CpuWatch, sleep, spawnTracked, stopChild, within, killMatching } from '../lib/procs.js';
import { BENCH_KERNEL_JS, REPO, createKernel, deleteKernel, type Gateway } from '../lib/servers.js';
import { median, percentile } from '../lib/stats.js';
import { WsSession, type WsProtocol } from '../lib/ws-session.js';

const PACKAGE = '@trufflesuite/uws-js-unofficial';
type Engine = 'ws' | 'uws';
const PROTOCOLS: readonly WsProtocol[] = ['json', 'v1'];
const SMALL = 100;
const LARGE = 65_536;
const TIMEOUT_MS = 120_000;

const { values: args } = parseArgs({
  options: {
    uws: { type: 'string' },
    repeats: { type: 'string', default: '5' },
    executes: { type: 'string', default: '2000' },
    small: { type: 'string', default: '100000' },
    large: { type: 'string', default: '4000' },
    tiny: { type: 'boolean', default: false },
    json: { type: 'string' },
  },
});
const tiny = args.tiny === true;
const sizes = {
  repeats: tiny ? 1 : Number(args.repeats),
  executes: tiny ? 20 : Number(args.executes),
  small: tiny ? 2000 : Number(args.small),
  large: tiny ? 40 : Number(args.large),
};

/** The uWS native binary for this Node (its ABI), or why there is none. */
function findUws(): { binary: string; version: string } | string {
  const dirs = [args.uws, process.env['KGATE_UWS_DIR'], REPO].filter((d): d is string => !!d);
  for (const dir of dirs) {
    let pkgJson: string;
    try {
      pkgJson = createRequire(join(dir, 'noop.js')).resolve(`${PACKAGE}/package.json`);
    } catch {
      continue;
    }
    const version = (JSON.parse(readFileSync(pkgJson, 'utf8')) as { version: string }).version;
    const binary = join(dirname(pkgJson), 'binaries', `uws_${process.platform}_${process.arch}_${process.versions.modules}.node`);
    if (!existsSync(binary)) return `${PACKAGE}@${version} in ${dir} has no binary for this Node (${binary} is missing)`;
    return { binary, version };
  }
  return `${PACKAGE} is not installed in ${dirs.join(', ')}`;
}

interface Child {
  gateway: Gateway;
  uwsPort: number;
  stop(): Promise<void>;
}

async function startChild(root: string, binary: string): Promise<Child> {
  if (!existsSync(BENCH_KERNEL_JS)) throw new Error(`${BENCH_KERNEL_JS} is missing: run \`npm run build\` first`);
  const dir = join(root, `kgate-${randomBytes(4).toString('hex')}`);
  mkdirSync(dir, { recursive: true });
  const token = randomBytes(16).toString('hex');
  const logFile = join(dir, 'kgate.log');
  const script = fileURLToPath(new URL('./ws-engines-gateway.ts', import.meta.url));
  const nodeArgs = ['--import', import.meta.resolve('tsx'), script];
  const kgateArgs = ['--ip', '127.0.0.1', '--port', '0', '--auth-token', token, '--runtime-dir', join(dir, 'runtime'), '--log-level', 'warn'];
  const env = { ...process.env, BENCH_KERNEL_EXIT_WITH_PARENT: '1', KGATE_UWS_BINARY: binary };
  const child = spawnTracked(process.execPath, [...nodeArgs, ...kgateArgs], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env }, dir);
  child.stderr!.pipe(createWriteStream(logFile));
  const lines = createInterface({ input: child.stdout! });
  const { base, uwsPort } = await within(
    new Promise<{ base: string; uwsPort: number }>((res, rej) => {
      let base: string | undefined;
      lines.on('line', (l) => {
        const k = /^kgate listening on (http:\/\/\S+\/)/.exec(l);
        if (k) base = k[1]!;
        const u = /^uws listening on (\d+)/.exec(l);
        if (u && base) res({ base, uwsPort: Number(u[1]) });
      });
      child.once('exit', (code) => rej(new Error(`the gateway child exited (${code}) before listening; see ${logFile}`)));
    }),
    60_000,
    'the gateway child to print its addresses',
  );
  const gateway: Gateway = { kind: 'kgate', base, token, pid: child.pid!, logFile, stop: async () => undefined };
  return {
    gateway,
    uwsPort,
    async stop() {
      await stopChild(child, 15_000);
      killMatching(dir);
    },
  };
}

type Metric = 'rtt p50 ms' | 'rtt p99 ms' | 'small msgs/s' | 'small CPU µs/msg' | 'small lost' | 'large MB/s' | 'large CPU ms/MiB' | 'large CPU µs/msg' | 'large lost';
const METRICS: readonly Metric[] = [
  'rtt p50 ms',
  'rtt p99 ms',
  'small msgs/s',
  'small CPU µs/msg',
  'small lost',
  'large MB/s',
  'large CPU ms/MiB',
  'large CPU µs/msg',
  'large lost',
];
type Results = Map<string, number[]>;
const key = (e: Engine, p: WsProtocol, m: Metric): string => `${e}|${p}|${m}`;

function record(r: Results, e: Engine, p: WsProtocol, m: Metric, x: number): void {
  const k = key(e, p, m);
  r.set(k, [...(r.get(k) ?? []), x]);
}

async function flood(s: WsSession, pid: number, n: number, size: number): Promise<{ streams: number; seconds: number; cpu: number }> {
  const cpu = new CpuWatch(pid);
  const r = await s.execute(`flood ${n} ${size}`, TIMEOUT_MS);
  const used = cpu.stop();
  if (r.timedOut || r.closedWith !== undefined) throw new Error(`flood ${n} ${size}: ${r.timedOut ? 'timed out' : `closed ${r.closedWith}`}`);
  return { streams: r.streams, seconds: r.doneMs / 1000, cpu: used.server ?? NaN };
}

/** One block: one client on one engine, in one protocol, runs the three measurements. */
async function block(child: Child, kernelId: string, engine: Engine, protocol: WsProtocol, out: Results): Promise<void> {
  const g = child.gateway;
  const wsBase = engine === 'ws' ? g.base.replace(/^http/, 'ws') : `ws://127.0.0.1:${child.uwsPort}/`;
  const url = (sessionId: string): string => `${wsBase}api/kernels/${kernelId}/channels?session_id=${sessionId}&token=${g.token}`;
  const s = await WsSession.open(url, protocol, 30_000);
  try {
    await kernelInfoHandshake(s, 30_000);
    for (let i = 0; i < Math.min(200, sizes.executes); i++) await s.execute('x', 10_000);
    await flood(s, g.pid, Math.ceil(sizes.small / 20), SMALL);
    const rtt: number[] = [];
    for (let i = 0; i < sizes.executes; i++) {
      const r = await s.execute('x', 10_000);
      if (r.timedOut || r.closedWith !== undefined) throw new Error(`execute ${i} on ${engine}/${protocol} failed`);
      rtt.push(r.doneMs);
    }
    record(out, engine, protocol, 'rtt p50 ms', percentile(rtt, 50));
    record(out, engine, protocol, 'rtt p99 ms', percentile(rtt, 99));
    const f = await flood(s, g.pid, sizes.small, SMALL);
    record(out, engine, protocol, 'small msgs/s', f.streams / f.seconds);
    record(out, engine, protocol, 'small CPU µs/msg', (f.cpu / f.streams) * 1e6);
    record(out, engine, protocol, 'small lost', sizes.small - f.streams);
    const l = await flood(s, g.pid, sizes.large, LARGE);
    const mib = (l.streams * LARGE) / 2 ** 20;
    record(out, engine, protocol, 'large MB/s', (l.streams * LARGE) / l.seconds / 1e6);
    record(out, engine, protocol, 'large CPU ms/MiB', (l.cpu / mib) * 1e3);
    record(out, engine, protocol, 'large CPU µs/msg', (l.cpu / l.streams) * 1e6);
    record(out, engine, protocol, 'large lost', sizes.large - l.streams);
  } finally {
    s.close();
    // The relay detaches on the close event: the next block's client must be the kernel's only one.
    await sleep(300);
  }
}

function fmt(x: number): string {
  if (!Number.isFinite(x)) return '-';
  const a = Math.abs(x);
  if (a >= 1000) return Math.round(x).toLocaleString('en-US');
  if (a >= 100) return x.toFixed(0);
  if (a >= 10) return x.toFixed(1);
  return x.toFixed(2);
}

function table(r: Results): string {
  const head = ['metric', 'protocol', 'ws', '(min–max)', 'uWS', '(min–max)', 'uWS/ws'];
  const rows: string[][] = [];
  const range = (xs: number[]): string => `${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))}`;
  for (const m of METRICS)
    for (const p of PROTOCOLS) {
      const ws = r.get(key('ws', p, m)) ?? [NaN];
      const us = r.get(key('uws', p, m)) ?? [NaN];
      const w = median(ws);
      const u = median(us);
      rows.push([m, p, fmt(w), range(ws), fmt(u), range(us), m.endsWith('lost') || w === 0 ? '' : (u / w).toFixed(2)]);
    }
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

const loads = (): string =>
  loadavg()
    .map((x) => x.toFixed(2))
    .join(' ');

async function main(): Promise<void> {
  const found = findUws();
  if (typeof found === 'string') {
    process.stdout.write(
      `ws-engines: skipped: ${found}.\nInstall it outside the project, e.g. \`npm install --prefix /tmp/uws ${PACKAGE}@20.30.0-unofficial.0\`, and pass --uws /tmp/uws.\n`,
    );
    return;
  }
  const root = mkdtempSync(join(tmpdir(), 'kgate-ws-engines-'));
  const loadBefore = loads();
  const t0 = performance.now();
  const child = await startChild(root, found.binary);
  const results: Results = new Map();
  let kernelId: string | undefined;
  try {
    kernelId = await createKernel(child.gateway, 'kgate-bench');
    process.stderr.write(`kernel ${kernelId}; ws on ${child.gateway.base}, uWS on port ${child.uwsPort}\n`);
    for (let rep = 0; rep < sizes.repeats; rep++) {
      const order: Engine[] = rep % 2 === 0 ? ['ws', 'uws'] : ['uws', 'ws'];
      for (const protocol of PROTOCOLS)
        for (const engine of order) {
          await block(child, kernelId, engine, protocol, results);
          process.stderr.write(`repeat ${rep + 1}/${sizes.repeats}: ${engine} ${protocol} done\n`);
        }
    }
  } finally {
    if (kernelId) await deleteKernel(child.gateway, kernelId);
    await child.stop();
    rmSync(root, { recursive: true, force: true });
  }
  const seconds = (performance.now() - t0) / 1000;
  const header = [
    `uWebSockets.js (${PACKAGE}@${found.version}) against ws, same ClientRelay, kernel and client (bench/tools/ws-engines.ts)`,
    `medians of ${sizes.repeats} repeats; per repeat: ${sizes.executes} executes, flood ${sizes.small} × ${SMALL} B, flood ${sizes.large} × ${LARGE} B; CPU = gateway process, user + system`,
    `node ${process.version}, ${cpus().length} cores; load average (1, 5, 15 min) ${loadBefore} before, ${loads()} after; ${seconds.toFixed(0)} s`,
    'uWS/ws (of the medians) < 1: uWS takes less time / CPU; > 1 on msgs/s and MB/s: uWS is faster. (min–max): the spread over the repeats',
  ];
  process.stdout.write(`${header.join('\n')}\n\n${table(results)}\n`);
  if (args.json) {
    const raw = Object.fromEntries(results);
    writeFileSync(args.json, `${JSON.stringify({ header, sizes, loadBefore, loadAfter: loads(), results: raw }, null, 2)}\n`);
  }
}

await main();
