/**
 * Kubernetes as a KernelStore (store.ts): several kgate replicas share their
 * kernels through the cluster, never through one process's memory. In the
 * store's namespace:
 *
 * - The record (it holds the kernel's HMAC key, in conn.key) is a Secret
 *   `kgate-record-<id>` (Opaque, one data entry `record.json`), never a
 *   ConfigMap. Its labels carry the kernel id and nothing else of the record.
 * - Who supervises the kernel is a coordination.k8s.io/v1 Lease
 *   `kgate-kernel-<id>` (holderIdentity, leaseDurationSeconds, renewTime,
 *   acquireTime, leaseTransitions; the exact length in ms and the holder's
 *   host and pid as annotations, for people). A lease given up
 *   (--keep-kernels) has no holder.
 * - Admission's reservations are entries of one ConfigMap `kgate-reservations`.
 *
 * Every write is a compare-and-swap: a replace with the resourceVersion last
 * read, which the API server refuses with 409 Conflict when the object
 * changed since. Of two replicas taking over one lapsed lease, one gets
 * through and the other gets 409: it lost. A holder renews by the same CAS,
 * so one that stalled past its lease and lost it cannot write over the new
 * holder: its renewal fails, and so does its record write (the Secret is
 * replaced with the resourceVersion last read too; a 409 there is taken as
 * lost unless the Lease is still this store's). A write that finds the
 * Lease or the Secret gone (another replica removed the record: it shut the
 * kernel down) never creates it again, so the supervisor takes the exit for
 * a shutdown, not a crash.
 *
 * When a lease lapses, and by whose clock. holds and heldElsewhere are
 * synchronous: they answer from the last observation of the kernel's Lease
 * this store made (refreshed by load, loadAll, takeOver and this store's own
 * renewals), which is only as fresh as that read. That is enough for
 * correctness, because heldElsewhere only ever gates a takeOver, and
 * takeOver reads the Lease again and writes with CAS: a stale "lapsed"
 * costs one refused takeOver, never two supervisors. Expiry is reckoned as
 * client-go's leader election does: on this replica's clock, from when it
 * first saw the Lease's current resourceVersion, not from the renewTime
 * another replica's clock wrote, so a holder whose clock lags cannot have
 * its lease taken early. One relaxation: a renewTime older than
 * `maxClockSkewMs` by this clock is believed, so a replica that starts long
 * after its peer died adopts at once rather than a lease length later
 * (NTP-synced nodes are milliseconds apart; 5 s is a wide margin). There is
 * no pid hint (the state dir's fast local check): replicas in pods run in
 * their own pid namespaces, so a pid means nothing to another replica.
 *
 * Admission (`reserve`) is one CAS on the ConfigMap of reservations: read it,
 * list the records, run the check, replace it with the new entry under the
 * resourceVersion read; a 409 means another start committed meanwhile, so
 * read and check again (with jitter, for at most RESERVE_WAIT_MS). Chosen
 * over a mutex (a Lease `kgate-admission` guarding reservation objects)
 * because the check and its write commit in one API call: no replica ever
 * holds a lock, so one that dies mid-start stalls no one (a dead mutex holder
 * blocks every start until its lease lapses), and a start costs three calls
 * (get, list, replace) instead of six or more (acquire, list reservations,
 * list records, create, release, retries on the mutex). The counted set only
 * grows through the ConfigMap (a start writes its record before it removes
 * its reservation, and a warm pool's kernel is handed out under a
 * reservation), and any change to it fails the CAS, so a committed check saw
 * everything. The ConfigMap holds no secret (owner, tenant, resources, an
 * expiry) and its 1 MiB bounds the starts in flight to some thousands.
 *
 * RBAC the store needs in its namespace: secrets get, list, create, update,
 * delete; leases (coordination.k8s.io) get, list, create, update, delete;
 * configmaps get, create, update (get and update only on
 * `kgate-reservations`). `init` checks each with a SelfSubjectAccessReview
 * (which every authenticated user may create) and names what is missing.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { ApiException, AuthorizationV1Api, CoordinationV1Api, CoreV1Api, KubeConfig, V1MicroTime, type V1ConfigMap, type V1Lease, type V1Secret } from '@kubernetes/client-node';
import { KgateError, internalError, kernelLaunchRetryable } from '../errors.js';
import { ConfigError } from '../options.js';
import type { Held } from './admission.js';
import { DEFAULT_LEASE_MS } from './state.js';
import type { KernelRecord, KernelStore, Lease, RecordInput } from './store.js';

/** How far apart the replicas' clocks may be for a renewTime to be believed (see the module comment). */
export const DEFAULT_MAX_CLOCK_SKEW_MS = 5_000;
/** How long a start retries the reservations' CAS before it is refused as retryable. */
const RESERVE_WAIT_MS = 10_000;
/** Tries of one CAS write (each after reading again) before giving up. */
const CAS_TRIES = 5;
const LIST_PAGE = 500;

