/**
 * The auth matrix: kgate started for real (dist/cli.js, its own process) with
 * an operator token, a token file, a JWT secret and a JWKS file, at trace
 * level. Every operation of the OpenAPI document (src/gateway/openapi.ts's
 * OPERATIONS), the channels WebSocket among them, is called with every kind of
 * bad credential (each must be the same 401, saying nothing of which check
 * failed or whether the kernel exists) and as each kind of caller (the owner,
 * another user of its tenant, a user of another tenant, tenant admins of both,
 * an admin, a service token, the operator), against a kernel and a session
 * the user alice of tenant acme started. The matrix is printed as a Markdown
 * table. Last, kgate's whole output is searched for every token used: none
 * may appear (the startup banner, which prints the operator token on purpose,
 * aside).
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { createServer as createHttpServer } from 'node:http';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { base64url, exportJWK, exportSPKI, generateKeyPair, SignJWT, type CryptoKey } from 'jose';
import fc from 'fast-check';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OPERATIONS } from '../../src/gateway/openapi.js';
import { KernelClient, startGateway, TOKEN } from '../helpers/gateway.js';
import { CLI, startKgate, type Running } from '../helpers/kgate-process.js';
import { rawConnect } from './raw-socket.js';

const ISS = 'https://idp.kgate.test';
const AUD = 'kgate-matrix';
const OPERATOR = `op-${randomBytes(12).toString('hex')}`;
const SERVICE = `svc-${randomBytes(12).toString('hex')}`;
const SPEC = 'bench';
const DOCS_MINT = fileURLToPath(new URL('../../docs/mint-jwt.mjs', import.meta.url));
/** A token added to the token file while kgate runs (SIGHUP). */
const NEW_SERVICE = `svc2-${randomBytes(12).toString('hex')}`;
let tokenFile: string;
let secretFile: string;
let jwks: string;

type Who = 'operator' | 'admin' | 'tadminA' | 'tadminB' | 'alice' | 'bob' | 'carol' | 'service';
const WHO: Who[] = ['alice', 'bob', 'carol', 'tadminA', 'tadminB', 'admin', 'service', 'operator'];
const WHO_LABEL: Record<Who, string> = {
  alice: 'owner (alice@acme)',
  bob: 'same tenant (bob@acme)',
  carol: 'other tenant (carol@beta)',
  tadminA: 'tenant-admin acme',
  tadminB: 'tenant-admin beta',
  admin: 'kgate:admin',
  service: 'token-file (acme, no scope)',
  operator: 'operator token',
};
/** Who may see alice's kernel and session. */
const SEES: ReadonlySet<Who> = new Set(['alice', 'tadminA', 'admin', 'operator']);

const BAD = [
  'no token',
  'wrong static token',
  'bad signature',
  'expired',
  'not yet valid',
  'wrong issuer',
  'wrong audience',
  'alg none',
  'HS256 with RS256 public key',
  'unknown kid',
  'bad claims',
] as const;
type Bad = (typeof BAD)[number];

let k: Running;
let output = '';
let bannerLines = 0;
const secret = randomBytes(48).toString('base64url');
let rsa: { privateKey: CryptoKey; publicKey: CryptoKey };
const cred: Partial<Record<Who | Bad, string | undefined>> = {};

const now = (): number => Math.floor(Date.now() / 1000);

function sign(
  claims: Record<string, unknown>,
  key: CryptoKey | Uint8Array = new TextEncoder().encode(secret),
  header: Record<string, unknown> = { alg: 'HS256' },
): Promise<string> {
  return new SignJWT({ iss: ISS, aud: AUD, iat: now(), exp: now() + 3600, ...claims }).setProtectedHeader(header as { alg: string }).sign(key);
}

function authHeaders(c: string | undefined, scheme: 'Bearer' | 'token' = 'Bearer'): Record<string, string> {
  return c === undefined ? {} : { Authorization: `${scheme} ${c}` };
}

