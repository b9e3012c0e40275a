/**
 * The programs measured: kernels started by the benchmark itself (the direct
 * ZeroMQ target), kgate as a child process (`node dist/cli.js`), Debian's
 * jupyter server, and the peers of today from PyPI (scripts/setup-bench-peers.sh). Each is a child whose RSS can be read from /proc, and each
 * is stopped (and its kernels with it) when the run ends, whatever happens.
 */
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { formatArgv } from '../../src/provisioner/local.js';
import type { ConnectionInfo } from '../../src/provisioner/types.js';
import { exited, freePort, killMatching, sleep, spawnTracked, stopChild, within } from './procs.js';

export const REPO = resolve(fileURLToPath(new URL('../..', import.meta.url)));
/** kgate's entry point; BENCH_KGATE_CLI points at another build (an older commit's, to compare before and after in one session). */
export const KGATE_CLI = process.env['BENCH_KGATE_CLI'] || join(REPO, 'dist/cli.js');
export const BENCH_KERNEL_JS = join(REPO, 'dist/bench-kernel/main.js');
export const PYTHON = '/usr/bin/python3';
/** Kernels started for the benchmark leave with it (see src/bench-kernel/main.ts). */
const KERNEL_ENV = { BENCH_KERNEL_EXIT_WITH_PARENT: '1' };

export type KernelName = 'kgate-bench' | 'python3';

/** The kernelspecs used everywhere: kgate's shipped bench kernel, and Debian's ipykernel. */
const SPEC_FILES: Record<KernelName, string> = {
  'kgate-bench': join(REPO, 'kernelspecs/kgate-bench/kernel.json'),
  python3: '/usr/share/jupyter/kernels/python3/kernel.json',
};

interface SpecFile {
  argv: string[];
  display_name: string;
  language: string;
  interrupt_mode?: string;
  metadata?: object;
}

function readSpec(name: KernelName): SpecFile {
  return JSON.parse(readFileSync(SPEC_FILES[name], 'utf8')) as SpecFile;
}

/** The spec's argv with `{resource_dir}` filled in (absolute paths), `{connection_file}` left. */
export function specArgv(name: KernelName): string[] {
  return formatArgv(readSpec(name).argv, { resource_dir: resolve(SPEC_FILES[name], '..'), connection_file: '{connection_file}' });
}

export interface DirectKernel {
  conn: ConnectionInfo;
  child: ChildProcess;
  stop(): Promise<void>;
}

/** Starts a kernel as jupyter_client would: a connection file with free ports, then the spec's argv. */
export async function launchDirect(name: KernelName, dir: string): Promise<DirectKernel> {
  const conn: ConnectionInfo = {
    transport: 'tcp',
    ip: '127.0.0.1',
    shell_port: await freePort(),
    iopub_port: await freePort(),
    stdin_port: await freePort(),
    control_port: await freePort(),
    hb_port: await freePort(),
    key: randomBytes(32).toString('hex'),
    signature_scheme: 'hmac-sha256',
    kernel_name: name,
  };
  const file = join(dir, `direct-${randomBytes(6).toString('hex')}.json`);
  writeFileSync(file, JSON.stringify(conn), { mode: 0o600 });
  const argv = formatArgv(specArgv(name), { connection_file: file, resource_dir: '' });
  const child = spawnTracked(argv[0]!, argv.slice(1), { stdio: 'ignore', env: { ...process.env, ...KERNEL_ENV } });
  return { conn, child, stop: () => stopChild(child, 3000) };
}

export type ServerKind = 'kgate' | 'jupyter' | 'jupyter-nolimit' | 'jupyter2' | 'kernel-gateway' | 'enterprise-gateway';

export interface Gateway {
  kind: ServerKind;
  /** `http://127.0.0.1:PORT/` */
  base: string;
  token: string;
  pid: number;
  /** Where its stderr goes. */
  logFile: string;
  stop(): Promise<void>;
}

function checkBuilt(): void {
  for (const f of [KGATE_CLI, BENCH_KERNEL_JS]) {
    if (!existsSync(f)) throw new Error(`${f} is missing: run \`npm run build\` first`);
  }
}

