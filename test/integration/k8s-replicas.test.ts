/**
 * kgate replicas sharing their kernels through Kubernetes, end to end: a real
 * kube-apiserver, kube-scheduler and kube-controller-manager
 * (test/helpers/k8s-cluster.ts), one simulated node (test/k8s/sim-node.ts:
 * Debian's ipykernel in each pod's own network namespace), and kgate as
 * separate processes (test/helpers/k8s-replicas.ts) on `--state-store
 * kubernetes` with the kubernetes provisioner, each with only the
 * ServiceAccount token deploy/base's Roles allow and no state dir: the
 * cluster is all they share. Two replicas serve one kernel with no sticky
 * routing; kill -9 of the supervising replica hands the kernel's Lease to the
 * other, which restarts the dead kernel exactly once; a restarted gateway
 * adopts every pod; a warm pool of pods against cold pod starts. What this
 * does not prove: a container runtime or a kubelet (the simulated node stands
 * in), NetworkPolicy enforcement. Needs root.
 */
import { randomBytes, randomInt } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { leaseName, recordName } from '../../src/kernels/k8s-store.js';
import { LABELS } from '../../src/provisioner/k8s-objects.js';
import { KernelClient, type GatewayClient } from '../helpers/gateway.js';
import { startCluster, type Cluster } from '../helpers/k8s-cluster.js';
import { execute, median, timeToKernelInfo } from '../helpers/k8s-kernels.js';
import { deployIdentity, KERNEL_NAMESPACE, STATE_NAMESPACE, startReplica, tail, type Replica } from '../helpers/k8s-replicas.js';
import { writeKernelspec } from '../helpers/provisioner-specs.js';
import { until } from '../helpers/wait.js';
import { SimNode } from '../k8s/sim-node.js';

const IMAGE = 'localhost/kgate-kernel-python3:bookworm';
const ARGV = ['python3', '-m', 'ipykernel_launcher', '-f', '{connection_file}'];
const SPEC = 'python3-k8s';
const COLD_SPEC = 'python3-k8s-cold';
const HOLDER_PID = 'kgate.jupyter.org/holder-pid';

let cluster: Cluster;
let node: SimNode;
let core: k8s.CoreV1Api;
let coordination: k8s.CoordinationV1Api;
let kubeconfig: string;
let specs: string;
const replicas: Replica[] = [];

/** A replica as deploy/ runs one: the kubernetes store and provisioner, the ServiceAccount's kubeconfig, no state dir. */
async function replica(extra: string[] = []): Promise<Replica> {
  const r = await startReplica([
    '--kernelspec-dir',
    specs,
    '--kubeconfig',
    kubeconfig,
    '--state-store',
    'kubernetes',
    '--state-namespace',
    STATE_NAMESPACE,
    '--k8s-namespace',
    'kgate-{tenant}',
    '--launch-timeout',
    '90',
    '--shutdown-wait',
    '2',
    '--log-level',
    'info',
    ...extra,
  ]);
  replicas.push(r);
  return r;
}

const notFound = (e: unknown): undefined => {
  if (e instanceof k8s.ApiException && e.code === 404) return undefined;
  throw e;
};

async function podOf(id: string): Promise<k8s.V1Pod | undefined> {
  return core.readNamespacedPod({ name: `kgate-kernel-${id}`, namespace: KERNEL_NAMESPACE }).catch(notFound);
}

async function leaseOf(id: string): Promise<k8s.V1Lease | undefined> {
  return coordination.readNamespacedLease({ name: leaseName(id), namespace: STATE_NAMESPACE }).catch(notFound);
}

/** The pid of the replica that holds the kernel's Lease, from the annotation the store writes beside holderIdentity. */
async function leaseHolderPid(id: string): Promise<number | undefined> {
  const pid = (await leaseOf(id))?.metadata?.annotations?.[HOLDER_PID];
  return pid === undefined ? undefined : Number(pid);
}

/** Nothing of the kernel is left in the cluster: pod, connection Secret, record Secret, Lease. */
async function goneFromCluster(id: string): Promise<boolean> {
  const [pod, conn, record, lease] = await Promise.all([
    podOf(id),
    core.readNamespacedSecret({ name: `kgate-kernel-${id}`, namespace: KERNEL_NAMESPACE }).catch(notFound),
    core.readNamespacedSecret({ name: recordName(id), namespace: STATE_NAMESPACE }).catch(notFound),
    leaseOf(id),
  ]);
  return !pod && !conn && !record && !lease;
}