async function call(method: string, path: string, c: string | undefined, body?: unknown): Promise<{ status: number; text: string; json: unknown }> {
  // Static tokens as jupyter_server sends them (`token`), JWTs as Bearer.
  const scheme = c !== undefined && c.split('.').length === 3 ? 'Bearer' : 'token';
  const headers: Record<string, string> = { ...authHeaders(c, scheme) };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(new URL(path, k.url), { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: r.status, text, json };
}

/** The channels WebSocket, its token in the query (as a browser sends it): 101, or the refusal's status and body. */
function upgrade(kernelId: string, c: string | undefined): Promise<{ status: number; text: string }> {
  const q = c === undefined ? '' : `&token=${encodeURIComponent(c)}`;
  const ws = new WebSocket(`${k.url.replace(/^http/, 'ws')}api/kernels/${kernelId}/channels?session_id=${randomUUID()}${q}`);
  return new Promise((resolve, reject) => {
    ws.once('open', () => {
      ws.close();
      resolve({ status: 101, text: '' });
    });
    ws.once('unexpected-response', (_req, res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    ws.once('error', reject);
  });
}

async function startKernelAs(c: string): Promise<string> {
  const r = await call('POST', 'api/kernels', c, { name: SPEC });
  if (r.status !== 201) throw new Error(`start failed: ${r.status} ${r.text}`);
  return (r.json as { id: string }).id;
}

async function startSessionAs(c: string): Promise<{ id: string; kernel: string }> {
  const r = await call('POST', 'api/sessions', c, { path: `nb-${randomUUID()}.ipynb`, type: 'notebook', kernel: { name: SPEC } });
  if (r.status !== 201) throw new Error(`session failed: ${r.status} ${r.text}`);
  const s = r.json as { id: string; kernel: { id: string } };
  return { id: s.id, kernel: s.kernel.id };
}

let kernelA: string;
let sessionA: string;

beforeAll(async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kgate-matrix-'));
  // A kernelspec of the bench kernel (fast to start) with a resource file, for /kernelspecs/:name/:file.
  const specDir = join(dir, 'kernels', SPEC);
  mkdirSync(specDir, { recursive: true });
  const main = fileURLToPath(new URL('../../dist/bench-kernel/main.js', import.meta.url));
  writeFileSync(
    join(specDir, 'kernel.json'),
    JSON.stringify({ argv: [process.execPath, main, '{connection_file}'], display_name: 'bench', language: 'text', interrupt_mode: 'message' }),
  );
  copyFileSync(fileURLToPath(new URL('../../package.json', import.meta.url)), join(specDir, 'kernel.js'));

  rsa = await generateKeyPair('RS256', { extractable: true });
  jwks = join(dir, 'jwks.json');
  writeFileSync(jwks, JSON.stringify({ keys: [{ ...(await exportJWK(rsa.publicKey)), kid: 'rsa-1', alg: 'RS256' }] }));
  secretFile = join(dir, 'jwt-secret');
  writeFileSync(secretFile, `${secret}\n`, { mode: 0o600 });
  tokenFile = join(dir, 'tokens.yaml');
  writeFileSync(tokenFile, `tokens:\n  - sha256: ${createHash('sha256').update(SERVICE).digest('hex')}\n    user: svc-reporting\n    tenant: acme\n`);

  // Good credentials.
  cred.operator = OPERATOR;
  cred.service = SERVICE;
  cred.alice = await sign({ sub: 'alice', tenant: 'acme' });
  cred.bob = await sign({ sub: 'bob', tenant: 'acme' });
  cred.carol = await sign({ sub: 'carol', tenant: 'beta' });
  cred.tadminA = await sign({ sub: 'ann', tenant: 'acme', scope: 'kgate:tenant-admin' });
  cred.tadminB = await sign({ sub: 'ben', tenant: 'beta', scope: ['kgate:tenant-admin'] });
  // The admin's token is signed by the JWKS key, so RS256 is exercised end to end too.
  cred.admin = await sign({ sub: 'root', tenant: 'ops', scope: 'kgate:admin' }, rsa.privateKey, { alg: 'RS256', kid: 'rsa-1' });

  // Bad ones, each for alice of acme except in the one way it is wrong.
  const alice = { sub: 'alice', tenant: 'acme' };
  const enc = (o: object): string => base64url.encode(JSON.stringify(o));
  const good = cred.alice.split('.');
  cred['no token'] = undefined;
  cred['wrong static token'] = `op-${randomBytes(12).toString('hex')}`;
  cred['bad signature'] = `${good[0]}.${good[1]}.${base64url.encode(randomBytes(32))}`;
  cred.expired = await sign({ ...alice, exp: now() - 3600 });
  cred['not yet valid'] = await sign({ ...alice, nbf: now() + 3600 });
  cred['wrong issuer'] = await sign({ ...alice, iss: 'https://evil.example' });
  cred['wrong audience'] = await sign({ ...alice, aud: 'another-service' });
  cred['alg none'] = `${enc({ alg: 'none', typ: 'JWT' })}.${enc({ iss: ISS, aud: AUD, exp: now() + 3600, ...alice, scope: 'kgate:admin' })}.`;
  cred['HS256 with RS256 public key'] = await sign({ ...alice, scope: 'kgate:admin' }, new TextEncoder().encode(await exportSPKI(rsa.publicKey)), { alg: 'HS256', kid: 'rsa-1' });
  const stranger = await generateKeyPair('RS256');
  cred['unknown kid'] = await sign({ ...alice, scope: 'kgate:admin' }, stranger.privateKey, { alg: 'RS256', kid: 'rsa-2' });
  cred['bad claims'] = await sign({ sub: 'alice smith', tenant: 'acme' });

  k = await startKgate([
    '--port',
    '0',
    '--auth-token',
    OPERATOR,
    '--token-file',
    tokenFile,
    '--jwt-secret-file',
    secretFile,
    '--jwks-file',
    jwks,
    '--jwt-issuer',
    ISS,
    '--jwt-audience',
    AUD,
    '--kernelspec-dir',
    join(dir, 'kernels'),
    '--default-kernel-name',
    SPEC,
    '--runtime-dir',
    join(dir, 'runtime'),
    '--log-level',
    'trace',
  ]);
  bannerLines = k.lines.length;
  k.child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  k.child.stdout!.on('data', (d: Buffer) => (output += d.toString()));

  kernelA = await startKernelAs(cred.alice);
  sessionA = (await startSessionAs(cred.alice)).id;
}, 60_000);

afterAll(async () => {
  if (!k) return;
  k.child.kill('SIGTERM');
  await k.exited;
});

/** One row of the matrix: how an operation is called as a caller, and what it should answer. */
interface Row {
  op: string;
  /** Calls the operation with `c`; for a valid caller `who` (undefined for a bad credential). */
  run(c: string | undefined, who: Who | undefined): Promise<{ status: number; text: string }>;
  /** The status a valid caller gets (undefined: not asserted, only printed). */
  expect(who: Who): number | undefined;
}

const asOperator = (): string => cred.operator!;
function rows(): Row[] {
  const all = (status: number) => (): number => status;
  const seen = (ok: number) => (who: Who) => (SEES.has(who) ? ok : 404);
  const known: Record<string, Row> = {
    'GET /api': { op: 'GET /api', run: (c) => call('GET', 'api', c), expect: all(200) },
    'GET /api/status': { op: 'GET /api/status', run: (c) => call('GET', 'api/status', c), expect: all(200) },
    'GET /api/spec.json': { op: 'GET /api/spec.json', run: (c) => call('GET', 'api/spec.json', c), expect: all(200) },
    'GET /api/spec.yaml': { op: 'GET /api/spec.yaml', run: (c) => call('GET', 'api/spec.yaml', c), expect: all(200) },
    'GET /api/kernelspecs': { op: 'GET /api/kernelspecs', run: (c) => call('GET', 'api/kernelspecs', c), expect: all(200) },
    'GET /api/kernelspecs/:name': { op: 'GET /api/kernelspecs/:name', run: (c) => call('GET', `api/kernelspecs/${SPEC}`, c), expect: all(200) },
    'GET /kernelspecs/:name/:file': { op: 'GET /kernelspecs/:name/:file', run: (c) => call('GET', `kernelspecs/${SPEC}/kernel.js`, c), expect: all(200) },
    'GET /api/kernels': { op: 'GET /api/kernels', run: (c) => call('GET', 'api/kernels', c), expect: all(200) },
    'POST /api/kernels': {
      op: 'POST /api/kernels',
      run: async (c, who) => {
        const r = await call('POST', 'api/kernels', c, { name: SPEC });
        if (who && r.status === 201) await call('DELETE', `api/kernels/${(r.json as { id: string }).id}`, asOperator());
        return r;
      },
      expect: all(201),
    },
    'GET /api/kernels/:id': { op: 'GET /api/kernels/:id', run: (c) => call('GET', `api/kernels/${kernelA}`, c), expect: seen(200) },
    'DELETE /api/kernels/:id': {
      op: 'DELETE /api/kernels/:id',
      run: async (c, who) => {
        // A kernel of alice's of its own for each valid caller, since an allowed DELETE ends it.
        const id = who ? await startKernelAs(cred.alice!) : kernelA;
        const r = await call('DELETE', `api/kernels/${id}`, c);
        if (who && r.status !== 204) await call('DELETE', `api/kernels/${id}`, asOperator());
        return r;
      },
      expect: seen(204),
    },
    'POST /api/kernels/:id/interrupt': { op: 'POST /api/kernels/:id/interrupt', run: (c) => call('POST', `api/kernels/${kernelA}/interrupt`, c), expect: seen(204) },
    'POST /api/kernels/:id/restart': { op: 'POST /api/kernels/:id/restart', run: (c) => call('POST', `api/kernels/${kernelA}/restart`, c), expect: seen(200) },
    'GET /api/kernels/:id/channels': { op: 'GET /api/kernels/:id/channels (WebSocket)', run: (c) => upgrade(kernelA, c), expect: seen(101) },
    'GET /api/sessions': { op: 'GET /api/sessions', run: (c) => call('GET', 'api/sessions', c), expect: all(200) },
    'POST /api/sessions': {
      op: 'POST /api/sessions',
      run: async (c, who) => {
        const r = await call('POST', 'api/sessions', c, { path: `new-${randomUUID()}.ipynb`, type: 'notebook', kernel: { name: SPEC } });
        if (who && r.status === 201) await call('DELETE', `api/sessions/${(r.json as { id: string }).id}`, asOperator());
        return r;
      },
      expect: all(201),
    },
    'GET /api/sessions/:id': { op: 'GET /api/sessions/:id', run: (c) => call('GET', `api/sessions/${sessionA}`, c), expect: seen(200) },
    'PATCH /api/sessions/:id': { op: 'PATCH /api/sessions/:id', run: (c) => call('PATCH', `api/sessions/${sessionA}`, c, { name: `renamed-${randomUUID()}` }), expect: seen(200) },
    'DELETE /api/sessions/:id': {
      op: 'DELETE /api/sessions/:id',
      run: async (c, who) => {
        const s = who ? (await startSessionAs(cred.alice!)).id : sessionA;
        const r = await call('DELETE', `api/sessions/${s}`, c);
        if (who && r.status !== 204) await call('DELETE', `api/sessions/${s}`, asOperator());
        return r;
      },
      expect: seen(204),
    },
  };
  return OPERATIONS.map((o) => {
    const key = `${o.method} ${o.route}`;
    // An operation added since this test was written: every bad credential must still be a 401, and a valid caller no 5xx.
    return known[key] ?? { op: `${key} (new)`, run: (c: string | undefined) => call(o.method, o.route.slice(1).replace(/:\w+/g, 'x'), c), expect: () => undefined };
  });
}

describe('the auth matrix (kgate process, operator token + token file + JWT secret + JWKS file)', () => {
  it('every operation × every credential: bad ones the same 401, valid callers by ownership and scope', async () => {
    const table: string[] = [];
    const cols = [...BAD, ...WHO];
    table.push(`| operation | ${cols.map((c) => (WHO.includes(c as Who) ? WHO_LABEL[c as Who] : c)).join(' | ')} |`);
    table.push(`| --- | ${cols.map(() => '---').join(' | ')} |`);
    const unauthorizedBodies = new Set<string>();
    const mismatches: string[] = [];
    for (const row of rows()) {
      const cells: string[] = [];
      for (const bad of BAD) {
        const r = await row.run(cred[bad], undefined);
        cells.push(String(r.status));
        if (r.status !== 401) mismatches.push(`${row.op} × ${bad}: ${r.status} (expected 401) ${r.text.slice(0, 200)}`);
        else unauthorizedBodies.add(r.text);
      }
      for (const who of WHO) {
        const r = await row.run(cred[who], who);
        const want = row.expect(who);
        cells.push(want === undefined || want === r.status ? String(r.status) : `**${r.status}** (want ${want})`);
        if (r.status >= 500) mismatches.push(`${row.op} × ${who}: ${r.status} ${r.text.slice(0, 200)}`);
        else if (want !== undefined && r.status !== want) mismatches.push(`${row.op} × ${who}: ${r.status} (expected ${want}) ${r.text.slice(0, 200)}`);
      }
      table.push(`| ${row.op} | ${cells.join(' | ')} |`);
    }
    console.log(`\nAuth matrix (status per operation and credential):\n\n${table.join('\n')}\n`);
    expect(mismatches).toEqual([]);
    // Nothing revealed: one and the same 401 body for every kind of failure, REST and WebSocket alike.
    expect([...unauthorizedBodies]).toHaveLength(1);
    expect(JSON.parse([...unauthorizedBodies][0]!)).toEqual({ reason: 'Unauthorized', message: expect.any(String), code: 'KG_UNAUTHORIZED' });
  }, 300_000);

  it('lists show each caller only what it may see', async () => {
    const ids = async (c: string): Promise<string[]> => ((await call('GET', 'api/kernels', c)).json as Array<{ id: string }>).map((x) => x.id);
    for (const who of WHO) expect((await ids(cred[who]!)).includes(kernelA), who).toBe(SEES.has(who));
    const bobs = await startKernelAs(cred.bob!);
    expect(await ids(cred.bob!)).toContain(bobs);
    expect(await ids(cred.alice!)).not.toContain(bobs);
    expect(await ids(cred.tadminA!)).toEqual(expect.arrayContaining([kernelA, bobs]));
    expect(await ids(cred.tadminB!)).not.toContain(bobs);
    await call('DELETE', `api/kernels/${bobs}`, cred.bob);
  });

  it('a JWT is accepted as Authorization: token, as Bearer and as ?token=, on REST and the WebSocket', async () => {
    const jwt = cred.alice!;
    for (const headers of [{ Authorization: `token ${jwt}` }, { Authorization: `Bearer ${jwt}` }, { Authorization: `bearer ${jwt}` }]) {
      expect((await fetch(new URL(`api/kernels/${kernelA}`, k.url), { headers })).status).toBe(200);
    }
    expect((await fetch(new URL(`api/kernels/${kernelA}?token=${jwt}`, k.url))).status).toBe(200);
    expect((await upgrade(kernelA, jwt)).status).toBe(101);
    const viaHeader = new WebSocket(`${k.url.replace(/^http/, 'ws')}api/kernels/${kernelA}/channels`, { headers: { Authorization: `token ${jwt}` } });
    await new Promise<void>((resolve, reject) => {
      viaHeader.once('open', () => resolve());
      viaHeader.once('unexpected-response', (_q, res) => reject(new Error(`refused: ${res.statusCode}`)));
    });
    viaHeader.close();
  });

  it("docs/auth.md's commands: docs/mint-jwt.mjs mints a token kgate accepts, kgate hash-token makes the token file's digest", async () => {
    const mint = spawnSync(
      process.execPath,
      [DOCS_MINT, '--secret-file', secretFile, '--issuer', ISS, '--audience', AUD, '--sub', 'frank', '--tenant', 'acme', '--scope', 'kgate:tenant-admin'],
      {
        encoding: 'utf8',
      },
    );
    expect(mint.status, mint.stderr).toBe(0);
    const jwt = mint.stdout.trim();
    cred['minted by the docs' as Bad] = jwt;
    const listed = await call('GET', 'api/kernels', jwt);
    expect(listed.status).toBe(200);
    expect((listed.json as Array<{ id: string }>).map((x) => x.id)).toContain(kernelA);
    const hashed = spawnSync(process.execPath, [CLI, 'hash-token'], { input: `${SERVICE}\n`, encoding: 'utf8' });
    expect(hashed.status).toBe(0);
    expect(hashed.stdout.trim()).toBe(createHash('sha256').update(SERVICE).digest('hex'));
    expect(spawnSync(process.execPath, [CLI, 'hash-token'], { input: '', encoding: 'utf8' }).status).toBe(2);
  });

  it('random and mutated JWTs over HTTP: always the same 401, never a 5xx, never accepted', async () => {
    const parts = cred.alice!.split('.');
    const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    const mutated = fc.tuple(fc.nat({ max: 2 }), fc.nat(), fc.constantFrom(...B64)).map(([seg, i, c]) => {
      const p = [...parts];
      const s = p[seg]!;
      const at = i % (s.length - 1); // not the last character, whose low bits may be padding
      p[seg] = s.slice(0, at) + (s[at] === c ? (c === 'A' ? 'B' : 'A') : c) + s.slice(at + 1);
      return p.join('.');
    });
    const reheadered = fc
      .constantFrom('none', 'HS512', 'RS256', 'ES256', 'EdDSA', 'PS256', 'HS256')
      .map((alg) => `${base64url.encode(JSON.stringify({ alg, kid: 'rsa-1' }))}.${parts[1]}.${parts[2]}`);
    let unauthorized: string | undefined;
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          mutated,
          reheadered,
          fc.string({ minLength: 1, maxLength: 200 }).filter((s) => !/[\r\n\0]/.test(s)),
        ),
        async (t) => {
          const r = await fetch(new URL(`api/kernels/${kernelA}?token=${encodeURIComponent(t)}`, k.url));
          const text = await r.text();
          expect(r.status).toBe(401);
          unauthorized ??= text;
          expect(text).toBe(unauthorized);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('a refused id and an unknown id answer alike for a caller that may not see them', async () => {
    const other = await call('GET', `api/kernels/${kernelA}`, cred.carol);
    const none = await call('GET', `api/kernels/${randomUUID()}`, cred.carol);
    expect(other.status).toBe(404);
    expect(none.status).toBe(404);
    expect((other.json as { code: string }).code).toBe((none.json as { code: string }).code);
  });

  it('SIGHUP reads the token file and the JWKS file again; a bad file is logged and the old one stays', async () => {
    const sha = (t: string): string => createHash('sha256').update(t).digest('hex');
    const works = async (c: string): Promise<boolean> => (await call('GET', 'api/kernels', c)).status === 200;
    const until = async (cond: () => Promise<boolean>): Promise<void> => {
      for (let i = 0; i < 100 && !(await cond()); i++) await new Promise((r) => setTimeout(r, 50));
      expect(await cond()).toBe(true);
    };
    expect(await works(NEW_SERVICE)).toBe(false);
    writeFileSync(tokenFile, `tokens:\n  - sha256: ${sha(NEW_SERVICE)}\n    user: svc-new\n    tenant: beta\n    scopes: [kgate:tenant-admin]\n`);
    const newKey = await generateKeyPair('ES256', { extractable: true });
    writeFileSync(
      jwks,
      JSON.stringify({
        keys: [
          { ...(await exportJWK(rsa.publicKey)), kid: 'rsa-1', alg: 'RS256' },
          { ...(await exportJWK(newKey.publicKey)), kid: 'ec-3' },
        ],
      }),
    );
    const byNewKey = await sign({ sub: 'dave', tenant: 'beta' }, newKey.privateKey, { alg: 'ES256', kid: 'ec-3' });
    cred['new key' as Bad] = byNewKey;
    expect(await works(byNewKey)).toBe(false);
    k.child.kill('SIGHUP');
    await until(() => works(NEW_SERVICE));
    expect(await works(byNewKey)).toBe(true);
    expect(await works(SERVICE)).toBe(false);
    expect(await works(cred.admin!)).toBe(true);

    writeFileSync(tokenFile, 'tokens:\n  - sha256: not-a-digest\n');
    const before = output.length;
    k.child.kill('SIGHUP');
    await until(async () => output.slice(before).includes('reload failed'));
    expect(output.slice(before)).toMatch(/tokens\.0\.sha256/);
    expect(await works(NEW_SERVICE)).toBe(true);
    expect(k.child.exitCode).toBeNull();
  });

  it('logs the kind of each refusal at debug level, and no token, JWT or secret anywhere in its output', async () => {
    // Let the last lines reach us.
    await new Promise((r) => setTimeout(r, 300));
    for (const kind of ['missing', 'bad_token', 'bad_signature', 'expired', 'not_yet_valid', 'wrong_issuer', 'wrong_audience', 'bad_algorithm', 'unknown_kid', 'bad_claims']) {
      expect(output, kind).toContain(`"kind":"${kind}"`);
    }
    const secrets: Array<[string, string]> = [
      ['the JWT secret', secret],
      ['the service token', SERVICE],
      ['the token added on SIGHUP', NEW_SERVICE],
      ...Object.entries(cred)
        .filter(([name, v]) => v !== undefined && name !== 'operator')
        .flatMap(([name, v]): Array<[string, string]> => {
          const parts = v!.split('.');
          // A JWT's signature, and its payload, must not appear even apart from the whole token.
          return parts.length === 3
            ? [[name, v!], [`${name} (payload)`, parts[1]!], ...(parts[2]!.length > 8 ? [[`${name} (signature)`, parts[2]!] as [string, string]] : [])]
            : [[name, v!]];
        }),
    ];
    expect(output.length).toBeGreaterThan(1000);
    for (const [what, s] of secrets) expect(output.includes(s), what).toBe(false);
    // An operator token that was given is printed nowhere, not even in the banner (only one kgate made is).
    expect(k.lines.slice(0, bannerLines).join('\n')).toContain('auth: the token given (not shown), the token file, JWTs');
    expect(k.lines.join('\n').includes(OPERATOR), 'the operator token on stdout').toBe(false);
    expect(output.includes(OPERATOR), 'the operator token in a log line').toBe(false);
  });
});

// The JWKS server answers only when told, so that the verification is held pending.
describe('a WebSocket upgrade whose client leaves while its JWT is being verified', () => {
  it('is dropped without a fault, and the gateway goes on serving', async () => {
    const key = await generateKeyPair('RS256', { extractable: true });
    const jwk = { ...(await exportJWK(key.publicKey)), kid: 'slow-1', alg: 'RS256' };
    let release: () => void = () => {};
    const held = new Promise<void>((r) => (release = r));
    let hits = 0;
    const idp = createHttpServer((_req, res) => {
      hits++;
      void held.then(() => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [jwk] })));
    });
    await new Promise<void>((r) => idp.listen(0, '127.0.0.1', r));
    const jwksUrl = `http://127.0.0.1:${(idp.address() as { port: number }).port}/jwks`;
    const lines: string[] = [];
    const log = pino({ level: 'debug' }, { write: (l: string) => void lines.push(l) });
    const t = await startGateway(['--jwks-url', jwksUrl, '--jwt-issuer', ISS, '--jwt-audience', AUD], { log });
    try {
      const kernel = await t.startKernel('kgate-bench');
      const jwt = await new SignJWT({ sub: 'erin', scope: 'kgate:admin', iss: ISS, aud: AUD, exp: now() + 600 })
        .setProtectedHeader({ alg: 'RS256', kid: 'slow-1' })
        .sign(key.privateKey);
      const port = Number(new URL(t.url).port);
      const c = await rawConnect(port);
      c.socket.write(
        `GET /api/kernels/${kernel}/channels?token=${jwt} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\n\r\n`,
      );
      for (let i = 0; i < 100 && hits === 0; i++) await new Promise((r) => setTimeout(r, 20));
      expect(hits).toBe(1);
      c.reset();
      await new Promise((r) => setTimeout(r, 100));
      release();
      await new Promise((r) => setTimeout(r, 300));
      expect(lines.filter((l) => /"level":(50|60)/.test(l))).toEqual([]);
      // The same token now verifies (its key is cached) and the gateway serves.
      expect((await fetch(new URL(`api/kernels/${kernel}`, t.url), { headers: { Authorization: `Bearer ${jwt}` } })).status).toBe(200);
      expect((await fetch(new URL('api/status', t.url), { headers: { Authorization: `Bearer ${jwt}` } })).status).toBe(200);
      expect((await fetch(new URL('api/status', t.url), { headers: { Authorization: `token ${TOKEN}` } })).status).toBe(200);
    } finally {
      await t.close();
      idp.close();
    }
  });
});

describe('auth settings that stop kgate at start (exit code 2, a clear message, nothing served)', () => {
  it.each<[string, (d: string) => string[], RegExp]>([
    ['a missing token file', (d) => ['--token-file', join(d, 'none.yaml')], /^kgate: --token-file: cannot read .*none\.yaml: ENOENT/],
    [
      'a token file with a mistake',
      (d) => ['--token-file', write(d, 't.yaml', 'tokens:\n  - sha256: 00\n    user: u\n')],
      /^kgate: --token-file: .*\n {2}tokens\.0\.sha256: must be the 64 hex digits/,
    ],
    [
      'a short JWT secret',
      (d) => ['--jwt-secret-file', write(d, 's', 'short\n'), '--jwt-issuer', 'i', '--jwt-audience', 'a'],
      /^kgate: --jwt-secret-file: the secret in .* is 5 bytes; at least 32/,
    ],
    ['a JWKS file that is not JSON', (d) => ['--jwks-file', write(d, 'j.json', '{'), '--jwt-issuer', 'i', '--jwt-audience', 'a'], /^kgate: --jwks-file: .* is not JSON/],
    ['a JWT source without issuer or audience', (d) => ['--jwks-file', write(d, 'j2.json', '{}')], /^kgate: JWT auth .* needs --jwt-issuer and --jwt-audience/],
    ['a JWKS URL over plain http to another host', () => ['--jwks-url', 'http://idp.example/jwks', '--jwt-issuer', 'i', '--jwt-audience', 'a'], /--jwks-url .*must be https/],
    ['alg none allowed', (d) => ['--jwt-secret-file', write(d, 's2', 'x'.repeat(40)), '--jwt-issuer', 'i', '--jwt-audience', 'a', '--jwt-algorithms', 'none'], /never accepted/],
  ])('%s', (_what, args, message) => {
    const d = mkdtempSync(join(tmpdir(), 'kgate-authcfg-'));
    const r = spawnSync(process.execPath, [CLI, '--port', '0', '--runtime-dir', join(d, 'rt'), ...args(d)], { encoding: 'utf8', timeout: 20_000 });
    expect(r.status, r.stderr).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(message);
  });
});

function write(d: string, name: string, text: string): string {
  writeFileSync(join(d, name), text);
  return join(d, name);
}

describe('a WebSocket keeps the identity it was opened with (docs/auth.md)', () => {
  it('stays open and working after its JWT expires; new REST calls and reconnects with that token are refused', async () => {
    const d = mkdtempSync(join(tmpdir(), 'kgate-expiry-'));
    const key = randomBytes(32).toString('hex');
    const secretPath = write(d, 'secret', key);
    const t = await startGateway(['--jwt-secret-file', secretPath, '--jwt-issuer', ISS, '--jwt-audience', AUD, '--jwt-clock-tolerance', '0']);
    try {
      const jwt = await new SignJWT({ sub: 'gina', iss: ISS, aud: AUD, exp: now() + 2 }).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode(key));
      const headers = { Authorization: `token ${jwt}` };
      const r = await fetch(new URL('api/kernels', t.url), {
        method: 'POST',
        headers: { ...headers, 'Content-Type': 'application/json' },
        body: JSON.stringify({ name: 'kgate-bench' }),
      });
      expect(r.status).toBe(201);
      const kernel = ((await r.json()) as { id: string }).id;
      const c = await KernelClient.connect({ ...t, token: jwt }, kernel);
      // Past exp (whole seconds, no tolerance).
      await new Promise((res) => setTimeout(res, 3200));
      expect((await fetch(new URL(`api/kernels/${kernel}`, t.url), { headers })).status).toBe(401);
      await expect(KernelClient.connect({ ...t, token: jwt }, kernel)).rejects.toThrow(/401/);
      expect(c.closed).toBeUndefined();
      const id = c.request('kernel_info_request', {});
      const reply = await c.next((m) => m.parent_header.msg_id === id && m.header.msg_type === 'kernel_info_reply', 10_000);
      expect(reply.content['status']).toBe('ok');
      c.close();
    } finally {
      await t.close();
    }
  });
});