/** Kernel ids become object names and a label value: an RFC 1123 label (kgate's ids are UUIDs). */
const ID = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const MANAGED_BY = 'app.kubernetes.io/managed-by';
const COMPONENT = 'app.kubernetes.io/component';
export const KERNEL_ID_LABEL = 'kgate.jupyter.org/kernel-id';
const RECORD_COMPONENT = 'kernel-record';
const LEASE_COMPONENT = 'kernel-lease';
const RECORD_SELECTOR = `${MANAGED_BY}=kgate,${COMPONENT}=${RECORD_COMPONENT}`;
const LEASE_SELECTOR = `${MANAGED_BY}=kgate,${COMPONENT}=${LEASE_COMPONENT}`;
const RECORD_KEY = 'record.json';
export const RESERVATIONS_NAME = 'kgate-reservations';
const LEASE_MS_ANNOTATION = 'kgate.jupyter.org/lease-ms';
const HOST_ANNOTATION = 'kgate.jupyter.org/holder-host';
const PID_ANNOTATION = 'kgate.jupyter.org/holder-pid';

export const recordName = (id: string): string => `kgate-record-${id}`;
export const leaseName = (id: string): string => `kgate-kernel-${id}`;

/** The API clients the store uses (made from a KubeConfig, or given by a test). */
export interface KubernetesClients {
  core: CoreV1Api;
  coordination: CoordinationV1Api;
  authorization: AuthorizationV1Api;
}

export interface KubernetesStoreOptions {
  namespace: string;
  /** This replica's identity as a lease holder (default: host name and random bytes, as client-go makes them). */
  holder?: string;
  leaseMs?: number;
  maxClockSkewMs?: number;
}

/** What this store last saw of a kernel's Lease, and when by its own clock. */
interface SeenLease {
  lease: V1Lease;
  holder: string;
  host: string;
  pid: number;
  durationMs: number;
  /** Epoch ms on this clock from which the lease counts (see the module comment). */
  since: number;
}

/** What this store last read or wrote of a record's Secret. */
interface SeenSecret {
  resourceVersion: string;
  /** A digest of the record as stored: a renewal that changes nothing in it writes only the Lease. */
  digest: string;
}

interface Reservation {
  owner: string | null;
  tenant: string;
  resources: Held['resources'];
  holder: string;
  /** Epoch ms on the reserving replica's clock. */
  expiresAt: number;
}

/** The namespace kgate runs in (in a pod), else the kubeconfig context's, else `default`. */
export function defaultNamespace(kc: KubeConfig): string {
  try {
    const ns = readFileSync('/var/run/secrets/kubernetes.io/serviceaccount/namespace', 'utf8').trim();
    if (ns) return ns;
  } catch {
    // Not in a pod.
  }
  return kc.getContextObject(kc.getCurrentContext())?.namespace ?? 'default';
}

/**
 * The store of `--state-store kubernetes`: the cluster of `--kubeconfig`, else
 * the pod's service account; throws a ConfigError when there is neither.
 */
export function kubernetesStore(o: { kubeconfig?: string | undefined; namespace?: string | undefined; leaseMs?: number }): KubernetesKernelStore {
  const kc = new KubeConfig();
  try {
    if (o.kubeconfig !== undefined) kc.loadFromFile(o.kubeconfig);
    else if (process.env['KUBERNETES_SERVICE_HOST'] !== undefined) kc.loadFromCluster();
    else throw new Error('kgate does not run in a cluster (no KUBERNETES_SERVICE_HOST) and no --kubeconfig is given');
  } catch (e) {
    // Not the parser's message: it quotes the offending line, which may hold a token.
    const code = (e as NodeJS.ErrnoException).code;
    const why = o.kubeconfig === undefined ? (e as Error).message : code ? `cannot read ${o.kubeconfig} (${code})` : `${o.kubeconfig} is not a kubeconfig`;
    throw new ConfigError(`--state-store kubernetes: no cluster: ${why}`);
  }
  if (!kc.getCurrentCluster()) throw new ConfigError(`--state-store kubernetes: the kubeconfig ${o.kubeconfig ?? '(in-cluster)'} names no current cluster`);
  return new KubernetesKernelStore(kc, { namespace: o.namespace ?? defaultNamespace(kc), ...(o.leaseMs !== undefined ? { leaseMs: o.leaseMs } : {}) });
}

