/**
 * Ownership end to end: kgate as a process with a JWT secret file, callers
 * with HS256 tokens minted by jose, real ipykernel kernels. Alice and Bob of
 * tenant acme, Carol of globex, Ada the tenant admin of acme, and a front
 * server whose token may impersonate: each lists only what it may see, and
 * whatever it may not see (kernels, sessions, the channels WebSocket) answers
 * exactly as an id that does not exist. A KERNEL_USERNAME a user sends is not
 * identity; the front server's is. Sessions keep their owners across a
 * `kill -9` of kgate and an adoption, and on two gateways on one state dir.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT } from 'jose';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gatewayClient, KernelClient, stdout, type GatewayClient } from '../helpers/gateway.js';
import { startKgate, type Running } from '../helpers/kgate-process.js';
import { processesMatching } from '../helpers/procs.js';

const ISSUER = 'https://login.kgate.test/';
const AUDIENCE = 'kgate-ownership';
const OPERATOR = `operator-${randomBytes(8).toString('hex')}`;
const dir = mkdtempSync(join(tmpdir(), 'kgate-ownership-'));
const runtimeDir = join(dir, 'runtime');
const secretFile = join(dir, 'jwt-secret');
const secret = randomBytes(48).toString('hex');
writeFileSync(secretFile, `${secret}\n`, { mode: 0o600 });
const running: Running[] = [];

afterAll(async () => {
  for (const k of running) k.child.kill('SIGKILL');
  for (const pid of processesMatching(runtimeDir)) process.kill(pid, 'SIGKILL');
});

function mint(sub: string, tenant: string, scope = ''): Promise<string> {
  return new SignJWT({ tenant, ...(scope ? { scope } : {}) })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(sub)
    .setIssuer(ISSUER)
    .setAudience(AUDIENCE)
    .setIssuedAt()
    .setExpirationTime('30m')
    .sign(new TextEncoder().encode(secret));
}

interface Gw extends Running {
  as: (token: string) => GatewayClient;
}

async function kgate(stateDir: string): Promise<Gw> {
  const k = await startKgate([
    '--port',
    '0',
    '--auth-token',
    OPERATOR,
    '--jwt-secret-file',
    secretFile,
    '--jwt-issuer',
    ISSUER,
    '--jwt-audience',
    AUDIENCE,
    '--state-dir',
    stateDir,
    '--runtime-dir',
    runtimeDir,
  ]);
  running.push(k);
  return { ...k, as: (token) => gatewayClient(k.url, token) };
}

interface Callers {
  alice: GatewayClient;
  bob: GatewayClient;
  carol: GatewayClient;
  ada: GatewayClient;
  front: GatewayClient;
  op: GatewayClient;
}

async function callers(g: Gw): Promise<Callers> {
  return {
    alice: g.as(await mint('alice', 'acme')),
    bob: g.as(await mint('bob', 'acme')),
    carol: g.as(await mint('carol', 'globex')),
    ada: g.as(await mint('ada', 'acme', 'kgate:tenant-admin')),
    front: g.as(await mint('notebook-front', 'acme', 'kgate:impersonate')),
    op: g.as(OPERATOR),
  };
}

async function json<T>(r: Response | Promise<Response>): Promise<{ status: number; body: T }> {
  const res = await r;
  return { status: res.status, body: (await res.json()) as T };
}

async function created(r: Promise<Response>): Promise<{ id: string; kernel?: { id: string } }> {
  const res = await r;
  const text = await res.text();
  expect(res.status, text).toBe(201);
  return JSON.parse(text) as { id: string; kernel?: { id: string } };
}

const ids = async (c: GatewayClient, what: 'kernels' | 'sessions'): Promise<string[]> => {
  const { status, body } = await json<Array<{ id: string }>>(c.api(`api/${what}`));
  expect(status).toBe(200);
  return body.map((x) => x.id).sort();
};
const sorted = (...xs: string[]): string[] => [...xs].sort();

/** How the channels upgrade is answered: opened, or the status (and JSON body) ws reports as an unexpected response. */
function upgrade(c: GatewayClient, kernelId: string): Promise<{ opened: true } | { opened: false; status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${c.wsUrl}api/kernels/${kernelId}/channels?session_id=${randomUUID()}&token=${c.token}`);
    ws.once('open', () => {
      ws.close();
      resolve({ opened: true });
    });
    ws.once('unexpected-response', (req, res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => {
        req.destroy();
        resolve({ opened: false, status: res.statusCode ?? 0, body: JSON.parse(text) as unknown });
      });
    });
    ws.once('error', (e) => reject(e));
  });
}

/** What `code` prints on stdout, run through the kernel's channels WebSocket as `c`. */
async function run(c: GatewayClient, kernelId: string, code: string): Promise<string> {
  const k = await KernelClient.connect(c, kernelId);
  try {
    const m = k.execute(code);
    const reply = await k.reply(m);
    expect(reply.content['status'], JSON.stringify(reply.content)).toBe('ok');
    return stdout(k.outputs(m)).trim();
  } finally {
    k.close();
  }
}

/** What the kernel's own environment says KERNEL_USERNAME is. */
const kernelUser = (c: GatewayClient, kernelId: string): Promise<string> => run(c, kernelId, "import os; print(os.environ['KERNEL_USERNAME'])");

describe('ownership of kernels and sessions (JWT callers, real kernels)', () => {
  let g: Gw;
  let who: Callers;
  /** Alice's kernel, started naming Bob in KERNEL_USERNAME. */
  let aliceKernel: string;
  let bobKernel: string;
  let carolKernel: string;
  /** The kernel the front server started for Bob. */
  let forBob: string;
  let aliceSession: { id: string; kernel: string; path: string };
  let bobSession: string;
  let carolSession: string;
  const unknownKernel = randomUUID();
  const unknownSession = randomUUID();

  beforeAll(async () => {
    g = await kgate(join(dir, 'state-main'));
    who = await callers(g);
    [aliceKernel, bobKernel, carolKernel, forBob] = await Promise.all([
      who.alice.startKernel('python3', { KERNEL_USERNAME: 'bob' }),
      who.bob.startKernel('python3'),
      who.carol.startKernel('python3'),
      who.front.startKernel('python3', { KERNEL_USERNAME: 'bob' }),
    ]);
    // Alice's session starts a kernel of its own (naming Bob too); Bob's and Carol's use their kernels.
    const [a, b, c] = await Promise.all([
      created(who.alice.api('api/sessions', { method: 'POST', json: { path: 'work/a.ipynb', type: 'notebook', kernel: { name: 'python3', env: { KERNEL_USERNAME: 'bob' } } } })),
      created(who.bob.api('api/sessions', { method: 'POST', json: { path: 'work/b.ipynb', type: 'notebook', kernel: { id: bobKernel } } })),
      created(who.carol.api('api/sessions', { method: 'POST', json: { path: 'work/c.ipynb', type: 'notebook', kernel: { id: carolKernel } } })),
    ]);
    aliceSession = { id: a.id, kernel: a.kernel!.id, path: 'work/a.ipynb' };
    bobSession = b.id;
    carolSession = c.id;
  }, 120_000);

  it('lists of kernels, sessions and the status count are per caller', async () => {
    const { alice, bob, carol, ada, op } = who;
    expect(await ids(alice, 'kernels')).toEqual(sorted(aliceKernel, aliceSession.kernel));
    expect(await ids(bob, 'kernels')).toEqual(sorted(bobKernel, forBob));
    expect(await ids(carol, 'kernels')).toEqual([carolKernel]);
    // The tenant admin of acme: Alice's and Bob's, not Carol's.
    expect(await ids(ada, 'kernels')).toEqual(sorted(aliceKernel, aliceSession.kernel, bobKernel, forBob));
    expect(await ids(op, 'kernels')).toEqual(sorted(aliceKernel, aliceSession.kernel, bobKernel, forBob, carolKernel));

    expect(await ids(alice, 'sessions')).toEqual([aliceSession.id]);
    expect(await ids(bob, 'sessions')).toEqual([bobSession]);
    expect(await ids(carol, 'sessions')).toEqual([carolSession]);
    expect(await ids(ada, 'sessions')).toEqual(sorted(aliceSession.id, bobSession));
    expect(await ids(op, 'sessions')).toEqual(sorted(aliceSession.id, bobSession, carolSession));

    for (const [c, n] of [
      [alice, 2],
      [bob, 2],
      [carol, 1],
      [ada, 4],
      [op, 5],
    ] as const) {
      const { status, body } = await json<{ kernels: number }>(c.api('api/status'));
      expect(status).toBe(200);
      expect(body.kernels).toBe(n);
    }
  });

  it("another's kernel answers every operation exactly as an unknown id: GET, DELETE, interrupt, restart", async () => {
    const { alice, bob, carol, ada } = who;
    const ops = [
      (id: string) => ['GET', `api/kernels/${id}`],
      (id: string) => ['DELETE', `api/kernels/${id}`],
      (id: string) => ['POST', `api/kernels/${id}/interrupt`],
      (id: string) => ['POST', `api/kernels/${id}/restart`],
    ] as const;
    for (const op of ops) {
      const [method, path] = op(unknownKernel);
      const unknown = await json<{ reason: string; message: string; code: string }>(bob.api(path, { method }));
      expect(unknown.status).toBe(404);
      expect(unknown.body.code).toBe('KG_KERNEL_NOT_FOUND');
      for (const [c, id] of [
        [bob, aliceKernel],
        [bob, aliceSession.kernel],
        [alice, forBob],
        [carol, bobKernel],
        [ada, carolKernel],
        [alice, carolKernel],
      ] as const) {
        const [m, p] = op(id);
        const r = await json<unknown>(c.api(p, { method: m }));
        expect([m, p, r.status]).toEqual([m, p, 404]);
        expect(r.body).toEqual({ ...unknown.body, message: unknown.body.message.replace(unknownKernel, id) });
      }
    }
    // Nothing of it happened: every kernel still runs, and its owner still sees it.
    for (const [c, id] of [
      [alice, aliceKernel],
      [alice, aliceSession.kernel],
      [bob, forBob],
      [bob, bobKernel],
      [carol, carolKernel],
    ] as const) {
      const { status, body } = await json<{ execution_state: string }>(c.api(`api/kernels/${id}`));
      expect(status).toBe(200);
      expect(body.execution_state).not.toBe('dead');
    }
  });

  it("another's session answers GET, PATCH and DELETE exactly as an unknown id; a path others use is a new session", async () => {
    const { alice, bob, carol, ada } = who;
    const ops = [
      (id: string) => ({ method: 'GET', path: `api/sessions/${id}` }),
      (id: string) => ({ method: 'PATCH', path: `api/sessions/${id}`, json: { name: 'taken' } }),
      (id: string) => ({ method: 'PATCH', path: `api/sessions/${id}`, json: { kernel: { id: bobKernel } } }),
      (id: string) => ({ method: 'DELETE', path: `api/sessions/${id}` }),
    ];
    for (const op of ops) {
      const u = op(unknownSession);
      const unknown = await json<{ reason: string; message: string; code: string }>(bob.api(u.path, u));
      expect(unknown.status).toBe(404);
      expect(unknown.body.code).toBe('KG_SESSION_NOT_FOUND');
      for (const [c, id] of [
        [bob, aliceSession.id],
        [carol, bobSession],
        [ada, carolSession],
        [alice, carolSession],
      ] as const) {
        const o = op(id);
        const r = await json<unknown>(c.api(o.path, o));
        expect([o.method, r.status]).toEqual([o.method, 404]);
        expect(r.body).toEqual({ ...unknown.body, message: unknown.body.message.replace(unknownSession, id) });
      }
    }
    const mine = await json<{ id: string; name: string; kernel: { id: string } }>(alice.api(`api/sessions/${aliceSession.id}`));
    expect([mine.status, mine.body.kernel.id]).toEqual([200, aliceSession.kernel]);
    expect(mine.body.name).not.toBe('taken');

    // Bob may not move his session onto Alice's kernel (it is not found), nor make one on it.
    const moved = await json<{ code: string }>(bob.api(`api/sessions/${bobSession}`, { method: 'PATCH', json: { kernel: { id: aliceKernel } } }));
    expect([moved.status, moved.body.code]).toEqual([404, 'KG_KERNEL_NOT_FOUND']);
    const onHers = await json<{ code: string }>(bob.api('api/sessions', { method: 'POST', json: { path: 'x.ipynb', kernel: { id: aliceKernel } } }));
    expect([onHers.status, onHers.body.code]).toEqual([404, 'KG_KERNEL_NOT_FOUND']);

    // Alice's path: she gets her own session back; Bob gets a new one of his own (on his kernel), and never learns of hers.
    const again = await created(alice.api('api/sessions', { method: 'POST', json: { path: aliceSession.path, kernel: { name: 'python3' } } }));
    expect(again.id).toBe(aliceSession.id);
    const bobs = await created(bob.api('api/sessions', { method: 'POST', json: { path: aliceSession.path, kernel: { id: bobKernel } } }));
    expect(bobs.id).not.toBe(aliceSession.id);
    expect(bobs.kernel!.id).toBe(bobKernel);
    expect(await ids(bob, 'sessions')).toEqual(sorted(bobSession, bobs.id));
    expect(await ids(alice, 'sessions')).toEqual([aliceSession.id]);
    const del = await bob.api(`api/sessions/${bobs.id}`, { method: 'DELETE' });
    expect(del.status).toBe(204);
    // Deleting it shut Bob's kernel down, as Bob: his own session on it goes too, Alice's things stay.
    expect((await bob.api(`api/kernels/${bobKernel}`)).status).toBe(404);
    expect(await ids(bob, 'sessions')).toEqual([]);
    expect(await ids(alice, 'sessions')).toEqual([aliceSession.id]);
  });

  it("the channels WebSocket to another's kernel is refused with the 404 of an unknown id", async () => {
    const { alice, bob, carol, ada } = who;
    const unknown = await upgrade(bob, unknownKernel);
    expect(unknown).toMatchObject({ opened: false, status: 404 });
    for (const [c, id] of [
      [bob, aliceKernel],
      [carol, aliceSession.kernel],
      [alice, forBob],
      [ada, carolKernel],
    ] as const) {
      const r = await upgrade(c, id);
      expect(r).toMatchObject({ opened: false, status: 404 });
      if (!r.opened && !unknown.opened) {
        const u = unknown.body as { message: string };
        expect(r.body).toEqual({ ...(unknown.body as object), message: u.message.replace(unknownKernel, id) });
      }
    }
    expect(await upgrade(alice, aliceKernel)).toEqual({ opened: true });
    expect(await upgrade(ada, aliceKernel)).toEqual({ opened: true });
  });

  it('a KERNEL_USERNAME Alice sends does not make the kernel Bob’s; the front server’s does', async () => {
    const { alice, bob, front } = who;
    // Alice named Bob, twice (a kernel and a session's kernel): both are hers, and say so.
    expect((await bob.api(`api/kernels/${aliceKernel}`)).status).toBe(404);
    expect(await kernelUser(alice, aliceKernel)).toBe('alice');
    expect(await kernelUser(alice, aliceSession.kernel)).toBe('alice');
    // The front server may impersonate: its kernel for Bob is Bob's, and says so; Alice does not see it.
    expect((await bob.api(`api/kernels/${forBob}`)).status).toBe(200);
    expect((await alice.api(`api/kernels/${forBob}`)).status).toBe(404);
    expect(await kernelUser(bob, forBob)).toBe('bob');
    // A session the front server makes for Bob is Bob's, as its kernel is.
    const s = await created(front.api('api/sessions', { method: 'POST', json: { path: 'bob/x.ipynb', kernel: { name: 'python3', env: { KERNEL_USERNAME: 'bob' } } } }));
    expect(await ids(bob, 'sessions')).toContain(s.id);
    expect((await alice.api(`api/sessions/${s.id}`)).status).toBe(404);
    expect((await bob.api(`api/kernels/${s.kernel!.id}`)).status).toBe(200);
    expect(await kernelUser(bob, s.kernel!.id)).toBe('bob');
    expect((await bob.api(`api/sessions/${s.id}`, { method: 'DELETE' })).status).toBe(204);
    expect((await bob.api(`api/kernels/${s.kernel!.id}`)).status).toBe(404);
  });

  afterAll(async () => {
    g?.child.kill('SIGTERM');
    await g?.exited;
  });
});

describe('sessions on a state dir: two gateways, then kill -9 and adoption (JWT callers, real kernels)', () => {
  it('both gateways list a session made on either; a new gateway after kill -9 serves them with their owners', async () => {
    const stateDir = join(dir, 'state-adopt');
    const sessionsDir = join(stateDir, 'sessions');
    const [g1, g2] = await Promise.all([kgate(stateDir), kgate(stateDir)]);
    const on1 = await callers(g1);
    const on2 = await callers(g2);
    const a = await created(on1.alice.api('api/sessions', { method: 'POST', json: { path: 'a.ipynb', kernel: { name: 'python3' } } }));
    const b = await created(on2.bob.api('api/sessions', { method: 'POST', json: { path: 'b.ipynb', kernel: { name: 'python3' } } }));

    // Each gateway lists both, each caller only its own.
    for (const w of [on1, on2]) {
      expect(await ids(w.alice, 'sessions')).toEqual([a.id]);
      expect(await ids(w.bob, 'sessions')).toEqual([b.id]);
      expect(await ids(w.op, 'sessions')).toEqual(sorted(a.id, b.id));
      expect((await w.bob.api(`api/sessions/${a.id}`)).status).toBe(404);
    }
    const viaOther = await json<{ kernel: { id: string } }>(on2.alice.api(`api/sessions/${a.id}`));
    expect([viaOther.status, viaOther.body.kernel.id]).toEqual([200, a.kernel!.id]);

    // One file per session, 0600, holding neither the kernel's key nor a token.
    const files = readdirSync(sessionsDir).sort();
    expect(files).toEqual(sorted(`${a.id}.json`, `${b.id}.json`));
    for (const f of files) {
      const text = readFileSync(join(sessionsDir, f), 'utf8');
      expect(statSync(join(sessionsDir, f)).mode & 0o777).toBe(0o600);
      for (const k of [a.kernel!.id, b.kernel!.id]) {
        const record = JSON.parse(readFileSync(join(stateDir, `${k}.json`), 'utf8')) as { conn: { key: string } };
        expect(text).not.toContain(record.conn.key);
      }
      expect(text).not.toContain(OPERATOR);
      expect(text).not.toMatch(/eyJ/);
    }

    // Both gateways die; the kernels live on. A new gateway adopts them and serves their sessions, owners kept.
    g1.child.kill('SIGKILL');
    g2.child.kill('SIGKILL');
    await Promise.all([g1.exited, g2.exited]);
    const g3 = await kgate(stateDir);
    const on3 = await callers(g3);
    expect(await ids(on3.op, 'kernels')).toEqual(sorted(a.kernel!.id, b.kernel!.id));
    expect(await ids(on3.alice, 'sessions')).toEqual([a.id]);
    expect(await ids(on3.bob, 'sessions')).toEqual([b.id]);
    expect(await ids(on3.ada, 'sessions')).toEqual(sorted(a.id, b.id));
    expect(await ids(on3.carol, 'sessions')).toEqual([]);
    expect((await on3.bob.api(`api/sessions/${a.id}`)).status).toBe(404);
    expect((await on3.bob.api(`api/sessions/${a.id}`, { method: 'DELETE' })).status).toBe(404);
    const hers = await json<{ id: string; path: string; kernel: { id: string } }>(on3.alice.api(`api/sessions/${a.id}`));
    expect([hers.status, hers.body.path, hers.body.kernel.id]).toEqual([200, 'a.ipynb', a.kernel!.id]);
    expect(await run(on3.alice, a.kernel!.id, 'print(6 * 7)')).toBe('42');

    // Deleting on the new gateway removes the session and its kernel, and the file.
    expect((await on3.alice.api(`api/sessions/${a.id}`, { method: 'DELETE' })).status).toBe(204);
    expect((await on3.alice.api(`api/kernels/${a.kernel!.id}`)).status).toBe(404);
    expect(readdirSync(sessionsDir)).toEqual([`${b.id}.json`]);
    g3.child.kill('SIGTERM');
    await g3.exited;
  }, 120_000);
});
