/**
 * The simulated node (test/k8s/sim-node.ts) against a real kube-apiserver,
 * kube-scheduler and kube-controller-manager (test/helpers/k8s-cluster.ts):
 * the scheduler binds pods to it by its capacity, it runs Debian's ipykernel
 * in the pod's own network namespace with the Secret's connection file, a real
 * ZeroMQ client gets a signed kernel_info_reply from podIP:shell_port, and the
 * pod status it writes (IP, conditions, container states, OOMKilled,
 * ImagePullBackOff) is what a kubelet would write. Needs root.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import * as k8s from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as zmq from 'zeromq';
import { makeMessage } from '../../src/bridge/messages.js';
import { DELIMITER, Signer, splitWire } from '../../src/bridge/wire.js';
import { createNamespace, startCluster, type Cluster } from '../helpers/k8s-cluster.js';
import { until } from '../helpers/wait.js';
import { SimNode } from '../k8s/sim-node.js';

const NS = 'sim-node-test';
const IMAGE = 'localhost/kgate-kernel-python3:bookworm';
const MIG = 'nvidia.com/mig-3g.20gb';
const PORTS = { shell_port: 52001, iopub_port: 52002, stdin_port: 52003, control_port: 52004, hb_port: 52005 };

let cluster: Cluster;
let node: SimNode;
/** A second node with no MIG slice, in its own node pool. */
let cpuNode: SimNode;
let core: k8s.CoreV1Api;

function netnsNames(n: SimNode = node): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter((name) => name.startsWith(`${n.network.bridge}-`));
}