export class KubernetesKernelStore implements KernelStore {
  readonly holder: string;
  readonly leaseMs: number;
  readonly namespace: string;
  private readonly maxClockSkewMs: number;
  private readonly api: KubernetesClients;
  private readonly where: string;
  private readonly host = hostname();
  private readonly leases = new Map<string, SeenLease>();
  private readonly secrets = new Map<string, SeenSecret>();
  /** Writes of one kernel's objects by this store, in turn (one store does not race itself). */
  private readonly writing = new Map<string, Promise<unknown>>();
  /** Starts of this replica, in turn: the CAS is for other replicas. */
  private admissionTurn: Promise<unknown> = Promise.resolve();

  constructor(kc: KubeConfig | KubernetesClients, o: KubernetesStoreOptions) {
    if ('core' in kc) {
      this.api = kc;
      this.where = 'the Kubernetes API server';
    } else {
      this.api = { core: kc.makeApiClient(CoreV1Api), coordination: kc.makeApiClient(CoordinationV1Api), authorization: kc.makeApiClient(AuthorizationV1Api) };
      this.where = `the Kubernetes API server ${kc.getCurrentCluster()?.server ?? ''}`.trim();
    }
    this.namespace = o.namespace;
    this.holder = o.holder ?? `${this.host}_${randomBytes(8).toString('hex')}`;
    this.leaseMs = o.leaseMs ?? DEFAULT_LEASE_MS;
    this.maxClockSkewMs = o.maxClockSkewMs ?? DEFAULT_MAX_CLOCK_SKEW_MS;
  }

  /**
   * Checks that the API server answers and that this identity may do what the
   * store does; throws a ConfigError naming each missing permission.
   */
  async init(): Promise<void> {
    const needed: { group: string; resource: string; verb: string; name?: string }[] = [
      ...['get', 'list', 'create', 'update', 'delete'].map((verb) => ({ group: '', resource: 'secrets', verb })),
      ...['get', 'list', 'create', 'update', 'delete'].map((verb) => ({ group: 'coordination.k8s.io', resource: 'leases', verb })),
      { group: '', resource: 'configmaps', verb: 'create' },
      ...['get', 'update'].map((verb) => ({ group: '', resource: 'configmaps', verb, name: RESERVATIONS_NAME })),
    ];
    let allowed: boolean[];
    try {
      allowed = await Promise.all(
        needed.map(async (n) => {
          const review = await this.api.authorization.createSelfSubjectAccessReview({
            body: { spec: { resourceAttributes: { namespace: this.namespace, group: n.group, resource: n.resource, verb: n.verb, name: n.name } } },
          });
          return review.status?.allowed === true;
        }),
      );
    } catch (e) {
      if (statusOf(e) === 403) return this.probeReads();
      throw new ConfigError(`--state-store kubernetes: cannot reach ${this.where}: ${describe(e)}`);
    }
    const missing = needed.filter((_, i) => !allowed[i]).map(permission);
    if (missing.length > 0) {
      throw new ConfigError(`--state-store kubernetes: RBAC does not allow this identity to ${missing.join(', ')} in namespace ${this.namespace} (see deploy/ for the Role)`);
    }
  }

  /** Without SelfSubjectAccessReview (forbidden here): the reads at least, so a wrong setup stops the start. */
  private async probeReads(): Promise<void> {
    const probes: [string, () => Promise<unknown>][] = [
      ['list secrets', () => this.api.core.listNamespacedSecret({ namespace: this.namespace, labelSelector: RECORD_SELECTOR, limit: 1 })],
      ['list leases.coordination.k8s.io', () => this.api.coordination.listNamespacedLease({ namespace: this.namespace, labelSelector: LEASE_SELECTOR, limit: 1 })],
      [`get configmaps/${RESERVATIONS_NAME}`, () => orAbsent(this.api.core.readNamespacedConfigMap({ name: RESERVATIONS_NAME, namespace: this.namespace }))],
    ];
    for (const [what, probe] of probes) {
      try {
        await probe();
      } catch (e) {
        if (statusOf(e) === 403)
          throw new ConfigError(`--state-store kubernetes: RBAC does not allow this identity to ${what} in namespace ${this.namespace} (see deploy/ for the Role)`);
        throw new ConfigError(`--state-store kubernetes: cannot reach ${this.where}: ${describe(e)}`);
      }
    }
  }

  async save(record: RecordInput, options: { release?: boolean } = {}): Promise<void> {
    const id = checkId(record.id);
    const full: Omit<KernelRecord, 'lease'> = { version: 1, ...record, gateway: { pid: process.pid, instance: this.holder } };
    await this.inTurn(id, async () => {
      if (options.release) {
        // Written while the lease is still this store's, then given up.
        await this.writeRecord(id, full);
        await this.writeLease(id, 'release');
      } else {
        // The renewal first: once it passed, no one else may take the lease for its length.
        await this.writeLease(id, 'hold');
        await this.writeRecord(id, full);
      }
    });
  }