export interface KgateOptions {
  /** Extra `node` options (e.g. `--cpu-prof`), from BENCH_KGATE_NODE_ARGS. */
  nodeArgs?: string[];
  /** Extra kgate options, e.g. `--max-client-buffer`. */
  args?: string[];
  /** What node runs instead of KGATE_CLI: another build, or the sources through tsx's loader. */
  entry?: string[];
  /** kgate's `--log-level` (default warn). */
  logLevel?: string;
  /** Scrape its GET /metrics this often while it runs (BENCH_SCRAPE_SECONDS); 0 or none: never. */
  scrapeSeconds?: number;
  /** Where the scraper's summary goes (the run's progress log). */
  log?: (m: string) => void;
}

/**
 * Scrapes `GET /metrics` every `seconds`, as Prometheus would: one request
 * at a time (a slow one is not stacked), each with a timeout. `stop()` ends
 * it and reports how many scrapes there were.
 */
function scrapeMetrics(base: string, token: string, seconds: number, log: (m: string) => void): { stop(): void } {
  let ok = 0;
  let failed = 0;
  let bytes = 0;
  let busy = false;
  const timer = setInterval(() => {
    if (busy) return;
    busy = true;
    fetch(`${base}metrics`, { headers: { Authorization: `token ${token}` }, signal: AbortSignal.timeout(5000) })
      .then(async (r) => {
        const body = await r.text();
        if (r.status === 200 && body.includes('kgate_kernels')) {
          ok++;
          bytes = body.length;
        } else failed++;
      })
      .catch(() => failed++)
      .finally(() => (busy = false));
  }, seconds * 1000);
  return {
    stop() {
      clearInterval(timer);
      log(`kgate /metrics scraped ${ok} times every ${seconds} s (${failed} failed; last ${bytes} bytes)`);
    },
  };
}

/** `node dist/cli.js --port 0 --auth-token X`; resolves once it prints where it listens. */
export async function startKgate(root: string, opts: KgateOptions = {}): Promise<Gateway> {
  checkBuilt();
  const dir = join(root, `kgate-${randomBytes(4).toString('hex')}`);
  mkdirSync(dir, { recursive: true });
  const token = randomBytes(16).toString('hex');
  const logFile = join(dir, 'kgate.log');
  const args = [
    ...(opts.nodeArgs ?? []),
    ...(opts.entry ?? [KGATE_CLI]),
    '--ip',
    '127.0.0.1',
    '--port',
    '0',
    '--auth-token',
    token,
    '--runtime-dir',
    join(dir, 'runtime'),
    '--log-level',
    opts.logLevel ?? 'warn',
    ...(opts.args ?? []),
  ];
  const child = spawnTracked(process.execPath, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...KERNEL_ENV } }, dir);
  child.stderr!.pipe(createWriteStream(logFile));
  const lines = createInterface({ input: child.stdout! });
  const base = await within(
    new Promise<string>((res, rej) => {
      lines.on('line', (l) => {
        const m = /^kgate listening on (http:\/\/\S+\/)/.exec(l);
        if (m) res(m[1]!);
      });
      child.once('exit', (code) => rej(new Error(`kgate exited (${code}) before listening; see ${logFile}`)));
    }),
    30_000,
    'kgate to print its address',
  );
  const scraper = opts.scrapeSeconds ? scrapeMetrics(base, token, opts.scrapeSeconds, opts.log ?? ((m) => process.stderr.write(`${m}\n`))) : undefined;
  return {
    kind: 'kgate',
    base,
    token,
    pid: child.pid!,
    logFile,
    async stop() {
      scraper?.stop();
      await stopChild(child, 15_000);
      killMatching(dir);
    },
  };
}

/** The peers installed from PyPI by scripts/setup-bench-peers.sh, each in `.venv-peers/<name>/`. */
export const PEERS_DIR = join(REPO, '.venv-peers');

interface PythonServer {
  /** The interpreter: Debian's, or a peer venv's. */
  python: string;
  /** `-m` module and its options, given the port and token. */
  args(port: number, token: string, dir: string): string[];
  /** What to GET to know it answers. */
  ready: string;
  label: string;
  env?: Record<string, string>;
}

