/**
 * Where kernels are recorded so that another gateway can serve them: adopt
 * them after this one died, follow them while it runs, take them over when it
 * is gone. The first implementation is the state dir (state.ts); in a cluster
 * it would be Kubernetes objects and a `coordination.k8s.io` Lease.
 *
 * Ownership is a lease, not a process id: exactly one gateway supervises a
 * kernel (restarts it when it dies) and renews its lease; any gateway relays.
 * When a lease lapses (not renewed in time, or, on the same host, its holder's
 * process is gone: a fast local hint) another gateway may take it.
 */
import type { ConnectionInfo, KernelSpec, ProvisionerInfo, ResourceRequest } from '../provisioner/types.js';
import type { Held } from './admission.js';

export interface Lease {
  /** The holding gateway's instance id. */
  holder: string;
  host: string;
  pid: number;
  /** Epoch ms; 0 for a lease given up (--keep-kernels: the next gateway may adopt at once). */
  expiresAt: number;
}

export interface KernelRecord {
  version: 1;
  id: string;
  spec: KernelSpec;
  env: Record<string, string>;
  owner: string | null;
  /** Absent in records of older versions: the default tenant. */
  tenant?: string;
  cwd: string;
  /** What the kernel reserved (admission counts it on every gateway); absent in records of older versions: nothing. */
  resources?: ResourceRequest;
  conn: ConnectionInfo;
  provisioner: ProvisionerInfo;
  /** The gateway process that wrote the record (kept for records read by older versions). */
  gateway: { pid: number; instance: string };
  /** Who supervises the kernel; absent in records of older versions (then `gateway` decides). */
  lease?: Lease;
  /** A kernel waiting in a warm pool, not handed out. */
  pooled: boolean;
  /**
   * Identity keys of the client sessions attached (or parked for their
   * reconnect) when last recorded: after an adoption each is told that output
   * may have been lost. Absent in records of older versions.
   */
  sessions?: string[];
}

/** What a gateway writes; the store adds the version, the writer and the lease. */
export type RecordInput = Omit<KernelRecord, 'version' | 'gateway' | 'lease'>;

export interface KernelStore {
  /** This gateway's identity as a lease holder. */
  readonly holder: string;
  /** How long a lease lasts unless renewed. */
  readonly leaseMs: number;
  init(): Promise<void>;
  /** Writes the record with this gateway's lease, fresh; `release`: with the lease given up. */
  save(record: RecordInput, options?: { release?: boolean }): Promise<void>;
  load(id: string): Promise<KernelRecord | undefined>;
  loadAll(): Promise<KernelRecord[]>;
  remove(id: string): Promise<void>;
  /** Whether this gateway holds the record's lease. */
  holds(record: KernelRecord): boolean;
  /** Whether another gateway holds the record's lease now (unexpired, and, on this host, its process alive). */
  heldElsewhere(record: KernelRecord): boolean;
  /**
   * Takes the lease of a record no one else holds, as one step among gateways
   * that try at once: true for the one that got it.
   */
  takeOver(record: KernelRecord): Promise<boolean>;
  /**
   * Admission among the gateways on this store, as one step: runs `check` over
   * what all of them hold (recorded kernels not in a warm pool, and the starts
   * reserved and not expired) and, when it passes, reserves `held` for kernel
   * `held.id` until the answered function removes it (once the kernel is
   * recorded, or its start failed), or `ttlMs` passes. A store without it:
   * each gateway counts its own.
   */
  reserve?(held: Held & { id: string }, check: (all: Held[]) => void, ttlMs: number): Promise<() => Promise<void>>;
}

/** The record without what the store adds, to write it again under another lease. */
export function recordInput(r: KernelRecord): RecordInput {
  const { version: _v, gateway: _g, lease: _l, ...rest } = r;
  return rest;
}
