/**
 * A tenant's place in the cluster: its namespace (made by kgate when
 * `--k8s-create-namespaces` allows it), the kernels' NetworkPolicy, a
 * ResourceQuota made from the tenant's policy totals (so the API server
 * itself refuses a kernel over them, whichever gateway replica asks), and a
 * LimitRange of defaults. Idempotent: each object is created, or replaced
 * when it is there already (a policy reloaded with new totals replaces the
 * quota; one that sets none removes it).
 */
import type { KubernetesObject } from '@kubernetes/client-node';
import { kernelStartFailed } from '../errors.js';
import type { TenantLimits } from '../kernels/policy.js';
import type { K8sApis } from './k8s-client.js';
import { RESOURCE_QUOTA_NAME, kernelNetworkPolicy, tenantLimitRange, tenantNamespace, tenantResourceQuota } from './k8s-objects.js';
import { apiStatus } from './k8s-status.js';

export interface TenantNamespacePolicy {
  namespace: string;
  /** kgate may create the namespace (`--k8s-create-namespaces`); else it must exist. */
  create: boolean;
  /** The namespace is the tenant's alone (`--k8s-namespace` has `{tenant}`): only then does a quota of the tenant's belong in it. */
  perTenant: boolean;
  limits: TenantLimits | undefined;
  /** The tenant's kernels may reach the internet (not private ranges). */
  egress: boolean;
}

const is404 = (e: unknown): boolean => apiStatus(e)?.code === 404;
const is409 = (e: unknown): boolean => apiStatus(e)?.code === 409;

function refused(what: string, e: unknown): Error {
  const s = apiStatus(e);
  if (!s) return e instanceof Error ? e : new Error(String(e));
  return kernelStartFailed(`the API server refused the tenant's ${what} (${s.code}${s.reason ? ` ${s.reason}` : ''})${s.message ? `: ${s.message}` : ''}`, e);
}

/** Creates `obj`, or replaces the one of its name with it (keeping that one's resourceVersion). */
async function upsert<T extends KubernetesObject>(what: string, obj: T, ops: { create(): Promise<unknown>; read(): Promise<T>; replace(o: T): Promise<unknown> }): Promise<void> {
  try {
    await ops.create();
    return;
  } catch (e) {
    if (!is409(e)) throw refused(what, e);
  }
  try {
    const current = await ops.read();
    await ops.replace({ ...obj, metadata: { ...obj.metadata, resourceVersion: current.metadata?.resourceVersion } });
  } catch (e) {
    throw refused(what, e);
  }
}

/** Makes (or brings up to date) the tenant's namespace and the objects in it. */
export async function ensureTenantNamespace(apis: Pick<K8sApis, 'core' | 'networking' | 'gatewayNamespace'>, tenant: string, p: TenantNamespacePolicy): Promise<void> {
  const namespace = p.namespace;
  const { core, networking } = apis;
  if (p.create) {
    try {
      await core.createNamespace({ body: tenantNamespace(namespace, tenant) });
    } catch (e) {
      if (!is409(e)) throw refused(`namespace ${namespace}`, e);
    }
  } else {
    try {
      await core.readNamespace({ name: namespace });
    } catch (e) {
      if (is404(e)) throw kernelStartFailed(`the namespace ${namespace} does not exist: make it (with its quota), or let kgate make it (--k8s-create-namespaces)`);
      // A gateway allowed only in its namespaces may not read Namespace objects: the creates below say whether it is there.
      if (apiStatus(e)?.code !== 403) throw refused(`namespace ${namespace}`, e);
    }
  }
  const np = kernelNetworkPolicy(namespace, { egress: p.egress, gatewayNamespace: apis.gatewayNamespace });
  await upsert('NetworkPolicy', np, {
    create: () => networking.createNamespacedNetworkPolicy({ namespace, body: np }),
    read: () => networking.readNamespacedNetworkPolicy({ namespace, name: np.metadata!.name! }),
    replace: (body) => networking.replaceNamespacedNetworkPolicy({ namespace, name: np.metadata!.name!, body }),
  });
  const lr = tenantLimitRange(namespace, p.perTenant ? p.limits : undefined);
  await upsert('LimitRange', lr, {
    create: () => core.createNamespacedLimitRange({ namespace, body: lr }),
    read: () => core.readNamespacedLimitRange({ namespace, name: lr.metadata!.name! }),
    replace: (body) => core.replaceNamespacedLimitRange({ namespace, name: lr.metadata!.name!, body }),
  });
  if (!p.perTenant) return;
  const rq = tenantResourceQuota(namespace, p.limits);
  if (rq) {
    await upsert('ResourceQuota', rq, {
      create: () => core.createNamespacedResourceQuota({ namespace, body: rq }),
      read: () => core.readNamespacedResourceQuota({ namespace, name: RESOURCE_QUOTA_NAME }),
      replace: (body) => core.replaceNamespacedResourceQuota({ namespace, name: RESOURCE_QUOTA_NAME, body }),
    });
  } else {
    await core.deleteNamespacedResourceQuota({ namespace, name: RESOURCE_QUOTA_NAME }).catch((e: unknown) => {
      if (!is404(e)) throw refused('ResourceQuota', e);
    });
  }
}
