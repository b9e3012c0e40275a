/**
 * A client that resets its TCP connection (SO_LINGER 0) at any moment of a
 * REST request or of a WebSocket upgrade costs kgate nothing: the process
 * stays up, and the kernel started first still runs code for its clients.
 * One refused upgrade followed by a reset used to end the process (an
 * 'error' event on a raw socket with no listener), and its exit handler then
 * killed every kernel. kgate runs as its own process here, as users run it,
 * so that a crash shows as an exit rather than as a failed test worker.
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gatewayClient, KernelClient, stdout, type GatewayClient } from '../helpers/gateway.js';
import { startKgate, type Running } from '../helpers/kgate-process.js';
import { processesMatching } from '../helpers/procs.js';
import { until } from '../helpers/wait.js';
import { maskedTextFrame, rawConnect, responseComplete, sleep, statusOf, upgradeRequest, type RawClient } from './raw-socket.js';

const TOKEN = 'reset-test-token';
const runtimeDir = mkdtempSync(join(tmpdir(), 'kgate-rt-'));
let k: Running;
let port: number;
let g: GatewayClient;
let kernelId: string;
let stderr = '';

beforeAll(async () => {
  // At trace level, so that the log check at the end sees every line kgate could write.
  k = await startKgate(['--port', '0', '--auth-token', TOKEN, '--runtime-dir', runtimeDir, '--log-level', 'trace']);
  k.child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  port = Number(new URL(k.url).port);
  g = gatewayClient(k.url, TOKEN);
  kernelId = await g.startKernel('python3');
});
afterAll(async () => {
  if (k.child.exitCode === null) {
    k.child.kill('SIGTERM');
    await k.exited;
  }
  // Kernels started by the requests that were reset mid-response go with kgate.
  expect(processesMatching(join(runtimeDir, 'kernel-'))).toEqual([]);
});

/** kgate is still running and answering: fails with what it wrote to stderr when it is not. */
async function expectAlive(): Promise<void> {
  await sleep(30); // a reset is handled on the next turns of kgate's event loop
  expect(k.child.exitCode, `kgate exited:\n${stderr.slice(-2000)}`).toBeNull();
  const r = await g.api('api/status');
  expect(r.status).toBe(200);
}

function auth(withToken: boolean): string {
  return withToken ? `Authorization: token ${TOKEN}\r\n` : '';
}

const tokenQuery = (withToken: boolean): string => (withToken ? `&token=${TOKEN}` : '');
const channels = (id: string, withToken: boolean, session: string = randomUUID()): string => `/api/kernels/${id}/channels?session_id=${session}${tokenQuery(withToken)}`;

interface Stage {
  name: string;
  /** Drives the connection up to the moment of the reset. */
  run(c: RawClient, withToken: boolean): Promise<void>;
}

