/**
 * The README's WebSocket client examples, run as a user runs them against a
 * real kgate: `examples/node-ws-client.mjs` (Node, `ws`, the JSON protocol)
 * and `examples/python-tornado-client.py` (Debian's python3-tornado, the
 * `v1.kernel.websocket.jupyter.org` protocol). Each must print what the code
 * printed and leave no kernel behind.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { DEBIAN_PYTHON } from '../helpers/jupyter-server.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

let t: TestGateway;
/** Kernel upgrades kgate saw: the subprotocol each example offered. */
const offered: Array<string | undefined> = [];

beforeAll(async () => {
  t = await startGateway();
  t.gw.app.server.on('upgrade', (req) => offered.push(req.headers['sec-websocket-protocol']));
});

afterAll(async () => {
  await t?.close();
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runExample(cmd: string, args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: ROOT,
      env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', KGATE_URL: t.url, KGATE_TOKEN: t.token },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    const timer = setTimeout(() => child.kill('SIGKILL'), 45_000);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

async function kernelsOnKgate(): Promise<unknown[]> {
  return (await (await t.api('api/kernels')).json()) as unknown[];
}

const EXAMPLES = [
  { name: 'node-ws-client.mjs (ws, JSON protocol)', cmd: process.execPath, script: 'examples/node-ws-client.mjs', protocol: undefined },
  { name: 'python-tornado-client.py (tornado, v1 protocol)', cmd: DEBIAN_PYTHON, script: 'examples/python-tornado-client.py', protocol: 'v1.kernel.websocket.jupyter.org' },
] as const;

describe.each(EXAMPLES)('$name', ({ cmd, script, protocol }) => {
  it('runs code given on the command line, prints its output, and shuts the kernel down', async () => {
    const before = offered.length;
    const r = await runExample(cmd, [script, 'import sys\nprint("hello from", 6 * 7)\nprint("to stderr", file=sys.stderr)\n3 + 4']);
    expect(r.stderr).toBe('to stderr\n');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('hello from 42\n7\n');
    expect(offered.slice(before)).toEqual([protocol]);
    expect(await kernelsOnKgate()).toEqual([]);
  });

  it('prints the traceback of an error, exits 1, and still shuts the kernel down', async () => {
    const r = await runExample(cmd, [script, 'print("before")\n1 / 0']);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('before\n');
    expect(r.stderr).toMatch(/ZeroDivisionError/);
    expect(await kernelsOnKgate()).toEqual([]);
  });
});
