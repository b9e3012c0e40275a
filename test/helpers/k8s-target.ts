/**
 * The `kubernetes` provisioner under the provisioner contract
 * (test/integration/provisioner-contract.test.ts): a real kube-apiserver,
 * kube-scheduler and kube-controller-manager (k8s-cluster.ts) with one
 * simulated node (test/k8s/sim-node.ts), started once for the file, and what
 * the contract reads of a kernel from outside: its pods and Secrets through
 * the API (by the kernel-id label), and on the host the processes the node
 * runs for its pods (found by the pod's network namespace, or by the pod's
 * name the node puts in their environment), the network namespaces and the
 * pod's files on the node.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import { LABELS } from '../../src/provisioner/k8s-objects.js';
import { SimNode } from '../k8s/sim-node.js';
import { createNamespace, startCluster, type Cluster } from './k8s-cluster.js';
import { hostProcesses } from './provisioner-specs.js';

export const K8S_CONTRACT_NAMESPACE = 'kgate-contract';
const NODE_NAME = 'kgate-sim-contract';
// Away from the pod CIDRs of the other tests' simulated nodes: the host routes to each node's bridge.
const POD_CIDR = '10.246.77.0/24';
/** How long the node may take to tear down a pod whose object is gone. */
const NODE_TEARDOWN_MS = 10_000;

/** A cluster with one simulated node, and the lookups the contract makes of a kernel in it. */
export class ContractCluster {
  private cluster: Cluster | undefined;
  private node: SimNode | undefined;
  private core: k8s.CoreV1Api | undefined;
  private failure: string | undefined;
  /** Every pod uid seen of a kernel, so what an old pod left on the node (after a restart, or once deleted) is still looked for. */
  private readonly seen = new Map<string, Set<string>>();

  /** Starts the control plane and the node; a failure is kept as the reason the target cannot run, never thrown. */
  async start(): Promise<void> {
    try {
      if (process.getuid?.() !== 0) throw new Error('the simulated node needs root (network namespaces, mounts)');
      this.cluster = await startCluster();
      this.core = this.cluster.kubeConfig().makeApiClient(k8s.CoreV1Api);
      await createNamespace(this.cluster, K8S_CONTRACT_NAMESPACE);
      this.node = new SimNode({ kubeconfig: this.cluster.kubeconfigPath, name: NODE_NAME, capacity: { cpu: '4', memory: '8Gi' }, podCidr: POD_CIDR });
      await this.node.start();
    } catch (e) {
      this.failure = `the cluster or its simulated node did not start: ${e instanceof Error ? e.message : String(e)}`;
    }
  }

  async stop(): Promise<void> {
    await this.node?.stop();
    await this.cluster?.stop();
  }

  problem(): string | undefined {
    if (!this.cluster && !this.failure) return 'the cluster was not started';
    return this.failure;
  }

  get kubeconfig(): string {
    if (!this.cluster) throw new Error(this.problem());
    return this.cluster.kubeconfigPath;
  }

  private api(): k8s.CoreV1Api {
    if (!this.core) throw new Error(this.problem());
    return this.core;
  }

  private async labelled(id: string): Promise<{ pods: k8s.V1Pod[]; secrets: k8s.V1Secret[] }> {
    const labelSelector = `${LABELS.kernelId}=${id}`;
    const [pods, secrets] = await Promise.all([
      this.api().listNamespacedPod({ namespace: K8S_CONTRACT_NAMESPACE, labelSelector }),
      this.api().listNamespacedSecret({ namespace: K8S_CONTRACT_NAMESPACE, labelSelector }),
    ]);
    const uids = this.seen.get(id) ?? new Set<string>();
    for (const p of pods.items) if (p.metadata?.uid) uids.add(p.metadata.uid);
    this.seen.set(id, uids);
    return { pods: pods.items, secrets: secrets.items };
  }

