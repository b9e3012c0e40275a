/**
 * The kubernetes provisioner end to end, through a kgate gateway in this
 * process, against a real kube-apiserver, kube-scheduler and
 * kube-controller-manager (test/helpers/k8s-cluster.ts) with two simulated
 * nodes (test/k8s/sim-node.ts: one with a MIG slice, one without) that run
 * Debian's ipykernel in each pod's own network namespace with the Secret's
 * connection file. Start, execute, interrupt, restart (a new pod, the socket
 * stays open), shutdown (pod and Secret gone), a MIG kernel on the node with
 * the slice, one asking for a slice no node has failing at once with the
 * scheduler's message, an image that cannot be pulled, the API server's
 * quota refusal, an OOM-killed kernel, and the tenant's objects. What this
 * does not prove: a container runtime, real GPUs, NetworkPolicy enforcement
 * by a CNI plugin (the simulated node enforces none). Needs root.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parsePolicy } from '../../src/kernels/policy.js';
import { connectCluster } from '../../src/provisioner/k8s-client.js';
import { EGRESS_EXCEPT, LABELS } from '../../src/provisioner/k8s-objects.js';
import { ensureTenantNamespace } from '../../src/provisioner/k8s-tenant.js';
import { listKernelPods } from '../../src/provisioner/kubernetes.js';
import { KernelClient, interruptUntilReplied, startGateway, type TestGateway } from '../helpers/gateway.js';
import { startCluster, type Cluster } from '../helpers/k8s-cluster.js';
import { execute, KERNEL_IMAGE, KERNEL_NAMESPACE, median, MIG, orAbsent, startKubernetesGateway, timeToKernelInfo } from '../helpers/k8s-kernels.js';
import { until } from '../helpers/wait.js';
import { SimNode } from '../k8s/sim-node.js';

const NS = KERNEL_NAMESPACE;

let cluster: Cluster;
let nodes: SimNode[] = [];
let t: TestGateway;
let core: k8s.CoreV1Api;
let dir: string;

const readPod = (name: string): Promise<k8s.V1Pod | undefined> => orAbsent(core.readNamespacedPod({ name, namespace: NS }));
const readSecret = (name: string): Promise<k8s.V1Secret | undefined> => orAbsent(core.readNamespacedSecret({ name, namespace: NS }));

async function kgatePods(): Promise<string[]> {
  return (await listKernelPods(core, NS)).map((p) => p.pod);
}

describe('kubernetes provisioner on a real API server and scheduler, with simulated nodes', () => {
  beforeAll(async () => {
    cluster = await startCluster();
    core = cluster.kubeConfig().makeApiClient(k8s.CoreV1Api);
    nodes = [
      new SimNode({ kubeconfig: cluster.kubeconfigPath, name: 'kgate-sim-cpu', capacity: { cpu: '4', memory: '8Gi' }, podCidr: '10.246.1.0/24' }),
      new SimNode({ kubeconfig: cluster.kubeconfigPath, name: 'kgate-sim-mig', capacity: { cpu: '4', memory: '8Gi', [MIG]: '1' }, podCidr: '10.246.2.0/24' }),
    ];
    for (const n of nodes) await n.start();
    ({ gateway: t, dir } = await startKubernetesGateway(
      cluster,
      [
        { name: 'python3-k8s', config: { image: KERNEL_IMAGE }, resources: { cpu: '0.5', memory: '384Mi' } },
        { name: 'python3-k8s-missing', config: { image: 'localhost/kgate-kernel-python3:missing' } },
      ],
      90,
    ));
  }, 300_000);

  afterAll(async () => {
    await t?.close();
    for (const n of nodes) await n.stop();
    await cluster?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 120_000);

  it('starts a pod kernel that executes, is interrupted, restarts in a new pod with the socket open, and leaves nothing when shut down', async () => {
    const id = await t.startKernel('python3-k8s');
    const name = `kgate-kernel-${id}`;
    const pod = (await readPod(name))!;
    expect(pod.metadata?.labels?.[LABELS.kernelId]).toBe(id);
    expect(pod.metadata?.labels?.[LABELS.managedBy]).toBe('kgate');
    expect(pod.spec?.schedulingGates ?? []).toEqual([]);
    expect(pod.spec?.containers[0]?.resources?.limits).toMatchObject({ cpu: '500m', memory: '384Mi' });
    const secret = (await readSecret(name))!;
    expect(secret.metadata?.ownerReferences).toEqual([expect.objectContaining({ kind: 'Pod', name, uid: pod.metadata?.uid })]);
    const model = (await (await t.api(`api/kernels/${id}`)).json()) as { kgate: { provisioner: string } };
    expect(model.kgate.provisioner).toBe('kubernetes');

    const c = await KernelClient.connect(t, id);
    expect(await execute(c, '1+1')).toBe('2');
    // It runs in the pod's network namespace, with its own IP.
    expect(await execute(c, 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(("10.0.0.1", 9)); print(s.getsockname()[0])')).toBe(
      `${pod.status?.podIP}\n`,
    );

    const sleeping = c.execute('import time; time.sleep(60)');
    const interrupted = await interruptUntilReplied(c, sleeping, () => t.api(`api/kernels/${id}/interrupt`, { method: 'POST' }));
    expect(interrupted.content['ename']).toBe('KeyboardInterrupt');

    const r = await t.api(`api/kernels/${id}/restart`, { method: 'POST' });
    expect(r.status).toBe(200);
    const after = (await readPod(name))!;
    expect(after.metadata?.uid).not.toBe(pod.metadata?.uid);
    expect(c.closed).toBeUndefined();
    expect(await execute(c, 'print(40 + 2)')).toBe('42\n');
    // The old Secret went with the old pod; the new one is the new pod's.
    expect((await readSecret(name))?.metadata?.ownerReferences?.[0]?.uid).toBe(after.metadata?.uid);

    expect((await t.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
    await until(async () => (await readPod(name)) === undefined && (await readSecret(name)) === undefined, 'the pod and its Secret to be gone', 30_000, 100);
    c.close();
  });

  it("fails a kernel asking for a MIG slice no node has at once, with the scheduler's message, and leaves nothing", async () => {
    const before = await kgatePods();
    const t0 = performance.now();
    const r = await t.api('api/kernels', { method: 'POST', json: { name: 'python3-k8s', env: { KERNEL_GPUS: '1', KERNEL_GPU_RESOURCE: 'nvidia.com/mig-3g.20gb' } } });
    const ms = performance.now() - t0;
    const body = (await r.json()) as { code: string; message: string };
    expect(r.status).toBe(503);
    expect(body.code).toBe('KG_KERNEL_UNSCHEDULABLE');
    expect(body.message).toMatch(/0\/2 nodes are available: 2 Insufficient nvidia\.com\/mig-3g\.20gb/);
    expect(r.headers.get('retry-after')).not.toBeNull();
    console.log(`[k8s] POST -> KG_KERNEL_UNSCHEDULABLE in ${ms.toFixed(0)} ms`);
    expect(ms).toBeLessThan(10_000);
    await until(async () => (await kgatePods()).length === before.length, 'the unschedulable pod to be gone', 10_000, 100);
  });

  it('places a kernel asking for a MIG slice on the node that has it', async () => {
    const id = await t.startKernel('python3-k8s', { KERNEL_GPUS: '1', KERNEL_GPU_RESOURCE: MIG });
    const pod = (await readPod(`kgate-kernel-${id}`))!;
    expect(pod.spec?.nodeName).toBe('kgate-sim-mig');
    expect(pod.spec?.containers[0]?.resources?.limits?.[MIG]).toBe('1');
    expect((await t.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
  });

  it('names the image that cannot be pulled', async () => {
    const r = await t.api('api/kernels', { method: 'POST', json: { name: 'python3-k8s-missing' } });
    const body = (await r.json()) as { code: string; message: string };
    expect(body.code).toBe('KG_KERNEL_IMAGE_UNAVAILABLE');
    expect(body.message).toContain('localhost/kgate-kernel-python3:missing');
  });

  it("refuses a kernel over the namespace's ResourceQuota with the API server's message", async () => {
    const running = (await core.listNamespacedPod({ namespace: NS })).items.length;
    const quota: k8s.V1ResourceQuota = { metadata: { name: 'operator-pods', namespace: NS }, spec: { hard: { pods: String(running) } } };
    await core.createNamespacedResourceQuota({ namespace: NS, body: quota });
    try {
      // The quota is enforced once its controller has computed its usage.
      await until(async () => (await core.readNamespacedResourceQuota({ name: 'operator-pods', namespace: NS })).status?.hard !== undefined, 'the quota status', 30_000, 100);
      const r = await t.api('api/kernels', { method: 'POST', json: { name: 'python3-k8s' } });
      const body = (await r.json()) as { code: string; message: string };
      expect(r.status).toBe(403);
      expect(body.code).toBe('KG_TENANT_QUOTA');
      expect(body.message).toMatch(/exceeded quota: operator-pods/);
    } finally {
      await core.deleteNamespacedResourceQuota({ name: 'operator-pods', namespace: NS });
    }
  });

  it("makes the tenant's namespace, NetworkPolicy, ResourceQuota and LimitRange", async () => {
    const ns = await core.readNamespace({ name: NS });
    expect(ns.metadata?.labels?.['pod-security.kubernetes.io/enforce']).toBe('restricted');
    const net = cluster.kubeConfig().makeApiClient(k8s.NetworkingV1Api);
    const np = await net.readNamespacedNetworkPolicy({ name: 'kgate-kernels', namespace: NS });
    expect(np.spec?.policyTypes).toEqual(['Ingress', 'Egress']);
    expect(np.spec?.egress?.[0]?.to?.[0]?.ipBlock).toEqual({ cidr: '0.0.0.0/0', except: [...EGRESS_EXCEPT] });
    expect(np.spec?.ingress?.[0]?.ports).toEqual([{ protocol: 'TCP', port: 52000, endPort: 52004 }]);
    const rq = await core.readNamespacedResourceQuota({ name: 'kgate-tenant', namespace: NS });
    expect(rq.spec?.hard).toMatchObject({ pods: '20', 'requests.cpu': '8', [`requests.${MIG}`]: '1' });
    const lr = await core.readNamespacedLimitRange({ name: 'kgate-defaults', namespace: NS });
    expect(lr.spec?.limits[0]?._default).toBeDefined();
    // Again, with other totals: the objects are replaced, not duplicated or refused.
    const apis = await connectCluster({ kubeconfig: cluster.kubeconfigPath });
    const limits = parsePolicy('tenants:\n  default:\n    max_kernels: 7\n').limitsFor('default')!.limits;
    await ensureTenantNamespace(apis, 'default', { namespace: NS, create: true, perTenant: true, limits, egress: false });
    expect((await core.readNamespacedResourceQuota({ name: 'kgate-tenant', namespace: NS })).spec?.hard).toEqual({ pods: '7' });
    expect((await net.readNamespacedNetworkPolicy({ name: 'kgate-kernels', namespace: NS })).spec?.egress ?? []).toEqual([]);
  });

  it('is adopted by another gateway from its state dir, which serves the same pod', async () => {
    const state = join(dir, 'state');
    const args = ['--kernelspec-dir', dir, '--kubeconfig', cluster.kubeconfigPath, '--k8s-create-namespaces', '--state-dir', state, '--keep-kernels', 'true'];
    const first = await startGateway(args);
    const id = await first.startKernel('python3-k8s');
    const uid = (await readPod(`kgate-kernel-${id}`))!.metadata!.uid;
    await first.close();
    const second = await startGateway(args);
    try {
      const c = await KernelClient.connect(second, id);
      expect(await execute(c, '6 * 7')).toBe('42');
      c.close();
      expect((await readPod(`kgate-kernel-${id}`))!.metadata!.uid).toBe(uid);
      expect((await second.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
      await until(async () => (await readPod(`kgate-kernel-${id}`)) === undefined, 'the adopted pod to be gone', 30_000, 100);
    } finally {
      await second.close();
    }
  });

  it('says an OOM-killed pod kernel was killed for its memory, and restarts it', async () => {
    const id = await t.startKernel('python3-k8s');
    const name = `kgate-kernel-${id}`;
    const first = (await readPod(name))!.metadata!.uid;
    const c = await KernelClient.connect(t, id);
    c.execute('x = bytearray(1024 * 1024 * 1024)');
    await until(
      async () => {
        const m = (await (await t.api(`api/kernels/${id}`)).json()) as { kgate: { last_death?: { reason: string } } };
        return m.kgate.last_death?.reason === 'out_of_memory';
      },
      'the kernel to be reported killed for memory',
      60_000,
      200,
    );
    await until(async () => (await readPod(name))?.metadata?.uid !== first && (await readPod(name))?.status?.phase === 'Running', 'the restarted pod', 60_000, 200);
    expect(await execute(c, '1+1')).toBe('2');
    c.close();
    expect((await t.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
  });

  it('measures POST to kernel_info_reply for a pod kernel (median of 10) next to a local one', async () => {
    const pod: number[] = [];
    const local: number[] = [];
    for (let i = 0; i < 10; i++) {
      const p = await timeToKernelInfo(t, 'python3-k8s');
      pod.push(p.ms);
      await t.api(`api/kernels/${p.id}`, { method: 'DELETE' });
      const l = await timeToKernelInfo(t, 'python3');
      local.push(l.ms);
      await t.api(`api/kernels/${l.id}`, { method: 'DELETE' });
    }
    console.log(
      `[k8s] POST -> kernel_info_reply: pod kernel median ${median(pod).toFixed(0)} ms (${pod.map((x) => x.toFixed(0)).join(', ')}); local median ${median(local).toFixed(0)} ms`,
    );
    expect(median(pod)).toBeGreaterThan(0);
    await until(async () => (await kgatePods()).length === 0, 'every kernel pod to be gone', 30_000, 100);
    expect((await core.listNamespacedSecret({ namespace: NS, labelSelector: `${LABELS.managedBy}=kgate` })).items).toEqual([]);
  });
});
