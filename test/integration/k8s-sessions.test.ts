/**
 * Sessions in the cluster with --state-store kubernetes
 * (src/kernels/k8s-session-store.ts), against a real kube-apiserver and etcd
 * (test/helpers/k8s-cluster.ts), through a ServiceAccount bound to the store's
 * Role plus the configmap verbs the session store documents, with real
 * python3 kernels. Two gateways in this process share no disk: a session made
 * on one is listed, renamed, owned and deleted through the other; each is one
 * ConfigMap that holds no key; a change is a compare-and-swap; a session goes
 * with its kernel.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CoreV1Api, KubeConfig, type V1ConfigMap, type V1PolicyRule } from '@kubernetes/client-node';
import { RESERVATIONS_NAME, recordName } from '../../src/kernels/k8s-store.js';
import { KubernetesSessionStore, SESSION_SELECTOR, SESSION_VERBS, sessionObjectName } from '../../src/kernels/k8s-session-store.js';
import { SessionChanged } from '../../src/kernels/session-store.js';
import { createNamespace, identityWithRole, startCluster, type Cluster } from '../helpers/k8s-cluster.js';
import { gatewayClient, startGateway, type GatewayClient, type TestGateway } from '../helpers/gateway.js';
import { until } from '../helpers/wait.js';

const NS = 'kgate-sessions-test';
const ISSUER = 'https://login.kgate.test/';
const AUDIENCE = 'kgate-k8s-sessions';

/** The kernel store's Role (as k8s-store.test.ts and deploy/ have it) and the session store's verbs on configmaps. */
const RULES: V1PolicyRule[] = [
  { apiGroups: [''], resources: ['secrets'], verbs: ['get', 'list', 'create', 'update', 'delete'] },
  { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['get', 'list', 'create', 'update', 'delete'] },
  { apiGroups: [''], resources: ['configmaps'], verbs: ['create'] },
  { apiGroups: [''], resources: ['configmaps'], resourceNames: [RESERVATIONS_NAME], verbs: ['get', 'update'] },
  { apiGroups: [''], resources: ['configmaps'], verbs: [...SESSION_VERBS] },
];

const dir = mkdtempSync(join(tmpdir(), 'kgate-k8s-sessions-'));
const secretFile = join(dir, 'jwt-secret');
const secret = randomBytes(48).toString('hex');
writeFileSync(secretFile, `${secret}\n`, { mode: 0o600 });

let cluster: Cluster;
let core: CoreV1Api;
let kubeconfig: string;
let a: TestGateway;
let b: TestGateway;
const gateways: TestGateway[] = [];

function mint(sub: string, tenant: string): Promise<string> {
  return new SignJWT({ tenant })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(sub)
    .setIssuer(ISSUER)
    .setAudience(AUDIENCE)
    .setIssuedAt()
    .setExpirationTime('30m')
    .sign(new TextEncoder().encode(secret));
}

const identityWith = (name: string, rules: V1PolicyRule[]): Promise<string> => identityWithRole(cluster, NS, name, rules);

function sessionStore(): KubernetesSessionStore {
  const kc = new KubeConfig();
  kc.loadFromFile(kubeconfig);
  return new KubernetesSessionStore(kc, NS);
}

const readConfigMap = (id: string): Promise<V1ConfigMap | undefined> =>
  core.readNamespacedConfigMap({ name: sessionObjectName(id), namespace: NS }).then(
    (cm) => cm,
    (e: unknown) => {
      if ((e as { code?: number }).code === 404) return undefined;
      throw e;
    },
  );

interface SessionBody {
  id: string;
  path: string;
  name: string;
  type: string;
  kernel: { id: string };
}

async function json<T>(r: Response | Promise<Response>, status = 200): Promise<T> {
  const res = await r;
  const text = await res.text();
  expect(res.status, text).toBe(status);
  return JSON.parse(text) as T;
}

const listed = async (c: GatewayClient): Promise<SessionBody[]> => json<SessionBody[]>(c.api('api/sessions'));

beforeAll(async () => {
  cluster = await startCluster();
  core = cluster.kubeConfig().makeApiClient(CoreV1Api);
  await createNamespace(cluster, NS);
  kubeconfig = await identityWith('kgate', RULES);
  const args = [
    '--state-store',
    'kubernetes',
    '--kubeconfig',
    kubeconfig,
    '--state-namespace',
    NS,
    '--jwt-secret-file',
    secretFile,
    '--jwt-issuer',
    ISSUER,
    '--jwt-audience',
    AUDIENCE,
  ];
  a = await startGateway(args);
  gateways.push(a);
  b = await startGateway(args);
  gateways.push(b);
}, 300_000);

afterAll(async () => {
  for (const g of gateways) await g.close().catch(() => undefined);
  await cluster?.stop();
  rmSync(dir, { recursive: true, force: true });
}, 60_000);