  /**
   * Where the node keeps a pod's sandbox: test/k8s/netns.ts names them from
   * the hash of its node's tag and the pod's namespace/name/uid (the same
   * derivation here, so one left behind is found with no process in it).
   */
  private sandboxesOf(id: string): Array<{ netns: string; files: string[]; veth: string }> {
    const node = this.node;
    if (!node) return [];
    const tag = sha256(NODE_NAME).slice(0, 8);
    return [...(this.seen.get(id) ?? [])].map((uid) => {
      const podTag = sha256(`${tag}/${K8S_CONTRACT_NAMESPACE}/kgate-kernel-${id}/${uid}`).slice(0, 12);
      return {
        netns: `${node.network.bridge}-${podTag}`,
        files: [join(node.network.runDir, 'pods', podTag), join(node.network.runDir, 'mnt', podTag)],
        veth: `kv${podTag}`,
      };
    });
  }

  /** Host processes of the kernel's pods: in one of their network namespaces, or named by the node's HOSTNAME=<pod name>. */
  private async processes(id: string): Promise<Array<{ pid: number; cmdline: string }>> {
    await this.labelled(id);
    const inodes = new Set(
      this.sandboxesOf(id).flatMap((s) => {
        const path = `/run/netns/${s.netns}`;
        return existsSync(path) ? [statSync(path).ino] : [];
      }),
    );
    const hostname = `HOSTNAME=kgate-kernel-${id}`;
    return hostProcesses().filter((p) => {
      const ino = netnsInode(p.pid);
      if (ino !== undefined && inodes.has(ino)) return true;
      return readEnviron(p.pid).includes(hostname);
    });
  }

  /** The host pids of the kernel's ipykernel (the node runs a pod's container as a host process). */
  async kernelPids(id: string, isKernel: (cmdline: string) => boolean): Promise<number[]> {
    return (await this.processes(id)).filter((p) => isKernel(p.cmdline)).map((p) => p.pid);
  }

  /**
   * Pods and Secrets of the kernel in the API, its processes, network
   * namespaces, veths and pod files on the node. The API's are read once:
   * kgate answers a shutdown once the pod and its Secret are gone from the
   * API server. What the node still has then is waited for, up to
   * NODE_TEARDOWN_MS: a node tears a pod's sandbox down after its object is
   * gone (a forced delete does not wait for the kubelet), which kgate cannot
   * wait for; a node that never does is still found.
   */
  async traces(id: string): Promise<string[]> {
    const { pods, secrets } = await this.labelled(id);
    const inApi = [...pods.map((p) => `pod ${p.metadata?.name} ${p.metadata?.uid} (${p.status?.phase ?? 'no phase'})`), ...secrets.map((s) => `secret ${s.metadata?.name}`)];
    const deadline = Date.now() + (inApi.length === 0 ? NODE_TEARDOWN_MS : 0);
    for (;;) {
      const onNode = await this.nodeTraces(id);
      if (onNode.length === 0 || Date.now() >= deadline) return [...inApi, ...onNode];
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  private async nodeTraces(id: string): Promise<string[]> {
    const sandboxes = this.sandboxesOf(id);
    return [
      ...(await this.processes(id)).map((p) => `process ${p.pid}: ${p.cmdline.slice(0, 120)}`),
      ...sandboxes.filter((s) => existsSync(`/run/netns/${s.netns}`)).map((s) => `netns ${s.netns}`),
      ...sandboxes.filter((s) => existsSync(`/sys/class/net/${s.veth}`)).map((s) => `veth ${s.veth}`),
      ...sandboxes.flatMap((s) => s.files.filter((f) => existsSync(f)).map((f) => `file ${f}`)),
    ];
  }

  /** Deletes what a failed case left of the kernel in the API (the node then removes its sandbox). */
  async remove(id: string): Promise<void> {
    const labelSelector = `${LABELS.kernelId}=${id}`;
    const namespace = K8S_CONTRACT_NAMESPACE;
    await this.api().deleteCollectionNamespacedPod({ namespace, labelSelector, gracePeriodSeconds: 0 });
    await this.api().deleteCollectionNamespacedSecret({ namespace, labelSelector });
  }
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

function netnsInode(pid: number): number | undefined {
  try {
    // "net:[4026532281]"
    const m = /\[(\d+)\]/.exec(readlinkSync(`/proc/${pid}/ns/net`));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

function readEnviron(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
  } catch {
    return [];
  }
}
