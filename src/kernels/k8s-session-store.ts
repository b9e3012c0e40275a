/**
 * Sessions in Kubernetes, for `--state-store kubernetes` (k8s-store.ts keeps
 * the kernels there): every replica lists the same sessions, so a
 * GatewayClient or JupyterLab behind a load balancer finds a session made
 * through any replica. In the store's namespace, one ConfigMap per session,
 * `kgate-session-<id>`, labelled app.kubernetes.io/managed-by=kgate,
 * app.kubernetes.io/component=session and the kernel's id, holding the
 * session's JSON (session-store.ts's record: path, name, type, kernel id,
 * owner, tenant) under `session.json`. A ConfigMap, not a Secret: a session
 * holds no key and no token (the kernel's key stays in its record's Secret).
 *
 * Every change is a compare-and-swap: a record carries the resourceVersion
 * it was read at (its `revision`), and a save replaces that version only;
 * the API server refuses one changed since with 409 Conflict, which save
 * reports as SessionChanged so the caller reads again and applies its change
 * to what is there now (sessions.ts). A save never brings back a session
 * another replica deleted (404: not found). A removal for a gone kernel
 * names the version it judged by (a delete precondition), so it cannot take
 * away a session another replica bound to a new kernel meanwhile.
 *
 * RBAC in the namespace: configmaps get, list, create, update, delete, not
 * limited to names (a session's name is only known once it is made).
 * `missingPermissions` tells which of those this identity lacks.
 */
import { ApiException, AuthorizationV1Api, CoreV1Api, KubeConfig, type V1ConfigMap } from '@kubernetes/client-node';
import { KgateError, internalError, sessionNotFound } from '../errors.js';
import { ConfigError } from '../options.js';
import type { Logger } from 'pino';
import { KERNEL_ID_LABEL, KubernetesKernelStore } from './k8s-store.js';
import { parseSessionRecord, SessionChanged, type SessionRecord, type SessionStore } from './session-store.js';
import type { KernelStore } from './store.js';

/** Session ids become object names and a label value: an RFC 1123 label (kgate's ids are UUIDs). */
const ID = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const MANAGED_BY = 'app.kubernetes.io/managed-by';
const COMPONENT = 'app.kubernetes.io/component';
export const SESSION_SELECTOR = `${MANAGED_BY}=kgate,${COMPONENT}=session`;
const SESSION_KEY = 'session.json';
const LIST_PAGE = 500;

export const sessionObjectName = (id: string): string => `kgate-session-${id}`;

/** The verbs on configmaps the store uses (see the module comment). */
export const SESSION_VERBS = ['get', 'list', 'create', 'update', 'delete'] as const;

/**
 * The sessions of `--state-store kubernetes`, beside the kernel records (their
 * cluster, `--kubeconfig` or the pod's service account, and their namespace;
 * kubernetesStore has checked there is one). An identity that may not do what
 * the store does stops the start with the verbs it lacks (deploy/'s Role
 * grants them), rather than failing every /api/sessions call later.
 */
export async function kubernetesSessionStore(records: KernelStore | undefined, o: { kubeconfig?: string | undefined; log: Logger }): Promise<KubernetesSessionStore> {
  if (!(records instanceof KubernetesKernelStore)) throw internalError('the Kubernetes session store goes with the Kubernetes kernel store');
  const kc = new KubeConfig();
  if (o.kubeconfig !== undefined) kc.loadFromFile(o.kubeconfig);
  else kc.loadFromCluster();
  const store = new KubernetesSessionStore(kc, records.namespace);
  const missing = await store.missingPermissions();
  if (missing.length > 0) {
    throw new ConfigError(`--state-store kubernetes: RBAC does not allow this identity to ${missing.join(', ')} in namespace ${store.namespace} (sessions are kept there)`);
  }
  return store;
}

export class KubernetesSessionStore implements SessionStore {
  private readonly core: CoreV1Api;
  private readonly authorization: AuthorizationV1Api;

  constructor(
    kc: KubeConfig,
    readonly namespace: string,
  ) {
    this.core = kc.makeApiClient(CoreV1Api);
    this.authorization = kc.makeApiClient(AuthorizationV1Api);
  }

  /** What of SESSION_VERBS this identity may not do in the namespace (SelfSubjectAccessReview), as `verb configmaps`. */
  async missingPermissions(): Promise<string[]> {
    const allowed = await Promise.all(
      SESSION_VERBS.map(async (verb) => {
        const review = await this.authorization.createSelfSubjectAccessReview({
          body: { spec: { resourceAttributes: { namespace: this.namespace, group: '', resource: 'configmaps', verb } } },
        });
        return review.status?.allowed === true;
      }),
    );
    return SESSION_VERBS.filter((_, i) => !allowed[i]).map((verb) => `${verb} configmaps`);
  }

