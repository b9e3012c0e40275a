/**
 * kgate's connection to a Kubernetes API server: the kubeconfig file given by
 * `--kubeconfig`, else the pod's own service account when kgate runs in a
 * cluster. `@kubernetes/client-node` is loaded at the first use (it takes
 * about a second), so a gateway without Kubernetes kernels never loads it.
 */
import { readFileSync } from 'node:fs';
import type { CoreV1Api, KubeConfig, NetworkingV1Api, Watch } from '@kubernetes/client-node';
import { kernelStartFailed } from '../errors.js';

export interface ClusterOptions {
  /** A kubeconfig file (`--kubeconfig`); without it, the in-cluster service account. */
  kubeconfig?: string | undefined;
}

/** The API clients the kubernetes provisioner uses. */
export interface K8sApis {
  kc: KubeConfig;
  core: CoreV1Api;
  networking: NetworkingV1Api;
  watch: Watch;
  /** The namespace kgate itself runs in, when it runs in a cluster (the kernels' NetworkPolicy admits its pods from there). */
  gatewayNamespace: string | undefined;
}

const SERVICE_ACCOUNT_NAMESPACE = '/var/run/secrets/kubernetes.io/serviceaccount/namespace';

function ownNamespace(): string | undefined {
  try {
    return readFileSync(SERVICE_ACCOUNT_NAMESPACE, 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

/** Builds the clients; a kubeconfig that cannot be read, or no cluster at all, is said plainly. */
export async function connectCluster(o: ClusterOptions): Promise<K8sApis> {
  const k8s = await import('@kubernetes/client-node');
  const kc = new k8s.KubeConfig();
  const inCluster = process.env['KUBERNETES_SERVICE_HOST'] !== undefined && o.kubeconfig === undefined;
  try {
    if (o.kubeconfig !== undefined) kc.loadFromFile(o.kubeconfig);
    else if (inCluster) kc.loadFromCluster();
    else throw new Error('kgate does not run in a cluster (no KUBERNETES_SERVICE_HOST) and no --kubeconfig is given');
  } catch (e) {
    throw kernelStartFailed(`the kubernetes provisioner has no cluster: ${e instanceof Error ? e.message : String(e)}`, e);
  }
  if (!kc.getCurrentCluster()) throw kernelStartFailed(`the kubeconfig ${o.kubeconfig ?? '(in-cluster)'} names no current cluster`);
  return {
    kc,
    core: kc.makeApiClient(k8s.CoreV1Api),
    networking: kc.makeApiClient(k8s.NetworkingV1Api),
    watch: new k8s.Watch(kc),
    gatewayNamespace: inCluster ? ownNamespace() : undefined,
  };
}

/** One connection per set of options in this process, made at the first kernel that needs it (a failure is retried by the next). */
export function clusterOnce(o: ClusterOptions): () => Promise<K8sApis> {
  let made: Promise<K8sApis> | undefined;
  return () => {
    made ??= connectCluster(o).catch((e: unknown) => {
      made = undefined;
      throw e;
    });
    return made;
  };
}
