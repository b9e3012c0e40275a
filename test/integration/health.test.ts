/**
 * GET /healthz and GET /readyz: without a credential, for exactly those two
 * paths (under --base-url, and at the root too when the base URL is not /),
 * saying nothing but their status; readiness follows the state dir (cached
 * for a second) and the shutdown. Last, kgate as a process: on SIGTERM with
 * --shutdown-drain, readiness answers 503 while a kernel's WebSocket is still
 * open and REST still serves; then the socket closes with 1001, kgate stops
 * listening and exits 0.
 */
import { mkdtempSync, renameSync, rmSync } from 'node:fs';
import { get as httpGet } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { startKgate } from '../helpers/kgate-process.js';

/** A GET on a new connection of its own (no pooled keep-alive one), answering its status. */
function freshGet(url: URL): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = httpGet(url, { agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.once('error', reject);
  });
}

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'kgate-health-'));
  dirs.push(d);
  return d;
}

describe('under --base-url /gw/, with a state dir', () => {
  let t: TestGateway;
  let origin: string;
  let stateDir: string;
  beforeAll(async () => {
    stateDir = join(tmp(), 'state');
    t = await startGateway(['--base-url', 'gw', '--state-dir', stateDir]);
    origin = new URL(t.url).origin;
  });
  afterAll(async () => {
    await t?.close();
  });

  const bare = (path: string, init: RequestInit = {}): Promise<Response> => fetch(`${origin}${path}`, init);

  it('answers both probes without a token, under the prefix and at the root, and nothing else', async () => {
    for (const path of ['/gw/healthz', '/gw/readyz', '/healthz', '/readyz', '/gw/readyz?token=nothing&x=1']) {
      const r = await bare(path);
      expect(r.status, path).toBe(200);
      expect(r.headers.get('cache-control'), path).toBe('no-store');
      expect(r.headers.get('x-request-id'), path).toMatch(/^[0-9a-f-]{36}$/);
      expect(await r.json(), path).toEqual({ status: 'ok' });
    }
    expect((await bare('/gw/healthz', { method: 'HEAD' })).status).toBe(200);
    // Exactly these paths and GET: anything near them is the authenticator's.
    for (const [method, path] of [
      ['GET', '/gw/healthz/'],
      ['GET', '/gw/healthzz'],
      ['GET', '/gw/api'],
      ['POST', '/gw/healthz'],
      ['DELETE', '/readyz'],
      ['GET', '/gw/ready'],
    ] as const) {
      expect((await bare(path, { method })).status, `${method} ${path}`).toBe(401);
    }
  });

  it('answers a page of another origin without a refusal, and without a CORS header to read the answer by', async () => {
    const r = await bare('/gw/readyz', { headers: { Origin: 'https://elsewhere.example' } });
    expect(r.status).toBe(200);
    expect(r.headers.get('access-control-allow-origin')).toBeNull();
    // The same page is refused on the API, as before.
    expect((await bare('/gw/api', { headers: { Origin: 'https://elsewhere.example', Authorization: `token ${t.token}` } })).status).toBe(403);
  });

  it('is not ready while the state dir is gone (checked at most once a second), and ready again once it is back', async () => {
    expect((await bare('/gw/readyz')).status).toBe(200);
    const away = `${stateDir}.away`;
    renameSync(stateDir, away);
    try {
      // Within the second the last check is trusted for; then the check runs again.
      const started = Date.now();
      const first = await bare('/gw/readyz');
      if (Date.now() - started < 500) expect(first.status).toBe(200);
      let r: Response;
      const deadline = Date.now() + 5000;
      do {
        await new Promise((res) => setTimeout(res, 100));
        r = await bare('/gw/readyz');
      } while (r.status === 200 && Date.now() < deadline);
      expect(r.status).toBe(503);
      const text = await r.text();
      expect(JSON.parse(text)).toEqual({
        status: 'not ready',
        reason: 'Service Unavailable',
        message: 'not ready: the state store cannot be read or written',
        code: 'KG_NOT_READY',
      });
      // Nothing of the setup: no path.
      expect(text).not.toContain(stateDir);
      expect(text).not.toContain('kgate-health');
      // Liveness does not depend on it.
      expect((await bare('/gw/healthz')).status).toBe(200);
    } finally {
      renameSync(away, stateDir);
    }
    const deadline = Date.now() + 5000;
    let status = 503;
    while (status !== 200 && Date.now() < deadline) {
      await new Promise((res) => setTimeout(res, 100));
      status = (await bare('/gw/readyz')).status;
    }
    expect(status).toBe(200);
  });

  it('a flood of 500 concurrent readiness probes: all ready, sharing one state store check', async () => {
    const all = await Promise.all(Array.from({ length: 500 }, () => bare('/gw/readyz').then((r) => r.status)));
    expect(new Set(all)).toEqual(new Set([200]));
  });
});