/** A pod's cgroups the node made, wherever in the hierarchies kgate's cgroup code put them (other test workers' pods are not looked at). */
function podCgroups(uid: string): string[] {
  return execFileSync('find', ['/sys/fs/cgroup', '-maxdepth', '6', '-type', 'd', '-name', `kgate-kernel-sim-${uid}`], { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l !== '');
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function readPod(name: string): Promise<k8s.V1Pod | undefined> {
  try {
    return await core.readNamespacedPod({ name, namespace: NS });
  } catch (e) {
    if (e instanceof k8s.ApiException && e.code === 404) return undefined;
    throw e;
  }
}

/** Polls the pod until `cond` holds; returns it. */
async function podUntil(name: string, what: string, cond: (p: k8s.V1Pod) => boolean, timeoutMs = 60_000): Promise<k8s.V1Pod> {
  let last: k8s.V1Pod | undefined;
  await until(
    async () => {
      last = await readPod(name);
      return last !== undefined && cond(last);
    },
    `pod ${name}: ${what} (last status: ${JSON.stringify(last?.status)})`,
    timeoutMs,
    100,
  );
  return last!;
}

/** A pod as kgate makes one: hardened, the connection file from a Secret, a tmpfs /tmp. */
function kernelPod(name: string, command: string[], extra: Partial<k8s.V1Container> = {}, volumes: k8s.V1Volume[] = [], mounts: k8s.V1VolumeMount[] = []): k8s.V1Pod {
  return {
    metadata: { name, namespace: NS },
    spec: {
      restartPolicy: 'Never',
      automountServiceAccountToken: false,
      terminationGracePeriodSeconds: 5,
      securityContext: { runAsUser: 1000, runAsGroup: 1000, runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } },
      containers: [
        {
          name: 'kernel',
          image: IMAGE,
          command,
          env: [
            { name: 'HOME', value: '/tmp' },
            { name: 'KGATE_POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
            { name: 'KGATE_POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
          ],
          securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } },
          volumeMounts: [{ name: 'tmp', mountPath: '/tmp' }, ...mounts],
          ...extra,
        },
      ],
      volumes: [{ name: 'tmp', emptyDir: { medium: 'Memory', sizeLimit: '64Mi' } }, ...volumes],
    },
  };
}

async function deleteAndWaitGone(name: string): Promise<void> {
  await core.deleteNamespacedPod({ name, namespace: NS });
  await until(async () => (await readPod(name)) === undefined, `pod ${name} to be gone`, 30_000, 100);
}

describe('simulated node against a real API server and scheduler', () => {
  beforeAll(async () => {
    cluster = await startCluster();
    core = cluster.kubeConfig().makeApiClient(k8s.CoreV1Api);
    node = new SimNode({
      kubeconfig: cluster.kubeconfigPath,
      name: 'sim-gpu-1',
      capacity: { cpu: '4', memory: '8Gi', [MIG]: '1' },
      podCidr: '10.245.1.0/24',
      labels: { 'kgate.test/pool': 'gpu' },
      heartbeatSeconds: 2,
      maxGraceSeconds: 5,
    });
    cpuNode = new SimNode({
      kubeconfig: cluster.kubeconfigPath,
      name: 'sim-cpu-1',
      capacity: { cpu: '2', memory: '4Gi' },
      podCidr: '10.245.2.0/24',
      labels: { 'kgate.test/pool': 'cpu' },
      heartbeatSeconds: 2,
      maxGraceSeconds: 5,
    });
    await node.start();
    await cpuNode.start();
    await createNamespace(cluster, NS);
  }, 240_000);

  afterAll(async () => {
    await node?.stop();
    await cpuNode?.stop();
    await cluster?.stop();
  }, 60_000);

  it('registers a Ready Node with its capacity and labels, and renews its Lease', async () => {
    const n = await core.readNode({ name: 'sim-gpu-1' });
    expect(n.status?.capacity).toMatchObject({ cpu: '4', memory: '8Gi', [MIG]: '1', pods: '110' });
    expect(n.status?.allocatable?.[MIG]).toBe('1');
    expect(n.metadata?.labels).toMatchObject({ 'kubernetes.io/hostname': 'sim-gpu-1', 'kgate.test/pool': 'gpu' });
    expect(n.status?.conditions?.find((c) => c.type === 'Ready')?.status).toBe('True');
    const leases = cluster.kubeConfig().makeApiClient(k8s.CoordinationV1Api);
    const first = await leases.readNamespacedLease({ name: 'sim-gpu-1', namespace: 'kube-node-lease' });
    expect(first.spec?.holderIdentity).toBe('sim-gpu-1');
    await until(
      async () => {
        const l = await leases.readNamespacedLease({ name: 'sim-gpu-1', namespace: 'kube-node-lease' });
        return new Date(l.spec!.renewTime!).getTime() > new Date(first.spec!.renewTime!).getTime();
      },
      'the lease to be renewed',
      10_000,
      200,
    );
  });

  it('runs an ipykernel in the pod network namespace: kernel_info_reply from podIP over ZeroMQ, and deletion leaves nothing', async () => {
    const key = randomBytes(32).toString('hex');
    const connection = { ...PORTS, ip: '0.0.0.0', transport: 'tcp', key, signature_scheme: 'hmac-sha256', kernel_name: 'python3' };
    await core.createNamespacedSecret({
      namespace: NS,
      body: { metadata: { name: 'kernel-1-connection' }, stringData: { 'connection.json': JSON.stringify(connection) } },
    });
    // A Secret volume is read-only, as a kubelet mounts it, and Debian's ipykernel 6.17 rewrites
    // its connection file at start: the kernel reads a copy (the next test shows why).
    const pod = kernelPod(
      'kernel-1',
      ['sh', '-c', 'cp /var/run/kgate/connection.json /tmp/connection.json && exec python3 -m ipykernel_launcher -f /tmp/connection.json'],
      { resources: { requests: { cpu: '500m', memory: '256Mi', [MIG]: '1' }, limits: { cpu: '1', memory: '1Gi', [MIG]: '1' } } },
      [{ name: 'connection', secret: { secretName: 'kernel-1-connection', defaultMode: 0o400 } }],
      [{ name: 'connection', mountPath: '/var/run/kgate', readOnly: true }],
    );
    const mountPointExisted = existsSync('/var/run/kgate');
    const created = Date.now();
    await core.createNamespacedPod({ namespace: NS, body: pod });

    const running = await podUntil('kernel-1', 'Running with an IP', (p) => p.status?.phase === 'Running' && !!p.status.podIP);
    expect(running.spec?.nodeName).toBe('sim-gpu-1');
    const podIP = running.status!.podIP!;
    expect(podIP).toMatch(/^10\.245\.1\.\d+$/);
    expect(running.status?.podIPs).toEqual([{ ip: podIP }]);
    expect(running.status?.hostIP).toBe(node.address);
    const conditions = Object.fromEntries((running.status?.conditions ?? []).map((c) => [c.type, c.status]));
    expect(conditions).toMatchObject({ PodScheduled: 'True', Initialized: 'True', ContainersReady: 'True', Ready: 'True' });
    const cs = running.status!.containerStatuses![0]!;
    expect(cs.state?.running?.startedAt).toBeDefined();
    expect(cs).toMatchObject({ name: 'kernel', ready: true, restartCount: 0 });

    expect(podCgroups(running.metadata!.uid!)).not.toEqual([]);
    const [pid] = node.pids();
    expect(pid).toBeDefined();
    const veths = readdirSync(`/sys/class/net/${node.network.bridge}/brif`);
    expect(veths).toHaveLength(1);
    const [ns] = netnsNames();
    expect(ns).toBeDefined();
    expect(execFileSync('ip', ['netns', 'pids', ns!], { encoding: 'utf8' }).split('\n')).toContain(String(pid));
    // The kernel runs as the pod's user, with the pod's environment.
    const environ = execFileSync('cat', [`/proc/${pid}/environ`])
      .toString('utf8')
      .split('\0');
    expect(environ).toContain(`KGATE_POD_IP=${podIP}`);
    expect(environ).toContain('KGATE_POD_NAME=kernel-1');
    expect(execFileSync('stat', ['-c', '%u', `/proc/${pid}`], { encoding: 'utf8' }).trim()).toBe('1000');

    const signer = new Signer(key);
    const shell = new zmq.Dealer({ linger: 0, receiveTimeout: 30_000 });
    try {
      shell.connect(`tcp://${podIP}:${PORTS.shell_port}`);
      const { msgId, parts } = makeMessage('kernel_info_request', {}, 'sim-node-test');
      await shell.send([DELIMITER, signer.sign(parts.header, parts.parent, parts.metadata, parts.content), parts.header, parts.parent, parts.metadata, parts.content]);
      const frames = await shell.receive().catch((e: unknown) => {
        throw new Error(`no kernel_info_reply from ${podIP}:${PORTS.shell_port}; kernel output:\n${node.logs(NS, 'kernel-1')}`, { cause: e });
      });
      const reply = splitWire(frames);
      expect(reply).toBeDefined();
      expect(signer.verify(reply!)).toBe(true);
      const header = JSON.parse(reply!.header.toString()) as { msg_type: string };
      const parent = JSON.parse(reply!.parent.toString()) as { msg_id: string };
      const content = JSON.parse(reply!.content.toString()) as { status: string; implementation: string };
      expect(header.msg_type).toBe('kernel_info_reply');
      expect(parent.msg_id).toBe(msgId);
      expect(content).toMatchObject({ status: 'ok', implementation: 'ipython' });
      console.info(`simulated node: pod create → kernel_info_reply from ${podIP} in ${Date.now() - created} ms`);
    } finally {
      shell.close();
    }

    await deleteAndWaitGone('kernel-1');
    await until(() => !alive(pid!), 'the kernel process to be gone', 10_000);
    await until(() => netnsNames().length === 0, 'the pod netns to be gone', 10_000);
    expect(veths.filter((v) => existsSync(`/sys/class/net/${v}`))).toEqual([]);
    if (!mountPointExisted) expect(existsSync('/var/run/kgate')).toBe(false);
    expect(podCgroups(running.metadata!.uid!)).toEqual([]);
  });

  it('mounts a Secret read-only as a kubelet does: ipykernel 6.17 cannot rewrite its connection file in place', async () => {
    const connection = { ...PORTS, ip: '0.0.0.0', transport: 'tcp', key: 'k', signature_scheme: 'hmac-sha256', kernel_name: 'python3' };
    await core.createNamespacedSecret({
      namespace: NS,
      body: { metadata: { name: 'kernel-ro-connection' }, stringData: { 'connection.json': JSON.stringify(connection) } },
    });
    await core.createNamespacedPod({
      namespace: NS,
      body: kernelPod(
        'kernel-ro',
        ['python3', '-m', 'ipykernel_launcher', '-f', '/var/run/kgate/connection.json'],
        { terminationMessagePolicy: 'FallbackToLogsOnError' },
        [{ name: 'connection', secret: { secretName: 'kernel-ro-connection', defaultMode: 0o440 } }],
        [{ name: 'connection', mountPath: '/var/run/kgate', readOnly: true }],
      ),
    });
    const failed = await podUntil('kernel-ro', 'Failed', (p) => p.status?.phase === 'Failed');
    const terminated = failed.status?.containerStatuses?.[0]?.state?.terminated;
    expect(terminated).toMatchObject({ reason: 'Error', exitCode: 1 });
    expect(terminated?.message).toContain("Read-only file system: '/var/run/kgate/connection.json'");
    await deleteAndWaitGone('kernel-ro');
  });

  it('OOM-kills a pod over its memory limit and reports OOMKilled, exit code 137', async () => {
    await core.createNamespacedPod({
      namespace: NS,
      body: kernelPod('oom-1', ['python3', '-c', 'import time\nx = b"x" * (500 * 1024 * 1024)\ntime.sleep(60)'], {
        resources: { limits: { memory: '64Mi', cpu: '1' } },
      }),
    });
    const done = await podUntil('oom-1', 'terminated', (p) => p.status?.containerStatuses?.[0]?.state?.terminated !== undefined);
    expect(done.status?.containerStatuses?.[0]?.state?.terminated).toMatchObject({ reason: 'OOMKilled', exitCode: 137 });
    expect(done.status?.phase).toBe('Failed');
    await until(() => netnsNames().length === 0, 'the finished pod netns to be gone', 10_000);
    await deleteAndWaitGone('oom-1');
  });

  it('reports a container that exits 0 as Completed and Succeeded, and one that exits 3 as Error and Failed', async () => {
    await core.createNamespacedPod({ namespace: NS, body: kernelPod('ok-1', ['python3', '-c', 'print("hi")']) });
    await core.createNamespacedPod({
      namespace: NS,
      body: kernelPod('fail-1', ['python3', '-c', 'import sys; sys.exit(3)'], { terminationMessagePolicy: 'FallbackToLogsOnError' }),
    });
    const ok = await podUntil('ok-1', 'Succeeded', (p) => p.status?.phase === 'Succeeded');
    expect(ok.status?.containerStatuses?.[0]?.state?.terminated).toMatchObject({ reason: 'Completed', exitCode: 0 });
    expect(node.logs(NS, 'ok-1')).toBe('hi\n');
    const failed = await podUntil('fail-1', 'Failed', (p) => p.status?.phase === 'Failed');
    expect(failed.status?.containerStatuses?.[0]?.state?.terminated).toMatchObject({ reason: 'Error', exitCode: 3 });
    await deleteAndWaitGone('ok-1');
    await deleteAndWaitGone('fail-1');
  });

  it('fails an image the registry does not have with ErrImagePull, then ImagePullBackOff naming the image', async () => {
    const images = { 'pull-1': 'localhost/kgate-kernel-python3:missing-tag', 'pull-2': 'registry.example/unknown/kernel:1' };
    for (const [name, image] of Object.entries(images)) {
      await core.createNamespacedPod({ namespace: NS, body: kernelPod(name, ['python3', '-c', 'pass'], { image }) });
      const seen = new Set<string>();
      const p = await podUntil(name, 'ImagePullBackOff', (pod) => {
        const waiting = pod.status?.containerStatuses?.[0]?.state?.waiting;
        if (waiting?.reason === 'ErrImagePull') expect(waiting.message).toContain(image);
        if (waiting?.reason) seen.add(waiting.reason);
        return waiting?.reason === 'ImagePullBackOff';
      });
      expect(seen.has('ErrImagePull')).toBe(true);
      expect(p.status?.phase).toBe('Pending');
      expect(p.status?.containerStatuses?.[0]?.state?.waiting?.message).toContain(`"${image}"`);
    }
    expect(node.pids()).toEqual([]);
    expect(netnsNames()).toEqual([]);
    for (const name of Object.keys(images)) await deleteAndWaitGone(name);
  });

  it('is where the real scheduler puts a MIG pod, and the scheduler refuses one asking for more slices than any node has', async () => {
    await core.createNamespacedPod({ namespace: NS, body: kernelPod('mig-1', ['python3', '-c', 'pass'], { resources: { limits: { [MIG]: '1' } } }) });
    const cpuPod = kernelPod('cpu-1', ['python3', '-c', 'pass']);
    cpuPod.spec!.nodeSelector = { 'kgate.test/pool': 'cpu' };
    await core.createNamespacedPod({ namespace: NS, body: cpuPod });
    const mig = await podUntil('mig-1', 'Succeeded', (p) => p.status?.phase === 'Succeeded');
    expect(mig.spec?.nodeName).toBe('sim-gpu-1');
    const cpu = await podUntil('cpu-1', 'Succeeded', (p) => p.status?.phase === 'Succeeded');
    expect(cpu.spec?.nodeName).toBe('sim-cpu-1');
    expect(cpu.status?.hostIP).toBe(cpuNode.address);
    await core.createNamespacedPod({
      namespace: NS,
      body: kernelPod('mig-2', ['python3', '-c', 'pass'], { resources: { limits: { [MIG]: '2' } } }),
    });
    const pending = await podUntil('mig-2', 'Unschedulable', (p) => p.status?.conditions?.some((c) => c.type === 'PodScheduled' && c.reason === 'Unschedulable') === true);
    const cond = pending.status!.conditions!.find((c) => c.type === 'PodScheduled')!;
    expect(cond.status).toBe('False');
    expect(cond.message).toContain(`Insufficient ${MIG}`);
    for (const name of ['mig-1', 'cpu-1', 'mig-2']) await deleteAndWaitGone(name);
  });

  it('stop() kills every pod process and leaves no netns, veth, bridge, mount, cgroup or Node behind', async () => {
    await core.createNamespacedPod({ namespace: NS, body: kernelPod('sleeper-1', ['python3', '-c', 'import time; time.sleep(600)']) });
    const sleeper = await podUntil('sleeper-1', 'Running', (p) => p.status?.phase === 'Running');
    expect(podCgroups(sleeper.metadata!.uid!)).not.toEqual([]);
    const pids = node.pids();
    expect(pids).toHaveLength(1);
    const veths = readdirSync(`/sys/class/net/${node.network.bridge}/brif`);
    expect(veths).toHaveLength(1);
    await node.stop();
    await cpuNode.stop();
    expect(pids.filter(alive)).toEqual([]);
    for (const n of [node, cpuNode]) {
      expect(netnsNames(n)).toEqual([]);
      expect(existsSync(`/sys/class/net/${n.network.bridge}`)).toBe(false);
      expect(existsSync(n.network.runDir)).toBe(false);
    }
    expect(veths.filter((v) => existsSync(`/sys/class/net/${v}`))).toEqual([]);
    expect(execFileSync('cat', ['/proc/self/mountinfo'], { encoding: 'utf8' })).not.toContain(node.network.runDir);
    expect(podCgroups(sleeper.metadata!.uid!)).toEqual([]);
    expect((await core.listNode()).items.map((n) => n.metadata?.name)).toEqual([]);
    expect((await readPod('sleeper-1'))?.status?.phase).toBe('Failed');
  });
});
