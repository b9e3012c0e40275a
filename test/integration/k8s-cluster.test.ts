/**
 * The test cluster itself (test/helpers/k8s-cluster.ts): real etcd, kube-apiserver,
 * kube-scheduler and kube-controller-manager built by scripts/build-k8s.sh. These are the
 * cluster behaviours the Kubernetes provisioner relies on, checked here against the real
 * components before anything of kgate's is put on top: the scheduler places extended
 * resources (MIG slices) and says why it cannot, the API server enforces a ResourceQuota,
 * the garbage collector removes a Secret with its pod, and a TokenRequest token is bound by RBAC.
 * The only Node is an object this test registers (no kubelet runs).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CoreV1Api, KubeConfig, RbacAuthorizationV1Api, VersionApi, type V1Pod } from '@kubernetes/client-node';
import { createNamespace, kubeconfigFor, kubernetesVersion, mintServiceAccountToken, startCluster, type Cluster } from '../helpers/k8s-cluster.js';
import { until } from '../helpers/wait.js';

const NS = 'kgate-cluster-test';
const NODE = 'gpu-node-1';

let cluster: Cluster;
let core: CoreV1Api;

beforeAll(async () => {
  cluster = await startCluster();
  console.info(`k8s test cluster ready in ${cluster.startupMs} ms at ${cluster.server}`);
  core = cluster.kubeConfig().makeApiClient(CoreV1Api);
  await createNamespace(cluster, NS);
  await core.createNode({ body: { metadata: { name: NODE, labels: { 'kubernetes.io/hostname': NODE } } } });
  // What a kubelet reports about itself, through the status subresource as a kubelet writes it.
  const node = await core.readNode({ name: NODE });
  const resources = { cpu: '4', memory: '8Gi', pods: '110', 'nvidia.com/mig-3g.20gb': '1' };
  const now = new Date();
  node.status = {
    capacity: resources,
    allocatable: resources,
    conditions: [{ type: 'Ready', status: 'True', reason: 'KubeletReady', message: 'simulated node', lastHeartbeatTime: now, lastTransitionTime: now }],
  };
  await core.replaceNodeStatus({ name: NODE, body: node });
}, 300_000);

afterAll(async () => {
  await cluster?.stop();
}, 60_000);

function pod(name: string, limits: Record<string, string>): V1Pod {
  return {
    metadata: { name },
    spec: {
      restartPolicy: 'Never',
      automountServiceAccountToken: false,
      // Never pulled: no kubelet runs here.
      containers: [{ name: 'kernel', image: 'localhost/kgate-kernel-python3:bookworm', resources: { requests: limits, limits } }],
    },
  };
}

async function readPod(namespace: string, name: string): Promise<V1Pod> {
  return core.readNamespacedPod({ name, namespace });
}

/** The API server's own message from a refused request (client-node keeps the Status body as text). */
function statusOf(err: unknown): { code: number; message: string } {
  const e = err as { code?: number; body?: unknown };
  const body = typeof e.body === 'string' ? (JSON.parse(e.body) as { message?: string }) : ((e.body ?? {}) as { message?: string });
  return { code: e.code ?? 0, message: body.message ?? '' };
}