/** Every pod the API server ever reports for the kernel, by uid, from a watch on its label (a pod that lived a moment counts too). */
async function watchPods(id: string): Promise<{ uids: Set<string>; stop(): void }> {
  const uids = new Set<string>();
  const ac = await new k8s.Watch(cluster.kubeConfig()).watch(
    `/api/v1/namespaces/${KERNEL_NAMESPACE}/pods`,
    { labelSelector: `${LABELS.kernelId}=${id}` },
    (type: string, pod: k8s.V1Pod) => {
      if (type !== 'BOOKMARK' && type !== 'ERROR' && pod.metadata?.uid) uids.add(pod.metadata.uid);
    },
    () => undefined,
  );
  return { uids, stop: () => ac.abort() };
}

async function listed(g: GatewayClient): Promise<string[]> {
  const r = await g.api('api/kernels');
  expect(r.status).toBe(200);
  return ((await r.json()) as Array<{ id: string }>).map((k) => k.id).sort();
}

/** kgate_kernel_restarts_total of one kernelspec and cause, as the replica's /metrics says (0 when it has none). */
async function restartsCounted(g: GatewayClient, kernelspec: string, cause: 'death' | 'request'): Promise<number> {
  const text = await (await g.api('metrics')).text();
  const line = text.split('\n').find((l) => l.startsWith('kgate_kernel_restarts_total{') && l.includes(`kernelspec="${kernelspec}"`) && l.includes(`cause="${cause}"`));
  return line ? Number(line.split(' ').pop()) : 0;
}

