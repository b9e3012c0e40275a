/**
 * Bad input gets a clear error and loses nothing: wrong or missing tokens on
 * every route, bodies that are not JSON or not valid, unknown ids, and
 * WebSocket frames kgate cannot decode, while a well-behaved client on the
 * same kernel keeps working throughout.
 */
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KernelClient, makeRequest, startGateway, stdout, type TestGateway } from '../helpers/gateway.js';

let t: TestGateway;
let kernelId: string;
let healthy: KernelClient;

beforeAll(async () => {
  t = await startGateway(['--max-message-size', '1048576']);
  kernelId = await t.startKernel();
  healthy = await KernelClient.connect(t, kernelId, { protocol: 'v1' });
});
afterAll(async () => {
  healthy?.close();
  await t.close();
});

/** The healthy client still gets its outputs: nothing another client did hurt it. */
async function healthyStillWorks(): Promise<void> {
  const m = healthy.execute('print(6*7)');
  await healthy.reply(m);
  expect(stdout(healthy.outputs(m)).trim()).toBe('42');
  expect(healthy.closed).toBeUndefined();
}

async function expectJsonError(r: Response, status: number, code: string): Promise<{ reason: string; message: string; code: string }> {
  expect(r.status).toBe(status);
  expect(r.headers.get('content-type')).toMatch(/^application\/json/);
  const body = (await r.json()) as { reason: string; message: string; code: string };
  expect(body.code).toBe(code);
  expect(body.reason.length).toBeGreaterThan(0);
  expect(body.message.length).toBeGreaterThan(0);
  return body;
}

describe('auth on every route', () => {
  const routes: Array<[string, string]> = [
    ['GET', 'api'],
    ['GET', 'api/status'],
    ['GET', 'api/kernelspecs'],
    ['GET', 'api/kernelspecs/python3'],
    ['GET', 'kernelspecs/python3/logo-64x64.png'],
    ['GET', 'api/kernels'],
    ['POST', 'api/kernels'],
    ['GET', 'api/kernels/ID'],
    ['DELETE', 'api/kernels/ID'],
    ['POST', 'api/kernels/ID/interrupt'],
    ['POST', 'api/kernels/ID/restart'],
    ['GET', 'api/sessions'],
    ['POST', 'api/sessions'],
    ['GET', 'api/sessions/x'],
    ['PATCH', 'api/sessions/x'],
    ['DELETE', 'api/sessions/x'],
    ['GET', 'api/no-such-route'],
  ];

  it.each(routes)('%s /%s without a token or with a wrong one is 401', async (method, path) => {
    const p = path.replace('ID', kernelId);
    for (const headers of [{ Authorization: '' }, { Authorization: 'token wrong' }, { Authorization: `token ${t.token}x` }, { Authorization: 'Bearer wrong' }]) {
      const r = await fetch(new URL(p, t.url), { method, headers });
      await expectJsonError(r, 401, 'KG_UNAUTHORIZED');
    }
    const q = await fetch(new URL(`${p}?token=wrong`, t.url), { method });
    await expectJsonError(q, 401, 'KG_UNAUTHORIZED');
  });

  it('accepts the token as a header, a bearer token, or a query parameter', async () => {
    for (const init of [{ headers: { Authorization: `token ${t.token}` } }, { headers: { Authorization: `Bearer ${t.token}` } }]) {
      expect((await fetch(new URL('api/kernels', t.url), init)).status).toBe(200);
    }
    expect((await fetch(new URL(`api/kernels?token=${t.token}`, t.url))).status).toBe(200);
  });

  it('refuses the channels WebSocket without a valid token with a JSON 401, before upgrading', async () => {
    for (const url of [`${t.wsUrl}api/kernels/${kernelId}/channels`, `${t.wsUrl}api/kernels/${kernelId}/channels?token=wrong`]) {
      const res = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const ws = new WebSocket(url);
        ws.once('open', () => reject(new Error('upgraded without a token')));
        ws.once('unexpected-response', (_req, r) => {
          let body = '';
          r.on('data', (d: Buffer) => (body += d.toString()));
          r.on('end', () => resolve({ status: r.statusCode ?? 0, body }));
        });
        ws.once('error', () => undefined);
      });
      expect(res.status).toBe(401);
      expect(JSON.parse(res.body)).toMatchObject({ code: 'KG_UNAUTHORIZED' });
    }
    await healthyStillWorks();
  });
});

