/**
 * The state dir (`--state-dir`) as a KernelStore (store.ts): a gateway that
 * died (kill -9) is replaced by one that adopts its kernels, and several
 * gateway processes can serve the same kernels. One JSON file per kernel,
 * written atomically (temp file, then rename) with mode 0600: it holds the
 * kernel's key, which never leaves the gateway otherwise. A takeover is made
 * one at a time among gateways by an exclusive lock file per kernel.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { isProcessAlive } from '../provisioner/process-alive.js';
import { recordInput, type KernelRecord, type KernelStore, type Lease, type RecordInput } from './store.js';

export type { KernelRecord } from './store.js';

const ID = /^[A-Za-z0-9-]{1,64}$/;
/** A lease lasts this long unless renewed (the holder renews it at a third of it). */
export const DEFAULT_LEASE_MS = 15_000;

export class KernelStateStore implements KernelStore {
  readonly holder = randomBytes(8).toString('hex');
  private readonly host = hostname();

  constructor(
    readonly dir: string,
    readonly leaseMs = DEFAULT_LEASE_MS,
  ) {}

  /** The holder id under its older name. */
  get instance(): string {
    return this.holder;
  }

  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
  }

  private file(id: string): string {
    if (!ID.test(id)) throw new Error(`not a kernel id: ${id.slice(0, 64)}`);
    return join(this.dir, `${id}.json`);
  }

  async save(record: RecordInput, options: { release?: boolean } = {}): Promise<void> {
    const lease: Lease = { holder: this.holder, host: this.host, pid: process.pid, expiresAt: options.release ? 0 : Date.now() + this.leaseMs };
    const full: KernelRecord = { version: 1, ...record, gateway: { pid: process.pid, instance: this.holder }, lease };
    const tmp = join(this.dir, `.${record.id}.${randomBytes(4).toString('hex')}.tmp`);
    await writeFile(tmp, JSON.stringify(full), { mode: 0o600 });
    await rename(tmp, this.file(record.id));
  }

  async remove(id: string): Promise<void> {
    await rm(this.file(id), { force: true });
  }

  async load(id: string): Promise<KernelRecord | undefined> {
    try {
      const r = JSON.parse(await readFile(this.file(id), 'utf8')) as KernelRecord;
      return r.version === 1 && r.id === id ? r : undefined;
    } catch {
      return undefined;
    }
  }

  async loadAll(): Promise<KernelRecord[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch {
      return [];
    }
    const out: KernelRecord[] = [];
    for (const n of names) {
      if (!n.endsWith('.json') || n.startsWith('.')) continue;
      const r = await this.load(n.slice(0, -'.json'.length));
      if (r) out.push(r);
    }
    return out;
  }

  holds(r: KernelRecord): boolean {
    return (r.lease?.holder ?? r.gateway.instance) === this.holder;
  }

  heldElsewhere(r: KernelRecord): boolean {
    if (this.holds(r)) return false;
    const lease = r.lease;
    // A record of an older version: its writer's process decides, as it did then.
    if (!lease) return r.gateway.pid !== process.pid && isProcessAlive(r.gateway.pid);
    if (lease.expiresAt <= Date.now()) return false;
    // The fast local hint: a holder on this host whose process is gone holds nothing.
    if (lease.host === this.host && lease.pid !== process.pid && !isProcessAlive(lease.pid)) return false;
    return true;
  }

  async takeOver(r: KernelRecord): Promise<boolean> {
    const lock = join(this.dir, `.${r.id}.takeover`);
    try {
      await writeFile(lock, this.holder, { flag: 'wx', mode: 0o600 });
    } catch {
      // Another gateway is taking it over; a lock its taker left behind (it died) is cleared for the next round.
      const st = await stat(lock).catch(() => undefined);
      if (st && Date.now() - st.mtimeMs > this.leaseMs) await rm(lock, { force: true });
      return false;
    }
    try {
      const now = await this.load(r.id);
      if (!now || this.heldElsewhere(now)) return false;
      await this.save(recordInput(now));
      return true;
    } finally {
      await rm(lock, { force: true });
    }
  }
}
