/**
 * Cross-origin rules: CORS on REST (preflights without a token, the origin
 * reflected only when listed), the same list on the channels WebSocket's
 * Origin header for sockets without a valid token, `*` only when asked for,
 * and `frame-ancestors` on every response, refusals included.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { ConfigError, loadConfig } from '../../src/config.js';
import { KernelClient, startGateway, TOKEN, type TestGateway } from '../helpers/gateway.js';

const PAGE = 'http://127.0.0.1:8000';
const OTHER_PAGE = 'https://app.example.com';
const EVIL = 'http://evil.example';

interface Upgrade {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  ws?: WebSocket;
}

/** Tries a channels upgrade; resolves with the refusal, or with the open socket. */
function upgrade(t: TestGateway, kernelId: string, opts: { origin?: string; token?: string | null } = {}): Promise<Upgrade> {
  const token = opts.token === undefined ? TOKEN : opts.token;
  const url = `${t.wsUrl}api/kernels/${kernelId}/channels?session_id=s-${Math.random()}${token === null ? '' : `&token=${token}`}`;
  const ws = new WebSocket(url, opts.origin === undefined ? {} : { origin: opts.origin });
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve({ status: 101, headers: {}, body: '', ws }));
    ws.once('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    ws.once('error', reject);
  });
}

function preflight(t: TestGateway, path: string, origin: string, extra: Record<string, string> = {}): Promise<Response> {
  return fetch(new URL(path, t.url), {
    method: 'OPTIONS',
    headers: { Origin: origin, 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'authorization,content-type', ...extra },
  });
}

const corsHeaders = (r: Response): string[] => [...r.headers.keys()].filter((k) => k.startsWith('access-control-'));