  async load(id: string): Promise<KernelRecord | undefined> {
    checkId(id);
    const [secret, lease] = await Promise.all([this.readSecret(id), this.readLease(id)]);
    return secret ? this.recordOf(id, secret, lease) : undefined;
  }

  async loadAll(): Promise<KernelRecord[]> {
    const [secrets, leases] = await Promise.all([
      listAll((c) => this.api.core.listNamespacedSecret({ namespace: this.namespace, labelSelector: RECORD_SELECTOR, limit: LIST_PAGE, _continue: c })),
      listAll((c) => this.api.coordination.listNamespacedLease({ namespace: this.namespace, labelSelector: LEASE_SELECTOR, limit: LIST_PAGE, _continue: c })),
    ]).catch((e: unknown) => fail('list the kernel records', e));
    const leaseById = new Map<string, V1Lease>();
    for (const l of leases) {
      const id = l.metadata?.labels?.[KERNEL_ID_LABEL];
      if (id && l.metadata?.name === leaseName(id)) leaseById.set(id, l);
    }
    const out: KernelRecord[] = [];
    const ids = new Set<string>();
    for (const s of secrets) {
      const id = s.metadata?.labels?.[KERNEL_ID_LABEL];
      if (!id || s.metadata?.name !== recordName(id)) continue;
      ids.add(id);
      this.rememberSecret(id, s);
      const lease = leaseById.get(id);
      if (lease) this.observe(id, lease);
      else if (this.leases.get(id)?.holder !== this.holder) this.leases.delete(id);
      const r = this.recordOf(id, s, lease);
      if (r) out.push(r);
    }
    await this.collectOrphanLeases(leaseById, ids);
    // What this store remembers of kernels no longer listed, but for its own: their Lease
    // gone means removed by another replica, which a renewal must learn (and not undo).
    for (const id of this.leases.keys()) if (!ids.has(id) && !leaseById.has(id) && this.leases.get(id)?.holder !== this.holder) this.leases.delete(id);
    for (const id of this.secrets.keys()) if (!ids.has(id) && this.leases.get(id)?.holder !== this.holder) this.secrets.delete(id);
    return out;
  }

  /**
   * Deletes the Leases left without a record (a replica died between writing
   * a new kernel's Lease and its Secret) once they lapsed, with the
   * resourceVersion seen as a precondition (one renewed meanwhile stays).
   */
  private async collectOrphanLeases(leaseById: Map<string, V1Lease>, recorded: Set<string>): Promise<void> {
    for (const [id, lease] of leaseById) {
      if (recorded.has(id) || this.inFlight(id)) continue;
      const seen = this.observe(id, lease);
      if (seen.holder === this.holder || this.heldByOther(seen)) continue;
      await this.api.coordination
        .deleteNamespacedLease({ name: leaseName(id), namespace: this.namespace, body: { preconditions: { resourceVersion: lease.metadata?.resourceVersion } } })
        .catch(() => undefined);
      this.leases.delete(id);
    }
  }

  async remove(id: string): Promise<void> {
    checkId(id);
    await this.inTurn(id, async () => {
      // The Secret first: a Lease without a record is ignored (and collected once it lapses).
      await orAbsent(this.api.core.deleteNamespacedSecret({ name: recordName(id), namespace: this.namespace })).catch((e: unknown) => fail(`delete secret ${recordName(id)}`, e));
      await orAbsent(this.api.coordination.deleteNamespacedLease({ name: leaseName(id), namespace: this.namespace })).catch((e: unknown) =>
        fail(`delete lease ${leaseName(id)}`, e),
      );
      this.forget(id);
    });
  }

  holds(r: KernelRecord): boolean {
    const lease = this.currentLease(r);
    return (lease ? lease.holder : r.gateway.instance) === this.holder;
  }

  heldElsewhere(r: KernelRecord): boolean {
    const seen = this.leases.get(r.id);
    if (seen) return this.heldByOther(seen);
    // A record this store did not read (or whose Lease it has not seen): what the record says.
    const lease = r.lease;
    return lease !== undefined && lease.holder !== '' && lease.holder !== this.holder && lease.expiresAt > Date.now();
  }

  /** The freshest lease this store knows of for the record: its own last observation, else the record's. */
  private currentLease(r: KernelRecord): Lease | undefined {
    const seen = this.leases.get(r.id);
    return seen ? this.leaseOf(seen) : r.lease;
  }

