/**
 * Where sessions are kept: in this process's memory, or, with --state-dir, one
 * JSON file per session in its `sessions/` subdirectory, so that a gateway
 * that adopts the kernels after a `kill -9` serves their sessions again, and
 * gateway processes on one state dir list the same sessions. Written
 * atomically (temp file, then rename) with mode 0600, as the kernel records
 * are (state.ts); a session record holds no key and no token, only who owns
 * the session and which kernel it is bound to. With --state-store kubernetes
 * they are kept in the cluster instead (k8s-session-store.ts).
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/** The ids a record may hold (and its file is named by): those of state.ts. */
const ID = /^[A-Za-z0-9-]{1,64}$/;

export interface SessionRecord {
  version: 1;
  id: string;
  path: string;
  name: string;
  type: string;
  kernelId: string;
  /** The owning user; null for the operator's sessions. */
  owner: string | null;
  tenant: string;
  /**
   * The store's version of the record as read, not part of it (the cluster's
   * resourceVersion): a save of a record read replaces only that version, and
   * one without makes a new session. The stores of one process or dir keep none.
   */
  revision?: string | undefined;
}

export interface SessionStore {
  /** Throws SessionChanged when the record changed since it was read (the caller reads it again). */
  save(record: SessionRecord): Promise<void>;
  /** The record, or undefined when there is none (or the id cannot be one). */
  load(id: string): Promise<SessionRecord | undefined>;
  loadAll(): Promise<SessionRecord[]>;
  /** With a `revision`: only while the record is still that version (one changed since is left). */
  remove(id: string, revision?: string): Promise<void>;
}

/** A save lost a compare-and-swap: another gateway changed the session since it was read. */
export class SessionChanged extends Error {
  constructor(readonly id: string) {
    super(`session ${id.slice(0, 64)} was changed by another gateway since it was read`);
    this.name = 'SessionChanged';
  }
}

export function isSessionId(id: string): boolean {
  return ID.test(id);
}

/** A record read back, or undefined when it is not one this version wrote (a hand edit, another version). */
export function parseSessionRecord(text: string, id: string): SessionRecord | undefined {
  let r: unknown;
  try {
    r = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof r !== 'object' || r === null) return undefined;
  const o = r as Record<string, unknown>;
  const strings = ['path', 'name', 'type', 'kernelId', 'tenant'].every((k) => typeof o[k] === 'string');
  if (o['version'] !== 1 || o['id'] !== id || !strings || !ID.test(o['kernelId'] as string)) return undefined;
  if (o['owner'] !== null && typeof o['owner'] !== 'string') return undefined;
  return {
    version: 1,
    id,
    path: o['path'] as string,
    name: o['name'] as string,
    type: o['type'] as string,
    kernelId: o['kernelId'] as string,
    owner: o['owner'] as string | null,
    tenant: o['tenant'] as string,
  };
}

/** Sessions of this process only (no --state-dir): each kept as a copy, so a caller's edit is not saved until it saves. */
export class MemorySessionStore implements SessionStore {
  private readonly records = new Map<string, SessionRecord>();

  async save(record: SessionRecord): Promise<void> {
    const { revision: _r, ...rest } = record;
    this.records.set(record.id, rest);
  }

  async load(id: string): Promise<SessionRecord | undefined> {
    const r = this.records.get(id);
    return r && { ...r };
  }

  async loadAll(): Promise<SessionRecord[]> {
    return [...this.records.values()].map((r) => ({ ...r }));
  }

  async remove(id: string): Promise<void> {
    this.records.delete(id);
  }
}

/** Sessions in `<state dir>/sessions/`, one file each, shared by every gateway on the state dir. */
export class FileSessionStore implements SessionStore {
  readonly dir: string;
  private made: Promise<unknown> | undefined;

  constructor(stateDir: string) {
    this.dir = join(stateDir, 'sessions');
  }

  private file(id: string): string {
    if (!ID.test(id)) throw new Error(`not a session id: ${id.slice(0, 64)}`);
    return join(this.dir, `${id}.json`);
  }

  async save(record: SessionRecord): Promise<void> {
    const file = this.file(record.id);
    if (!ID.test(record.kernelId)) throw new Error(`not a kernel id: ${record.kernelId.slice(0, 64)}`);
    // Made once, on the first session (a state dir with no session has no subdirectory).
    this.made ??= mkdir(this.dir, { recursive: true, mode: 0o700 });
    try {
      await this.made;
    } catch (e) {
      this.made = undefined;
      throw e;
    }
    const tmp = join(this.dir, `.${record.id}.${randomBytes(4).toString('hex')}.tmp`);
    const { version: _v, revision: _r, ...rest } = record;
    await writeFile(tmp, JSON.stringify({ version: 1, ...rest }), { mode: 0o600 });
    try {
      await rename(tmp, file);
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    }
  }

  async load(id: string): Promise<SessionRecord | undefined> {
    if (!ID.test(id)) return undefined;
    try {
      return parseSessionRecord(await readFile(this.file(id), 'utf8'), id);
    } catch {
      return undefined;
    }
  }

  async loadAll(): Promise<SessionRecord[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch {
      return [];
    }
    const ids = names.filter((n) => n.endsWith('.json') && !n.startsWith('.')).map((n) => n.slice(0, -'.json'.length));
    const records = await Promise.all(ids.map((id) => this.load(id)));
    return records.filter((r): r is SessionRecord => r !== undefined);
  }

  async remove(id: string): Promise<void> {
    if (!ID.test(id)) return;
    await rm(this.file(id), { force: true });
  }
}