describe('Kubernetes test cluster: real etcd, kube-apiserver, kube-scheduler and kube-controller-manager; a Node object the test registers, no kubelet', () => {
  it('the API server reports the release built by scripts/build-k8s.sh', async () => {
    const version = await cluster.kubeConfig().makeApiClient(VersionApi).getCode();
    expect(version.gitVersion).toBe(kubernetesVersion());
  });

  it('the real scheduler binds a pod asking for a MIG slice to the node that has it', async () => {
    await core.createNamespacedPod({ namespace: NS, body: pod('mig-3g', { cpu: '1', memory: '1Gi', 'nvidia.com/mig-3g.20gb': '1' }) });
    let bound: V1Pod | undefined;
    await until(
      async () => {
        bound = await readPod(NS, 'mig-3g');
        return Boolean(bound.spec?.nodeName);
      },
      'the scheduler to bind mig-3g',
      60_000,
      200,
    );
    expect(bound!.spec!.nodeName).toBe(NODE);
    expect(bound!.status?.conditions?.find((c) => c.type === 'PodScheduled')?.status).toBe('True');
  });

  it('a pod asking for a MIG slice no node has is Unschedulable, with the scheduler message', async () => {
    await core.createNamespacedPod({ namespace: NS, body: pod('mig-7g', { cpu: '1', memory: '1Gi', 'nvidia.com/mig-7g.40gb': '1' }) });
    let condition: { status?: string; reason?: string; message?: string } | undefined;
    await until(
      async () => {
        condition = (await readPod(NS, 'mig-7g')).status?.conditions?.find((c) => c.type === 'PodScheduled');
        return condition !== undefined;
      },
      'the scheduler to give up on mig-7g',
      60_000,
      200,
    );
    expect(condition).toMatchObject({ status: 'False', reason: 'Unschedulable' });
    expect(condition!.message).toMatch(/^0\/1 nodes are available: 1 Insufficient nvidia\.com\/mig-7g\.40gb\./);
    expect((await readPod(NS, 'mig-7g')).spec?.nodeName).toBeUndefined();
  });

  it('the API server refuses a pod over the namespace ResourceQuota with "exceeded quota"', async () => {
    const ns = 'kgate-quota-test';
    await createNamespace(cluster, ns);
    await core.createNamespacedResourceQuota({
      namespace: ns,
      body: { metadata: { name: 'tenant' }, spec: { hard: { 'requests.cpu': '1', 'requests.memory': '2Gi', pods: '4' } } },
    });
    // Admission checks a quota only once the controller has computed its usage.
    await until(async () => Boolean((await core.readNamespacedResourceQuota({ name: 'tenant', namespace: ns })).status?.hard), 'the quota controller', 60_000, 200);

    await core.createNamespacedPod({ namespace: ns, body: pod('within', { cpu: '500m', memory: '1Gi' }) });
    const refused = await core.createNamespacedPod({ namespace: ns, body: pod('over', { cpu: '1', memory: '512Mi' }) }).then(
      () => undefined,
      (err: unknown) => statusOf(err),
    );
    expect(refused?.code).toBe(403);
    expect(refused?.message).toContain('exceeded quota: tenant');
    expect(refused?.message).toContain('requests.cpu=1');
  });

  it('the garbage collector deletes a Secret owned by a pod once the pod is deleted', async () => {
    const owner = await core.createNamespacedPod({ namespace: NS, body: pod('owner', { cpu: '100m', memory: '64Mi' }) });
    await core.createNamespacedSecret({
      namespace: NS,
      body: {
        metadata: { name: 'owner-connection', ownerReferences: [{ apiVersion: 'v1', kind: 'Pod', name: 'owner', uid: owner.metadata!.uid!, blockOwnerDeletion: true }] },
        stringData: { 'connection.json': '{}' },
      },
    });
    // The Secret stays while its pod is there.
    await new Promise((r) => setTimeout(r, 2000));
    expect((await core.readNamespacedSecret({ name: 'owner-connection', namespace: NS })).metadata?.name).toBe('owner-connection');

    // No kubelet confirms a graceful deletion here, so the pod goes at once.
    await core.deleteNamespacedPod({ name: 'owner', namespace: NS, gracePeriodSeconds: 0 });
    await until(
      () =>
        core.readNamespacedSecret({ name: 'owner-connection', namespace: NS }).then(
          () => false,
          (err: unknown) => statusOf(err).code === 404,
        ),
      'the garbage collector to delete owner-connection',
      90_000,
      250,
    );
  });

  it('a TokenRequest token for a ServiceAccount can do what its Role allows and nothing more', async () => {
    await core.createNamespacedServiceAccount({ namespace: NS, body: { metadata: { name: 'kgate' } } });
    const token = await mintServiceAccountToken(cluster, NS, 'kgate');
    const kc = new KubeConfig();
    kc.loadFromFile(kubeconfigFor(cluster, token, NS));
    const asKgate = kc.makeApiClient(CoreV1Api);

    const before = await asKgate.listNamespacedPod({ namespace: NS }).then(
      () => undefined,
      (err: unknown) => statusOf(err),
    );
    expect(before?.code).toBe(403);
    expect(before?.message).toContain(`system:serviceaccount:${NS}:kgate`);

    const rbac = cluster.kubeConfig().makeApiClient(RbacAuthorizationV1Api);
    await rbac.createNamespacedRole({ namespace: NS, body: { metadata: { name: 'pod-reader' }, rules: [{ apiGroups: [''], resources: ['pods'], verbs: ['get', 'list'] }] } });
    await rbac.createNamespacedRoleBinding({
      namespace: NS,
      body: {
        metadata: { name: 'kgate-pod-reader' },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'pod-reader' },
        subjects: [{ kind: 'ServiceAccount', name: 'kgate', namespace: NS }],
      },
    });
    await until(
      () =>
        asKgate.listNamespacedPod({ namespace: NS }).then(
          () => true,
          () => false,
        ),
      'the RoleBinding to take effect',
      30_000,
      200,
    );
    const names = (await asKgate.listNamespacedPod({ namespace: NS })).items.map((p) => p.metadata?.name);
    expect(names).toContain('mig-3g');
    // Still nothing outside the Role: no Secrets.
    expect(statusOf(await asKgate.listNamespacedSecret({ namespace: NS }).catch((err: unknown) => err)).code).toBe(403);
  });
});
