/**
 * The Kubernetes KernelStore (src/kernels/k8s-store.ts) against a real
 * kube-apiserver and etcd (test/helpers/k8s-cluster.ts), through a
 * ServiceAccount bound to a Role with exactly the verbs the store documents:
 * the store contract every store keeps, where the kernel's key is (only in
 * its Secret's data), leases that lapse when not renewed, a holder that lost
 * its lease or whose record was removed writing nothing, and two gateways
 * on `--state-store kubernetes` serving one real kernel.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CoordinationV1Api, CoreV1Api, KubeConfig, V1MicroTime, type V1PolicyRule } from '@kubernetes/client-node';
import { KubernetesKernelStore, RESERVATIONS_NAME, leaseName, recordName } from '../../src/kernels/k8s-store.js';
import { ConfigError } from '../../src/options.js';
import { createNamespace, identityWithRole, startCluster, type Cluster } from '../helpers/k8s-cluster.js';
import { KernelClient, startGateway, stdout, type TestGateway } from '../helpers/gateway.js';
import { recordInput, storeContract } from '../helpers/store-contract.js';
import { until } from '../helpers/wait.js';

const NS = 'kgate-store-test';

/** The Role deploy/ gives kgate for its store: what the module comment of k8s-store.ts lists, nothing more. */
const STORE_RULES: V1PolicyRule[] = [
  { apiGroups: [''], resources: ['secrets'], verbs: ['get', 'list', 'create', 'update', 'delete'] },
  { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['get', 'list', 'create', 'update', 'delete'] },
  // The reservations ConfigMap, and the sessions' (src/kernels/k8s-session-store.ts), as deploy/base/rbac-state.yaml grants.
  { apiGroups: [''], resources: ['configmaps'], verbs: ['get', 'list', 'create', 'update', 'delete'] },
];

let cluster: Cluster;
let core: CoreV1Api;
let coordination: CoordinationV1Api;
/** The kubeconfig of ServiceAccount kgate, bound to STORE_RULES. */
let storeKubeconfig: string;
const gateways: TestGateway[] = [];

const identityWith = (name: string, rules: V1PolicyRule[]): Promise<string> => identityWithRole(cluster, NS, name, rules);

function kubeConfigOf(path: string): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromFile(path);
  return kc;
}

async function store(o: { holder?: string; leaseMs?: number } = {}): Promise<KubernetesKernelStore> {
  const s = new KubernetesKernelStore(kubeConfigOf(storeKubeconfig), { namespace: NS, ...o });
  await s.init();
  return s;
}

/** As if the kernel's holder (none of the test's stores) renewed its lease a minute ago and died. */
async function lapse(id: string): Promise<void> {
  const lease = await coordination.readNamespacedLease({ name: leaseName(id), namespace: NS });
  lease.spec = { ...lease.spec, holderIdentity: `gone-${randomUUID()}`, renewTime: new V1MicroTime(Date.now() - 60_000) };
  await coordination.replaceNamespacedLease({ name: leaseName(id), namespace: NS, body: lease });
}

const statusCode = (e: unknown): number | undefined => (e as { code?: number }).code;
const absent = (p: Promise<unknown>): Promise<boolean> =>
  p.then(
    () => false,
    (e: unknown) => statusCode(e) === 404,
  );

beforeAll(async () => {
  cluster = await startCluster();
  core = cluster.kubeConfig().makeApiClient(CoreV1Api);
  coordination = cluster.kubeConfig().makeApiClient(CoordinationV1Api);
  await createNamespace(cluster, NS);
  storeKubeconfig = await identityWith('kgate', STORE_RULES);
}, 300_000);

afterAll(async () => {
  for (const g of gateways) await g.close().catch(() => undefined);
  await cluster?.stop();
}, 60_000);

describe('KernelStore contract: Kubernetes (real API server, the documented Role only)', () => {
  storeContract({
    stores: async () => [await store(), await store(), await store()],
    lapse,
  });
});