  async takeOver(r: KernelRecord): Promise<boolean> {
    const id = checkId(r.id);
    return this.inTurn(id, async () => {
      const [secret, lease] = await Promise.all([this.readSecret(id), this.readLease(id)]);
      if (!secret) return false;
      try {
        if (!lease) {
          // A record without a Lease (its Lease was deleted by hand): whoever creates it first.
          this.observe(id, await this.api.coordination.createNamespacedLease({ namespace: this.namespace, body: this.newLease(id) }));
          return true;
        }
        if (this.heldByOther(this.observe(id, lease))) return false;
        this.observe(id, await this.api.coordination.replaceNamespacedLease({ name: leaseName(id), namespace: this.namespace, body: this.nextLease(lease, 'hold') }));
        return true;
      } catch (e) {
        const status = statusOf(e);
        // 409: another replica took it (or renewed it) since the read; 404: the record was removed.
        if (status === 409 || status === 404) {
          this.leases.delete(id);
          return false;
        }
        return fail(`take over lease ${leaseName(id)}`, e);
      }
    });
  }

  async reserve(held: Held & { id: string }, check: (all: Held[]) => void, ttlMs: number): Promise<() => Promise<void>> {
    checkId(held.id);
    const turn = this.admissionTurn.then(() => this.reserveByCas(held, check, ttlMs));
    this.admissionTurn = turn.catch(() => undefined);
    return turn;
  }

  private async reserveByCas(held: Held & { id: string }, check: (all: Held[]) => void, ttlMs: number): Promise<() => Promise<void>> {
    const until = Date.now() + RESERVE_WAIT_MS;
    for (let attempt = 0; ; attempt++) {
      // The reservations before the records (see the module comment).
      const cm = await this.readReservations();
      const now = Date.now();
      const entries = this.liveReservations(cm, now);
      const byId = new Map<string, Held>();
      for (const [id, e] of entries) byId.set(id, { owner: e.owner ?? undefined, tenant: e.tenant, resources: e.resources ?? {} });
      for (const r of await this.loadRecordsOnly()) {
        if (!r.pooled) byId.set(r.id, { owner: r.owner ?? undefined, tenant: r.tenant ?? 'default', resources: r.resources ?? {} });
      }
      check([...byId.values()]);
      entries.set(held.id, { owner: held.owner ?? null, tenant: held.tenant, resources: held.resources, holder: this.holder, expiresAt: now + ttlMs });
      try {
        await this.writeReservations(cm, entries);
        return () => this.unreserve(held.id);
      } catch (e) {
        if (statusOf(e) !== 409) return fail(`write configmap ${RESERVATIONS_NAME}`, e);
      }
      if (Date.now() > until) throw kernelLaunchRetryable('the admission reservations in Kubernetes are busy; try again', 2);
      await sleep(backoff(attempt));
    }
  }

  /** Gives a reservation back; after CAS_TRIES conflicts it is left to expire. */
  private async unreserve(id: string): Promise<void> {
    for (let attempt = 0; attempt < CAS_TRIES; attempt++) {
      const cm = await this.readReservations();
      if (!cm?.data?.[id]) return;
      const entries = this.liveReservations(cm, Date.now());
      entries.delete(id);
      try {
        await this.writeReservations(cm, entries);
        return;
      } catch (e) {
        if (statusOf(e) !== 409 && statusOf(e) !== 404) return fail(`write configmap ${RESERVATIONS_NAME}`, e);
      }
      await sleep(backoff(attempt));
    }
  }

  private async readReservations(): Promise<V1ConfigMap | undefined> {
    return orAbsent(this.api.core.readNamespacedConfigMap({ name: RESERVATIONS_NAME, namespace: this.namespace })).catch((e: unknown) =>
      fail(`read configmap ${RESERVATIONS_NAME}`, e),
    );
  }

  /** The reservations not expired (by any replica's clock within the skew) and well-formed. */
  private liveReservations(cm: V1ConfigMap | undefined, now: number): Map<string, Reservation> {
    const out = new Map<string, Reservation>();
    for (const [id, text] of Object.entries(cm?.data ?? {})) {
      let r: Reservation;
      try {
        r = JSON.parse(text) as Reservation;
      } catch {
        continue;
      }
      if (typeof r?.expiresAt !== 'number' || typeof r.tenant !== 'string' || r.expiresAt + this.maxClockSkewMs <= now) continue;
      out.set(id, r);
    }
    return out;
  }

