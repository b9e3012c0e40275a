/**
 * Schemathesis (from PyPI, pinned by `scripts/setup.sh --test` into
 * .venv-test/) fuzzes kgate, run as a real process with real kernels, from
 * kgate's own `api/spec.json`: every response must not be a 5xx and must have
 * a status, content type and body the description gives for its operation.
 * Twice: with a user's JWT, and with no credential at all, where every
 * operation must answer 401 as described. Kernels started by the run are
 * stopped by kgate's SIGTERM, and nothing of them is left.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startKgate, type Running } from '../helpers/kgate-process.js';
import { processesMatching } from '../helpers/procs.js';
import { until } from '../helpers/wait.js';

const SCHEMATHESIS = fileURLToPath(new URL('../../.venv-test/bin/schemathesis', import.meta.url));
const CHECKS = ['not_a_server_error', 'status_code_conformance', 'content_type_conformance', 'response_schema_conformance'];
const ISSUER = 'https://issuer.test';
const AUDIENCE = 'kgate-schemathesis';
/** A few running kernels are enough to drive every kernel and session operation; more starts are a quick 403. */
const MAX_KERNELS = 5;

/**
 * Test cases per operation and phase. Each start of a kernel (and a restart)
 * takes a second, so the operations that start one get fewer; the coverage
 * phase adds its own boundary cases to every operation, and the stateful phase
 * chains operations through the Location headers (a kernel started, then got,
 * interrupted, restarted, deleted).
 */
const config = (headers: string): string => `
generation.max-examples = 8
generation.database = "none"
request-timeout = 60
${headers}

[[operations]]
include-operation-id = ["startKernel", "restartKernel", "createSession", "updateSession"]
generation.max-examples = 3
`;

let k: Running;
let work: string;
let runtimeDir: string;
let spec: { paths: Record<string, Record<string, unknown>> };
let stderr = '';
let kernelStarted = false;

/** A user's JWT (no scopes: they see and touch only their own kernels). */
async function userJwt(secret: Uint8Array): Promise<string> {
  return new SignJWT({ tenant: 'acme', scope: '' })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject('alice')
    .setIssuer(ISSUER)
    .setAudience(AUDIENCE)
    .setIssuedAt()
    .setExpirationTime('15m')
    .sign(secret);
}

let authorization: string;

beforeAll(async () => {
  expect(existsSync(SCHEMATHESIS), `${SCHEMATHESIS} is missing: run scripts/setup.sh --test`).toBe(true);
  work = await mkdtemp(join(tmpdir(), 'kgate-st-'));
  runtimeDir = await mkdtemp(join(tmpdir(), 'kgate-st-rt-'));
  const secret = new TextEncoder().encode('schemathesis-test-secret-0123456789abcdef');
  await writeFile(join(work, 'jwt-secret'), secret, { mode: 0o600 });
  k = await startKgate([
    '--port',
    '0',
    '--auth-token',
    'operator-token-unused-by-the-fuzzer',
    '--jwt-secret-file',
    join(work, 'jwt-secret'),
    '--jwt-issuer',
    ISSUER,
    '--jwt-audience',
    AUDIENCE,
    '--max-kernels',
    String(MAX_KERNELS),
    '--runtime-dir',
    runtimeDir,
  ]);
  // Read, bounded: an unread pipe would stall kgate once full.
  k.child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-200_000);
    // Seen once is enough; a line per request soon pushes it out of the window.
    if (stderr.includes('"msg":"kernel started"')) kernelStarted = true;
  });
  authorization = `Bearer ${await userJwt(secret)}`;
  // The credential comes through the environment, not the command line (which /proc shows).
  await writeFile(join(work, 'jwt.toml'), config('headers = { Authorization = "${KGATE_ST_AUTHORIZATION}" }'));
  await writeFile(join(work, 'none.toml'), config(''));
  const r = await fetch(new URL('api/spec.json', k.url), { headers: { Authorization: authorization } });
  expect(r.status).toBe(200);
  const text = await r.text();
  spec = JSON.parse(text) as typeof spec;
  // For the run without a credential, which cannot read the description from kgate.
  await writeFile(join(work, 'spec.json'), text);
}, 60_000);

afterAll(async () => {
  if (k && k.child.exitCode === null) {
    k.child.kill('SIGTERM');
    await k.exited;
  }
  if (work) await rm(work, { recursive: true, force: true });
  if (runtimeDir) await rm(runtimeDir, { recursive: true, force: true });
});

interface Har {
  log: { entries: Array<{ request: { method: string; url: string }; response: { status: number } }> };
}

interface Run {
  code: number | null;
  out: string;
  /** `METHOD /template` → the statuses answered, one per request. */
  statuses: Map<string, number[]>;
  generated: number;
  tested: number;
}

/** The operation (`METHOD /template`) of a request, from the description's paths. */
function operationOf(method: string, url: string): string {
  const path = new URL(url).pathname;
  for (const template of Object.keys(spec.paths)) {
    const re = new RegExp(`^${template.replace(/\{\w+\}/g, '[^/]+')}$`);
    if (re.test(path)) return `${method.toUpperCase()} ${template}`;
  }
  return `${method.toUpperCase()} ${path} (undescribed)`;
}