describe('Kubernetes kernel store', () => {
  it('init passes with the documented Role, and names each permission a smaller Role lacks', async () => {
    await store();
    const partial = await identityWith(
      'kgate-partial',
      STORE_RULES.map((r) =>
        r.resources![0] === 'leases'
          ? { ...r, verbs: r.verbs.filter((v) => v !== 'delete') }
          : r.resources![0] === 'configmaps'
            ? { ...r, verbs: r.verbs.filter((v) => v !== 'update') }
            : r,
      ),
    );
    const s = new KubernetesKernelStore(kubeConfigOf(partial), { namespace: NS });
    const err = await s.init().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toContain('delete leases.coordination.k8s.io');
    expect((err as Error).message).toContain(`update configmaps/${RESERVATIONS_NAME}`);
    expect((err as Error).message).not.toContain('list secrets');
    // Another namespace, where it may do nothing.
    const elsewhere = new KubernetesKernelStore(kubeConfigOf(storeKubeconfig), { namespace: 'default' });
    await expect(elsewhere.init()).rejects.toThrow(/get secrets.*list secrets/);
  });

  it("stores the record in an Opaque Secret and the lease in a Lease; the kernel's key is in nothing but the Secret's data", async () => {
    const a = await store();
    const input = recordInput();
    const key = input.conn.key;
    await a.save(input);
    const release = await a.reserve({ id: randomUUID(), owner: 'alice', tenant: 'default', resources: {} }, () => undefined, 60_000);
    const secret = await core.readNamespacedSecret({ name: recordName(input.id), namespace: NS });
    expect(secret.type).toBe('Opaque');
    expect(secret.metadata!.labels).toMatchObject({ 'app.kubernetes.io/managed-by': 'kgate', 'kgate.jupyter.org/kernel-id': input.id });
    expect(Buffer.from(secret.data!['record.json']!, 'base64').toString('utf8')).toContain(key);
    expect(JSON.stringify(secret.metadata)).not.toContain(key);
    const lease = await coordination.readNamespacedLease({ name: leaseName(input.id), namespace: NS });
    expect(lease.spec).toMatchObject({ holderIdentity: a.holder, leaseDurationSeconds: 15, leaseTransitions: 0 });
    expect(lease.spec!.renewTime).toBeTruthy();
    expect(lease.spec!.acquireTime).toBeTruthy();
    // Everything else in the namespace, as the API server gives it to anyone who may read it.
    const others = [
      ...(await core.listNamespacedSecret({ namespace: NS })).items.filter((s) => s.metadata!.name !== recordName(input.id)),
      ...(await core.listNamespacedConfigMap({ namespace: NS })).items,
      ...(await coordination.listNamespacedLease({ namespace: NS })).items,
      ...(await core.listNamespacedEvent({ namespace: NS })).items,
    ];
    expect(others.some((o) => o.metadata?.name === RESERVATIONS_NAME)).toBe(true);
    for (const o of others) {
      const text = JSON.stringify(o);
      expect(text).not.toContain(key);
      expect(text).not.toContain(Buffer.from(key).toString('base64'));
    }
    await release();
    await a.remove(input.id);
  });

  it('a lease renewed stays held; not renewed, heldElsewhere turns false leaseMs after the last renewal', async () => {
    const a = await store({ leaseMs: 1500 });
    const b = await store({ leaseMs: 1500 });
    const input = recordInput();
    await a.save(input);
    // Renewed at a third of its length for 3 s: held all along, as the other sees it.
    let renewedAt = Date.now();
    for (const until = Date.now() + 3000; Date.now() < until;) {
      expect(b.heldElsewhere((await b.load(input.id))!)).toBe(true);
      await new Promise((r) => setTimeout(r, 100));
      if (Date.now() - renewedAt > 500) {
        await a.save(input);
        renewedAt = Date.now();
      }
    }
    await a.save(input);
    const last = Date.now();
    const r = (await b.load(input.id))!;
    expect(b.heldElsewhere(r)).toBe(true);
    // Not renewed any more: it lapses, on b's clock, about a lease length after b saw the last renewal.
    while (b.heldElsewhere(r)) await new Promise((r) => setTimeout(r, 20));
    const lapsedAfter = Date.now() - last;
    expect(lapsedAfter).toBeGreaterThanOrEqual(1400);
    expect(lapsedAfter).toBeLessThan(2500);
    expect(b.heldElsewhere((await b.load(input.id))!)).toBe(false);
    expect(await b.takeOver(r)).toBe(true);
    const taken = await coordination.readNamespacedLease({ name: leaseName(input.id), namespace: NS });
    expect(taken.spec).toMatchObject({ holderIdentity: b.holder, leaseTransitions: 1 });
    await b.remove(input.id);
  });

  it('a holder whose clock lags is not robbed: its lease counts from when it was seen renewed, not from the renewTime it wrote', async () => {
    const a = await store({ leaseMs: 1500 });
    const b = await store({ leaseMs: 1500 });
    const input = recordInput();
    await a.save(input);
    // Renewed just now by a gateway whose clock is 3 s behind (within the 5 s the store allows).
    const lease = await coordination.readNamespacedLease({ name: leaseName(input.id), namespace: NS });
    lease.spec = { ...lease.spec, holderIdentity: 'lagging', renewTime: new V1MicroTime(Date.now() - 3000) };
    await coordination.replaceNamespacedLease({ name: leaseName(input.id), namespace: NS, body: lease });
    const seenAt = Date.now();
    const r = (await b.load(input.id))!;
    expect(b.heldElsewhere(r)).toBe(true);
    expect(await b.takeOver(r)).toBe(false);
    while (b.heldElsewhere(r)) await new Promise((r) => setTimeout(r, 20));
    expect(Date.now() - seenAt).toBeGreaterThanOrEqual(1400);
    expect(await b.takeOver((await b.load(input.id))!)).toBe(true);
    await b.remove(input.id);
  });

  it("a gateway that lost its lease cannot write over the new holder's record", async () => {
    const a = await store();
    const b = await store();
    const input = recordInput();
    await a.save(input);
    await lapse(input.id);
    expect(await b.takeOver((await b.load(input.id))!)).toBe(true);
    await b.save({ ...input, provisioner: { provisioner: 'fake', pid: 999 } });
    await expect(a.save({ ...input, sessions: ['stale'] })).rejects.toThrow(/held by another gateway/);
    const now = (await a.load(input.id))!;
    expect(now.provisioner).toEqual({ provisioner: 'fake', pid: 999 });
    expect(now.lease!.holder).toBe(b.holder);
    await b.remove(input.id);
  });

  it("a record another gateway removed is not brought back by its holder's renewal", async () => {
    const a = await store();
    const b = await store();
    const input = recordInput();
    await a.save(input);
    await b.remove(input.id);
    await expect(a.save(input)).rejects.toThrow(/was removed/);
    expect(await absent(core.readNamespacedSecret({ name: recordName(input.id), namespace: NS }))).toBe(true);
    expect(await absent(coordination.readNamespacedLease({ name: leaseName(input.id), namespace: NS }))).toBe(true);
  });

  it('a renewal that changes nothing in the record writes only the Lease', async () => {
    const a = await store();
    const input = recordInput();
    await a.save(input);
    const rv = async (): Promise<[string, string]> => [
      (await core.readNamespacedSecret({ name: recordName(input.id), namespace: NS })).metadata!.resourceVersion!,
      (await coordination.readNamespacedLease({ name: leaseName(input.id), namespace: NS })).metadata!.resourceVersion!,
    ];
    const [secretBefore, leaseBefore] = await rv();
    await a.save(input);
    const [secretAfter, leaseAfter] = await rv();
    expect(secretAfter).toBe(secretBefore);
    expect(leaseAfter).not.toBe(leaseBefore);
    await a.remove(input.id);
  });

  it('a Lease left without a record (its gateway died between the two writes) is collected once it lapsed', async () => {
    const a = await store();
    const id = randomUUID();
    await coordination.createNamespacedLease({
      namespace: NS,
      body: {
        metadata: { name: leaseName(id), labels: { 'app.kubernetes.io/managed-by': 'kgate', 'app.kubernetes.io/component': 'kernel-lease', 'kgate.jupyter.org/kernel-id': id } },
        spec: { holderIdentity: 'gone', leaseDurationSeconds: 15, renewTime: new V1MicroTime(Date.now() - 60_000) },
      },
    });
    await a.loadAll();
    expect(await absent(coordination.readNamespacedLease({ name: leaseName(id), namespace: NS }))).toBe(true);
  });

  it('two gateways on --state-store kubernetes serve one real kernel: recorded in the cluster, run through either, gone from it at shutdown', async () => {
    const args = ['--state-store', 'kubernetes', '--kubeconfig', storeKubeconfig, '--state-namespace', NS];
    const a = await startGateway(args);
    gateways.push(a);
    const b = await startGateway(args);
    gateways.push(b);
    const id = await a.startKernel('python3');
    const lease = await coordination.readNamespacedLease({ name: leaseName(id), namespace: NS });
    expect(lease.spec!.holderIdentity).toBeTruthy();
    expect(await absent(core.readNamespacedSecret({ name: recordName(id), namespace: NS }))).toBe(false);
    // B knows it from the cluster alone, and runs code on it.
    const listed = (await (await b.api('api/kernels')).json()) as Array<{ id: string }>;
    expect(listed.map((k) => k.id)).toContain(id);
    const onB = await KernelClient.connect(b, id);
    const run = onB.execute('print(6 * 7)');
    await onB.reply(run);
    expect(stdout(onB.outputs(run))).toBe('42\n');
    onB.close();
    // Shut down through B (it follows, A supervises): the record and the lease go.
    expect((await b.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
    await until(
      async () =>
        (await absent(core.readNamespacedSecret({ name: recordName(id), namespace: NS }))) &&
        (await absent(coordination.readNamespacedLease({ name: leaseName(id), namespace: NS }))),
      'the record and the lease to go',
      15_000,
    );
    await until(async () => ((await (await a.api('api/kernels')).json()) as unknown[]).length === 0, 'A to let the kernel go', 15_000);
  });
});