describe('bad REST input', () => {
  it('a body that is not JSON is a 400 KG_INVALID_JSON', async () => {
    for (const [body, type] of [
      ['{"name": ', 'application/json'],
      ['name=python3', 'application/x-www-form-urlencoded'],
      ['\u0000\u0001', 'text/plain'],
    ] as const) {
      const r = await t.api('api/kernels', { method: 'POST', body, headers: { 'Content-Type': type } });
      await expectJsonError(r, 400, 'KG_INVALID_JSON');
    }
  });

  it('a body of the wrong shape is a 400 naming the member', async () => {
    for (const json of [[1, 2], 'python3', { name: 42 }, { env: 'KERNEL_X=1' }, { path: 7 }]) {
      const r = await t.api('api/kernels', { method: 'POST', json });
      await expectJsonError(r, 400, 'KG_BAD_REQUEST');
    }
  });

  it('a 10 KB kernel name is refused with a short message that does not echo it', async () => {
    const name = 'a'.repeat(10_000);
    const r = await t.api('api/kernels', { method: 'POST', json: { name } });
    const body = await expectJsonError(r, 400, 'KG_BAD_REQUEST');
    expect(body.message.length).toBeLessThan(300);
    // Fastify refuses a path parameter this long before routing, as 414.
    const g = await t.api(`api/kernelspecs/${name}`);
    expect([404, 414]).toContain(g.status);
    expect(JSON.stringify(await g.json()).length).toBeLessThan(400);
  });

  it('an unknown kernelspec is a 404', async () => {
    const r = await t.api('api/kernels', { method: 'POST', json: { name: 'no-such-kernel' } });
    await expectJsonError(r, 404, 'KG_KERNELSPEC_NOT_FOUND');
  });

  it('env values that could inject into a command line are refused, naming the variable only', async () => {
    for (const value of ['$(id)', '`id`', 'a\nb', 'a\rb', 'a\u0000b', 'x'.repeat(5000), 42]) {
      const r = await t.api('api/kernels', { method: 'POST', json: { name: 'python3', env: { KERNEL_BAD: value } } });
      const body = await expectJsonError(r, 400, 'KG_BAD_REQUEST');
      expect(body.message).toContain('KERNEL_BAD');
      if (typeof value === 'string' && value.length < 100) expect(body.message).not.toContain(value);
    }
    // No kernel was started for any of them.
    const list = (await (await t.api('api/kernels')).json()) as unknown[];
    expect(list).toHaveLength(1);
  });

  it('unknown kernel and session ids are 404 on every kernel route', async () => {
    const id = '00000000-0000-0000-0000-000000000000';
    await expectJsonError(await t.api(`api/kernels/${id}`), 404, 'KG_KERNEL_NOT_FOUND');
    await expectJsonError(await t.api(`api/kernels/${id}`, { method: 'DELETE' }), 404, 'KG_KERNEL_NOT_FOUND');
    await expectJsonError(await t.api(`api/kernels/${id}/interrupt`, { method: 'POST' }), 404, 'KG_KERNEL_NOT_FOUND');
    await expectJsonError(await t.api(`api/kernels/${id}/restart`, { method: 'POST' }), 404, 'KG_KERNEL_NOT_FOUND');
    await expectJsonError(await t.api(`api/sessions/${id}`), 404, 'KG_SESSION_NOT_FOUND');
    await expectJsonError(await t.api(`api/sessions/${id}`, { method: 'PATCH', json: { path: 'x' } }), 404, 'KG_SESSION_NOT_FOUND');
    await expectJsonError(await t.api(`api/sessions/${id}`, { method: 'DELETE' }), 404, 'KG_SESSION_NOT_FOUND');
    await expectJsonError(await t.api('api/no/such/route'), 404, 'KG_NOT_FOUND');
  });

  it('the channels socket of an unknown kernel is a JSON 404 before upgrading', async () => {
    const status = await new Promise<number>((resolve, reject) => {
      const ws = new WebSocket(`${t.wsUrl}api/kernels/nope/channels?token=${t.token}`);
      ws.once('open', () => reject(new Error('upgraded')));
      ws.once('unexpected-response', (_req, r) => resolve(r.statusCode ?? 0));
      ws.once('error', () => undefined);
    });
    expect(status).toBe(404);
  });
});

