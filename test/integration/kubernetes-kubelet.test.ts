/**
 * The kubernetes provisioner end to end on a real node: a real kube-apiserver, kube-scheduler and
 * kube-controller-manager (test/helpers/k8s-cluster.ts) and one real kubelet with Debian's
 * containerd (test/helpers/k8s-kubelet.ts), through a kgate gateway in this process. The kernel
 * runs in a container (runc through containerd's CRI) from the kernel image imported into
 * containerd (imagePullPolicy Never), under the cgroup limits the kubelet sets; an OOM kill is
 * the kubelet's OOMKilled. A MIG slice is faked in the Node's capacity. What this does not prove:
 * image pulls from a registry, GPUs, NetworkPolicy enforcement (the bridge CNI enforces none).
 * Needs root, containerd and the kubelet (scripts/setup.sh --test, scripts/build-k8s.sh): the
 * test fails, naming what is missing, without them.
 */
import { rmSync } from 'node:fs';
import * as k8s from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LABELS } from '../../src/provisioner/k8s-objects.js';
import { listKernelPods } from '../../src/provisioner/kubernetes.js';
import { KernelClient, interruptUntilReplied, type TestGateway } from '../helpers/gateway.js';
import { startCluster, type Cluster } from '../helpers/k8s-cluster.js';
import { execute, KERNEL_IMAGE, KERNEL_NAMESPACE, median, MIG, orAbsent, startKubernetesGateway, timeToKernelInfo } from '../helpers/k8s-kernels.js';
import { startKubeletNode, type KubeletNode } from '../helpers/k8s-kubelet.js';
import { until } from '../helpers/wait.js';

const IMAGE = KERNEL_IMAGE;
const NS = KERNEL_NAMESPACE;
const NODE = 'kgate-kubelet';

let cluster: Cluster;
let node: KubeletNode | undefined;
let t: TestGateway;
let core: k8s.CoreV1Api;
let dir: string;

const readPod = (name: string): Promise<k8s.V1Pod | undefined> => orAbsent(core.readNamespacedPod({ name, namespace: NS }));
const readSecret = (name: string): Promise<k8s.V1Secret | undefined> => orAbsent(core.readNamespacedSecret({ name, namespace: NS }));

describe('kubernetes provisioner on a real API server and scheduler, with a real kubelet and containerd', () => {
  beforeAll(async () => {
    cluster = await startCluster();
    core = cluster.kubeConfig().makeApiClient(k8s.CoreV1Api);
    node = await startKubeletNode(cluster, { name: NODE, podCidr: '10.247.1.0/24', extendedResources: { [MIG]: '1' }, images: [IMAGE] });
    console.log(`[k8s-kubelet] node Ready with containerd and images in ${node.startupMs.toFixed(0)} ms`);
    const config = { image: IMAGE, image_pull_policy: 'Never' };
    ({ gateway: t, dir } = await startKubernetesGateway(
      cluster,
      [
        { name: 'python3-k8s', config, resources: { cpu: '0.5', memory: '384Mi' } },
        { name: 'python3-k8s-small', config, resources: { cpu: '0.5', memory: '128Mi' } },
      ],
      120,
    ));
  }, 300_000);

  afterAll(async () => {
    await t?.close();
    await node?.stop();
    await cluster?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 180_000);

  it('runs a pod kernel in a container that executes, is interrupted, restarts in a new pod with the socket open, and leaves nothing when shut down', async () => {
    const id = await t.startKernel('python3-k8s');
    const name = `kgate-kernel-${id}`;
    const pod = (await readPod(name))!;
    expect(pod.spec?.nodeName).toBe(NODE);
    expect(pod.spec?.containers[0]?.imagePullPolicy).toBe('Never');
    expect(pod.status?.containerStatuses?.[0]?.containerID).toMatch(/^containerd:\/\//);

    const c = await KernelClient.connect(t, id);
    expect(await execute(c, '1+1')).toBe('2');
    // In the container: the memory limit is the kubelet's cgroup's.
    expect(await execute(c, 'print(int(open("/sys/fs/cgroup/memory/memory.limit_in_bytes").read()) // 2**20)')).toBe('384\n');

    const sleeping = c.execute('import time; time.sleep(60)');
    const interrupted = await interruptUntilReplied(c, sleeping, () => t.api(`api/kernels/${id}/interrupt`, { method: 'POST' }));
    expect(interrupted.content['ename']).toBe('KeyboardInterrupt');

    const r = await t.api(`api/kernels/${id}/restart`, { method: 'POST' });
    expect(r.status).toBe(200);
    const after = (await readPod(name))!;
    expect(after.metadata?.uid).not.toBe(pod.metadata?.uid);
    expect(c.closed).toBeUndefined();
    expect(await execute(c, 'print(40 + 2)')).toBe('42\n');

    expect((await t.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
    await until(async () => (await readPod(name)) === undefined && (await readSecret(name)) === undefined, 'the pod and its Secret to be gone', 60_000, 200);
    c.close();
  }, 300_000);

  it("reports the kubelet's OOMKilled as out_of_memory and restarts the kernel", async () => {
    const id = await t.startKernel('python3-k8s-small');
    const name = `kgate-kernel-${id}`;
    const first = (await readPod(name))!.metadata!.uid;
    const c = await KernelClient.connect(t, id);
    c.execute('x = bytearray(500 * 1024 * 1024)');
    await until(
      async () => {
        const m = (await (await t.api(`api/kernels/${id}`)).json()) as { kgate: { last_death?: { reason: string } } };
        return m.kgate.last_death?.reason === 'out_of_memory';
      },
      'the kernel to be reported killed for memory',
      90_000,
      200,
    );
    await until(async () => (await readPod(name))?.metadata?.uid !== first && (await readPod(name))?.status?.phase === 'Running', 'the restarted pod', 90_000, 200);
    expect(await execute(c, '1+1')).toBe('2');
    c.close();
    expect((await t.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
  }, 300_000);

  it('runs a kernel asking for a MIG slice on the node whose capacity has it', async () => {
    const id = await t.startKernel('python3-k8s', { KERNEL_GPUS: '1', KERNEL_GPU_RESOURCE: MIG });
    const pod = (await readPod(`kgate-kernel-${id}`))!;
    expect(pod.spec?.nodeName).toBe(NODE);
    expect(pod.spec?.containers[0]?.resources?.limits?.[MIG]).toBe('1');
    expect(pod.status?.phase).toBe('Running');
    expect((await t.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
  }, 300_000);

  it('measures POST to kernel_info_reply for a containerd pod kernel (median of 5), and leaves no pod or Secret', async () => {
    const times: number[] = [];
    for (let i = 0; i < 5; i++) {
      const { ms, id } = await timeToKernelInfo(t, 'python3-k8s');
      times.push(ms);
      expect((await t.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
    }
    console.log(`[k8s-kubelet] POST -> kernel_info_reply: median ${median(times).toFixed(0)} ms (${times.map((x) => x.toFixed(0)).join(', ')})`);
    expect(median(times)).toBeGreaterThan(0);
    await until(async () => (await listKernelPods(core, NS)).length === 0, 'every kernel pod to be gone', 60_000, 200);
    expect((await core.listNamespacedSecret({ namespace: NS, labelSelector: `${LABELS.managedBy}=kgate` })).items).toEqual([]);
  }, 300_000);
});
