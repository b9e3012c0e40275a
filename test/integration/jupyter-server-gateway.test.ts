/**
 * Debian's real `jupyter server` (python3-jupyter-server 1.23) in gateway mode,
 * `--gateway-url` pointed at a real kgate, driven through the NOTEBOOK
 * SERVER's own REST and WebSocket API as a browser would: kernelspecs, start,
 * execute, interrupt, restart, shut down, binary buffers both ways, and the
 * `KERNEL_*` environment it forwards. kgate's own API is only used to check
 * that the kernel really runs there.
 *
 * What jupyter_server 1.23 itself does (read in
 * /usr/lib/python3/dist-packages/jupyter_server/gateway/):
 * - `handlers.py` `GatewayWebSocketClient._write_message` forwards every
 *   client frame with `self.ws.write_message(message)`, whose `binary`
 *   defaults to False: a client's binary frame (a message with buffers) goes
 *   upstream as a TEXT frame that is not UTF-8. kgate accommodates this: a
 *   text frame starting with NUL (never JSON) is read as the binary form, so
 *   buffers arrive intact both ways.
 * - It opens the upstream socket without `session_id` and without a
 *   subprotocol (JSON frames), never closes the client's socket when the
 *   upstream one closes, and drops a client message that comes before it has
 *   begun to connect upstream (see `connectThroughNotebook`).
 * - `managers.py` `GatewayKernelSpecManager._get_endpoint_for_user_filter`
 *   bakes `?user=$KERNEL_USERNAME` into the kernelspecs base URL, so one spec
 *   is asked for as `/api/kernelspecs?user=alice/python3`: kgate answers that
 *   with the one spec, so the notebook server's `GET /api/kernelspecs/{name}` works.
 * - `managers.py` `GatewayKernelManager.start_kernel` sends, as `env`, every
 *   `KERNEL_*` variable of its own environment plus the
 *   `GatewayClient.env_whitelist` names, and when a kernel starts through
 *   `/api/sessions` its WHOLE environment (`SessionManager.get_kernel_env`):
 *   kgate keeps only `KERNEL_*` and `--env-allow` names.
 */
import { randomBytes, createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, realpathSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT } from 'jose';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isProcessAlive } from '../../src/provisioner/process-alive.js';
import { until } from '../helpers/wait.js';
import { KernelClient, encodeJson, gatewayClient, interruptUntilReplied, makeRequest, startGateway, stdout, type TestGateway } from '../helpers/gateway.js';
import { startJupyterServer, type JupyterServer } from '../helpers/jupyter-server.js';
import { processesMatching } from '../helpers/procs.js';

let t: TestGateway;
let nb: JupyterServer;
/** What kgate received: request URLs and WebSocket upgrades (URL, subprotocols offered). */
const requests: string[] = [];
const upgrades: Array<{ url: string; protocols: string | undefined }> = [];
/** Every kernel this file started, so afterAll can prove none is left. */
const kernelIds = new Set<string>();

/** The notebook server's environment beyond its own paths. */
const NB_ENV = {
  KERNEL_USERNAME: 'alice',
  KERNEL_PROJECT: 'kgate-e2e',
  KGATE_E2E_ALLOWED: 'allowed by both',
  KGATE_E2E_NOT_ALLOWED: 'whitelisted by the notebook server only',
  NB_PRIVATE: 'the notebook server keeps this',
};

/** The kernel's pid as kgate's provisioner knows it. */
function kgatePid(kernelId: string): number {
  const pid = t.gw.ctx.kernels.get(kernelId).provisioner.getInfo()['pid'];
  if (typeof pid !== 'number') throw new Error('no pid');
  return pid;
}

/**
 * A channels socket to the NOTEBOOK SERVER (not kgate), JSON protocol, token in
 * the query, once a kernel_info_request has made it through. jupyter_server
 * 1.23 drops a client message that arrives before it has even begun to open
 * its upstream socket: `GatewayWebSocketClient.on_message` waits on the
 * placeholder `ws_future` made in `__init__`, which `_connect` (spawned, so
 * run later) replaces and which never resolves. So ask until answered, as
 * jupyter_server itself nudges kernels.
 */
