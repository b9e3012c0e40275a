/**
 * The REST contract as jupyter_server's GatewayClient and @jupyterlab/services
 * read it: status codes, Location headers, the kernel model and its
 * `last_activity` format, sessions, and `env` reaching the kernel.
 */
import { mkdirSync, mkdtempSync, realpathSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KernelClient, startGateway, stdout, type TestGateway } from '../helpers/gateway.js';

let t: TestGateway;
/** --root-dir: KERNEL_WORKING_DIR must name a directory inside it. */
const rootDir = realpathSync(mkdtempSync(join(tmpdir(), 'kgate-rest-root-')));
beforeAll(async () => {
  mkdirSync(join(rootDir, 'work'));
  t = await startGateway(['--root-dir', rootDir]);
});
afterAll(async () => {
  await t.close();
});

const LAST_ACTIVITY = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/;

interface KernelModel {
  id: string;
  name: string;
  last_activity: string;
  execution_state: string;
  connections: number;
}

describe('service roots', () => {
  it('GET /api answers the version', async () => {
    const r = await t.api('api');
    expect(r.status).toBe(200);
    expect(((await r.json()) as { version: string }).version).toMatch(/^\d+\.\d+\.\d+/);
  });

  it('GET /api/status answers counts and a started time', async () => {
    const r = await t.api('api/status');
    expect(r.status).toBe(200);
    const s = (await r.json()) as Record<string, unknown>;
    expect(s).toHaveProperty('kernels');
    expect(s).toHaveProperty('connections');
    expect(s['started']).toMatch(LAST_ACTIVITY);
  });
});