describe('at base URL /', () => {
  it('is not ready once Gateway.close begins, and refuses other requests with 503 from then on', async () => {
    const t = await startGateway();
    const id = await t.startKernel('kgate-bench');
    expect((await fetch(new URL('readyz', t.url))).status).toBe(200);
    const closing = t.gw.close();
    // Past the first step of close(): new connections are refused, so the requests that still
    // come (on a connection kept alive before, as a load balancer holds one) are injected.
    const ready = await t.gw.app.inject({ url: '/readyz' });
    expect(ready.statusCode).toBe(503);
    expect(ready.json()).toMatchObject({ status: 'not ready', message: 'not ready: shutting down', code: 'KG_NOT_READY' });
    expect((await t.gw.app.inject({ url: '/healthz' })).statusCode).toBe(200);
    const api = await t.gw.app.inject({ url: `/api/kernels/${id}`, headers: { authorization: `token ${t.token}` } });
    expect(api.statusCode).toBe(503);
    expect(api.headers['connection']).toBe('close');
    expect(api.json()).toMatchObject({ reason: 'Service Unavailable', code: 'KG_NOT_READY' });
    // And no new connection is taken.
    await expect(freshGet(new URL('readyz', t.url))).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    await closing;
  });
});

describe('kgate as a process: SIGTERM with --shutdown-drain', () => {
  it('fails readiness first, while the WebSocket is still open and REST serves; then closes the socket (1001) and exits 0', async () => {
    const k = await startKgate(['--port', '0', '--auth-token', 'health-token-0123456789', '--shutdown-drain', '1.5', '--log-level', 'info']);
    let stderr = '';
    k.child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const auth = { Authorization: 'token health-token-0123456789' };
    const start = await fetch(new URL('api/kernels', k.url), { method: 'POST', headers: { ...auth, 'Content-Type': 'application/json' }, body: '{"name":"kgate-bench"}' });
    expect(start.status).toBe(201);
    const id = ((await start.json()) as { id: string }).id;
    const ws = new WebSocket(`${k.url.replace(/^http/, 'ws')}api/kernels/${id}/channels`, { headers: auth });
    await new Promise<void>((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    let closed: { code: number; at: number } | undefined;
    ws.on('close', (code: number) => (closed = { code, at: Date.now() }));
    expect((await fetch(new URL('readyz', k.url))).status).toBe(200);

    const signalled = Date.now();
    k.child.kill('SIGTERM');
    let notReadyAt: number | undefined;
    let openWhenNotReady = false;
    let restDuringDrain: number | undefined;
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline) {
      const r = await fetch(new URL('readyz', k.url)).catch(() => undefined);
      if (!r) break; // no longer listening
      const s = r.status;
      await r.arrayBuffer();
      if (s === 503 && notReadyAt === undefined) {
        notReadyAt = Date.now();
        openWhenNotReady = ws.readyState === WebSocket.OPEN;
        restDuringDrain = (await fetch(new URL(`api/kernels/${id}`, k.url), { headers: auth })).status;
      }
      await new Promise((res) => setTimeout(res, 50));
    }
    expect(await k.exited).toBe(0);
    expect(notReadyAt, 'readiness was never seen failing').toBeDefined();
    expect(openWhenNotReady, 'the WebSocket was already closed when readiness first failed').toBe(true);
    // The drain: REST still answered while the load balancer was being told.
    expect(restDuringDrain).toBe(200);
    expect(closed?.code).toBe(1001);
    // Readiness failed at once, and the socket closed only after the drain.
    expect(notReadyAt! - signalled).toBeLessThan(1000);
    expect(closed!.at - signalled).toBeGreaterThanOrEqual(1400);
    expect(closed!.at).toBeGreaterThan(notReadyAt!);
    expect(stderr).toMatch(/"msg":"shutting down: not ready from now on/);
  });
});