  /** Creates or replaces (with the resourceVersion read) the ConfigMap; a 409 is a conflict either way. */
  private async writeReservations(cm: V1ConfigMap | undefined, entries: Map<string, Reservation>): Promise<V1ConfigMap> {
    const data = Object.fromEntries([...entries].map(([id, r]) => [id, JSON.stringify(r)]));
    if (!cm) {
      return this.api.core.createNamespacedConfigMap({
        namespace: this.namespace,
        body: { metadata: { name: RESERVATIONS_NAME, labels: { [MANAGED_BY]: 'kgate', [COMPONENT]: 'admission', 'kgate.jupyter.org/reservation': 'true' } }, data },
      });
    }
    return this.api.core.replaceNamespacedConfigMap({ name: RESERVATIONS_NAME, namespace: this.namespace, body: { ...cm, data } });
  }

  /** Every record, without reading the Leases (admission needs only what is held). */
  private async loadRecordsOnly(): Promise<KernelRecord[]> {
    const secrets = await listAll((c) => this.api.core.listNamespacedSecret({ namespace: this.namespace, labelSelector: RECORD_SELECTOR, limit: LIST_PAGE, _continue: c })).catch(
      (e: unknown) => fail('list the kernel records', e),
    );
    const out: KernelRecord[] = [];
    for (const s of secrets) {
      const id = s.metadata?.labels?.[KERNEL_ID_LABEL];
      const r = id && s.metadata?.name === recordName(id) ? decodeRecord(id, s) : undefined;
      if (r) out.push(r);
    }
    return out;
  }

  /** Renews (or takes, for a new kernel) this store's lease, or gives it up; by CAS. */
  private async writeLease(id: string, mode: 'hold' | 'release'): Promise<void> {
    // Seen before: the Lease existed, so not finding it means the record was removed.
    let known = this.leases.has(id);
    for (let attempt = 0; attempt < CAS_TRIES; attempt++) {
      let current = this.leases.get(id)?.lease;
      if (!current && !known && mode === 'hold') {
        const created = await this.api.coordination.createNamespacedLease({ namespace: this.namespace, body: this.newLease(id) }).catch((e: unknown) => {
          // 409: it exists already (read below).
          if (statusOf(e) === 409) return undefined;
          return fail(`create lease ${leaseName(id)}`, e);
        });
        if (created) {
          this.observe(id, created);
          return;
        }
      }
      if (!current) {
        current = await this.readLease(id);
        if (!current) {
          if (known || mode === 'release') throw recordRemoved(id);
          continue;
        }
      }
      known = true;
      const seen = this.observe(id, current);
      if (this.heldByOther(seen)) throw leaseLost(id, seen.holder);
      try {
        this.observe(id, await this.api.coordination.replaceNamespacedLease({ name: leaseName(id), namespace: this.namespace, body: this.nextLease(current, mode) }));
        return;
      } catch (e) {
        const status = statusOf(e);
        // 409: changed since it was read: read it again and decide again.
        this.leases.delete(id);
        if (status === 409) continue;
        if (status === 404) throw recordRemoved(id);
        return fail(`write lease ${leaseName(id)}`, e);
      }
    }
    throw internalError(`the lease of kernel ${id} kept changing while it was written`);
  }

  /** Writes the record's Secret by CAS; one that changes nothing is not written. */
  private async writeRecord(id: string, record: Omit<KernelRecord, 'lease'>): Promise<void> {
    const text = JSON.stringify(record);
    const digest = digestOf(text);
    if (this.secrets.get(id)?.digest === digest) return;
    const data = { [RECORD_KEY]: Buffer.from(text, 'utf8').toString('base64') };
    let known = this.secrets.has(id);
    for (let attempt = 0; attempt < CAS_TRIES; attempt++) {
      if (!this.secrets.has(id) && !known) {
        const created = await this.api.core.createNamespacedSecret({ namespace: this.namespace, body: { ...this.recordMeta(id), type: 'Opaque', data } }).catch((e: unknown) => {
          if (statusOf(e) === 409) return undefined;
          return fail(`create secret ${recordName(id)}`, e);
        });
        if (created) {
          this.rememberSecret(id, created);
          return;
        }
      }
      if (!this.secrets.has(id) && !(await this.readSecret(id))) {
        if (known) throw recordRemoved(id);
        continue;
      }
      known = true;
      const body: V1Secret = { ...this.recordMeta(id, this.secrets.get(id)!.resourceVersion), type: 'Opaque', data };
      try {
        this.rememberSecret(id, await this.api.core.replaceNamespacedSecret({ name: recordName(id), namespace: this.namespace, body }));
        return;
      } catch (e) {
        const status = statusOf(e);
        this.secrets.delete(id);
        if (status === 404) throw recordRemoved(id);
        if (status !== 409) return fail(`write secret ${recordName(id)}`, e);
      }
      // Another writer since the read: go on only while the lease is still this store's.
      const lease = await this.readLease(id);
      if (!lease) throw recordRemoved(id);
      const holder = this.observe(id, lease).holder;
      if (holder !== this.holder) throw leaseLost(id, holder);
    }
    throw internalError(`the record of kernel ${id} kept changing while it was written`);
  }