describe('kgate replicas on --state-store kubernetes, a real API server and scheduler, with a simulated node', () => {
  beforeAll(async () => {
    cluster = await startCluster();
    core = cluster.kubeConfig().makeApiClient(k8s.CoreV1Api);
    coordination = cluster.kubeConfig().makeApiClient(k8s.CoordinationV1Api);
    kubeconfig = await deployIdentity(cluster);
    // A name and pod CIDR of this run's own: the node's bridge is named after the node, and another run of
    // this test at the same time (a second checkout's suite) would otherwise tear this one's down.
    node = new SimNode({
      kubeconfig: cluster.kubeconfigPath,
      name: `kgate-sim-replicas-${randomBytes(3).toString('hex')}`,
      capacity: { cpu: '8', memory: '16Gi' },
      podCidr: `10.247.${randomInt(1, 255)}.0/24`,
    });
    await node.start();
    specs = mkdtempSync(join(tmpdir(), 'kgate-replica-specs-'));
    for (const name of [SPEC, COLD_SPEC]) {
      writeKernelspec(specs, name, { provisioner: 'kubernetes', config: { image: IMAGE }, argv: ARGV, resources: { cpu: '0.25', memory: '256Mi' } });
    }
  }, 300_000);

  afterAll(async () => {
    for (const r of replicas) await r.stop(10_000).catch(() => undefined);
    // Whatever a failed case left (kill -9 leaves pods by design) goes with the node.
    await node?.stop();
    await cluster?.stop();
    if (specs) rmSync(specs, { recursive: true, force: true });
  }, 120_000);

  it('two replicas serve one kernel with no sticky routing: started on A, listed, run and shut down through B', async () => {
    const a = await replica();
    const b = await replica();
    const id = await a.client.startKernel(SPEC);
    expect((await podOf(id))?.status?.phase).toBe('Running');
    expect(await leaseHolderPid(id)).toBe(a.pid);
    // B knows it from the cluster alone.
    expect(await listed(b.client)).toContain(id);
    const onB = (await (await b.client.api(`api/kernels/${id}`)).json()) as { id: string; kgate: { provisioner: string } };
    expect(onB).toMatchObject({ id, kgate: { provisioner: 'kubernetes' } });

    const cb = await KernelClient.connect(b.client, id);
    const ca = await KernelClient.connect(a.client, id);
    expect(await execute(cb, 'x = 6 * 7; x')).toBe('42');
    // Both at once, each on its own replica, on the same kernel: A still supervises it.
    const [fromA, fromB] = await Promise.all([execute(ca, 'import time; time.sleep(0.5); print("A", x)'), execute(cb, 'import time; time.sleep(0.5); print("B", x + 1)')]);
    expect(fromA).toBe('A 42\n');
    expect(fromB).toBe('B 43\n');
    expect(await leaseHolderPid(id)).toBe(a.pid);

    expect((await b.client.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
    await until(() => goneFromCluster(id), 'the pod, its Secret, the record and the Lease to go', 30_000, 100);
    await until(async () => !(await listed(a.client)).includes(id), 'A to let the kernel go', 15_000, 200);
    expect(await listed(b.client)).not.toContain(id);
    ca.close();
    cb.close();
  }, 180_000);

  it('kill -9 of the supervising replica: the other takes the Lease and restarts the dead kernel exactly once', async () => {
    const [a, b] = replicas.slice(-2) as [Replica, Replica];
    const id = await a.client.startKernel(SPEC);
    const first = (await podOf(id))!.metadata!.uid!;
    const pods = await watchPods(id);
    try {
      const cb = await KernelClient.connect(b.client, id);
      expect(await execute(cb, 'y = 1; y')).toBe('1');
      const holderBefore = (await leaseOf(id))!.spec!.holderIdentity;
      expect(await leaseHolderPid(id)).toBe(a.pid);

      const killedAt = performance.now();
      await a.kill9();
      await until(async () => (await leaseHolderPid(id)) === b.pid, "B to hold the kernel's Lease", 60_000, 50);
      const takeoverMs = performance.now() - killedAt;
      const lease = (await leaseOf(id))!;
      expect(lease.spec!.holderIdentity).not.toBe(holderBefore);
      expect(lease.spec!.leaseTransitions).toBeGreaterThanOrEqual(1);
      console.log(`[k8s-replicas] kill -9 of the supervising replica -> the other holds the Lease after ${takeoverMs.toFixed(0)} ms (lease ${lease.spec!.leaseDurationSeconds} s)`);
      // The kernel lived on meanwhile, and B still runs code on it.
      expect(await execute(cb, 'y + 1')).toBe('2');
      expect((await podOf(id))!.metadata!.uid).toBe(first);

      // The kernel's process dies: B, its supervisor now, restarts it once, in a new pod.
      cb.execute('import os; os._exit(1)');
      await until(
        async () => {
          const p = await podOf(id);
          return p !== undefined && p.metadata!.uid !== first && p.status?.phase === 'Running';
        },
        'the restarted pod',
        90_000,
        100,
      );
      expect(await execute(cb, 'print(40 + 2)')).toBe('42\n');
      // Long enough for a second restarter (A is dead; B's own retries) to show itself.
      await new Promise((r) => setTimeout(r, 5000));
      expect(pods.uids.size).toBe(2);
      expect(pods.uids.has(first)).toBe(true);
      expect((await core.listNamespacedPod({ namespace: KERNEL_NAMESPACE, labelSelector: `${LABELS.kernelId}=${id}` })).items).toHaveLength(1);
      expect(await restartsCounted(b.client, SPEC, 'death')).toBe(1);
      expect(await leaseHolderPid(id)).toBe(b.pid);
      const model = (await (await b.client.api(`api/kernels/${id}`)).json()) as { kgate: { phase: string; last_death?: { reason: string } } };
      expect(model.kgate).toMatchObject({ phase: 'running', last_death: { reason: 'died' } });
      console.log(`[k8s-replicas] pods of the kernel over its life: ${pods.uids.size} (the first and exactly one restart); kgate_kernel_restarts_total{cause="death"} on B: 1`);

      expect((await b.client.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
      await until(() => goneFromCluster(id), 'the kernel to leave nothing', 30_000, 100);
      cb.close();
    } catch (e) {
      throw new Error(`${(e as Error).message}\n--- B:\n${tail(b.logPath)}`, { cause: e });
    } finally {
      pods.stop();
    }
  }, 240_000);

  it('a restarted gateway adopts every pod: three kernels of a replica killed with -9, run again by its next process, none restarted', async () => {
    // The other replica is stopped, so only the restarted gateway can adopt them.
    for (const r of replicas) await r.stop();
    const a = await replica();
    const ids = [await a.client.startKernel(SPEC), await a.client.startKernel(SPEC), await a.client.startKernel(SPEC)].sort();
    const uids = await Promise.all(ids.map(async (id) => (await podOf(id))!.metadata!.uid!));
    const clients = await Promise.all(ids.map((id) => KernelClient.connect(a.client, id)));
    for (const [i, c] of clients.entries()) expect(await execute(c, `v = ${i}; v`)).toBe(String(i));
    for (const c of clients) c.close();
    const killedAt = performance.now();
    await a.kill9();

    const again = await replica();
    try {
      // Without a client asking: the gateway takes every lease by itself, once the dead process's lapse.
      await until(async () => (await Promise.all(ids.map(leaseHolderPid))).every((p) => p === again.pid), 'the restarted gateway to hold every lease', 40_000, 100);
      console.log(
        `[k8s-replicas] kill -9, then a new process of the gateway: it holds all ${ids.length} leases ${(performance.now() - killedAt).toFixed(0)} ms after the kill, with no client asking`,
      );
      expect(await listed(again.client)).toEqual(ids);
      for (const [i, id] of ids.entries()) {
        const c = await KernelClient.connect(again.client, id);
        // The same process: its variables are there.
        expect(await execute(c, 'v')).toBe(String(i));
        c.close();
      }
      expect(await Promise.all(ids.map(async (id) => (await podOf(id))!.metadata!.uid!))).toEqual(uids);
      expect(await restartsCounted(again.client, SPEC, 'death')).toBe(0);
    } catch (e) {
      throw new Error(`${(e as Error).message}\n--- restarted gateway:\n${tail(again.logPath)}`, { cause: e });
    }
    // A shutdown without --keep-kernels takes its kernels with it.
    await again.stop();
    await until(async () => (await Promise.all(ids.map(goneFromCluster))).every(Boolean), 'the kernels to go with the gateway', 30_000, 200);
  }, 240_000);

  it('measures POST to kernel_info_reply from a warm pool of pods (median of 5) against a cold pod (median of 5)', async () => {
    const g = await replica(['--pool', `${SPEC}=1`]);
    const poolReady = async (): Promise<boolean> => {
      const s = (await (await g.client.api('api/status')).json()) as { pools: Record<string, { ready: number }> };
      return s.pools[SPEC]?.ready === 1;
    };
    const warm: number[] = [];
    const cold: number[] = [];
    for (let i = 0; i < 5; i++) {
      await until(poolReady, 'the warm pool to have a pod ready', 90_000, 100);
      const w = await timeToKernelInfo(g.client, SPEC);
      warm.push(w.ms);
      expect((await g.client.api(`api/kernels/${w.id}`, { method: 'DELETE' })).status).toBe(204);
      const c = await timeToKernelInfo(g.client, COLD_SPEC);
      cold.push(c.ms);
      expect((await g.client.api(`api/kernels/${c.id}`, { method: 'DELETE' })).status).toBe(204);
    }
    const fmt = (xs: number[]): string => xs.map((x) => x.toFixed(0)).join(', ');
    console.log(
      `[k8s-replicas] POST -> kernel_info_reply: warm pod pool median ${median(warm).toFixed(0)} ms (${fmt(warm)}); cold pod median ${median(cold).toFixed(0)} ms (${fmt(cold)})`,
    );
    expect(median(warm)).toBeLessThan(median(cold));
    await g.stop();
    // The pool's pod goes with the gateway, and nothing else is left.
    await until(
      async () => (await core.listNamespacedPod({ namespace: KERNEL_NAMESPACE, labelSelector: `${LABELS.managedBy}=kgate` })).items.length === 0,
      'every kernel pod to be gone',
      30_000,
      200,
    );
    expect((await core.listNamespacedSecret({ namespace: KERNEL_NAMESPACE, labelSelector: `${LABELS.managedBy}=kgate` })).items).toEqual([]);
    expect((await core.listNamespacedSecret({ namespace: STATE_NAMESPACE, labelSelector: `${LABELS.managedBy}=kgate` })).items).toEqual([]);
  }, 300_000);
});