describe('kernelspecs', () => {
  it('lists python3 with a default and serves its resources', async () => {
    const r = await t.api('api/kernelspecs');
    expect(r.status).toBe(200);
    const body = (await r.json()) as {
      default: string;
      kernelspecs: Record<string, { name: string; spec: { argv: string[]; language: string; env?: unknown }; resources: Record<string, string> }>;
    };
    expect(body.default).toBe('python3');
    const py = body.kernelspecs['python3']!;
    expect(py.spec.language).toBe('python');
    expect(py.spec.argv).toContain('{connection_file}');

    const one = await t.api('api/kernelspecs/python3');
    expect(one.status).toBe(200);
    expect(((await one.json()) as { name: string }).name).toBe('python3');

    for (const href of Object.values(py.resources)) {
      const res = await t.api(href.replace(/^\//, ''));
      expect(res.status, href).toBe(200);
      expect((await res.arrayBuffer()).byteLength).toBeGreaterThan(0);
    }
  });

  it('refuses path traversal on resources and unknown specs, in JSON', async () => {
    for (const path of ['kernelspecs/python3/..%2f..%2f..%2fetc%2fpasswd', 'kernelspecs/python3/../../etc/passwd', 'kernelspecs/nope/logo-64x64.png']) {
      const r = await t.api(path);
      expect(r.status, path).toBe(404);
      expect(((await r.json()) as { reason: string }).reason).toBe('Not Found');
    }
    const r = await t.api('api/kernelspecs/nope');
    expect(r.status).toBe(404);
    expect(((await r.json()) as { code: string }).code).toBe('KG_KERNELSPEC_NOT_FOUND');
  });
});

describe('kernels', () => {
  let id: string;

  it('POST starts a kernel: 201, Location, and the model', async () => {
    const r = await t.api('api/kernels', { method: 'POST', json: { name: 'python3' } });
    expect(r.status).toBe(201);
    const k = (await r.json()) as KernelModel;
    id = k.id;
    expect(r.headers.get('location')).toBe(`/api/kernels/${k.id}`);
    expect(k.name).toBe('python3');
    expect(k.last_activity).toMatch(LAST_ACTIVITY);
    expect(['idle', 'starting', 'busy']).toContain(k.execution_state);
    expect(k.connections).toBe(0);
    expect(Object.keys(k).sort()).toEqual(['connections', 'execution_state', 'id', 'kgate', 'last_activity', 'name']);
  });

  it('GET lists it and GET by id answers it', async () => {
    const list = (await (await t.api('api/kernels')).json()) as KernelModel[];
    expect(list.map((k) => k.id)).toContain(id);
    const r = await t.api(`api/kernels/${id}`);
    expect(r.status).toBe(200);
    expect(((await r.json()) as KernelModel).id).toBe(id);
  });

  it('counts connections and moves last_activity on traffic', async () => {
    const before = ((await (await t.api(`api/kernels/${id}`)).json()) as KernelModel).last_activity;
    const c = await KernelClient.connect(t, id);
    await new Promise((r) => setTimeout(r, 5));
    await c.reply(c.execute('1'));
    const k = (await (await t.api(`api/kernels/${id}`)).json()) as KernelModel;
    expect(k.connections).toBe(1);
    expect(k.execution_state).toBe('idle');
    expect(k.last_activity > before).toBe(true);
    c.close();
    await c.waitClosed();
  });

  it('interrupt answers 204 and restart 200 with the model', async () => {
    const i = await t.api(`api/kernels/${id}/interrupt`, { method: 'POST' });
    expect(i.status).toBe(204);
    const r = await t.api(`api/kernels/${id}/restart`, { method: 'POST' });
    expect(r.status).toBe(200);
    expect(((await r.json()) as KernelModel).id).toBe(id);
  });

  it('DELETE answers 204, then the kernel is gone (404 in JSON)', async () => {
    const d = await t.api(`api/kernels/${id}`, { method: 'DELETE' });
    expect(d.status).toBe(204);
    const g = await t.api(`api/kernels/${id}`);
    expect(g.status).toBe(404);
    expect(await g.json()).toMatchObject({ reason: 'Not Found', code: 'KG_KERNEL_NOT_FOUND' });
    const list = (await (await t.api('api/kernels')).json()) as KernelModel[];
    expect(list.map((k) => k.id)).not.toContain(id);
  });

  it('POST with no body starts the default kernel', async () => {
    const r = await t.api('api/kernels', { method: 'POST' });
    expect(r.status).toBe(201);
    const k = (await r.json()) as KernelModel;
    expect(k.name).toBe('python3');
    expect((await t.api(`api/kernels/${k.id}`, { method: 'DELETE' })).status).toBe(204);
  });
});

describe('env', () => {
  it('passes KERNEL_* to the kernel, drops other names, never echoes values', async () => {
    const r = await t.api('api/kernels', {
      method: 'POST',
      json: { name: 'python3', env: { KERNEL_USERNAME: 'alice', KERNEL_EXTRA: 'x y', PATH: '/evil', LD_PRELOAD: '/evil.so' } },
    });
    expect(r.status).toBe(201);
    const text = await r.text();
    // No env value comes back; the user it names is the kernel's owner, which kgate's member shows.
    expect(text).not.toContain('x y');
    expect(text).not.toContain('/evil');
    expect((JSON.parse(text) as { kgate: { owner: string } }).kgate.owner).toBe('alice');
    const id = (JSON.parse(text) as KernelModel).id;
    const c = await KernelClient.connect(t, id);
    const m = c.execute("import os; print(os.environ.get('KERNEL_USERNAME'), os.environ.get('KERNEL_EXTRA'), os.environ.get('LD_PRELOAD'), os.environ.get('PATH') != '/evil')");
    await c.reply(m);
    expect(stdout(c.outputs(m)).trim()).toBe('alice x y None True');
    c.close();
    expect((await t.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
  });

  it('runs the kernel in KERNEL_WORKING_DIR', async () => {
    const id = await t.startKernel('python3', { KERNEL_WORKING_DIR: join(rootDir, 'work') });
    const c = await KernelClient.connect(t, id);
    const m = c.execute('import os; print(os.getcwd())');
    await c.reply(m);
    expect(stdout(c.outputs(m)).trim()).toBe(join(rootDir, 'work'));
    c.close();
    await t.api(`api/kernels/${id}`, { method: 'DELETE' });
  });
});

describe('sessions', () => {
  it('creates, finds by path, patches, and deletes a session with its kernel', async () => {
    const r = await t.api('api/sessions', { method: 'POST', json: { path: 'a.ipynb', name: 'a', type: 'notebook', kernel: { name: 'python3' } } });
    expect(r.status).toBe(201);
    const s = (await r.json()) as { id: string; path: string; name: string; type: string; kernel: KernelModel };
    expect(r.headers.get('location')).toBe(`/api/sessions/${s.id}`);
    expect(s).toMatchObject({ path: 'a.ipynb', name: 'a', type: 'notebook' });
    expect(s.kernel.last_activity).toMatch(LAST_ACTIVITY);

    // The same path gives the same session back, as jupyter_server does.
    const again = (await (await t.api('api/sessions', { method: 'POST', json: { path: 'a.ipynb', kernel: { name: 'python3' } } })).json()) as { id: string };
    expect(again.id).toBe(s.id);

    const list = (await (await t.api('api/sessions')).json()) as Array<{ id: string }>;
    expect(list.map((x) => x.id)).toContain(s.id);

    const p = await t.api(`api/sessions/${s.id}`, { method: 'PATCH', json: { path: 'b.ipynb' } });
    expect(p.status).toBe(200);
    expect(((await p.json()) as { path: string }).path).toBe('b.ipynb');
    expect(((await (await t.api(`api/sessions/${s.id}`)).json()) as { path: string }).path).toBe('b.ipynb');

    const d = await t.api(`api/sessions/${s.id}`, { method: 'DELETE' });
    expect(d.status).toBe(204);
    expect((await t.api(`api/sessions/${s.id}`)).status).toBe(404);
    expect((await t.api(`api/kernels/${s.kernel.id}`)).status).toBe(404);
  });

  it('a session without a path is a 400 naming the member', async () => {
    const r = await t.api('api/sessions', { method: 'POST', json: { kernel: { name: 'python3' } } });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { message: string }).message).toContain('path');
  });
});
