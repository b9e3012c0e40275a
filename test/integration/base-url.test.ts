/**
 * `--base-url /gw/`: every route (REST, kernelspec resources, the channels
 * WebSocket, the OpenAPI description), every Location header and every
 * resource link lives under the prefix, as behind a proxy; nothing answers
 * outside it but the JSON 404. Real ipykernel kernels, `ws`, and the real
 * `@jupyterlab/services` client pointed at the prefixed URL.
 */
import { KernelManager, KernelSpecManager, ServerConnection } from '@jupyterlab/services';
import WebSocket from 'ws';
import { parse as parseYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config.js';
import { KernelClient, startGateway, stdout, type TestGateway } from '../helpers/gateway.js';

let t: TestGateway;
let origin: string;

beforeAll(async () => {
  t = await startGateway(['--base-url', 'gw']);
  origin = new URL(t.url).origin;
});
afterAll(async () => {
  await t?.close();
});

/** A request by absolute path, outside `t.url`'s prefix. */
const raw = (path: string, init: RequestInit = {}): Promise<Response> => fetch(`${origin}${path}`, { ...init, headers: { Authorization: `token ${t.token}`, ...init.headers } });

describe('the option', () => {
  it('is normalised to start and end with /', () => {
    expect(t.url.endsWith('/gw/')).toBe(true);
    for (const [given, want] of [
      ['/', '/'],
      ['', '/'],
      ['gw', '/gw/'],
      ['/gw', '/gw/'],
      ['gw/', '/gw/'],
      ['/a/b.c/', '/a/b.c/'],
    ] as const) {
      expect(loadConfig(['--base-url', given], {}).baseUrl, given).toBe(want);
    }
    expect(loadConfig([], { KG_BASE_URL: '/from-env' }).baseUrl).toBe('/from-env/');
    expect(loadConfig([], {}).baseUrl).toBe('/');
  });

  it('refuses what is not a plain path', () => {
    for (const bad of ['/a//b/', '/../', '/./x/', '/a b/', '/:id/', '/*/', '/a?b/', '/a#b/']) {
      expect(() => loadConfig(['--base-url', bad], {}), bad).toThrow(ConfigError);
    }
  });
});

describe('REST under the prefix', () => {
  it('serves /gw/api, /gw/api/status and the kernelspecs, with resource links under the prefix that resolve', async () => {
    expect((await t.api('api')).status).toBe(200);
    expect((await t.api('api/status')).status).toBe(200);
    const r = await t.api('api/kernelspecs');
    expect(r.status).toBe(200);
    const body = (await r.json()) as { default: string; kernelspecs: Record<string, { resources: Record<string, string> }> };
    const hrefs = Object.values(body.kernelspecs).flatMap((k) => Object.values(k.resources));
    expect(hrefs.length).toBeGreaterThan(0);
    for (const href of hrefs) {
      expect(href.startsWith('/gw/kernelspecs/'), href).toBe(true);
      const res = await raw(href);
      expect(res.status, href).toBe(200);
      expect((await res.arrayBuffer()).byteLength).toBeGreaterThan(0);
      // …and not without the prefix.
      expect((await raw(href.slice('/gw'.length))).status).toBe(404);
    }
    const one = await t.api(`api/kernelspecs/${body.default}`);
    expect(one.status).toBe(200);
  });

  it('starts a kernel and a session with Location headers under the prefix, and runs code over the WebSocket', async () => {
    const r = await t.api('api/kernels', { method: 'POST', json: { name: 'python3' } });
    expect(r.status).toBe(201);
    const { id } = (await r.json()) as { id: string };
    expect(r.headers.get('location')).toBe(`/gw/api/kernels/${id}`);
    const byLocation = await raw(r.headers.get('location')!);
    expect(byLocation.status).toBe(200);
    expect(((await byLocation.json()) as { id: string }).id).toBe(id);

    const c = await KernelClient.connect(t, id);
    expect(c.ws.url).toContain('/gw/api/kernels/');
    const msgId = c.execute('print(6 * 7)');
    const reply = await c.reply(msgId);
    expect(reply.content['status']).toBe('ok');
    expect(stdout(c.outputs(msgId))).toBe('42\n');
    c.close();

    const s = await t.api('api/sessions', { method: 'POST', json: { path: 'nb.ipynb', type: 'notebook', name: 'nb', kernel: { id } } });
    expect(s.status).toBe(201);
    const session = (await s.json()) as { id: string; kernel: { id: string } };
    expect(session.kernel.id).toBe(id);
    expect(s.headers.get('location')).toBe(`/gw/api/sessions/${session.id}`);
    expect((await raw(s.headers.get('location')!)).status).toBe(200);

    expect((await t.api(`api/kernels/${id}/interrupt`, { method: 'POST' })).status).toBe(204);
    expect((await t.api(`api/sessions/${session.id}`, { method: 'DELETE' })).status).toBe(204);
    expect((await t.api(`api/kernels/${id}`)).status).toBe(404);
  });

  it('serves the OpenAPI description under the prefix, naming the prefix as its server', async () => {
    const r = await t.api('api/spec.yaml');
    expect(r.status).toBe(200);
    const doc = parseYaml(await r.text()) as { servers: Array<{ url: string }>; paths: Record<string, unknown> };
    expect(doc.servers[0]!.url).toBe('/gw');
    expect(Object.keys(doc.paths)).toContain('/api/kernels');
  });
});

describe('outside the prefix', () => {
  it('answers the JSON 404 for REST, resources and the spec, even with a good token', async () => {
    for (const path of ['/api/kernels', '/api', '/api/kernelspecs', '/api/spec.yaml', '/kernelspecs/python3/logo-64x64.png', '/gw', '/gwx/api/kernels', '/x/gw/api/kernels']) {
      const r = await raw(path);
      expect(r.status, path).toBe(404);
      expect(r.headers.get('content-type'), path).toMatch(/^application\/json/);
      const body = (await r.json()) as { reason: string; message: string; code: string };
      expect(body, path).toMatchObject({ reason: 'Not Found', code: 'KG_NOT_FOUND' });
      expect(typeof body.message).toBe('string');
    }
    const post = await raw('/api/kernels', { method: 'POST', body: '{"name":"python3"}' });
    expect(post.status).toBe(404);
    // …and started nothing.
    expect((await (await t.api('api/kernels')).json()) as unknown[]).toHaveLength(0);
  });

  it('refuses the channels WebSocket without the prefix with a JSON 404, before the upgrade', async () => {
    const id = await t.startKernel();
    try {
      const refusal = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const ws = new WebSocket(`ws://${new URL(origin).host}/api/kernels/${id}/channels?token=${t.token}`);
        ws.once('open', () => reject(new Error('the upgrade was accepted outside the prefix')));
        ws.once('error', () => undefined);
        ws.once('unexpected-response', (_req, res) => {
          let body = '';
          res.on('data', (d: Buffer) => (body += d.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        });
      });
      expect(refusal.status).toBe(404);
      expect(JSON.parse(refusal.body)).toMatchObject({ code: 'KG_NOT_FOUND' });
    } finally {
      await t.api(`api/kernels/${id}`, { method: 'DELETE' });
    }
  });
});

describe('@jupyterlab/services with the prefix in its baseUrl', () => {
  let kernelManager: KernelManager;
  let specManager: KernelSpecManager;

  beforeAll(async () => {
    const settings = ServerConnection.makeSettings({
      baseUrl: t.url,
      wsUrl: t.wsUrl,
      token: t.token,
      appendToken: true,
      WebSocket: WebSocket as unknown as typeof globalThis.WebSocket,
      fetch,
      Request,
      Headers,
    });
    kernelManager = new KernelManager({ serverSettings: settings });
    specManager = new KernelSpecManager({ serverSettings: settings });
    await Promise.all([kernelManager.ready, specManager.ready]);
  });
  afterAll(() => {
    kernelManager?.dispose();
    specManager?.dispose();
  });

  it('lists the kernelspecs with their resources', async () => {
    await specManager.refreshSpecs();
    const py = specManager.specs?.kernelspecs['python3'];
    expect(py).toBeDefined();
    expect(Object.values(py!.resources).every((href) => href.startsWith('/gw/'))).toBe(true);
  });

  it('starts a kernel, executes code over its WebSocket, and shuts it down', async () => {
    const kernel = await kernelManager.startNew({ name: 'python3' });
    try {
      const future = kernel.requestExecute({ code: 'print("under /gw/")' });
      let out = '';
      future.onIOPub = (msg) => {
        if (msg.header.msg_type === 'stream') out += (msg.content as { text: string }).text;
      };
      const reply = await future.done;
      expect(reply.content.status).toBe('ok');
      expect(out).toBe('under /gw/\n');
      await kernelManager.refreshRunning();
      expect([...kernelManager.running()].map((k) => k.id)).toContain(kernel.id);
    } finally {
      await kernel.shutdown();
    }
    expect((await t.api(`api/kernels/${kernel.id}`)).status).toBe(404);
  });
});