  private recordMeta(id: string, resourceVersion?: string): Pick<V1Secret, 'metadata'> {
    return {
      metadata: {
        name: recordName(id),
        namespace: this.namespace,
        labels: { [MANAGED_BY]: 'kgate', [COMPONENT]: RECORD_COMPONENT, [KERNEL_ID_LABEL]: id },
        ...(resourceVersion ? { resourceVersion } : {}),
      },
    };
  }

  private newLease(id: string): V1Lease {
    const now = new V1MicroTime(Date.now());
    return {
      metadata: {
        name: leaseName(id),
        namespace: this.namespace,
        labels: { [MANAGED_BY]: 'kgate', [COMPONENT]: LEASE_COMPONENT, [KERNEL_ID_LABEL]: id },
        annotations: this.holderAnnotations(),
      },
      spec: { holderIdentity: this.holder, leaseDurationSeconds: this.leaseSeconds(), acquireTime: now, renewTime: now, leaseTransitions: 0 },
    };
  }

  /** The Lease renewed or taken by this store, or given up; the resourceVersion read stays in it (the CAS). */
  private nextLease(current: V1Lease, mode: 'hold' | 'release'): V1Lease {
    const now = new V1MicroTime(Date.now());
    const before = current.spec?.holderIdentity ?? '';
    const taken = mode === 'hold' && before !== this.holder;
    return {
      ...current,
      metadata: { ...current.metadata, annotations: { ...current.metadata?.annotations, ...this.holderAnnotations() } },
      spec: {
        ...current.spec,
        holderIdentity: mode === 'hold' ? this.holder : '',
        leaseDurationSeconds: this.leaseSeconds(),
        renewTime: now,
        acquireTime: taken ? now : current.spec?.acquireTime,
        leaseTransitions: (current.spec?.leaseTransitions ?? 0) + (taken ? 1 : 0),
      },
    };
  }

  private holderAnnotations(): Record<string, string> {
    return { [LEASE_MS_ANNOTATION]: String(this.leaseMs), [HOST_ANNOTATION]: this.host, [PID_ANNOTATION]: String(process.pid) };
  }

  /** leaseDurationSeconds is whole seconds; the exact length is the annotation's. */
  private leaseSeconds(): number {
    return Math.max(1, Math.ceil(this.leaseMs / 1000));
  }

  private async readLease(id: string): Promise<V1Lease | undefined> {
    const lease = await orAbsent(this.api.coordination.readNamespacedLease({ name: leaseName(id), namespace: this.namespace })).catch((e: unknown) =>
      fail(`read lease ${leaseName(id)}`, e),
    );
    if (lease) this.observe(id, lease);
    else this.leases.delete(id);
    return lease;
  }

  private async readSecret(id: string): Promise<V1Secret | undefined> {
    const secret = await orAbsent(this.api.core.readNamespacedSecret({ name: recordName(id), namespace: this.namespace })).catch((e: unknown) =>
      fail(`read secret ${recordName(id)}`, e),
    );
    if (secret) this.rememberSecret(id, secret);
    else this.secrets.delete(id);
    return secret;
  }

  private rememberSecret(id: string, s: V1Secret): void {
    const rv = s.metadata?.resourceVersion;
    if (!rv) return;
    this.secrets.set(id, { resourceVersion: rv, digest: digestOf(Buffer.from(s.data?.[RECORD_KEY] ?? '', 'base64').toString('utf8')) });
  }

  /**
   * Takes note of a Lease read or written: a resourceVersion seen before keeps
   * the time it was first seen; a new one counts from now on this clock, or
   * from its renewTime when that is older than the clocks can be apart.
   */
  private observe(id: string, lease: V1Lease): SeenLease {
    const rv = lease.metadata?.resourceVersion;
    const before = this.leases.get(id);
    if (before && rv !== undefined && before.lease.metadata?.resourceVersion === rv) return before;
    const spec = lease.spec ?? {};
    const annotations = lease.metadata?.annotations ?? {};
    const holder = spec.holderIdentity ?? '';
    const exactMs = Number(annotations[LEASE_MS_ANNOTATION]);
    const renewed = timeOf(spec.renewTime);
    const now = Date.now();
    const seen: SeenLease = {
      lease,
      holder,
      host: annotations[HOST_ANNOTATION] ?? '',
      pid: Number(annotations[PID_ANNOTATION]) || 0,
      durationMs: exactMs > 0 ? exactMs : (spec.leaseDurationSeconds ?? 0) * 1000,
      // This store's own renewals were stamped by this clock.
      since: holder === this.holder ? renewed : Math.min(now, renewed + this.maxClockSkewMs),
    };
    this.leases.set(id, seen);
    return seen;
  }