/** Runs `schemathesis run` (an argv, no shell), bounded in time, and reads its HAR report. */
async function schemathesis(name: string, location: string, extra: string[], env: Record<string, string>): Promise<Run> {
  const har = join(work, `${name}.har`);
  const seed = process.env['KGATE_SCHEMATHESIS_SEED'] ?? String(Math.floor(Math.random() * 2 ** 31));
  const args = [
    '--config-file',
    join(work, `${name}.toml`),
    'run',
    location,
    '--checks',
    CHECKS.join(','),
    '--seed',
    seed,
    '--workers',
    '1',
    '--no-color',
    '--report',
    'har',
    '--report-har-path',
    har,
    ...extra,
  ];
  const child = spawn(SCHEMATHESIS, args, {
    cwd: work,
    env: { ...process.env, ...env, NO_PROXY: '127.0.0.1,localhost', no_proxy: '127.0.0.1,localhost' },
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 150_000,
    killSignal: 'SIGKILL',
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('close', (c) => resolve(c)));
  const statuses = new Map<string, number[]>();
  if (existsSync(har)) {
    for (const e of (JSON.parse(await readFile(har, 'utf8')) as Har).log.entries) {
      const op = operationOf(e.request.method, e.request.url);
      statuses.set(op, [...(statuses.get(op) ?? []), e.response.status]);
    }
  }
  const generated = Number(/(\d+) generated/.exec(out)?.[1] ?? NaN);
  const tested = Number(/Tested:\s+(\d+)/.exec(out)?.[1] ?? NaN);
  // Methods a path does not have (schemathesis tries a few) are left out of the summary.
  const answers = describedOperations().map((op) => {
    const s = statuses.get(op) ?? [];
    return `  ${op}: ${[...new Set(s)].map((x) => `${x}×${s.filter((y) => y === x).length}`).join(' ')}`;
  });
  console.log(
    `schemathesis ${name}: seed ${seed}, ${tested} operations, ${generated} test cases, ${[...statuses.values()].flat().length} requests, exit ${code}\n${answers.join('\n')}`,
  );
  return { code, out, statuses, generated, tested };
}

/** Every operation of the description (the WebSocket's a plain GET, answered without the upgrade). */
/** The operations open without a credential (`security: []`: the health probes). */
function publicOperation(op: string): boolean {
  const [method, template] = op.split(' ') as [string, string];
  const item = (spec.paths as Record<string, Record<string, { security?: unknown[] }>>)[template]?.[method.toLowerCase()];
  return Array.isArray(item?.security) && item.security.length === 0;
}

function describedOperations(): string[] {
  return Object.entries(spec.paths).flatMap(([template, item]) => Object.keys(item).map((m) => `${m.toUpperCase()} ${template}`));
}

/** Schemathesis leaves out the document it loaded the description from (beforeAll read it with the same JWT). */
const SELF = 'GET /api/spec.json';

describe('schemathesis against the OpenAPI description', () => {
  it('with a user JWT: no 5xx, and every status, content type and body as described', async () => {
    const run = await schemathesis('jwt', new URL('api/spec.json', k.url).href, [], { KGATE_ST_AUTHORIZATION: authorization });
    expect(run.code, `schemathesis failed; kgate's log ends:\n${stderr.slice(-3000)}\n${run.out.slice(-20_000)}`).toBe(0);
    const ops = describedOperations().filter((op) => op !== SELF);
    expect(run.tested).toBe(ops.length);
    expect(run.generated).toBeGreaterThan(100);
    for (const op of ops) expect(run.statuses.get(op)?.length ?? 0, `${op} was not called`).toBeGreaterThan(0);
    const all = [...run.statuses.entries()];
    expect(all.filter(([, s]) => s.some((x) => x >= 500)).map(([op]) => op)).toEqual([]);
    // The JWT was taken: the API's own logic answered, up to kernels really started.
    const answered = (op: string, status: number): boolean => run.statuses.get(op)?.includes(status) ?? false;
    for (const [op, status] of [
      ['GET /api', 200],
      ['GET /api/status', 200],
      ['GET /api/kernelspecs', 200],
      ['GET /api/kernels', 200],
      ['POST /api/kernels', 201],
      ['GET /api/sessions', 200],
    ] as const) {
      expect(answered(op, status), `${op} never answered ${status}: ${run.statuses.get(op)?.join(',')}`).toBe(true);
    }
    expect(all.flatMap(([, s]) => s).filter((s) => s === 401)).toEqual([]);
  }, 180_000);

  it('with no credential: every operation answers 401, as described (the health probes 200)', async () => {
    const run = await schemathesis('none', join(work, 'spec.json'), ['--url', k.url, '--generation-with-security-parameters', 'false'], {});
    expect(run.code, run.out.slice(-20_000)).toBe(0);
    expect(run.tested).toBe(describedOperations().length);
    for (const op of describedOperations()) {
      const s = run.statuses.get(op) ?? [];
      expect(s.length, `${op} was not called`).toBeGreaterThan(0);
      expect(new Set(s), op).toEqual(new Set([publicOperation(op) ? 200 : 401]));
    }
  }, 180_000);

  it('SIGTERM stops kgate and every kernel the runs started; nothing of them is left', async () => {
    expect(kernelStarted, 'kgate logged a kernel started during the runs').toBe(true);
    // One kernel at least is running when kgate is told to stop, whatever the runs left.
    const r = await fetch(new URL('api/kernels', k.url), { method: 'POST', headers: { Authorization: authorization, 'Content-Type': 'application/json' }, body: '{}' });
    expect([201, 403]).toContain(r.status);
    expect(processesMatching(runtimeDir).length).toBeGreaterThan(0);
    k.child.kill('SIGTERM');
    expect(await k.exited).toBe(0);
    await until(() => processesMatching(runtimeDir).length === 0, 'the kernels to exit', 10_000);
    expect(processesMatching(runtimeDir)).toEqual([]);
    expect((await readdir(runtimeDir)).filter((f) => f.endsWith('.json'))).toEqual([]);
  }, 60_000);
});
