/**
 * Where kgate records each kernel (`--state-dir`), so that a gateway that
 * died (kill -9) is replaced by one that adopts its kernels, and several
 * gateway processes can serve the same kernels. One JSON file per kernel,
 * written atomically (temp file, then rename) with mode 0600: it holds the
 * kernel's key, which never leaves the gateway otherwise.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ConnectionInfo, KernelSpec, ProvisionerInfo } from '../provisioner/types.js';

export interface KernelRecord {
  version: 1;
  id: string;
  spec: KernelSpec;
  env: Record<string, string>;
  owner: string | null;
  cwd: string;
  conn: ConnectionInfo;
  provisioner: ProvisionerInfo;
  /** The gateway process that watches the kernel's life (restarts it); others only relay. */
  gateway: { pid: number; instance: string };
  /** A kernel waiting in a warm pool, not handed out. */
  pooled: boolean;
  /**
   * Identity keys of the client sessions attached (or parked for their
   * reconnect) when last recorded: after an adoption each is told that output
   * may have been lost. Absent in records of older versions.
   */
  sessions?: string[];
}

const ID = /^[A-Za-z0-9-]{1,64}$/;

export class KernelStateStore {
  readonly instance = randomBytes(8).toString('hex');

  constructor(readonly dir: string) {}

  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
  }

  private file(id: string): string {
    if (!ID.test(id)) throw new Error(`not a kernel id: ${id.slice(0, 64)}`);
    return join(this.dir, `${id}.json`);
  }

  async save(record: Omit<KernelRecord, 'version' | 'gateway'>): Promise<void> {
    const full: KernelRecord = { version: 1, ...record, gateway: { pid: process.pid, instance: this.instance } };
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
}
