/**
 * The OpenAPI description at `api/spec.yaml`: valid OpenAPI 3.1 (checked by
 * @readme/openapi-parser), the same as `api/spec.json`, and true: every route
 * is driven for real against ipykernel kernels (and kernelspecs that fail or
 * hang at start), and every status and body that comes back must be described
 * for that path and method and match its schema (ajv, JSON Schema 2020-12).
 */
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { validate as validateOpenApi } from '@readme/openapi-parser';
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import Fastify from 'fastify';
import WebSocket from 'ws';
import { parse as parseYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenAuth } from '../../src/gateway/auth.js';
import type { GatewayContext } from '../../src/gateway/context.js';
import { specRoutes } from '../../src/gateway/openapi.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';

// An OpenAPI document and the answers checked against it are walked by key, whatever their shape.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = Record<string, any>;

let t: TestGateway;
let spec: Json;
let specDir: string;
const ajv = new Ajv2020({ strict: false, allErrors: true });
const validators = new Map<string, ValidateFunction>();
/** `METHOD /path/{template} STATUS` of every answer checked against the spec. */
const seen = new Set<string>();

/** A 1×1 PNG, for a kernelspec logo. */
const PNG = Buffer.from('89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8cfc0f01f0005000201a5d6b9d80000000049454e44ae426082', 'hex');

async function writeSpec(name: string, argv: string[], files: Record<string, Buffer> = {}): Promise<void> {
  const dir = join(specDir, name);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'kernel.json'), JSON.stringify({ argv, display_name: name, language: 'shell' }));
  for (const [f, data] of Object.entries(files)) await writeFile(join(dir, f), data);
}

beforeAll(async () => {
  specDir = await mkdtemp(join(tmpdir(), 'kgate-openapi-'));
  // Exits at once with a word on stderr: a 500 KG_KERNEL_START_FAILED.
  await writeSpec('kg-fail', ['/bin/sh', '-c', 'echo kg-fail-stderr >&2; exit 3', '{connection_file}'], { 'logo-64x64.png': PNG });
  // Runs but never answers kernel_info_request: a 504 KG_KERNEL_START_TIMEOUT.
  await writeSpec('kg-hang', ['/bin/sh', '-c', 'exec sleep 60', '{connection_file}']);
  t = await startGateway(['--kernelspec-dir', specDir]);
  const r = await t.api('api/spec.json');
  expect(r.status).toBe(200);
  spec = (await r.json()) as Json;
});
afterAll(async () => {
  await t?.close();
  if (specDir) await rm(specDir, { recursive: true, force: true });
});

