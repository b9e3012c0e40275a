/**
 * No secret in any log line: kgate as a process at --log-level trace, with an
 * operator token, a token-file token and JWTs (HS256, the secret in a file),
 * --state-dir and --audit-log. A scenario through REST and the channels
 * WebSocket with credentials in headers and in `?token=` (failed ones among
 * them), a kill -9 of a kernel, a SIGHUP, a SIGTERM; then every line kgate
 * wrote on stdout and stderr from its first byte, and every line of the audit
 * log, is searched for each token, each JWT and its payload and signature
 * segments, the JWT secret, and every kernel's HMAC key (read from the state
 * dir's records). No line is left out: the operator token was given
 * (--auth-token), so even the startup banner does not print it.
 *
 * And the request log: a line per request, each with its request id; an
 * X-Request-Id sent is the one logged and echoed; route patterns, never URLs.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT } from 'jose';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI } from '../helpers/kgate-process.js';
import { processesMatching } from '../helpers/procs.js';
import { until } from '../helpers/wait.js';

const ISS = 'https://idp.redaction.test';
const AUD = 'kgate-redaction';
const OPERATOR = `op-${randomBytes(16).toString('hex')}`;
const SERVICE = `svc-${randomBytes(16).toString('hex')}`;
const WRONG = `wrong-${randomBytes(16).toString('hex')}`;
const SECRET = randomBytes(48).toString('base64url');
const SPEC = 'kgate-bench';

let dir: string;
let stateDir: string;
let auditFile: string;
let url: string;
let stdout = '';
let stderr = '';
let exited: Promise<number | null>;
let child: ReturnType<typeof spawn>;
let jwt: string;
let badJwt: string;
let expiredJwt: string;
const kernelKeys = new Map<string, string>();

const now = (): number => Math.floor(Date.now() / 1000);
const sign = (claims: Record<string, unknown>, secret = SECRET): Promise<string> =>
  new SignJWT({ iss: ISS, aud: AUD, iat: now(), exp: now() + 3600, ...claims }).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode(secret));

/** Every key the state dir's records hold now. */
function readKeys(): void {
  for (const f of readdirSync(stateDir)) {
    if (!/^[A-Za-z0-9-]+\.json$/.test(f)) continue;
    try {
      const r = JSON.parse(readFileSync(join(stateDir, f), 'utf8')) as { id: string; conn?: { key?: string } };
      if (r.conn?.key) kernelKeys.set(r.id, r.conn.key);
    } catch {
      // a record being rewritten
    }
  }
}

async function call(method: string, path: string, headers: Record<string, string> = {}, json?: unknown): Promise<Response> {
  if (json !== undefined) headers['Content-Type'] = 'application/json';
  return fetch(new URL(path, url), { method, headers, body: json === undefined ? undefined : JSON.stringify(json) });
}

function openSocket(path: string, headers: Record<string, string> = {}): Promise<{ ws?: WebSocket; status: number }> {
  const ws = new WebSocket(`${url.replace(/^http/, 'ws')}${path}`, { headers });
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve({ ws, status: 101 }));
    ws.once('unexpected-response', (_q, res) => {
      res.resume();
      resolve({ status: res.statusCode ?? 0 });
    });
    ws.once('error', reject);
  });
}

