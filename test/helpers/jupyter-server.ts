/**
 * Debian's real `jupyter server` (python3-jupyter-server) as a child process in
 * gateway mode, pointed at a kgate: its own token, 127.0.0.1 and port 0 (read
 * back from /proc, since jupyter_server 1.23 prints `:0` for it), and a
 * throwaway HOME, runtime, data, config and root directory.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Debian's interpreter: the one python3-jupyter-server is installed for (a pyenv `python3` may come first on PATH). */
export const DEBIAN_PYTHON = '/usr/bin/python3';

export interface JupyterServer {
  proc: ChildProcess;
  url: string;
  wsUrl: string;
  token: string;
  /** The notebook server's root directory (kernels started for `sub/x.ipynb` get `KERNEL_WORKING_DIR` under it). */
  rootDir: string;
  /** The argv it was started with, after `python3 -m jupyter_server`. */
  args: string[];
  /** Everything it wrote on stderr so far (its log). */
  log(): string;
  api(path: string, init?: RequestInit & { json?: unknown }): Promise<Response>;
  close(): Promise<void>;
}

export interface JupyterServerOptions {
  gatewayUrl: string;
  gatewayToken: string;
  /** Extra variables in the notebook server's environment (KERNEL_*, whitelisted names). */
  env?: Record<string, string>;
  extraArgs?: string[];
}

/** TCP ports `pid` listens on, from its socket inodes and /proc/net/tcp. */
export function listeningPorts(pid: number): number[] {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]!);
    } catch {
      // the descriptor closed while we looked
    }
  }
  const ports: number[] = [];
  for (const table of [`/proc/${pid}/net/tcp`, `/proc/${pid}/net/tcp6`]) {
    let text: string;
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      // local_address is HEXIP:HEXPORT; state 0A is LISTEN; the inode is the tenth field.
      if (f.length > 9 && f[3] === '0A' && inodes.has(f[9]!)) ports.push(parseInt(f[1]!.split(':')[1]!, 16));
    }
  }
  return ports;
}

function exited(proc: ChildProcess): boolean {
  return proc.exitCode !== null || proc.signalCode !== null;
}

export async function startJupyterServer(opts: JupyterServerOptions): Promise<JupyterServer> {
  const dir = mkdtempSync(join(tmpdir(), 'kgate-jupyter-server-'));
  const paths = { home: join(dir, 'home'), runtime: join(dir, 'runtime'), data: join(dir, 'data'), config: join(dir, 'config'), root: join(dir, 'root') };
  for (const p of Object.values(paths)) mkdirSync(p, { recursive: true });
  const token = `nb-token-${Math.random().toString(36).slice(2)}`;
  const args = [
    `--gateway-url=${opts.gatewayUrl}`,
    `--GatewayClient.auth_token=${opts.gatewayToken}`,
    '--ip=127.0.0.1',
    '--port=0',
    '--ServerApp.port_retries=0',
    '--ServerApp.open_browser=False',
    `--ServerApp.token=${token}`,
    `--ServerApp.root_dir=${paths.root}`,
    '--allow-root',
    ...(opts.extraArgs ?? []),
  ];
  // A clean environment: nothing of the test runner's (no stray KERNEL_* or JUPYTER_*).
  const env: Record<string, string> = {
    PATH: '/usr/local/bin:/usr/bin:/bin',
    HOME: paths.home,
    JUPYTER_RUNTIME_DIR: paths.runtime,
    JUPYTER_DATA_DIR: paths.data,
    JUPYTER_CONFIG_DIR: paths.config,
    JUPYTER_PATH: paths.data,
    ...opts.env,
  };
  const proc = spawn(DEBIAN_PYTHON, ['-m', 'jupyter_server', ...args], { env, cwd: paths.root, stdio: ['ignore', 'pipe', 'pipe'] });
  // If the test process dies first, the notebook server must not outlive it.
  const killOnExit = (): void => {
    if (!exited(proc)) proc.kill('SIGKILL');
  };
  process.once('exit', killOnExit);
  let stderr = '';
  proc.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  proc.stdout!.setEncoding('utf8').on('data', (s: string) => (stderr += s));

  const close = async (): Promise<void> => {
    process.removeListener('exit', killOnExit);
    if (!exited(proc)) {
      const gone = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 5_000);
      await gone;
      clearTimeout(t);
    }
    rmSync(dir, { recursive: true, force: true });
  };

  let port: number | undefined;
  const deadline = Date.now() + 30_000;
  try {
    while (port === undefined) {
      if (exited(proc)) throw new Error(`jupyter server exited (${proc.exitCode ?? proc.signalCode}):\n${stderr}`);
      if (Date.now() > deadline) throw new Error(`jupyter server did not listen within 30 s:\n${stderr}`);
      // Listening is not enough: it logs "is running at" once its handlers are in place.
      if (stderr.includes('is running at')) port = listeningPorts(proc.pid!)[0];
      if (port === undefined) await new Promise((r) => setTimeout(r, 100));
    }
  } catch (e) {
    await close();
    throw e;
  }

  const url = `http://127.0.0.1:${port}/`;
  return {
    proc,
    url,
    wsUrl: `ws://127.0.0.1:${port}/`,
    token,
    rootDir: paths.root,
    args,
    log: () => stderr,
    api(path, init = {}) {
      const headers = new Headers(init.headers);
      if (!headers.has('Authorization')) headers.set('Authorization', `token ${token}`);
      let body = init.body;
      if (init.json !== undefined) {
        body = JSON.stringify(init.json);
        headers.set('Content-Type', 'application/json');
      }
      return fetch(new URL(path, url), { ...init, headers, body });
    },
    close,
  };
}
