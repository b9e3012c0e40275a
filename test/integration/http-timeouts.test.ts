/**
 * HTTP connections are bounded in time and count, with a valid token too: a
 * body that never ends (--request-timeout), headers trickled in
 * (--headers-timeout), an idle keep-alive connection (--keep-alive-timeout),
 * requests on one connection (--max-requests-per-socket). The timeouts cover
 * receiving a request, never waiting for kgate's answer: a kernel start that
 * takes longer than all of them still answers 201, and an open WebSocket
 * outlives them.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gatewayClient, KernelClient, stdout, type GatewayClient } from '../helpers/gateway.js';
import { startKgate, type Running } from '../helpers/kgate-process.js';
import { processesMatching } from '../helpers/procs.js';
import { rawConnect, responseComplete, sleep, statusOf } from './raw-socket.js';

const TOKEN = 'timeouts-test-token';
const REQUEST_TIMEOUT_S = 2;
const HEADERS_TIMEOUT_S = 1;
const KEEP_ALIVE_S = 1;
/** The slow kernelspec's delay before ipykernel even starts: longer than every timeout above. */
const SLOW_START_S = 4;
const runtimeDir = mkdtempSync(join(tmpdir(), 'kgate-rt-'));
let k: Running;
let port: number;
let g: GatewayClient;

beforeAll(async () => {
  const specs = mkdtempSync(join(tmpdir(), 'kgate-specs-'));
  mkdirSync(join(specs, 'slowpy'));
  writeFileSync(
    join(specs, 'slowpy', 'kernel.json'),
    JSON.stringify({
      argv: ['sh', '-c', `sleep ${SLOW_START_S}; exec /usr/bin/python3 -m ipykernel_launcher -f "$1"`, 'sh', '{connection_file}'],
      display_name: 'python, slow to start',
      language: 'python',
    }),
  );
  k = await startKgate([
    '--port',
    '0',
    '--auth-token',
    TOKEN,
    '--runtime-dir',
    runtimeDir,
    '--kernelspec-dir',
    specs,
    '--request-timeout',
    String(REQUEST_TIMEOUT_S),
    '--headers-timeout',
    String(HEADERS_TIMEOUT_S),
    '--keep-alive-timeout',
    String(KEEP_ALIVE_S),
    '--max-requests-per-socket',
    '3',
  ]);
  port = Number(new URL(k.url).port);
  g = gatewayClient(k.url, TOKEN);
});
afterAll(async () => {
  k.child.kill('SIGTERM');
  await k.exited;
  expect(processesMatching(join(runtimeDir, 'kernel-'))).toEqual([]);
});

/** Milliseconds until the server closes the connection, or undefined if it is still open after `boundMs`. */
async function closedWithin(ended: Promise<void>, boundMs: number, t0: number): Promise<number | undefined> {
  return Promise.race([ended.then(() => Date.now() - t0), sleep(boundMs).then(() => undefined)]);
}

// Each test has its own connections and waits on kgate's clocks: they run side by side.
describe.concurrent('HTTP bounds', () => {
  describe('a client that sends too slowly', () => {
    it('with a valid token, a chunked body that never ends is answered 408 and closed', async () => {
      const c = await rawConnect(port);
      const t0 = Date.now();
      c.socket.write(`POST /api/kernels HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: token ${TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{"\r\n`);
      // Sending all along (so no idle timeout is what ends it): one more byte every 200 ms.
      const feeder = setInterval(() => c.socket.writable && c.socket.write('1\r\n \r\n'), 200);
      try {
        const ms = await closedWithin(c.ended, (REQUEST_TIMEOUT_S + 4) * 1000, t0);
        expect(ms, 'the connection was still open').toBeDefined();
        expect(ms!).toBeGreaterThanOrEqual(REQUEST_TIMEOUT_S * 1000 - 100);
        expect(statusOf(c.received())).toBe(408);
        expect(JSON.parse(c.received().slice(c.received().indexOf('\r\n\r\n') + 4))).toMatchObject({ code: 'KG_REQUEST_TIMEOUT', reason: 'Request Timeout' });
        expect(c.received()).not.toContain(TOKEN);
      } finally {
        clearInterval(feeder);
        c.reset();
      }
    });

    it('headers trickled one byte a second are cut off', async () => {
      const c = await rawConnect(port);
      const t0 = Date.now();
      const head = `GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: token ${TOKEN}\r\n\r\n`;
      let i = 0;
      c.socket.write(head[i++]!);
      const feeder = setInterval(() => c.socket.writable && i < head.length && c.socket.write(head[i++]!), 1000);
      try {
        const ms = await closedWithin(c.ended, (HEADERS_TIMEOUT_S + 4) * 1000, t0);
        expect(ms, 'the connection was still open').toBeDefined();
        expect(i).toBeLessThan(head.length);
        expect(statusOf(c.received())).toBe(408);
      } finally {
        clearInterval(feeder);
        c.reset();
      }
    });

    it('an idle keep-alive connection is closed', async () => {
      const c = await rawConnect(port);
      try {
        c.socket.write(`GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: token ${TOKEN}\r\n\r\n`);
        await c.waitFor(responseComplete, 'the response');
        expect(statusOf(c.received())).toBe(200);
        const t0 = Date.now();
        const ms = await closedWithin(c.ended, (KEEP_ALIVE_S + 4) * 1000, t0);
        expect(ms, 'the idle connection was still open').toBeDefined();
        expect(c.received()).toMatch(/\r\nkeep-alive: timeout=1\b/i);
      } finally {
        c.reset();
      }
    });

    it('a keep-alive connection serves --max-requests-per-socket requests, says Connection: close on the last, refuses more, and is closed', async () => {
      const c = await rawConnect(port);
      try {
        let seen = 0;
        for (let n = 1; n <= 3; n++) {
          c.socket.write(`GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: token ${TOKEN}\r\n\r\n`);
          await c.waitFor((t) => t.split('HTTP/1.1 200').length - 1 === n && responseComplete(t.slice(t.lastIndexOf('HTTP/1.1 '))), `response ${n}`);
          seen = n;
        }
        expect(seen).toBe(3);
        const last = c.received().slice(c.received().lastIndexOf('HTTP/1.1 '));
        expect(last).toMatch(/\r\nconnection: close\r\n/i);
        // A client that ignores the close is refused (node's 503), and the connection still goes.
        c.socket.write(`GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: token ${TOKEN}\r\n\r\n`);
        await c.waitFor((t) => t.includes('HTTP/1.1 503'), 'the 503');
        expect(await closedWithin(c.ended, (KEEP_ALIVE_S + 4) * 1000, Date.now())).toBeDefined();
      } finally {
        c.reset();
      }
    });
  });

  describe('a client that waits for kgate', () => {
    it('gets its 201 for a kernel start slower than every timeout, and its WebSocket outlives them', async () => {
      const t0 = Date.now();
      const r = await g.api('api/kernels', { method: 'POST', json: { name: 'slowpy' } });
      const ms = Date.now() - t0;
      expect(r.status, await r.clone().text()).toBe(201);
      expect(ms).toBeGreaterThan(SLOW_START_S * 1000);
      const { id } = (await r.json()) as { id: string };
      const c = await KernelClient.connect(g, id);
      // Longer than the request, header and keep-alive timeouts together, with the socket idle.
      await sleep((REQUEST_TIMEOUT_S + KEEP_ALIVE_S + 1) * 1000);
      expect(c.closed).toBeUndefined();
      const m = c.execute('print(6 * 7)');
      await c.reply(m);
      expect(stdout(c.outputs(m)).trim()).toBe('42');
      c.close();
      expect((await g.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
    });
  });
});