describe('bad WebSocket frames close only the sender, with 1007 and a reason', () => {
  async function sendAndExpectClose(protocol: 'json' | 'v1', frame: string | Buffer, code = 1007): Promise<string> {
    const c = await KernelClient.connect(t, kernelId, { protocol });
    c.ws.send(frame);
    const closed = await c.waitClosed();
    expect(closed.code).toBe(code);
    return closed.reason;
  }

  const v1Valid = (): Buffer => {
    const parts = ['shell', '{"msg_id":"a","msg_type":"kernel_info_request"}', '{}', '{}', '{}'].map((s) => Buffer.from(s));
    const table = Buffer.alloc(8 * 7);
    table.writeBigUInt64LE(6n, 0);
    let off = table.length;
    parts.forEach((p, k) => {
      table.writeBigUInt64LE(BigInt(off), 8 * (k + 1));
      off += p.length;
    });
    table.writeBigUInt64LE(BigInt(off), 48);
    return Buffer.concat([table, ...parts]);
  };

  const cases: Array<[string, 'json' | 'v1', () => string | Buffer]> = [
    ['invalid JSON text', 'json', () => '{"channel": "shell", '],
    ['a JSON array', 'json', () => '[1,2,3]'],
    ['an unknown channel', 'json', () => JSON.stringify({ ...makeRequest('execute_request', { code: '1' }, 's'), channel: 'nope' })],
    ['a missing header', 'json', () => JSON.stringify({ channel: 'shell', parent_header: {}, metadata: {}, content: {} })],
    ['a header that is not an object', 'json', () => JSON.stringify({ ...makeRequest('execute_request', { code: '1' }, 's'), header: 'x' })],
    ['a message to iopub', 'json', () => JSON.stringify({ ...makeRequest('execute_request', { code: '1' }, 's'), channel: 'iopub' })],
    ['a garbage binary JSON-protocol table', 'json', () => Buffer.from([0xff, 0xff, 0xff, 0xff, 1, 2, 3])],
    ['garbage v1 offsets', 'v1', () => Buffer.from('\x05\x00\x00\x00\x00\x00\x00\x00garbage')],
    [
      'v1 offsets past the end',
      'v1',
      () => {
        const b = v1Valid();
        b.writeBigUInt64LE(1n << 40n, 16);
        return b;
      },
    ],
    [
      'v1 offsets going backwards',
      'v1',
      () => {
        const b = v1Valid();
        b.writeBigUInt64LE(60n, 16);
        b.writeBigUInt64LE(56n, 24);
        return b;
      },
    ],
    [
      'a v1 count of 2^40',
      'v1',
      () => {
        const b = v1Valid();
        b.writeBigUInt64LE(1n << 40n, 0);
        return b;
      },
    ],
    ['a v1 text frame', 'v1', () => '{"channel":"shell"}'],
    [
      'a v1 unknown channel',
      'v1',
      () => {
        const b = v1Valid();
        b.write('xxxxx', 56);
        return b;
      },
    ],
  ];

  it.each(cases)('%s', async (_what, protocol, frame) => {
    const reason = await sendAndExpectClose(protocol, frame());
    expect(reason).toMatch(/^kgate: /);
    await healthyStillWorks();
  });

  it('a frame over --max-message-size closes with 1009', async () => {
    await sendAndExpectClose('json', Buffer.alloc(2 * 1024 * 1024, 1), 1009);
    await healthyStillWorks();
  });

  it('the well-formed v1 frame that the cases corrupt is accepted', async () => {
    const c = await KernelClient.connect(t, kernelId, { protocol: 'v1' });
    c.ws.send(v1Valid());
    const reply = await c.next((m) => m.header.msg_type === 'kernel_info_reply');
    expect(reply.parent_header.msg_id).toBe('a');
    c.close();
  });

  it('the kernel is still there and still one kernel', async () => {
    const list = (await (await t.api('api/kernels')).json()) as Array<{ id: string; execution_state: string }>;
    // idle, or busy answering the last kernel_info: alive either way.
    expect(list).toEqual([expect.objectContaining({ id: kernelId, execution_state: expect.stringMatching(/^(idle|busy)$/) })]);
  });
});