async function connectThroughNotebook(kernelId: string, server: JupyterServer = nb): Promise<KernelClient> {
  const c = await KernelClient.connect({ ...t, wsUrl: server.wsUrl, token: server.token }, kernelId);
  for (let attempt = 1; ; attempt++) {
    const id = c.request('kernel_info_request', {});
    try {
      await c.next((m) => m.parent_header.msg_id === id && m.header.msg_type === 'kernel_info_reply', 1_000);
      return c;
    } catch (e) {
      if (attempt === 10) throw e;
    }
  }
}

/** Runs `code` and returns what it printed on stdout. */
async function run(c: KernelClient, code: string): Promise<string> {
  const id = c.execute(code);
  const reply = await c.reply(id);
  expect(reply.content['status'], JSON.stringify(reply.content)).toBe('ok');
  return stdout(c.outputs(id));
}

async function startThroughNotebook(): Promise<string> {
  const r = await nb.api('api/kernels', { method: 'POST', json: { name: 'python3' } });
  expect(r.status).toBe(201);
  const model = (await r.json()) as { id: string; name: string };
  expect(model.name).toBe('python3');
  kernelIds.add(model.id);
  return model.id;
}

beforeAll(async () => {
  // The notebook server's root dir is made under the temp dir; kgate's --root-dir must hold it,
  // since the KERNEL_WORKING_DIR it sends for a notebook session is confined there.
  t = await startGateway(['--env-allow', 'KGATE_E2E_ALLOWED', '--root-dir', realpathSync(tmpdir())]);
  t.gw.app.server.on('request', (req) => requests.push(req.url ?? ''));
  t.gw.app.server.on('upgrade', (req) => upgrades.push({ url: req.url ?? '', protocols: req.headers['sec-websocket-protocol'] }));
  nb = await startJupyterServer({
    gatewayUrl: t.url.replace(/\/$/, ''),
    gatewayToken: t.token,
    env: NB_ENV,
    extraArgs: ['--GatewayClient.env_whitelist=KGATE_E2E_ALLOWED,KGATE_E2E_NOT_ALLOWED'],
  });
}, 60_000);

afterAll(async () => {
  // The notebook server first (it shuts down the kernels it knows through kgate), then kgate.
  await nb?.close();
  await t?.close();
  const left = [...kernelIds].flatMap((id) => processesMatching(id));
  for (const pid of left) process.kill(pid, 'SIGKILL');
  expect(left, 'kernel processes left behind').toEqual([]);
}, 60_000);