describe('an origin list', () => {
  let t: TestGateway;
  let kernelId: string;
  beforeAll(async () => {
    t = await startGateway(['--allow-origin', `${PAGE}/`, '--allow-origin', OTHER_PAGE, '--frame-ancestors', "https://portal.example.com,'self'"]);
  });
  afterAll(async () => {
    await t.close();
  });

  it('answers a listed origin with that origin, Vary: Origin and the Location header exposed', async () => {
    for (const origin of [PAGE, OTHER_PAGE]) {
      const r = await t.api('api/kernelspecs', { headers: { Origin: origin } });
      expect(r.status).toBe(200);
      expect(r.headers.get('access-control-allow-origin')).toBe(origin);
      expect(r.headers.get('vary')).toMatch(/\bOrigin\b/);
      expect(r.headers.get('access-control-expose-headers')).toBe('Location');
    }
    const start = await t.api('api/kernels', { method: 'POST', json: { name: 'python3' }, headers: { Origin: PAGE } });
    expect(start.status).toBe(201);
    expect(start.headers.get('access-control-allow-origin')).toBe(PAGE);
    expect(start.headers.get('location')).toMatch(/^\/api\/kernels\//);
    kernelId = ((await start.json()) as { id: string }).id;
  });

  it('still needs the token from a listed origin, and says so in a body the page can read', async () => {
    const r = await fetch(new URL('api/kernels', t.url), { headers: { Origin: PAGE } });
    expect(r.status).toBe(401);
    expect(r.headers.get('access-control-allow-origin')).toBe(PAGE);
    expect(((await r.json()) as { code: string }).code).toBe('KG_UNAUTHORIZED');
  });

  it('refuses an unlisted origin with 403 and no CORS headers, token or not, never reflecting it', async () => {
    for (const origin of [EVIL, 'http://127.0.0.1:8001', 'null', `${PAGE}.evil.example`]) {
      const r = await t.api('api/kernels', { headers: { Origin: origin } });
      expect(r.status, origin).toBe(403);
      expect(corsHeaders(r), origin).toEqual([]);
      expect(((await r.json()) as { code: string }).code).toBe('KG_FORBIDDEN');
    }
    const p = await preflight(t, 'api/kernels', EVIL);
    expect(p.status).toBe(403);
    expect(corsHeaders(p)).toEqual([]);
  });

  it('answers a preflight with 204 and the allowed methods and headers, without a token', async () => {
    for (const path of ['api/kernels', 'api/kernels/any-id/restart', 'api/sessions/x']) {
      const r = await preflight(t, path, PAGE);
      expect(r.status, path).toBe(204);
      expect(r.headers.get('access-control-allow-origin')).toBe(PAGE);
      const methods = r.headers.get('access-control-allow-methods')!.split(/,\s*/);
      expect(methods).toEqual(expect.arrayContaining(['GET', 'POST', 'PATCH', 'DELETE', 'OPTIONS']));
      const headers = r.headers.get('access-control-allow-headers')!.toLowerCase().split(/,\s*/);
      expect(headers).toEqual(expect.arrayContaining(['authorization', 'content-type', 'x-xsrftoken', 'x-requested-with']));
      expect(Number(r.headers.get('access-control-max-age'))).toBeGreaterThan(0);
      expect(r.headers.get('vary')).toMatch(/\bOrigin\b/);
      expect(await r.text()).toBe('');
    }
    const pna = await preflight(t, 'api/kernels', PAGE, { 'Access-Control-Request-Private-Network': 'true' });
    expect(pna.headers.get('access-control-allow-private-network')).toBe('true');
  });

  it('treats an OPTIONS request that is not a preflight as any other request: token first', async () => {
    const r = await fetch(new URL('api/kernels', t.url), { method: 'OPTIONS', headers: { Origin: PAGE } });
    expect(r.status).toBe(401);
  });

  it('serves clients that send no Origin, and same-origin pages, as before', async () => {
    const plain = await t.api('api/kernels');
    expect(plain.status).toBe(200);
    expect(corsHeaders(plain)).toEqual([]);
    const same = await t.api('api/kernels', { headers: { Origin: t.url.replace(/\/$/, '') } });
    expect(same.status).toBe(200);
  });

  it('sets frame-ancestors on every response: success, refusals, 404s, preflights', async () => {
    const want = "frame-ancestors https://portal.example.com 'self'";
    const responses = [
      await t.api('api'),
      await fetch(new URL('api', t.url)),
      await t.api('api/nothing-here'),
      await t.api('api/kernels', { headers: { Origin: EVIL } }),
      await preflight(t, 'api/kernels', PAGE),
      await t.api('api/kernels', { method: 'POST', body: '{not json' }),
      await t.api('api/kernels/%E0%A4%A'), // a routing refusal (malformed path), which no hook sees
    ];
    for (const r of responses) expect(r.headers.get('content-security-policy'), `${r.url} ${r.status}`).toBe(want);
    const refused = await upgrade(t, 'no-such-kernel', { origin: EVIL });
    expect(refused.headers['content-security-policy']).toBe(want);
  });

  it('lets a listed origin open the channels socket and run code', async () => {
    const u = await upgrade(t, kernelId, { origin: PAGE });
    expect(u.status).toBe(101);
    u.ws!.close();
    const c = await KernelClient.connect(t, kernelId);
    const id = c.execute('1+1');
    await c.reply(id);
    expect(c.outputs(id).find((m) => m.header.msg_type === 'execute_result')?.content['data']).toEqual({ 'text/plain': '2' });
    c.close();
  });

  it('refuses an unlisted origin on the socket with a JSON 403 before upgrading when the token is missing or wrong', async () => {
    for (const origin of [EVIL, 'null', 'http://127.0.0.1:8001']) {
      for (const token of [null, 'wrong']) {
        const u = await upgrade(t, kernelId, { origin, token });
        expect(u.status, `${origin} ${token}`).toBe(403);
        expect(u.headers['content-type']).toBe('application/json');
        expect(JSON.parse(u.body)).toMatchObject({ reason: 'Forbidden', code: 'KG_FORBIDDEN' });
        expect(u.body).not.toContain(TOKEN);
      }
    }
  });

  it('lets an unlisted origin open the socket with a good token, as jupyter_server does (ws-origin-token.test.ts has the rest)', async () => {
    for (const origin of [EVIL, 'null', 'http://127.0.0.1:8001']) {
      const u = await upgrade(t, kernelId, { origin });
      expect(u.status, origin).toBe(101);
      u.ws!.close();
    }
  });

  it('lets sockets with no Origin (non-browser clients) and same-origin sockets through', async () => {
    const none = await upgrade(t, kernelId);
    expect(none.status).toBe(101);
    none.ws!.close();
    const same = await upgrade(t, kernelId, { origin: t.url.replace(/\/$/, '') });
    expect(same.status).toBe(101);
    same.ws!.close();
    // A listed origin still needs the token.
    const noToken = await upgrade(t, kernelId, { origin: PAGE, token: null });
    expect(noToken.status).toBe(401);
  });
});

describe('--allow-origin *', () => {
  let t: TestGateway;
  beforeAll(async () => {
    t = await startGateway(['--allow-origin', '*']);
  });
  afterAll(async () => {
    await t.close();
  });

  it('answers every origin with a literal *, preflights included', async () => {
    const r = await t.api('api/kernels', { headers: { Origin: EVIL } });
    expect(r.status).toBe(200);
    expect(r.headers.get('access-control-allow-origin')).toBe('*');
    expect(r.headers.get('vary')).toBeNull();
    const p = await preflight(t, 'api/sessions', 'https://anywhere.example');
    expect(p.status).toBe(204);
    expect(p.headers.get('access-control-allow-origin')).toBe('*');
    expect(await t.api('api/kernels', { headers: { Origin: EVIL }, method: 'GET' }).then((x) => x.status)).toBe(200);
    const noToken = await fetch(new URL('api/kernels', t.url), { headers: { Origin: EVIL } });
    expect(noToken.status).toBe(401);
  });

  it('lets any origin reach the socket check of the kernel', async () => {
    const u = await upgrade(t, 'no-such-kernel', { origin: EVIL });
    expect(u.status).toBe(404);
    expect(JSON.parse(u.body).code).toBe('KG_KERNEL_NOT_FOUND');
  });
});

describe('the defaults', () => {
  let t: TestGateway;
  beforeAll(async () => {
    t = await startGateway();
  });
  afterAll(async () => {
    await t.close();
  });

  it("send no CORS headers, refuse browser origins, and forbid framing ('none')", async () => {
    const r = await t.api('api/kernels');
    expect(r.status).toBe(200);
    expect(corsHeaders(r)).toEqual([]);
    expect(r.headers.get('content-security-policy')).toBe("frame-ancestors 'none'");
    const foreign = await t.api('api/kernels', { headers: { Origin: PAGE } });
    expect(foreign.status).toBe(403);
    expect(corsHeaders(foreign)).toEqual([]);
    const p = await preflight(t, 'api/kernels', PAGE);
    expect(p.status).toBe(403);
    expect(corsHeaders(p)).toEqual([]);
    // The socket: refused for the origin without a token; with one, the origin passes (and the kernel is looked up).
    expect((await upgrade(t, 'no-such-kernel', { origin: PAGE, token: null })).status).toBe(403);
    expect((await upgrade(t, 'no-such-kernel', { origin: PAGE })).status).toBe(404);
  });
});

describe('--demo-port', () => {
  let t: TestGateway;
  beforeAll(async () => {
    t = await startGateway(['--demo-port', '8889']);
  });
  afterAll(async () => {
    await t.close();
  });

  it('allows the demo page origin: same host name, the demo port', async () => {
    const host = new URL(t.url).hostname;
    const ok = await t.api('api/kernels', { headers: { Origin: `http://${host}:8889` } });
    expect(ok.status).toBe(200);
    expect(ok.headers.get('access-control-allow-origin')).toBe(`http://${host}:8889`);
    expect((await t.api('api/kernels', { headers: { Origin: 'http://evil.example:8889' } })).status).toBe(403);
    expect((await t.api('api/kernels', { headers: { Origin: `http://${host}:8890` } })).status).toBe(403);
    expect((await upgrade(t, 'no-such-kernel', { origin: `http://${host}:8889` })).status).toBe(404);
  });
});

describe('the flags', () => {
  const load = (args: string[], env: Record<string, string> = {}): ReturnType<typeof loadConfig> => loadConfig(args, env);

  it('take repeated flags, comma lists and the KG_* twins, normalised as browsers write origins', () => {
    expect(load(['--allow-origin', 'http://127.0.0.1:8000/', '--allow-origin', 'https://A.example.com:443,http://b:81']).allowOrigin).toEqual([
      'http://127.0.0.1:8000',
      'https://a.example.com',
      'http://b:81',
    ]);
    expect(load([], { KG_ALLOW_ORIGIN: 'http://a:1, http://b:2' }).allowOrigin).toEqual(['http://a:1', 'http://b:2']);
    expect(load([], { KG_FRAME_ANCESTORS: 'self https://app.example.com' }).frameAncestors).toEqual(["'self'", 'https://app.example.com']);
    expect(load([]).frameAncestors).toEqual(["'none'"]);
    expect(load([]).allowOrigin).toEqual([]);
  });

  it('stop kgate on anything that is not an origin or a frame-ancestors source', () => {
    for (const args of [
      ['--allow-origin', 'http://x/path'],
      ['--allow-origin', 'x.example.com'],
      ['--allow-origin', 'ftp://x'],
      ['--frame-ancestors', "'self';script-src"],
      ['--frame-ancestors', 'none,self'],
    ]) {
      expect(() => load(args), args.join(' ')).toThrow(ConfigError);
    }
  });
});