  private heldByOther(seen: SeenLease, now = Date.now()): boolean {
    return seen.holder !== '' && seen.holder !== this.holder && seen.since + seen.durationMs > now;
  }

  private leaseOf(seen: SeenLease): Lease {
    return { holder: seen.holder, host: seen.host, pid: seen.pid, expiresAt: seen.holder === '' ? 0 : seen.since + seen.durationMs };
  }

  private recordOf(id: string, secret: V1Secret, lease: V1Lease | undefined): KernelRecord | undefined {
    const r = decodeRecord(id, secret);
    if (!r) return undefined;
    const seen = lease ? this.leases.get(id) : undefined;
    if (seen) r.lease = this.leaseOf(seen);
    return r;
  }

  private forget(id: string): void {
    this.leases.delete(id);
    this.secrets.delete(id);
  }

  private inFlight(id: string): boolean {
    return this.writing.has(id);
  }

  private inTurn<T>(id: string, f: () => Promise<T>): Promise<T> {
    const run = (this.writing.get(id) ?? Promise.resolve()).then(f);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.writing.set(id, tail);
    void tail.then(() => {
      if (this.writing.get(id) === tail) this.writing.delete(id);
    });
    return run;
  }
}

function decodeRecord(id: string, s: V1Secret): KernelRecord | undefined {
  try {
    const r = JSON.parse(Buffer.from(s.data?.[RECORD_KEY] ?? '', 'base64').toString('utf8')) as KernelRecord;
    if (r?.version !== 1 || r.id !== id) return undefined;
    delete r.lease;
    return r;
  } catch {
    return undefined;
  }
}

function checkId(id: string): string {
  if (!ID.test(id)) throw internalError(`not a kernel id the Kubernetes store can name objects by: ${id.slice(0, 64)}`);
  return id;
}

function permission(n: { group: string; resource: string; verb: string; name?: string }): string {
  return `${n.verb} ${n.group ? `${n.resource}.${n.group}` : n.resource}${n.name ? `/${n.name}` : ''}`;
}

function digestOf(text: string): string {
  return createHash('sha256').update(text).digest('base64');
}

function timeOf(t: unknown): number {
  const ms = t instanceof Date ? t.getTime() : typeof t === 'string' ? Date.parse(t) : NaN;
  return Number.isFinite(ms) ? ms : 0;
}

/** Jittered exponential backoff: 10, 20, 40 … ms up to 320, times 0.5 to 1.5. */
function backoff(attempt: number): number {
  return Math.min(320, 10 * 2 ** attempt) * (0.5 + Math.random());
}

function statusOf(e: unknown): number | undefined {
  return e instanceof ApiException ? e.code : undefined;
}

/** The API server's own words for a refusal (its Status message), else the error's. */
function describe(e: unknown): string {
  if (e instanceof ApiException) {
    const body: unknown = e.body;
    try {
      const status = (typeof body === 'string' ? JSON.parse(body) : body) as { message?: unknown };
      if (typeof status?.message === 'string') return `HTTP ${e.code}: ${status.message}`;
    } catch {
      // Not a Status.
    }
    return `HTTP ${e.code}`;
  }
  return e instanceof Error ? e.message : String(e);
}

function fail(what: string, e: unknown): never {
  if (e instanceof KgateError) throw e;
  throw internalError(`kubernetes: cannot ${what}: ${describe(e)}`, e);
}

/** The call's answer, or undefined when the object does not exist (404). */
async function orAbsent<T>(p: Promise<T>): Promise<T | undefined> {
  try {
    return await p;
  } catch (e) {
    if (statusOf(e) === 404) return undefined;
    throw e;
  }
}

async function listAll<T>(page: (cont: string | undefined) => Promise<{ items: T[]; metadata?: { _continue?: string } }>): Promise<T[]> {
  const out: T[] = [];
  let cont: string | undefined;
  do {
    const list = await page(cont);
    out.push(...list.items);
    cont = list.metadata?._continue || undefined;
  } while (cont);
  return out;
}

const recordRemoved = (id: string): KgateError => internalError(`the record of kernel ${id} was removed (by another gateway): it is not written again`);
const leaseLost = (id: string, holder: string): KgateError =>
  internalError(`the lease of kernel ${id} is held by another gateway (${holder.slice(0, 80)}): this one may not write its record`);