  async save(record: SessionRecord): Promise<void> {
    const id = checkId(record.id, 'session');
    checkId(record.kernelId, 'kernel');
    const { version: _v, revision, ...rest } = record;
    const body: V1ConfigMap = {
      metadata: {
        name: sessionObjectName(id),
        namespace: this.namespace,
        labels: { [MANAGED_BY]: 'kgate', [COMPONENT]: 'session', [KERNEL_ID_LABEL]: record.kernelId },
        ...(revision !== undefined ? { resourceVersion: revision } : {}),
      },
      data: { [SESSION_KEY]: JSON.stringify({ version: 1, ...rest }) },
    };
    try {
      if (revision === undefined) await this.core.createNamespacedConfigMap({ namespace: this.namespace, body });
      else await this.core.replaceNamespacedConfigMap({ name: sessionObjectName(id), namespace: this.namespace, body });
    } catch (e) {
      const status = statusOf(e);
      // Made or changed by another replica since it was read.
      if (status === 409) throw new SessionChanged(id);
      // Deleted by another replica: not made again.
      if (status === 404 && revision !== undefined) throw sessionNotFound(id);
      fail(`write configmap ${sessionObjectName(id)}`, e);
    }
  }

  async load(id: string): Promise<SessionRecord | undefined> {
    if (!ID.test(id)) return undefined;
    let cm: V1ConfigMap;
    try {
      cm = await this.core.readNamespacedConfigMap({ name: sessionObjectName(id), namespace: this.namespace });
    } catch (e) {
      if (statusOf(e) === 404) return undefined;
      fail(`read configmap ${sessionObjectName(id)}`, e);
    }
    return recordOf(cm);
  }

  async loadAll(): Promise<SessionRecord[]> {
    const out: SessionRecord[] = [];
    let cont: string | undefined;
    do {
      const page = await this.core
        .listNamespacedConfigMap({ namespace: this.namespace, labelSelector: SESSION_SELECTOR, limit: LIST_PAGE, _continue: cont })
        .catch((e: unknown) => fail('list the session configmaps', e));
      for (const cm of page.items) {
        const r = recordOf(cm);
        if (r) out.push(r);
      }
      cont = page.metadata?._continue || undefined;
    } while (cont);
    return out;
  }

  async remove(id: string, revision?: string): Promise<void> {
    if (!ID.test(id)) return;
    try {
      await this.core.deleteNamespacedConfigMap({
        name: sessionObjectName(id),
        namespace: this.namespace,
        ...(revision !== undefined ? { body: { preconditions: { resourceVersion: revision } } } : {}),
      });
    } catch (e) {
      const status = statusOf(e);
      // Gone already; or (409) changed since `revision` was read: left to whoever changed it.
      if (status === 404 || (status === 409 && revision !== undefined)) return;
      fail(`delete configmap ${sessionObjectName(id)}`, e);
    }
  }
}

/** The record a ConfigMap holds, with its resourceVersion; undefined for one not written by this store. */
function recordOf(cm: V1ConfigMap): SessionRecord | undefined {
  const name = cm.metadata?.name ?? '';
  const prefix = sessionObjectName('');
  if (!name.startsWith(prefix)) return undefined;
  const id = name.slice(prefix.length);
  const r = parseSessionRecord(cm.data?.[SESSION_KEY] ?? '', id);
  if (!r) return undefined;
  const rv = cm.metadata?.resourceVersion;
  return rv !== undefined ? { ...r, revision: rv } : r;
}

function checkId(id: string, what: string): string {
  if (!ID.test(id)) throw internalError(`not a ${what} id the Kubernetes store can name objects by: ${id.slice(0, 64)}`);
  return id;
}

function statusOf(e: unknown): number | undefined {
  return e instanceof ApiException ? e.code : undefined;
}

/** The API server's Status message (never a request's headers), else the error's. */
function fail(what: string, e: unknown): never {
  if (e instanceof KgateError) throw e;
  let why = e instanceof Error ? e.message : String(e);
  if (e instanceof ApiException) {
    why = `HTTP ${e.code}`;
    try {
      const body: unknown = e.body;
      const status = (typeof body === 'string' ? JSON.parse(body) : body) as { message?: unknown };
      if (typeof status?.message === 'string') why = `HTTP ${e.code}: ${status.message}`;
    } catch {
      // Not a Status.
    }
  }
  throw internalError(`kubernetes: cannot ${what}: ${why}`, e);
}