describe('jupyter server --gateway-url pointed at kgate', () => {
  it('lists kgate kernelspecs and serves their logos through the notebook server', async () => {
    const own = (await (await t.api('api/kernelspecs')).json()) as {
      default: string;
      kernelspecs: Record<string, { spec: { argv: string[] }; resources: Record<string, string> }>;
    };
    const r = await nb.api('api/kernelspecs');
    expect(r.status).toBe(200);
    const listed = (await r.json()) as typeof own;
    expect(listed.default).toBe(own.default);
    expect(Object.keys(listed.kernelspecs).sort()).toEqual(Object.keys(own.kernelspecs).sort());
    expect(listed.kernelspecs['python3']?.spec.argv).toEqual(own.kernelspecs['python3']?.spec.argv);
    // The logo, fetched by the notebook server from kgate's /kernelspecs/{name}/{file}.
    const logo = Object.entries(own.kernelspecs['python3']!.resources).find(([k]) => k.startsWith('logo-'));
    expect(logo).toBeDefined();
    const file = logo![1].split('/').pop()!;
    const viaNb = await nb.api(`kernelspecs/python3/${file}`);
    expect(viaNb.status).toBe(200);
    const direct = await t.api(`kernelspecs/python3/${file}`);
    expect(Buffer.from(await viaNb.arrayBuffer()).equals(Buffer.from(await direct.arrayBuffer()))).toBe(true);
    // With KERNEL_USERNAME in its environment, the list is asked for with ?user= (kgate ignores the filter).
    expect(requests).toContain('/api/kernelspecs?user=alice');
  });

  it('answers GET /api/kernelspecs/{name} when KERNEL_USERNAME is set, though jupyter_server puts the name after ?user=', async () => {
    // jupyter_server 1.23 (and 2.x) GatewayKernelSpecManager: url_path_join(base + "?user=alice", "python3").
    const r = await nb.api('api/kernelspecs/python3');
    expect(requests).toContain('/api/kernelspecs?user=alice/python3');
    expect(r.status).toBe(200);
    const spec = (await r.json()) as { name: string; spec: { language: string } };
    expect(spec.name).toBe('python3');
    expect(spec.spec.language).toBe('python');
  });

  describe('one kernel through the notebook server', () => {
    let kernelId: string;
    let c: KernelClient;

    beforeAll(async () => {
      kernelId = await startThroughNotebook();
      c = await connectThroughNotebook(kernelId);
    });

    afterAll(() => c?.close());

    it('starts the kernel on kgate and runs code over the notebook server channels socket', async () => {
      // The same kernel, by the same id, in kgate's own list and the notebook server's.
      const own = await t.api(`api/kernels/${kernelId}`);
      expect(own.status).toBe(200);
      const listed = (await (await nb.api('api/kernels')).json()) as Array<{ id: string }>;
      expect(listed.map((k) => k.id)).toContain(kernelId);
      expect(c.ws.protocol).toBe('');

      const out = await run(c, 'import os\nprint("pid", os.getpid(), 6 * 7)');
      // The process that answered is the one kgate's provisioner started.
      expect(out).toBe(`pid ${kgatePid(kernelId)} 42\n`);
      // The notebook server's upstream socket: JSON protocol (no subprotocol), no session_id.
      const up = upgrades.filter((u) => u.url.startsWith(`/api/kernels/${kernelId}/channels`));
      expect(up.length).toBeGreaterThanOrEqual(1);
      expect(up[0]!.protocols).toBeUndefined();
      expect(up[0]!.url).not.toMatch(/session_id=/);
    });

    it('passes KERNEL_* and allowed whitelisted variables of the notebook server to the kernel, and nothing else', async () => {
      const names = ['KERNEL_USERNAME', 'KERNEL_PROJECT', 'KERNEL_LAUNCH_TIMEOUT', 'KGATE_E2E_ALLOWED', 'KGATE_E2E_NOT_ALLOWED', 'NB_PRIVATE'];
      const out = await run(c, `import os, json\nprint(json.dumps({k: os.environ.get(k) for k in ${JSON.stringify(names)}}))`);
      expect(JSON.parse(out)).toEqual({
        KERNEL_USERNAME: 'alice',
        KERNEL_PROJECT: 'kgate-e2e',
        // GatewayClient adds it (its request timeout minus a 2 s pad).
        KERNEL_LAUNCH_TIMEOUT: '40',
        KGATE_E2E_ALLOWED: 'allowed by both',
        // Whitelisted by the notebook server, but not in kgate's --env-allow.
        KGATE_E2E_NOT_ALLOWED: null,
        NB_PRIVATE: null,
      });
      // kgate took KERNEL_USERNAME as the kernel's owner.
      expect(t.gw.ctx.kernels.get(kernelId).owner).toBe('alice');
    });

    it('carries a 1 MiB binary buffer from the kernel to the client intact', async () => {
      await run(
        c,
        [
          'import hashlib',
          'def _kgate_push(comm, open_msg):',
          '    data = os.urandom(1024 * 1024)',
          "    comm.send({'sha256': hashlib.sha256(data).hexdigest(), 'n': len(data)}, buffers=[data, b'tail'])",
          "get_ipython().kernel.comm_manager.register_target('kgate_push', _kgate_push)",
        ].join('\n'),
      );
      const commId = randomBytes(8).toString('hex');
      const open = c.request('comm_open', { comm_id: commId, target_name: 'kgate_push', data: {} });
      const pushed = await c.next((m) => m.header.msg_type === 'comm_msg' && m.parent_header.msg_id === open);
      const data = pushed.content['data'] as { sha256: string; n: number };
      expect(pushed.buffers).toHaveLength(2);
      expect(pushed.buffers[0]!.length).toBe(1024 * 1024);
      expect(createHash('sha256').update(pushed.buffers[0]!).digest('hex')).toBe(data.sha256);
      expect(pushed.buffers[1]!.toString()).toBe('tail');
    });

    it('relays a client message with a 1 MiB buffer byte-exact, though the notebook server forwards it as a text frame', async () => {
      await run(
        c,
        [
          'def _kgate_echo(comm, open_msg):',
          '    @comm.on_msg',
          '    def _recv(msg):',
          "        comm.send({'n': len(msg['buffers'])}, buffers=msg['buffers'])",
          "get_ipython().kernel.comm_manager.register_target('kgate_echo', _kgate_echo)",
        ].join('\n'),
      );
      const commId = randomBytes(8).toString('hex');
      c.request('comm_open', { comm_id: commId, target_name: 'kgate_echo', data: {} });
      const payload = randomBytes(1024 * 1024);
      const sent = c.request('comm_msg', { comm_id: commId, data: {} }, 'shell', [payload]);
      const echo = await c.next((m) => m.header.msg_type === 'comm_msg' && m.parent_header.msg_id === sent);
      expect(echo.buffers).toHaveLength(1);
      expect(echo.buffers[0]!.equals(payload)).toBe(true);
      expect(nb.log()).not.toContain(`Lost connection to Gateway: ${kernelId}`);
    });

    it('kgate reads a text frame holding the binary message form (what the notebook server forwards) and still refuses text that is not UTF-8', async () => {
      const ws = new WebSocket(`${t.wsUrl}api/kernels/${kernelId}/channels?token=${t.token}`);
      await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
      const msg = makeRequest('kernel_info_request', {}, 'direct');
      msg.buffers = [randomBytes(4096)];
      const reply = new Promise<string>((resolve) => ws.on('message', (d: Buffer) => d.includes('kernel_info_reply') && resolve('ok')));
      ws.send(encodeJson(msg), { binary: false });
      expect(await reply).toBe('ok');
      const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)));
      ws.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), { binary: false });
      expect(await closed).toBe(1007);
    });

    it('interrupts a busy kernel through the notebook server', async () => {
      const id = c.execute("print('looping', flush=True)\nwhile True: pass");
      await c.next((m) => m.parent_header.msg_id === id && m.header.msg_type === 'stream');
      const reply = await interruptUntilReplied(c, id, () => nb.api(`api/kernels/${kernelId}/interrupt`, { method: 'POST' }));
      expect(reply.content['status']).toBe('error');
      expect(reply.content['ename']).toBe('KeyboardInterrupt');
      // After an error, ipykernel aborts requests that come in while it flushes its queue (stop_on_error).
      await until(async () => (await c.reply(c.execute('pass'))).content['status'] === 'ok', 'the kernel to take code again', 20_000);
    });

    it('restarts through the notebook server: a new process on kgate, same kernel id', async () => {
      await run(c, 'kept = 1');
      const before = kgatePid(kernelId);
      const r = await nb.api(`api/kernels/${kernelId}/restart`, { method: 'POST' });
      expect(r.status).toBe(200);
      expect(((await r.json()) as { id: string }).id).toBe(kernelId);
      const after = kgatePid(kernelId);
      expect(after).not.toBe(before);
      await until(() => !isProcessAlive(before), 'the old kernel process to exit', 20_000);
      // The same client socket reaches the new process.
      expect(await run(c, 'import os\nprint("kept" in globals(), os.getpid())')).toBe(`False ${after}\n`);
    });

    it('shuts the kernel down through the notebook server, and kgate stops it', async () => {
      const pid = kgatePid(kernelId);
      const r = await nb.api(`api/kernels/${kernelId}`, { method: 'DELETE' });
      expect(r.status).toBe(204);
      expect((await t.api(`api/kernels/${kernelId}`)).status).toBe(404);
      const listed = (await (await nb.api('api/kernels')).json()) as Array<{ id: string }>;
      expect(listed.map((k) => k.id)).not.toContain(kernelId);
      await until(() => !isProcessAlive(pid), 'the kernel process to exit', 20_000);
      expect(processesMatching(kernelId)).toEqual([]);
    });
  });

  it('starts a notebook session kernel in its directory, with none of the notebook server environment beyond KERNEL_*', async () => {
    mkdirSync(join(nb.rootDir, 'sub'), { recursive: true });
    const r = await nb.api('api/sessions', { method: 'POST', json: { path: 'sub/e2e.ipynb', name: 'e2e.ipynb', type: 'notebook', kernel: { name: 'python3' } } });
    expect(r.status).toBe(201);
    const session = (await r.json()) as { id: string; kernel: { id: string } };
    kernelIds.add(session.kernel.id);
    expect((await t.api(`api/kernels/${session.kernel.id}`)).status).toBe(200);
    const c = await connectThroughNotebook(session.kernel.id);
    const names = ['KERNEL_WORKING_DIR', 'KERNEL_USERNAME', 'JPY_SESSION_NAME', 'NB_PRIVATE', 'JUPYTER_RUNTIME_DIR'];
    const out = await run(c, `import os, json\nprint(json.dumps({'cwd': os.getcwd(), 'env': {k: os.environ.get(k) for k in ${JSON.stringify(names)}}}))`);
    const seen = JSON.parse(out) as { cwd: string; env: Record<string, string | null> };
    expect(seen.cwd).toBe(join(nb.rootDir, 'sub'));
    // The notebook server sent its whole environment (SessionManager.get_kernel_env); kgate kept KERNEL_* only.
    // JUPYTER_RUNTIME_DIR is the kernel's own, in its private home: neither the notebook server's nor kgate's.
    const { JUPYTER_RUNTIME_DIR: runtimeDir, ...rest } = seen.env;
    expect(rest).toEqual({ KERNEL_WORKING_DIR: join(nb.rootDir, 'sub'), KERNEL_USERNAME: 'alice', JPY_SESSION_NAME: null, NB_PRIVATE: null });
    expect(runtimeDir).toMatch(/\/home-[0-9a-f-]+\/\.local\/share\/jupyter\/runtime$/);
    c.close();
    expect((await nb.api(`api/sessions/${session.id}`, { method: 'DELETE' })).status).toBe(204);
    expect((await t.api(`api/kernels/${session.kernel.id}`)).status).toBe(404);
  });

  it('leaves no kernel on kgate once the notebook server has shut its kernels down', async () => {
    const left = (await (await t.api('api/kernels')).json()) as unknown[];
    expect(left).toEqual([]);
  });
});