describe('sessions on --state-store kubernetes: two gateways, no shared disk', () => {
  it('a session made on A is one ConfigMap without a key, listed on B with the same kernel, renamed on B as A sees, owned on both, deleted on A and gone from B and the cluster', async () => {
    const aliceA = gatewayClient(a.url, await mint('alice', 'acme'));
    const aliceB = gatewayClient(b.url, await mint('alice', 'acme'));
    const bobB = gatewayClient(b.url, await mint('bob', 'acme'));
    const carolB = gatewayClient(b.url, await mint('carol', 'globex'));

    const made = await json<SessionBody>(
      aliceA.api('api/sessions', { method: 'POST', json: { path: 'work/a.ipynb', name: 'a.ipynb', type: 'notebook', kernel: { name: 'python3' } } }),
      201,
    );
    const kernelId = made.kernel.id;

    // One ConfigMap, labelled, holding the session and its owner, and not the kernel's key.
    const cm = (await readConfigMap(made.id))!;
    expect(cm).toBeDefined();
    expect(cm.metadata!.labels).toMatchObject({ 'app.kubernetes.io/managed-by': 'kgate', 'app.kubernetes.io/component': 'session', 'kgate.jupyter.org/kernel-id': kernelId });
    expect(Object.keys(cm.data!)).toEqual(['session.json']);
    expect(JSON.parse(cm.data!['session.json']!)).toEqual({
      version: 1,
      id: made.id,
      path: 'work/a.ipynb',
      name: 'a.ipynb',
      type: 'notebook',
      kernelId,
      owner: 'alice',
      tenant: 'acme',
    });
    const record = await core.readNamespacedSecret({ name: recordName(kernelId), namespace: NS });
    const key = (JSON.parse(Buffer.from(record.data!['record.json']!, 'base64').toString('utf8')) as { conn: { key: string } }).conn.key;
    expect(key.length).toBeGreaterThan(8);
    expect(JSON.stringify(cm)).not.toContain(key);
    expect((await core.listNamespacedConfigMap({ namespace: NS, labelSelector: SESSION_SELECTOR })).items.map((c) => c.metadata!.name)).toEqual([sessionObjectName(made.id)]);

    // B, which shares nothing with A but the cluster, lists it with the same kernel.
    const onB = await listed(aliceB);
    expect(onB.map((s) => [s.id, s.kernel.id, s.path])).toEqual([[made.id, kernelId, 'work/a.ipynb']]);
    expect((await json<SessionBody>(aliceB.api(`api/sessions/${made.id}`))).kernel.id).toBe(kernelId);
    // The same path asked for again on B is that session, not a new one.
    const again = await json<SessionBody>(aliceB.api('api/sessions', { method: 'POST', json: { path: 'work/a.ipynb', type: 'notebook', kernel: { name: 'python3' } } }), 201);
    expect(again.id).toBe(made.id);

    // Ownership holds on B: another user of the tenant, and one of another tenant, see nothing and reach nothing.
    for (const other of [bobB, carolB]) {
      expect(await listed(other)).toEqual([]);
      expect((await other.api(`api/sessions/${made.id}`)).status).toBe(404);
      expect((await other.api(`api/sessions/${made.id}`, { method: 'PATCH', json: { path: 'stolen.ipynb' } })).status).toBe(404);
      expect((await other.api(`api/sessions/${made.id}`, { method: 'DELETE' })).status).toBe(404);
    }
    // Bob's own session for the same path on B is his own, with its own kernel.
    const bobs = await json<SessionBody>(bobB.api('api/sessions', { method: 'POST', json: { path: 'work/a.ipynb', type: 'notebook', kernel: { name: 'python3' } } }), 201);
    expect(bobs.id).not.toBe(made.id);
    expect(bobs.kernel.id).not.toBe(kernelId);
    expect((await listed(aliceA)).map((s) => s.id)).toEqual([made.id]);

    // Renamed on B: A sees it, and the ConfigMap was replaced (a new resourceVersion).
    const renamed = await json<SessionBody>(aliceB.api(`api/sessions/${made.id}`, { method: 'PATCH', json: { path: 'work/renamed.ipynb', name: 'renamed.ipynb' } }));
    expect(renamed.path).toBe('work/renamed.ipynb');
    const onA = await json<SessionBody>(aliceA.api(`api/sessions/${made.id}`));
    expect([onA.path, onA.name, onA.kernel.id]).toEqual(['work/renamed.ipynb', 'renamed.ipynb', kernelId]);
    expect((await readConfigMap(made.id))!.metadata!.resourceVersion).not.toBe(cm.metadata!.resourceVersion);

    // Patches of different fields through both at once: none is lost (each lost CAS is read again and applied).
    for (let i = 0; i < 5; i++) {
      await Promise.all([
        json(aliceA.api(`api/sessions/${made.id}`, { method: 'PATCH', json: { name: `name-${i}` } })),
        json(aliceB.api(`api/sessions/${made.id}`, { method: 'PATCH', json: { type: `type-${i}` } })),
      ]);
      const now = await json<SessionBody>(aliceA.api(`api/sessions/${made.id}`));
      expect([now.name, now.type, now.path]).toEqual([`name-${i}`, `type-${i}`, 'work/renamed.ipynb']);
    }

    // Deleted on A: gone from B, from the cluster, and its kernel with it.
    expect((await aliceA.api(`api/sessions/${made.id}`, { method: 'DELETE' })).status).toBe(204);
    expect(await readConfigMap(made.id)).toBeUndefined();
    expect((await listed(aliceB)).map((s) => s.id)).toEqual([]);
    expect((await aliceB.api(`api/sessions/${made.id}`)).status).toBe(404);
    await until(async () => (await a.api(`api/kernels/${kernelId}`)).status === 404 && (await b.api(`api/kernels/${kernelId}`)).status === 404, 'the kernel to go', 15_000);

    // Bob's session goes with its kernel, shut down through the other gateway.
    expect((await bobB.api(`api/sessions/${bobs.id}`)).status).toBe(200);
    expect((await a.api(`api/kernels/${bobs.kernel.id}`, { method: 'DELETE' })).status).toBe(204);
    await until(async () => (await readConfigMap(bobs.id)) === undefined, "bob's session ConfigMap to go with its kernel", 15_000);
    expect(await listed(bobB)).toEqual([]);
  }, 120_000);

  it("a kernel changed through B (by kernelspec) is the session's kernel on A; the old one is shut down", async () => {
    const aliceA = gatewayClient(a.url, await mint('alice', 'acme'));
    const aliceB = gatewayClient(b.url, await mint('alice', 'acme'));
    const made = await json<SessionBody>(aliceA.api('api/sessions', { method: 'POST', json: { path: 'k.ipynb', type: 'notebook', kernel: { name: 'python3' } } }), 201);
    const changed = await json<SessionBody>(aliceB.api(`api/sessions/${made.id}`, { method: 'PATCH', json: { kernel: { name: 'python3' } } }));
    expect(changed.kernel.id).not.toBe(made.kernel.id);
    expect((await json<SessionBody>(aliceA.api(`api/sessions/${made.id}`))).kernel.id).toBe(changed.kernel.id);
    expect((await readConfigMap(made.id))!.metadata!.labels!['kgate.jupyter.org/kernel-id']).toBe(changed.kernel.id);
    await until(async () => (await a.api(`api/kernels/${made.kernel.id}`)).status === 404, 'the old kernel to go', 15_000);
    // Gone with the old kernel's sessions would be this one, were it still bound to it: it is not.
    expect((await json<SessionBody>(aliceA.api(`api/sessions/${made.id}`))).kernel.id).toBe(changed.kernel.id);
    expect((await aliceB.api(`api/sessions/${made.id}`, { method: 'DELETE' })).status).toBe(204);
    expect(await readConfigMap(made.id)).toBeUndefined();
    await until(async () => (await a.api(`api/kernels/${changed.kernel.id}`)).status === 404, 'the new kernel to go', 15_000);
  }, 60_000);

  it('a save or a removal of a version changed since is refused; a save never brings back a deleted session', async () => {
    const s1 = sessionStore();
    const s2 = sessionStore();
    const id = randomUUID();
    const record = { version: 1 as const, id, path: 'p.ipynb', name: 'p', type: 'notebook', kernelId: randomUUID(), owner: 'alice', tenant: 'acme' };
    await s1.save(record);
    // Made already (by another gateway): a second make is a conflict, not an overwrite.
    await expect(s2.save({ ...record, owner: 'mallory' })).rejects.toBeInstanceOf(SessionChanged);
    const read1 = (await s1.load(id))!;
    const read2 = (await s2.load(id))!;
    expect(read1.revision).toBeDefined();
    expect(read2.revision).toBe(read1.revision);
    await s1.save({ ...read1, path: 'one.ipynb' });
    await expect(s2.save({ ...read2, path: 'two.ipynb' })).rejects.toBeInstanceOf(SessionChanged);
    expect((await s2.load(id))!.path).toBe('one.ipynb');
    // A removal judged on the old version (its kernel looked gone) leaves the session changed since.
    await s2.remove(id, read2.revision);
    expect(await readConfigMap(id)).toBeDefined();
    const now = (await s2.load(id))!;
    await s2.remove(id, now.revision);
    expect(await readConfigMap(id)).toBeUndefined();
    await expect(s1.save({ ...now, path: 'back.ipynb' })).rejects.toThrow(/no session with id/);
    expect(await readConfigMap(id)).toBeUndefined();
    expect(await s1.load(id)).toBeUndefined();
    // An id no object can be named by is no session.
    expect(await s1.load('Not_An_Id')).toBeUndefined();
  });

  it('names the configmap verbs an identity lacks', async () => {
    expect(await sessionStore().missingPermissions()).toEqual([]);
    const narrow = await identityWith('kgate-no-sessions', RULES.slice(0, 4));
    const kc = new KubeConfig();
    kc.loadFromFile(narrow);
    expect(await new KubernetesSessionStore(kc, NS).missingPermissions()).toEqual(['get configmaps', 'list configmaps', 'update configmaps', 'delete configmaps']);
  });
});