const restStages: Stage[] = [
  {
    name: 'mid-headers',
    async run(c, withToken) {
      c.socket.write(`GET /api/kernels HTTP/1.1\r\nHost: 127.0.0.1\r\n${auth(withToken)}X-Half: ab`);
      await sleep(20);
    },
  },
  {
    name: 'after the headers, before the body',
    async run(c, withToken) {
      c.socket.write(`POST /api/kernels HTTP/1.1\r\nHost: 127.0.0.1\r\n${auth(withToken)}Content-Type: application/json\r\nContent-Length: 40\r\n\r\n`);
      await sleep(20);
    },
  },
  {
    name: 'mid-body of a POST (Content-Length)',
    async run(c, withToken) {
      c.socket.write(`POST /api/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n${auth(withToken)}Content-Type: application/json\r\nContent-Length: 80\r\n\r\n{"path": "a.ipynb", "ty`);
      await sleep(20);
    },
  },
  {
    name: 'mid-body of a POST (chunked)',
    async run(c, withToken) {
      c.socket.write(`POST /api/kernels HTTP/1.1\r\nHost: 127.0.0.1\r\n${auth(withToken)}Transfer-Encoding: chunked\r\n\r\n5\r\n{"nam\r\n`);
      await sleep(20);
    },
  },
  {
    name: 'while the response is pending (a kernel start)',
    async run(c, withToken) {
      const body = '{"name": "python3"}';
      c.socket.write(`POST /api/kernels HTTP/1.1\r\nHost: 127.0.0.1\r\n${auth(withToken)}Content-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
      await sleep(50);
      if (withToken) expect(c.received()).toBe(''); // still starting: the reset comes before the answer
    },
  },
  {
    name: 'after the response, on a keep-alive connection',
    async run(c, withToken) {
      c.socket.write(`GET /api/kernels/${kernelId} HTTP/1.1\r\nHost: 127.0.0.1\r\n${auth(withToken)}\r\n`);
      await c.waitFor(responseComplete, 'the response');
      expect(statusOf(c.received())).toBe(withToken ? 200 : 401);
    },
  },
  {
    name: 'after a refusal of a malformed request (400)',
    async run(c, withToken) {
      c.socket.write(`GET /api/status?token=${TOKEN} HTTP/1.1\r\nHost: 127.0.0.1\r\n${auth(withToken)}Bad Header\r\n\r\n`);
      await c.waitFor(responseComplete, 'the refusal');
      expect(statusOf(c.received())).toBe(400);
      expect(JSON.parse(c.received().slice(c.received().indexOf('\r\n\r\n') + 4))).toMatchObject({ code: 'KG_BAD_REQUEST' });
    },
  },
  {
    name: 'a CONNECT request',
    async run(c, withToken) {
      c.socket.write(`CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n${auth(withToken)}\r\n`);
      await sleep(20);
    },
  },
];

const upgradeStages: Stage[] = [
  {
    name: 'mid-headers',
    async run(c, withToken) {
      c.socket.write(upgradeRequest(channels(kernelId, withToken)).slice(0, -30));
      await sleep(20);
    },
  },
  {
    name: 'after the whole request, before the answer',
    async run(c, withToken) {
      c.socket.write(upgradeRequest(channels(kernelId, withToken)));
    },
  },
  {
    name: 'after a refusal for the token (401) or for an unknown kernel (404)',
    async run(c, withToken) {
      c.socket.write(upgradeRequest(channels('no-such-kernel', withToken)));
      await c.waitFor(responseComplete, 'the refusal');
      expect(statusOf(c.received())).toBe(withToken ? 404 : 401);
    },
  },
  {
    name: 'after a refusal for the origin (403, or 101 with a token)',
    async run(c, withToken) {
      c.socket.write(upgradeRequest(channels(kernelId, withToken), { Origin: 'http://evil.example' }));
      await c.waitFor((t) => statusOf(t) !== undefined, 'the answer');
    },
  },
  {
    name: 'after a refusal of a bad session_id (400)',
    async run(c, withToken) {
      c.socket.write(upgradeRequest(channels(kernelId, withToken, 'bad%00session')));
      await c.waitFor(responseComplete, 'the refusal');
      expect(statusOf(c.received())).toBe(withToken ? 400 : 401);
    },
  },
  {
    name: 'after a handshake ws refuses itself (no Sec-WebSocket-Key)',
    async run(c, withToken) {
      c.socket.write(upgradeRequest(channels(kernelId, withToken), { 'Sec-WebSocket-Key': '' }).replace('Sec-WebSocket-Key: \r\n', ''));
      await c.waitFor((t) => statusOf(t) !== undefined, 'the refusal');
      expect(statusOf(c.received())).toBe(withToken ? 400 : 401);
    },
  },
  {
    name: 'right after the 101',
    async run(c, withToken) {
      c.socket.write(upgradeRequest(channels(kernelId, withToken)));
      await c.waitFor((t) => t.includes('\r\n\r\n'), 'the answer');
      expect(statusOf(c.received())).toBe(withToken ? 101 : 401);
    },
  },
  {
    name: 'mid-first-frame',
    async run(c, withToken) {
      c.socket.write(upgradeRequest(channels(kernelId, withToken)));
      await c.waitFor((t) => t.includes('\r\n\r\n'), 'the answer');
      const frame = maskedTextFrame(JSON.stringify({ header: { msg_id: 'x', msg_type: 'kernel_info_request' }, parent_header: {}, metadata: {}, content: {}, channel: 'shell' }));
      c.socket.write(frame.subarray(0, frame.length >> 1));
      await sleep(20);
    },
  },
];

describe.each([true, false])('with a valid token: %s', (withToken) => {
  it.each(restStages)('a REST request reset $name leaves kgate running', async (stage) => {
    const c = await rawConnect(port);
    await stage.run(c, withToken);
    c.reset();
    await expectAlive();
  });

  it.each(upgradeStages)('an upgrade reset $name leaves kgate running', async (stage) => {
    const c = await rawConnect(port);
    await stage.run(c, withToken);
    c.reset();
    await expectAlive();
  });
});

describe('a refused upgrade', () => {
  it('is answered and then closed by kgate, never left half-open', async () => {
    for (const path of [channels(kernelId, false), channels('no-such-kernel', true)]) {
      // A client that keeps its own side open and goes on writing after the refusal:
      // a socket kgate only ended (FIN) would take the bytes in silently, forever.
      const c = await rawConnect(port, { allowHalfOpen: true });
      try {
        c.socket.write(upgradeRequest(path));
        await c.waitFor(responseComplete, 'the refusal');
        await c.ended;
        await sleep(50);
        c.socket.write('more bytes after the refusal\r\n');
        await sleep(50);
        if (!c.socket.destroyed) c.socket.write('and more\r\n');
        const code = await Promise.race([c.errored, sleep(3000).then(() => 'no error: the socket is still open on kgate')]);
        expect(['ECONNRESET', 'EPIPE'], path).toContain(code);
      } finally {
        c.reset();
      }
    }
    await expectAlive();
  });
});

describe('the JupyterLab case', () => {
  it('channels sockets opened to a kernel that is shutting down and aborted within milliseconds', async () => {
    for (let round = 0; round < 6; round++) {
      const id = await g.startKernel('kgate-bench');
      const deleted = g.api(`api/kernels/${id}`, { method: 'DELETE' });
      const opened: Promise<void>[] = [];
      for (let i = 0; i < 8; i++) {
        opened.push(
          (async () => {
            await sleep(i % 4);
            const c = await rawConnect(port);
            c.socket.write(upgradeRequest(channels(id, true)));
            await sleep(i % 3);
            c.reset();
          })(),
        );
      }
      await Promise.all(opened);
      expect((await deleted).status).toBe(204);
      await expectAlive();
    }
  });
});

describe('after all of it', () => {
  it('the kernel started first still runs code over a WebSocket', async () => {
    await expectAlive();
    const c = await KernelClient.connect(g, kernelId);
    const id = c.execute('print(6 * 7)');
    await c.reply(id);
    expect(stdout(c.outputs(id)).trim()).toBe('42');
    c.close();
    // Kernels the reset starts left behind (they started anyway) are listed and deletable.
    const list = (await (await g.api('api/kernels')).json()) as Array<{ id: string }>;
    for (const kern of list) if (kern.id !== kernelId) expect((await g.api(`api/kernels/${kern.id}`, { method: 'DELETE' })).status).toBe(204);
    await until(async () => ((await (await g.api('api/kernels')).json()) as unknown[]).length === 1, 'only the first kernel left', 15_000);
  });

  it('never wrote the token to its log, not even as the bytes of a request it refused', () => {
    expect(stderr).toMatch(/"level":(10|20),/); // lines below info were written: the check is not vacuous
    expect(stderr).not.toContain(TOKEN);
    expect(stderr).not.toContain(Buffer.from(TOKEN).join(','));
    expect(stderr).not.toContain('rawPacket');
  });
});