const SERVER_APP_ARGS = (port: number, token: string, dir: string): string[] => [
  '--ServerApp.ip=127.0.0.1',
  `--ServerApp.port=${port}`,
  '--ServerApp.port_retries=0',
  `--ServerApp.token=${token}`,
  '--ServerApp.open_browser=False',
  // It refuses to run as root otherwise (this machine's benchmark runs as root).
  '--ServerApp.allow_root=True',
  `--ServerApp.root_dir=${join(dir, 'root')}`,
];

const venvPython = (name: string): string => join(PEERS_DIR, name, 'bin/python');

/**
 * How each Python server is started. The peers of today run with their iopub
 * rate limit off (jupyter_server 2.x and kernel_gateway 3.x keep it in
 * ZMQChannelsWebsocketConnection; enterprise_gateway's jupyter_server 1.24
 * handler reads it from settings it does not set, so it has none).
 */
const PYTHON_SERVERS: Record<Exclude<ServerKind, 'kgate'>, PythonServer> = {
  jupyter: { python: PYTHON, label: "Debian's jupyter server", ready: 'api/status', args: (p, t, d) => ['-m', 'jupyter_server', ...SERVER_APP_ARGS(p, t, d)] },
  'jupyter-nolimit': {
    python: PYTHON,
    label: "Debian's jupyter server",
    ready: 'api/status',
    // jupyter_server 1.23: limit_rate=False skips the limiter; the two limits at 0 say the same.
    args: (p, t, d) => [
      '-m',
      'jupyter_server',
      ...SERVER_APP_ARGS(p, t, d),
      '--ServerApp.limit_rate=False',
      '--ServerApp.iopub_msg_rate_limit=0',
      '--ServerApp.iopub_data_rate_limit=0',
    ],
  },
  jupyter2: {
    python: venvPython('jupyter-server'),
    label: 'jupyter_server 2.x (.venv-peers/jupyter-server)',
    ready: 'api/status',
    args: (p, t, d) => ['-m', 'jupyter_server', ...SERVER_APP_ARGS(p, t, d), '--ZMQChannelsWebsocketConnection.limit_rate=False'],
  },
  'kernel-gateway': {
    python: venvPython('kernel-gateway'),
    label: 'jupyter_kernel_gateway 3.x (.venv-peers/kernel-gateway)',
    ready: 'api/kernelspecs',
    // Its default API is jupyter-websocket: /api/kernels and the channels WebSocket.
    args: (p, t) => [
      '-m',
      'kernel_gateway',
      '--KernelGatewayApp.ip=127.0.0.1',
      `--KernelGatewayApp.port=${p}`,
      '--KernelGatewayApp.port_retries=0',
      `--KernelGatewayApp.auth_token=${t}`,
      '--ZMQChannelsWebsocketConnection.limit_rate=False',
    ],
  },
  'enterprise-gateway': {
    python: venvPython('enterprise-gateway'),
    label: 'jupyter_enterprise_gateway 3.2 (.venv-peers/enterprise-gateway)',
    ready: 'api/kernelspecs',
    // It refuses to start kernels for root by default (this machine's benchmark runs as root).
    env: { EG_UNAUTHORIZED_USERS: 'kgate-bench-nobody' },
    // Kernelspecs without a process proxy run as local processes.
    args: (p, t) => [
      '-m',
      'enterprise_gateway',
      '--EnterpriseGatewayApp.ip=127.0.0.1',
      `--EnterpriseGatewayApp.port=${p}`,
      '--EnterpriseGatewayApp.port_retries=0',
      `--EnterpriseGatewayApp.auth_token=${t}`,
    ],
  },
};

/**
 * A Python server (Debian's jupyter server, or a peer from .venv-peers), with
 * a private JUPYTER_PATH holding the bench kernelspec and ipykernel's (both
 * with absolute paths: Debian's /usr/bin/python3 runs ipykernel for every
 * server alike) and private config, data and runtime dirs.
 */