/** An execute_request in the JSON protocol, and the wait for its reply. */
async function execute(ws: WebSocket, code: string): Promise<void> {
  const msgId = randomUUID();
  const header = { msg_id: msgId, msg_type: 'execute_request', session: randomUUID(), username: 'u', date: new Date().toISOString(), version: '5.3' };
  const replied = new Promise<void>((resolve) => {
    const onMessage = (data: Buffer): void => {
      const m = JSON.parse(data.toString()) as { parent_header?: { msg_id?: string }; header: { msg_type: string } };
      if (m.parent_header?.msg_id === msgId && m.header.msg_type === 'execute_reply') {
        ws.off('message', onMessage);
        resolve();
      }
    };
    ws.on('message', onMessage);
  });
  ws.send(JSON.stringify({ header, parent_header: {}, metadata: {}, content: { code, silent: false }, buffers: [], channel: 'shell' }));
  await replied;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kgate-redaction-'));
  stateDir = join(dir, 'state');
  auditFile = join(dir, 'audit.log');
  const tokenFile = join(dir, 'tokens.yaml');
  writeFileSync(tokenFile, `tokens:\n  - sha256: ${createHash('sha256').update(SERVICE).digest('hex')}\n    user: svc-redaction\n    tenant: acme\n`);
  const secretFile = join(dir, 'jwt-secret');
  writeFileSync(secretFile, `${SECRET}\n`, { mode: 0o600 });
  jwt = await sign({ sub: 'alice', tenant: 'acme' });
  badJwt = await sign({ sub: 'alice', tenant: 'acme' }, randomBytes(48).toString('base64url'));
  expiredJwt = await sign({ sub: 'alice', tenant: 'acme', exp: now() - 3600 });

  child = spawn(
    process.execPath,
    [
      CLI,
      '--port',
      '0',
      '--auth-token',
      OPERATOR,
      '--token-file',
      tokenFile,
      '--jwt-secret-file',
      secretFile,
      '--jwt-issuer',
      ISS,
      '--jwt-audience',
      AUD,
      '--state-dir',
      stateDir,
      '--runtime-dir',
      join(dir, 'runtime'),
      '--audit-log',
      auditFile,
      '--log-level',
      'trace',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  await until(() => /^kgate listening on (http:\/\/\S+\/)\n/.test(stdout) && /\nauth: .*\n/.test(stdout), 'kgate to listen', 20_000);
  url = /^kgate listening on (http:\/\/\S+\/)/.exec(stdout)![1]!;
}, 60_000);

afterAll(async () => {
  if (child && child.exitCode === null) {
    child.kill('SIGKILL');
    await exited;
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('at --log-level trace, a scenario with every kind of credential', () => {
  const sent = `redaction-${randomUUID()}`;
  let echoed: string | null = null;

  it('runs: REST and WebSocket with tokens in headers and in ?token=, failed auth, kill -9, SIGHUP, SIGTERM', async () => {
    // REST, each kind of credential in each place.
    const started = await call('POST', 'api/kernels', { Authorization: `Bearer ${jwt}`, 'X-Request-Id': sent }, { name: SPEC });
    expect(started.status).toBe(201);
    echoed = started.headers.get('x-request-id');
    const id = ((await started.json()) as { id: string }).id;
    expect((await call('GET', `api/kernels/${id}?token=${jwt}`)).status).toBe(200);
    expect((await call('GET', `api/kernels?token=${OPERATOR}`)).status).toBe(200);
    expect((await call('GET', 'api/kernels', { Authorization: `token ${OPERATOR}` })).status).toBe(200);
    expect((await call('GET', 'api/status', { Authorization: `token ${SERVICE}` })).status).toBe(200);
    expect((await call('GET', `api/sessions?token=${SERVICE}`)).status).toBe(200);
    const svcKernel = await call('POST', `api/kernels?token=${SERVICE}`, {}, { name: SPEC });
    expect(svcKernel.status).toBe(201);
    // Failed auth, in headers and in the query.
    expect((await call('GET', 'api/kernels', { Authorization: `token ${WRONG}` })).status).toBe(401);
    expect((await call('GET', `api/kernels?token=${WRONG}`)).status).toBe(401);
    expect((await call('GET', `api/kernels/${id}?token=${badJwt}`)).status).toBe(401);
    expect((await call('DELETE', `api/kernels/${id}`, { Authorization: `Bearer ${expiredJwt}` })).status).toBe(401);
    // A malformed X-Request-Id is not taken (a new id is made).
    const odd = await call('GET', 'api', { Authorization: `token ${OPERATOR}`, 'X-Request-Id': 'has space\tand tab' });
    expect(odd.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
    readKeys();

    // The WebSocket: the JWT in the query, the operator token in a header, refusals of both kinds.
    const a = await openSocket(`api/kernels/${id}/channels?session_id=s-${randomUUID()}&token=${jwt}`);
    expect(a.status).toBe(101);
    await execute(a.ws!, 'print("hello")');
    const b = await openSocket(`api/kernels/${id}/channels`, { Authorization: `token ${OPERATOR}` });
    expect(b.status).toBe(101);
    expect((await openSocket(`api/kernels/${id}/channels?token=${WRONG}`)).status).toBe(401);
    expect((await openSocket(`api/kernels/${id}/channels?token=${badJwt}`)).status).toBe(401);
    a.ws!.close(1000);

    // kill -9 of the kernel: it is restarted (same key), the client stays.
    const pids = processesMatching(`kernel-${id}.json`);
    expect(pids).toHaveLength(1);
    process.kill(pids[0]!, 'SIGKILL');
    await until(
      async () => {
        const r = await call('GET', `api/kernels/${id}`, { Authorization: `token ${OPERATOR}` });
        return r.status === 200 && ((await r.json()) as { execution_state: string }).execution_state === 'idle' && stderr.includes('kernel restarted');
      },
      'the kernel to be restarted',
      20_000,
    );
    await execute(b.ws!, '1+1');
    readKeys();

    // SIGHUP (reload), then SIGTERM.
    const before = stderr.length;
    child.kill('SIGHUP');
    await until(() => stderr.slice(before).includes('reloaded the token file'), 'the reload', 10_000);
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(kernelKeys.size).toBe(2);
  }, 120_000);

  it('leaves no token, JWT, JWT part, secret or kernel key in any line, the banner included', () => {
    const out = stdout.split('\n');
    expect(out[1]).toMatch(/^auth: the token given \(not shown\)/);
    const lines = [...out, ...stderr.split('\n'), ...readFileSync(auditFile, 'utf8').split('\n')];
    // The whole run: some 50 lines at least (kgate logs no line per message, even at trace).
    expect(lines.length).toBeGreaterThan(40);
    const secrets: Array<[string, string]> = [
      ['operator token', OPERATOR],
      ['token-file token', SERVICE],
      ['wrong token', WRONG],
      ['JWT secret', SECRET],
    ];
    for (const [name, t] of [
      ['JWT', jwt],
      ['JWT with a bad signature', badJwt],
      ['expired JWT', expiredJwt],
    ] as const) {
      const [, payload, signature] = t.split('.');
      secrets.push([name, t], [`${name} payload`, payload!], [`${name} signature`, signature!]);
    }
    for (const [id, key] of kernelKeys) secrets.push([`kernel ${id}'s key`, key]);
    const found: string[] = [];
    for (const line of lines) for (const [name, s] of secrets) if (line.includes(s)) found.push(`${name} in: ${line.slice(0, 300)}`);
    expect(found).toEqual([]);
    // No query string at all, in any form.
    expect(lines.filter((l) => /[?&]token=/.test(l))).toEqual([]);
  });

  it('logs one line per request, each with its request id, route pattern and principal; the X-Request-Id sent is the one logged and echoed', () => {
    const json = stderr
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const requests = json.filter((l) => l['msg'] === 'request');
    // 13 REST requests by the scenario, and the polls of the restart wait.
    expect(requests.length).toBeGreaterThanOrEqual(13);
    for (const r of requests) {
      expect(typeof r['reqId'], JSON.stringify(r)).toBe('string');
      expect(r).toHaveProperty('status');
      expect(r).toHaveProperty('ms');
      expect(r['url']).toBeUndefined();
    }
    expect(echoed).toBe(sent);
    const mine = requests.filter((r) => r['reqId'] === sent);
    expect(mine).toEqual([expect.objectContaining({ method: 'POST', route: '/api/kernels', status: 201, user: 'alice', tenant: 'acme', via: 'jwt', level: 30 })]);
    // Every line logged for that request (not only the last) carries its id.
    expect(json.filter((l) => l['reqId'] === sent).length).toBeGreaterThanOrEqual(1);
    // Refused requests are logged too, with no principal.
    expect(requests.filter((r) => r['status'] === 401 && r['via'] === 'none').length).toBeGreaterThanOrEqual(4);
    expect(requests.find((r) => r['route'] === '/api/kernels/:id' && r['method'] === 'GET')).toBeDefined();
    // WebSocket opens and closes, with kernel, protocol, principal, close code and duration.
    const opened = json.filter((l) => l['msg'] === 'WebSocket opened');
    const closed = json.filter((l) => l['msg'] === 'WebSocket closed');
    expect(opened).toHaveLength(2);
    expect(opened[0]).toMatchObject({ protocol: 'json', user: 'alice', tenant: 'acme', via: 'jwt', route: '/api/kernels/:id/channels' });
    expect(typeof opened[0]!['kernel']).toBe('string');
    expect(closed.map((c) => c['code']).sort()).toEqual([1000, 1001]);
    for (const c of closed) expect(typeof c['ms']).toBe('number');
    expect(json.filter((l) => l['msg'] === 'WebSocket refused').map((l) => l['status'])).toEqual([401, 401]);
    // Lifecycle lines name their kernel.
    for (const msg of ['kernel started', 'kernel restarted', 'kernel died', 'kernel shut down']) {
      const l = json.filter((x) => typeof x['msg'] === 'string' && x['msg'].startsWith(msg));
      expect(l.length, msg).toBeGreaterThan(0);
      for (const x of l) expect(typeof x['kernel'], `${msg}: ${JSON.stringify(x)}`).toBe('string');
    }
  });
});
