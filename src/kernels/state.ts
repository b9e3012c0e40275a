/**
 * The state dir (`--state-dir`) as a KernelStore (store.ts): a gateway that
 * died (kill -9) is replaced by one that adopts its kernels, and several
 * gateway processes can serve the same kernels. One JSON file per kernel,
 * written atomically (temp file, then rename) with mode 0600: it holds the
 * kernel's key, which never leaves the gateway otherwise. A takeover is made
 * one at a time among gateways by an exclusive lock file per kernel.
 *
 * Admission among gateways (`reserve`) takes one lock file for the whole dir
 * (`.admission.lock`, created exclusively), reads every record and every
 * reservation (`reservations/ID.json`), and writes its own before letting go.
 * A gateway that dies holding the lock or a reservation leaves a file that
 * the others ignore and clear: a lock older than LOCK_STALE_MS or whose
 * process on this host is gone, a reservation past its expiry or whose
 * process on this host is gone.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { isProcessAlive } from '../provisioner/process-alive.js';
import { kernelLaunchRetryable } from '../errors.js';
import type { Held } from './admission.js';
import { recordInput, type KernelRecord, type KernelStore, type Lease, type RecordInput } from './store.js';

export type { KernelRecord } from './store.js';

const ID = /^[A-Za-z0-9-]{1,64}$/;
/** A lease lasts this long unless renewed (the holder renews it at a third of it). */
export const DEFAULT_LEASE_MS = 15_000;
/** An admission lock held longer than this was left by a gateway that died while holding it. */
const LOCK_STALE_MS = 5_000;
/** How long a start waits for the admission lock before it is refused as retryable. */
const LOCK_WAIT_MS = 10_000;

interface ReservationFile {
  owner: string | null;
  tenant: string;
  resources: Held['resources'];
  host: string;
  pid: number;
  expiresAt: number;
}

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

  /** Starts of this process waiting for the lock, in turn (the lock file is for other processes). */
  private admissionTurn: Promise<unknown> = Promise.resolve();

  async reserve(held: Held & { id: string }, check: (all: Held[]) => void, ttlMs: number): Promise<() => Promise<void>> {
    const turn = this.admissionTurn.then(() => this.reserveLocked(held, check, ttlMs));
    this.admissionTurn = turn.catch(() => undefined);
    return turn;
  }

  private async reserveLocked(held: Held & { id: string }, check: (all: Held[]) => void, ttlMs: number): Promise<() => Promise<void>> {
    const dir = join(this.dir, 'reservations');
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const lock = join(this.dir, '.admission.lock');
    await this.lock(lock);
    try {
      // Reservations before records: a start writes its record, then removes its
      // reservation, so read in this order it is seen at least once (twice, for a
      // moment, is merged by id below; never not at all).
      const now = Date.now();
      const byId = new Map<string, Held>();
      for (const name of await readdir(dir).catch(() => [] as string[])) {
        if (!name.endsWith('.json')) continue;
        const path = join(dir, name);
        const r = await readFile(path, 'utf8')
          .then((t) => JSON.parse(t) as ReservationFile)
          .catch(() => undefined);
        if (!r || r.expiresAt <= now || (r.host === this.host && r.pid !== process.pid && !isProcessAlive(r.pid))) {
          await rm(path, { force: true });
          continue;
        }
        byId.set(name.slice(0, -'.json'.length), { owner: r.owner ?? undefined, tenant: r.tenant, resources: r.resources ?? {} });
      }
      for (const r of await this.loadAll()) {
        if (!r.pooled) byId.set(r.id, { owner: r.owner ?? undefined, tenant: r.tenant ?? 'default', resources: r.resources ?? {} });
      }
      check([...byId.values()]);
      const path = join(dir, `${this.file(held.id).slice(this.dir.length + 1)}`);
      const file: ReservationFile = { owner: held.owner ?? null, tenant: held.tenant, resources: held.resources, host: this.host, pid: process.pid, expiresAt: now + ttlMs };
      await writeFile(path, JSON.stringify(file), { mode: 0o600 });
      return () => rm(path, { force: true });
    } finally {
      await rm(lock, { force: true });
    }
  }

  /** Takes the lock file, clearing one its holder left behind; refuses as retryable after LOCK_WAIT_MS. */
  private async lock(path: string): Promise<void> {
    const until = Date.now() + LOCK_WAIT_MS;
    for (let wait = 2; ; wait = Math.min(wait * 2, 50)) {
      try {
        await writeFile(path, JSON.stringify({ host: this.host, pid: process.pid }), { flag: 'wx', mode: 0o600 });
        return;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      const [st, owner] = await Promise.all([
        stat(path).catch(() => undefined),
        readFile(path, 'utf8')
          .then((t) => JSON.parse(t) as { host?: string; pid?: number })
          .catch(() => undefined),
      ]);
      const dead = owner?.host === this.host && typeof owner.pid === 'number' && owner.pid !== process.pid && !isProcessAlive(owner.pid);
      if (st && (dead || Date.now() - st.mtimeMs > LOCK_STALE_MS)) {
        await rm(path, { force: true });
        continue;
      }
      if (Date.now() > until) throw kernelLaunchRetryable('the admission lock of the state dir is busy; try again', 2);
      await sleep(wait);
    }
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