export async function startPythonServer(root: string, kind: Exclude<ServerKind, 'kgate'>): Promise<Gateway> {
  checkBuilt();
  const spec = PYTHON_SERVERS[kind];
  if (!existsSync(spec.python)) throw new Error(`${spec.label} is not installed: run scripts/setup-bench-peers.sh`);
  const dir = join(root, `${kind}-${randomBytes(4).toString('hex')}`);
  const share = join(dir, 'share');
  const specDir = join(share, 'kernels', 'kgate-bench');
  mkdirSync(specDir, { recursive: true });
  mkdirSync(join(share, 'kernels', 'python3'), { recursive: true });
  for (const d of ['config', 'data', 'runtime', 'root']) mkdirSync(join(dir, d), { recursive: true });
  writeFileSync(join(specDir, 'kernel.json'), JSON.stringify({ ...readSpec('kgate-bench'), argv: specArgv('kgate-bench') }, null, 1));
  // jupyter_client swaps a spec's "python3" for its own interpreter (a venv's, without ipykernel): name Debian's.
  const py = readSpec('python3');
  writeFileSync(join(share, 'kernels', 'python3', 'kernel.json'), JSON.stringify({ ...py, argv: py.argv.map((a, i) => (i === 0 && /^python3?$/.test(a) ? PYTHON : a)) }, null, 1));
  const port = await freePort();
  const token = randomBytes(16).toString('hex');
  const logFile = join(dir, `${kind}.log`);
  const env = {
    ...process.env,
    ...KERNEL_ENV,
    JUPYTER_PATH: share,
    JUPYTER_CONFIG_DIR: join(dir, 'config'),
    JUPYTER_DATA_DIR: join(dir, 'data'),
    JUPYTER_RUNTIME_DIR: join(dir, 'runtime'),
    ...spec.env,
  };
  const child = spawnTracked(spec.python, spec.args(port, token, dir), { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'], env }, dir);
  child.stderr!.pipe(createWriteStream(logFile));
  const base = `http://127.0.0.1:${port}/`;
  const deadline = performance.now() + 60_000;
  for (;;) {
    if (exited(child)) throw new Error(`${spec.label} exited (${child.exitCode}) at start; see ${logFile}`);
    if (performance.now() > deadline) {
      await stopChild(child, 2000);
      throw new Error(`${spec.label} did not answer within 60 s; see ${logFile}`);
    }
    try {
      const r = await fetch(`${base}${spec.ready}`, { headers: { Authorization: `token ${token}` }, signal: AbortSignal.timeout(2000) });
      if (r.ok) break;
    } catch {
      // not listening yet
    }
    await sleep(100);
  }
  return {
    kind,
    base,
    token,
    pid: child.pid!,
    logFile,
    async stop() {
      await stopChild(child, 15_000);
      killMatching(dir);
    },
  };
}

async function api(g: Gateway, method: string, path: string, body: unknown, timeoutMs: number): Promise<Response> {
  return fetch(`${g.base}${path}`, {
    method,
    headers: { Authorization: `token ${g.token}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
}

/** POST /api/kernels; answers the kernel id. */
export async function createKernel(g: Gateway, name: KernelName, timeoutMs = 60_000): Promise<string> {
  const r = await api(g, 'POST', 'api/kernels', { name }, timeoutMs);
  if (r.status !== 201) throw new Error(`POST /api/kernels on ${g.kind}: HTTP ${r.status} ${await r.text()}`);
  return ((await r.json()) as { id: string }).id;
}

export async function deleteKernel(g: Gateway, id: string, timeoutMs = 20_000): Promise<void> {
  try {
    const r = await api(g, 'DELETE', `api/kernels/${id}`, undefined, timeoutMs);
    await r.arrayBuffer();
  } catch {
    // the server's stop kills what is left
  }
}

export function channelsUrl(g: Gateway, kernelId: string): (sessionId: string) => string {
  const ws = g.base.replace(/^http/, 'ws');
  return (sessionId) => `${ws}api/kernels/${kernelId}/channels?session_id=${sessionId}&token=${g.token}`;
}