function deref(x: Json): Json {
  if (typeof x['$ref'] !== 'string') return x;
  const path = (x['$ref'] as string).replace(/^#\//, '').split('/');
  return deref(path.reduce<Json>((o, k) => o[k.replace(/~1/g, '/').replace(/~0/g, '~')] as Json, spec));
}

function validatorFor(schema: Json): ValidateFunction {
  const key = JSON.stringify(schema);
  let v = validators.get(key);
  if (!v) {
    // The components ride along, so `#/components/schemas/…` resolves as in the document.
    v = ajv.compile({ ...schema, components: spec['components'] });
    validators.set(key, v);
  }
  return v;
}

interface Answer {
  status: number;
  headers: { get(name: string): string | null };
  text: string;
}

/** Fails unless `answer` is described for `method template` in the spec and matches its schema. */
function conform(method: string, template: string, a: Answer): void {
  const what = `${method} ${template} → ${a.status}`;
  const op = (spec['paths'] as Json)[template]?.[method.toLowerCase()] as Json | undefined;
  expect(op, `${method} ${template} is not in the spec`).toBeDefined();
  const described = (op!['responses'] as Json)[String(a.status)] as Json | undefined;
  expect(described, `${what} is not described; body: ${a.text.slice(0, 300)}`).toBeDefined();
  const response = deref(described!);
  for (const [name, h] of Object.entries((response['headers'] ?? {}) as Json)) {
    if ((h as Json)['required']) expect(a.headers.get(name), `${what}: header ${name}`).not.toBeNull();
  }
  const content = response['content'] as Json | undefined;
  if (!content) {
    expect(a.text, `${what} has no described body`).toBe('');
    seen.add(`${method} ${template} ${a.status}`);
    return;
  }
  const type = (a.headers.get('content-type') ?? '').split(';')[0]!.trim();
  expect(Object.keys(content), `${what}: content type`).toContain(type);
  const schema = (content[type] as Json)['schema'] as Json | undefined;
  if (schema) {
    const body: unknown = type === 'application/json' ? JSON.parse(a.text) : type === 'application/yaml' ? parseYaml(a.text) : a.text;
    const v = validatorFor(schema);
    expect(v(body), `${what}: body ${a.text.slice(0, 300)} does not match: ${ajv.errorsText(v.errors)}`).toBe(true);
  }
  seen.add(`${method} ${template} ${a.status}`);
}

interface CallOptions {
  params?: Record<string, string>;
  query?: string;
  json?: unknown;
  body?: string;
  /** null: no token. */
  token?: string | null;
}

/** Calls `method template` for real and checks the answer against the spec. */
async function call(method: string, template: string, o: CallOptions = {}): Promise<{ status: number; json: Json; res: Response }> {
  const path = template.replace(/\{(\w+)\}/g, (_, k: string) => o.params?.[k] ?? (k === 'id' ? encodeURIComponent('no-such-id') : k));
  const headers = new Headers();
  if (o.token !== null) headers.set('Authorization', `token ${o.token ?? t.token}`);
  let body = o.body;
  if (o.json !== undefined) {
    body = JSON.stringify(o.json);
    headers.set('Content-Type', 'application/json');
  }
  const res = await fetch(new URL(`${path.slice(1)}${o.query ?? ''}`, t.url), { method, headers, body });
  const bytes = Buffer.from(await res.arrayBuffer());
  // Files (logos) are checked by content type only; everything else by its text.
  const text = bytes.length > 0 && /^(image|text\/(javascript|css)|application\/octet-stream)/.test(res.headers.get('content-type') ?? '') ? '' : bytes.toString('utf8');
  conform(method, template, { status: res.status, headers: res.headers, text });
  return { status: res.status, json: text && /json/.test(res.headers.get('content-type') ?? '') ? JSON.parse(text) : undefined, res };
}

/** Opens (or is refused) the channels WebSocket and checks the handshake answer against the spec. */
async function connect(kernelId: string, query: string, protocols: string[] = []): Promise<{ status: number; ws?: WebSocket }> {
  const url = `${t.wsUrl}api/kernels/${kernelId}/channels${query}`;
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, protocols);
    ws.once('error', (e) => reject(e));
    ws.once('upgrade', (res) => {
      conform('GET', '/api/kernels/{id}/channels', {
        status: res.statusCode ?? 0,
        headers: { get: (h) => (res.headers[h.toLowerCase()] as string | undefined) ?? null },
        text: '',
      });
    });
    ws.once('open', () => resolve({ status: 101, ws }));
    ws.once('unexpected-response', (_req, res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => {
        try {
          conform('GET', '/api/kernels/{id}/channels', {
            status: res.statusCode ?? 0,
            headers: { get: (h) => (res.headers[h.toLowerCase()] as string | undefined) ?? null },
            text,
          });
          resolve({ status: res.statusCode ?? 0 });
        } catch (e) {
          reject(e);
        }
      });
    });
  });
}

describe('the document', () => {
  it('is valid OpenAPI 3.1, and the YAML and JSON forms are the same document', async () => {
    expect(spec['openapi']).toBe('3.1.0');
    const result = await validateOpenApi(structuredClone(spec) as never);
    expect(result, JSON.stringify(result)).toMatchObject({ valid: true });
    const y = await call('GET', '/api/spec.yaml');
    expect(y.res.headers.get('content-type')).toMatch(/^application\/yaml/);
    expect(parseYaml(await (await t.api('api/spec.yaml')).text())).toEqual(spec);
    await call('GET', '/api/spec.json');
  });

  it('describes request bodies with the schemas that validate them, and both token schemes', () => {
    const schemas = spec['components']['schemas'] as Json;
    expect(schemas['StartKernelRequest']['properties']['name']['pattern']).toBe('^[A-Za-z0-9._-]{1,128}$');
    expect(Object.keys(schemas)).toEqual(expect.arrayContaining(['Kernel', 'Session', 'KernelSpec', 'KernelSpecList', 'Status', 'Error']));
    expect(spec['components']['securitySchemes']['token']).toMatchObject({ type: 'apiKey', in: 'header', name: 'Authorization' });
    expect(spec['components']['securitySchemes']['tokenQuery']).toMatchObject({ type: 'apiKey', in: 'query', name: 'token' });
    const channels = spec['paths']['/api/kernels/{id}/channels']['get'] as Json;
    expect(channels['responses']).toHaveProperty('101');
    expect((channels['parameters'] as Json[]).map((p) => p['name'])).toEqual(expect.arrayContaining(['session_id', 'Upgrade']));
  });
});

