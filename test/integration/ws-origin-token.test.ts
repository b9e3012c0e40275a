/**
 * The channels WebSocket's Origin rule, as jupyter_server's
 * (`should_check_origin` is false for a token-authenticated request): a page
 * that holds a valid token is authorised whatever its origin, since no cookie
 * carries the token there without the page's doing. `--check-origin-with-token`
 * puts the origin check back on top of the token; with auth off, origins are
 * enforced as before. REST keeps its CORS rules: the browser enforces CORS on
 * responses, and kgate refuses unlisted origins there as before.
 */
import { randomUUID } from 'node:crypto';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KernelClient, makeRequest, startGateway, TOKEN, type TestGateway } from '../helpers/gateway.js';

/** What jsdom sends, and any page not listed in --allow-origin. */
const PAGE = 'http://localhost';
const LISTED = 'http://127.0.0.1:8000';

interface Upgrade {
  status: number;
  body: string;
  ws?: WebSocket;
}

function upgrade(t: TestGateway, kernelId: string, opts: { origin?: string; query?: string; headers?: Record<string, string> }): Promise<Upgrade> {
  const url = `${t.wsUrl}api/kernels/${kernelId}/channels?session_id=${randomUUID()}${opts.query ?? ''}`;
  const ws = new WebSocket(url, { ...(opts.origin === undefined ? {} : { origin: opts.origin }), headers: opts.headers ?? {} });
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve({ status: 101, body: '', ws }));
    ws.once('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    ws.once('error', reject);
  });
}

/** Runs `1+1` over an open socket and returns the result's text. */
async function run(ws: WebSocket): Promise<string> {
  const session = randomUUID();
  const req = makeRequest('execute_request', { code: '1+1', silent: false, store_history: false, user_expressions: {}, allow_stdin: false, stop_on_error: true }, session);
  const result = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no execute_result')), 30_000);
    ws.on('message', (d: Buffer) => {
      const m = JSON.parse(d.toString()) as { msg_type?: string; header: { msg_type: string }; parent_header: { msg_id?: string }; content: { data?: Record<string, string> } };
      if (m.header.msg_type === 'execute_result' && m.parent_header.msg_id === req.header.msg_id) {
        clearTimeout(timer);
        resolve(m.content.data!['text/plain']!);
      }
    });
  });
  ws.send(JSON.stringify(req));
  return result;
}

describe('with a token (the default)', () => {
  let t: TestGateway;
  let kernelId: string;
  beforeAll(async () => {
    t = await startGateway(['--allow-origin', LISTED]);
    kernelId = await t.startKernel();
  });
  afterAll(async () => {
    await t.close();
  });

  it('opens a socket from an unlisted page that carries a valid ?token=, and runs code', async () => {
    const u = await upgrade(t, kernelId, { origin: PAGE, query: `&token=${TOKEN}` });
    expect(u.status, u.body).toBe(101);
    expect(await run(u.ws!)).toBe('2');
    u.ws!.close();
  });

  it('takes the token from the Authorization header too', async () => {
    const u = await upgrade(t, kernelId, { origin: 'http://evil.example', headers: { Authorization: `token ${TOKEN}` } });
    expect(u.status, u.body).toBe(101);
    u.ws!.close();
  });

  it('refuses a wrong or missing token from any origin with 401 or 403, saying nothing of the kernel', async () => {
    for (const origin of [PAGE, LISTED, 'http://evil.example', 'null', undefined]) {
      for (const query of ['', '&token=wrong', `&token=${TOKEN}x`]) {
        const real = await upgrade(t, kernelId, { origin, query });
        const none = await upgrade(t, 'no-such-kernel', { origin, query });
        expect([401, 403], `${origin} ${query}`).toContain(real.status);
        // The same answer whether or not the kernel exists.
        expect(none.status).toBe(real.status);
        expect(none.body).toBe(real.body);
        expect(real.body).not.toContain(kernelId);
        expect(real.body).not.toContain(TOKEN);
        // No valid token and an origin that is not allowed: refused for the origin, as before.
        if (origin !== undefined && origin !== LISTED) expect(real.status).toBe(403);
        else expect(real.status).toBe(401);
      }
    }
  });

  it('keeps REST CORS as it is: an unlisted origin is refused there even with the token', async () => {
    const r = await t.api('api/kernels', { headers: { Origin: PAGE } });
    expect(r.status).toBe(403);
    expect(r.headers.get('access-control-allow-origin')).toBeNull();
  });
});

describe('--check-origin-with-token true', () => {
  let t: TestGateway;
  let kernelId: string;
  beforeAll(async () => {
    t = await startGateway(['--allow-origin', LISTED, '--check-origin-with-token', 'true']);
    kernelId = await t.startKernel();
  });
  afterAll(async () => {
    await t.close();
  });

  it('refuses an unlisted page with 403 even with a valid token', async () => {
    const u = await upgrade(t, kernelId, { origin: PAGE, query: `&token=${TOKEN}` });
    expect(u.status).toBe(403);
    expect(JSON.parse(u.body)).toMatchObject({ code: 'KG_FORBIDDEN' });
  });

  it('lets a listed page, and a client with no Origin, through with the token', async () => {
    const listed = await upgrade(t, kernelId, { origin: LISTED, query: `&token=${TOKEN}` });
    expect(listed.status).toBe(101);
    listed.ws!.close();
    const c = await KernelClient.connect(t, kernelId);
    c.close();
  });
});

describe('with auth off', () => {
  let t: TestGateway;
  let kernelId: string;
  beforeAll(async () => {
    t = await startGateway(['--auth-token', '']);
    kernelId = await t.startKernel();
  });
  afterAll(async () => {
    await t.close();
  });

  it('refuses an unlisted origin with 403, token or not, and serves clients with no Origin', async () => {
    for (const query of ['', `&token=${TOKEN}`]) {
      const u = await upgrade(t, kernelId, { origin: PAGE, query });
      expect(u.status, query).toBe(403);
    }
    const plain = await upgrade(t, kernelId, {});
    expect(plain.status).toBe(101);
    expect(await run(plain.ws!)).toBe('2');
    plain.ws!.close();
  });
});