/**
 * The notebook server's gateway client with a per-user JWT as its token
 * (`--GatewayClient.auth_token=<jwt>`, sent as `Authorization: token <jwt>`,
 * the WebSocket included): the kernels it starts are that user's on kgate, and
 * another user of the same tenant sees none of them.
 */
describe('jupyter server with a per-user JWT as --GatewayClient.auth_token', () => {
  const secret = randomBytes(48).toString('hex');
  const claims = { iss: 'https://login.kgate.test/', aud: 'kgate-nb' };
  const mint = (sub: string, tenant: string): Promise<string> =>
    new SignJWT({ tenant })
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject(sub)
      .setIssuer(claims.iss)
      .setAudience(claims.aud)
      .setIssuedAt()
      .setExpirationTime('30m')
      .sign(new TextEncoder().encode(secret));
  // A notebook server's service token (token file, kgate:impersonate in tenant acme).
  const serviceToken = randomBytes(24).toString('hex');
  let jt: TestGateway;
  let jnb: JupyterServer;
  let snb: JupyterServer;

  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kgate-nb-jwt-'));
    writeFileSync(join(dir, 'secret'), secret, { mode: 0o600 });
    const digest = createHash('sha256').update(serviceToken).digest('hex');
    writeFileSync(join(dir, 'tokens.yaml'), `tokens:\n  - sha256: ${digest}\n    user: notebook-server\n    tenant: acme\n    scopes: [kgate:impersonate]\n`);
    jt = await startGateway(['--jwt-secret-file', join(dir, 'secret'), '--jwt-issuer', claims.iss, '--jwt-audience', claims.aud, '--token-file', join(dir, 'tokens.yaml')]);
    // The gateway client sends the KERNEL_* variables of its own environment in every start.
    [jnb, snb] = await Promise.all([
      startJupyterServer({ gatewayUrl: jt.url.replace(/\/$/, ''), gatewayToken: await mint('alice', 'acme'), env: { KERNEL_USERNAME: 'alice' } }),
      startJupyterServer({ gatewayUrl: jt.url.replace(/\/$/, ''), gatewayToken: serviceToken, env: { KERNEL_USERNAME: 'bob' } }),
    ]);
  }, 90_000);

  afterAll(async () => {
    await Promise.all([jnb?.close(), snb?.close()]);
    await jt?.close();
  }, 60_000);

  it("with a service token holding kgate:impersonate, starts kernels for the KERNEL_USERNAME it names: bob's, and bob sees it", async () => {
    const r = await snb.api('api/kernels', { method: 'POST', json: { name: 'python3' } });
    expect(r.status, snb.log()).toBe(201);
    const { id } = (await r.json()) as { id: string };
    kernelIds.add(id);
    const k = jt.gw.ctx.kernels.get(id);
    expect([k.owner, k.tenant]).toEqual(['bob', 'acme']);
    // The notebook server reads back and uses what it started, through its service token.
    expect((await snb.api(`api/kernels/${id}`)).status).toBe(200);
    const c = await connectThroughNotebook(id, snb);
    expect(await run(c, "import os; print(os.environ['KERNEL_USERNAME'], 6 * 7)")).toBe('bob 42\n');
    c.close();
    const bob = gatewayClient(jt.url, await mint('bob', 'acme'));
    expect(((await (await bob.api('api/kernels')).json()) as Array<{ id: string }>).map((x) => x.id)).toEqual([id]);
    const alice = gatewayClient(jt.url, await mint('alice', 'acme'));
    expect((await alice.api(`api/kernels/${id}`)).status).toBe(404);
    expect((await snb.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
  });

  it("starts and runs a kernel that is the JWT user's on kgate, and no one else's", async () => {
    const r = await jnb.api('api/kernels', { method: 'POST', json: { name: 'python3' } });
    expect(r.status, jnb.log()).toBe(201);
    const { id } = (await r.json()) as { id: string };
    kernelIds.add(id);
    const k = jt.gw.ctx.kernels.get(id);
    expect([k.owner, k.tenant]).toEqual(['alice', 'acme']);
    const c = await connectThroughNotebook(id, jnb);
    expect(await run(c, "import os; print(os.environ['KERNEL_USERNAME'], 6 * 7)")).toBe('alice 42\n');
    c.close();
    const bob = gatewayClient(jt.url, await mint('bob', 'acme'));
    expect(await (await bob.api('api/kernels')).json()).toEqual([]);
    expect((await bob.api(`api/kernels/${id}`)).status).toBe(404);
    expect((await jnb.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
    expect((await jt.api(`api/kernels/${id}`)).status).toBe(404);
  });
});