describe('the route check at startup', () => {
  it('refuses to start when a route has no operation in the document', async () => {
    const app = Fastify();
    const ctx = { baseUrl: '/', auth: new TokenAuth('x') } as unknown as GatewayContext;
    void app.register(async (api) => {
      specRoutes(api, ctx);
      api.get('/api/undescribed', async () => ({}));
    });
    await expect(app.ready()).rejects.toThrow(/undescribed GET \/api\/undescribed; unserved GET \/api,/);
    await app.close().catch(() => undefined);
  });
});

describe('every route, answered as described', () => {
  it('status routes, and 401 without a token', async () => {
    await call('GET', '/api');
    await call('GET', '/api/status');
    expect((await call('GET', '/api/usage')).status).toBe(200);
    expect((await call('GET', '/api/usage', { query: '?since=yesterday' })).status).toBe(400);
    expect((await call('GET', '/api', { token: null })).status).toBe(401);
    expect((await call('GET', '/api/kernels', { token: 'wrong' })).status).toBe(401);
    // The probes answer without a credential (security: []).
    expect((await call('GET', '/healthz', { token: null })).json).toEqual({ status: 'ok' });
    expect((await call('GET', '/readyz', { token: null })).json).toEqual({ status: 'ok' });
  });

  it('kernelspecs: the list, one, ?user=, resources, and 404s', async () => {
    const list = await call('GET', '/api/kernelspecs');
    expect(Object.keys(list.json.kernelspecs)).toEqual(expect.arrayContaining(['python3', 'kg-fail', 'kg-hang']));
    expect((await call('GET', '/api/kernelspecs', { query: '?user=alice/python3' })).json.name).toBe('python3');
    expect((await call('GET', '/api/kernelspecs', { query: '?user=alice/nope' })).status).toBe(404);
    expect((await call('GET', '/api/kernelspecs/{name}', { params: { name: 'python3' } })).status).toBe(200);
    expect((await call('GET', '/api/kernelspecs/{name}', { params: { name: 'nope' } })).status).toBe(404);
    const hrefs = Object.values(list.json.kernelspecs as Record<string, { resources: Record<string, string> }>).flatMap((k) => Object.values(k.resources));
    expect(hrefs).toContain('/kernelspecs/kg-fail/logo-64x64.png');
    for (const href of hrefs) {
      const [, , name, file] = href.split('/');
      expect((await call('GET', '/kernelspecs/{name}/{file}', { params: { name: name!, file: file! } })).status, href).toBe(200);
    }
    expect((await call('GET', '/kernelspecs/{name}/{file}', { params: { name: 'kg-fail', file: 'kernel.json' } })).status).toBe(404);
  });

  it('kernels: start, get, list, interrupt, restart, the channels WebSocket, delete, and their errors', async () => {
    const started = await call('POST', '/api/kernels', { json: { name: 'python3', env: { KERNEL_USERNAME: 'alice' } } });
    expect(started.status).toBe(201);
    const id = started.json.id as string;
    expect(started.res.headers.get('location')).toBe(`/api/kernels/${id}`);
    expect((await call('GET', '/api/kernels/{id}', { params: { id } })).json.id).toBe(id);
    expect(((await call('GET', '/api/kernels')).json as Array<{ id: string }>).map((k) => k.id)).toContain(id);

    const v1 = await connect(id, `?session_id=s1&token=${t.token}`, ['v1.kernel.websocket.jupyter.org']);
    expect(v1.status).toBe(101);
    expect(v1.ws!.protocol).toBe('v1.kernel.websocket.jupyter.org');
    const json = await connect(id, `?token=${t.token}`);
    expect(json.status).toBe(101);
    expect((await call('GET', '/api/kernels/{id}', { params: { id } })).json.connections).toBe(2);
    v1.ws!.close();
    json.ws!.close();
    expect((await connect('no-such-kernel', `?token=${t.token}`)).status).toBe(404);
    expect((await connect(id, '')).status).toBe(401);
    expect((await connect(id, `?session_id=${encodeURIComponent('has space')}&token=${t.token}`)).status).toBe(400);

    expect((await call('POST', '/api/kernels/{id}/interrupt', { params: { id } })).status).toBe(204);

    // A restart in flight: interrupt and a second restart are 409 until it is done.
    const restarting = call('POST', '/api/kernels/{id}/restart', { params: { id } });
    const deadline = Date.now() + 10_000;
    while ((await t.api(`api/kernels/${id}`).then((r) => r.json() as Promise<{ execution_state: string }>)).execution_state !== 'restarting') {
      expect(Date.now()).toBeLessThan(deadline);
      await new Promise((r) => setTimeout(r, 10));
    }
    expect((await call('POST', '/api/kernels/{id}/interrupt', { params: { id } })).status).toBe(409);
    expect((await call('POST', '/api/kernels/{id}/restart', { params: { id } })).status).toBe(409);
    const restarted = await restarting;
    expect(restarted.status).toBe(200);
    expect(restarted.json.id).toBe(id);

    expect((await call('DELETE', '/api/kernels/{id}', { params: { id } })).status).toBe(204);
    for (const [method, template] of [
      ['GET', '/api/kernels/{id}'],
      ['DELETE', '/api/kernels/{id}'],
      ['POST', '/api/kernels/{id}/interrupt'],
      ['POST', '/api/kernels/{id}/restart'],
    ] as const) {
      expect((await call(method, template, { params: { id } })).status, `${method} ${template}`).toBe(404);
    }
    // A path segment that is not valid percent-encoding is refused before routing.
    expect((await call('GET', '/api/kernels/{id}', { params: { id: '%E0%A4%A' } })).status).toBe(400);
  });

  it('kernel start refusals: bad bodies, unknown kernelspec, a kernel that fails, one that hangs, a body too large', async () => {
    expect((await call('POST', '/api/kernels', { json: { name: 'no spaces allowed' } })).json.code).toBe('KG_BAD_REQUEST');
    expect((await call('POST', '/api/kernels', { body: '{"name":' })).json.code).toBe('KG_INVALID_JSON');
    expect((await call('POST', '/api/kernels', { json: { env: { KERNEL_X: 'a$b' } } })).status).toBe(400);
    expect((await call('POST', '/api/kernels', { json: { name: 'nope' } })).json.code).toBe('KG_KERNELSPEC_NOT_FOUND');
    const failed = await call('POST', '/api/kernels', { json: { name: 'kg-fail' } });
    expect(failed.status).toBe(500);
    expect(failed.json.code).toBe('KG_KERNEL_START_FAILED');
    expect(failed.json.message).toContain('kg-fail-stderr');
    const hung = await call('POST', '/api/kernels', { json: { name: 'kg-hang', env: { KERNEL_LAUNCH_TIMEOUT: '1' } } });
    expect(hung.status).toBe(504);
    expect(hung.json.code).toBe('KG_KERNEL_START_TIMEOUT');
    expect((await call('POST', '/api/kernels', { body: JSON.stringify({ name: 'python3', pad: 'x'.repeat(2 * 1024 * 1024) }) })).status).toBe(413);
  });

  it('sessions: create, get, list, patch, delete, and their errors', async () => {
    const created = await call('POST', '/api/sessions', { json: { path: 'a.ipynb', type: 'notebook', name: 'a', kernel: { name: 'python3' } } });
    expect(created.status).toBe(201);
    const sid = created.json.id as string;
    expect(created.res.headers.get('location')).toBe(`/api/sessions/${sid}`);
    expect((await call('GET', '/api/sessions/{id}', { params: { id: sid } })).json.path).toBe('a.ipynb');
    expect(((await call('GET', '/api/sessions')).json as Array<{ id: string }>).map((s) => s.id)).toContain(sid);
    expect((await call('PATCH', '/api/sessions/{id}', { params: { id: sid }, json: { path: 'b.ipynb', name: 'b' } })).json.path).toBe('b.ipynb');
    expect((await call('PATCH', '/api/sessions/{id}', { params: { id: sid }, json: { kernel: { name: 'bad name' } } })).status).toBe(400);
    expect((await call('PATCH', '/api/sessions/{id}', { params: { id: 'nope' }, json: { name: 'c' } })).status).toBe(404);

    expect((await call('POST', '/api/sessions', { json: { type: 'notebook' } })).status).toBe(400);
    expect((await call('POST', '/api/sessions', { json: { path: 'c.ipynb', kernel: { id: 'no-such-kernel' } } })).status).toBe(404);
    expect((await call('POST', '/api/sessions', { json: { path: 'c.ipynb', kernel: { name: 'kg-fail' } } })).status).toBe(500);

    expect((await call('DELETE', '/api/sessions/{id}', { params: { id: sid } })).status).toBe(204);
    expect((await call('GET', '/api/sessions/{id}', { params: { id: sid } })).status).toBe(404);
    expect((await call('DELETE', '/api/sessions/{id}', { params: { id: sid } })).status).toBe(404);
  });

  it('the checker itself fails an undescribed status, a body that does not fit, and a missing Location', () => {
    const json = { get: (h: string) => (h === 'content-type' ? 'application/json; charset=utf-8' : null) };
    expect(() => conform('GET', '/api/kernels', { status: 418, headers: json, text: '[]' })).toThrow(/not described/);
    expect(() => conform('GET', '/api/kernels', { status: 200, headers: json, text: '[{"id":"x"}]' })).toThrow(/does not match/);
    expect(() =>
      conform('GET', '/api/status', { status: 200, headers: json, text: '{"started":"2024-01-01T00:00:00Z","last_activity":"x","kernels":0,"connections":0,"pools":{}}' }),
    ).toThrow(/does not match/);
    expect(() => conform('GET', '/api/kernels/{id}', { status: 200, headers: json, text: '{"reason":"x","message":"y","code":"KG_NOT_FOUND"}' })).toThrow(/does not match/);
    const kernel = '{"id":"k","name":"python3","last_activity":"2024-01-01T00:00:00.000000Z","execution_state":"idle","connections":0}';
    expect(() => conform('POST', '/api/kernels', { status: 201, headers: json, text: kernel })).toThrow(/Location/);
    expect(() => conform('DELETE', '/api/kernels/{id}', { status: 204, headers: json, text: kernel })).toThrow(/no described body/);
    expect(() => conform('PUT', '/api/kernels', { status: 200, headers: json, text: '[]' })).toThrow(/not in the spec/);
  });

  it('an unknown route answers the JSON 404 in the Error schema', async () => {
    const r = await t.api('api/nope');
    expect(r.status).toBe(404);
    const v = validatorFor({ $ref: '#/components/schemas/Error' });
    expect(v(await r.json()), ajv.errorsText(v.errors)).toBe(true);
  });

  it('drove every operation of the document to its success status', () => {
    const missing: string[] = [];
    for (const [path, item] of Object.entries(spec['paths'] as Json)) {
      for (const [method, op] of Object.entries(item as Json)) {
        const ok = Object.keys((op as Json)['responses'] as Json).filter((s) => /^[12]/.test(s));
        for (const s of ok) if (!seen.has(`${method.toUpperCase()} ${path} ${s}`)) missing.push(`${method.toUpperCase()} ${path} ${s}`);
      }
    }
    expect(missing).toEqual([]);
    // Every error status the document names was seen on some route.
    const errors = new Set([...seen].map((s) => s.split(' ')[2]).filter((s) => /^[45]/.test(s!)));
    expect([...errors].sort()).toEqual(expect.arrayContaining(['400', '401', '404', '409', '413', '500', '504']));
  });
});
