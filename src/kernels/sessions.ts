/**
 * Sessions as jupyter_server serves them: a path (a notebook, a console) bound
 * to a kernel. `@jupyterlab/services` and Thebe start kernels through here.
 *
 * A session belongs to the principal that made it (its user and tenant), and
 * a caller sees the sessions it may see by the kernels' rule (access.ts): one
 * it may not see is not found, the same as one that does not exist. With a
 * state dir the sessions are kept there (session-store.ts), read again on
 * every list and get, so a gateway that adopted the kernels, or another
 * gateway process on the same state dir, serves the same sessions. With
 * --state-store kubernetes they are kept in the cluster (k8s-session-store.ts),
 * where a change is a compare-and-swap: an update that lost one to another
 * replica reads the session again and applies its patch to what is there.
 */
import { randomUUID } from 'node:crypto';
import { ErrorCodes, KgateError, internalError, sessionNotFound } from '../errors.js';
import { actingUser, operatorPrincipal, type Principal } from '../principal.js';
import { canSee } from './access.js';
import type { KernelManager, KernelModel } from './manager.js';
import { FileSessionStore, MemorySessionStore, SessionChanged, type SessionRecord, type SessionStore } from './session-store.js';
import type { KernelStore } from './store.js';

export interface Session {
  id: string;
  path: string;
  name: string;
  type: string;
  kernelId: string;
  /** The user who made it (for an impersonating front server, the user it named); none for the operator. */
  owner: string | undefined;
  tenant: string;
  /** The store's version of it as read (session-store.ts): what a save or a removal of it replaces. */
  revision?: string | undefined;
}

export interface SessionModel {
  id: string;
  path: string;
  name: string;
  type: string;
  kernel: KernelModel;
  /** Kept for clients of the notebook 5 era, as jupyter_server does. */
  notebook: { path: string; name: string };
}

export interface SessionKernel {
  id?: string | undefined;
  name?: string | undefined;
  /** The environment of a kernel started for the session (KERNEL_*, as POST /api/kernels takes). */
  env?: Record<string, unknown> | undefined;
}

export interface SessionCreate {
  path: string;
  name: string;
  type: string;
  kernel: SessionKernel | undefined;
  /** Who asks; the operator when the caller has none. */
  principal?: Principal | undefined;
}

export interface SessionPatch {
  path?: string | undefined;
  name?: string | undefined;
  type?: string | undefined;
  kernel?: SessionKernel | undefined;
  principal?: Principal | undefined;
}

export interface SessionManagerOptions {
  /** The state dir: sessions are kept in its `sessions/` subdirectory (none: in memory). */
  stateDir?: string | undefined;
  /** Where the kernels are recorded, to tell a kernel that is gone from one another gateway serves. */
  kernelRecords?: Pick<KernelStore, 'load'> | undefined;
  /** In place of the state dir (the cluster's, or a test's). */
  store?: SessionStore | undefined;
}

const OPERATOR = operatorPrincipal();
/**
 * After a kernel leaves this gateway, its sessions are removed once its record
 * is gone too (its shutdown removes it just after): checked this many times,
 * this far apart. A kernel whose record stays (--keep-kernels, or let go to
 * another gateway) keeps its sessions.
 */
const REAP_CHECKS = 10;
const REAP_WAIT_MS = 100;
/** Reads and saves of one update that lost the compare-and-swap to another gateway, before it gives up. */
const SAVE_TRIES = 5;

const toSession = (r: SessionRecord): Session => ({
  id: r.id,
  path: r.path,
  name: r.name,
  type: r.type,
  kernelId: r.kernelId,
  owner: r.owner ?? undefined,
  tenant: r.tenant,
  revision: r.revision,
});
const toRecord = (s: Session): SessionRecord => ({
  version: 1,
  id: s.id,
  path: s.path,
  name: s.name,
  type: s.type,
  kernelId: s.kernelId,
  owner: s.owner ?? null,
  tenant: s.tenant,
  revision: s.revision,
});
const requestedUser = (env: Record<string, unknown> | undefined): string | undefined => {
  const u = env?.['KERNEL_USERNAME'];
  return typeof u === 'string' ? u : undefined;
};
const isNotFound = (e: unknown): boolean => e instanceof KgateError && e.code === ErrorCodes.KERNEL_NOT_FOUND;

export class SessionManager {
  private readonly store: SessionStore;
  private readonly kernelRecords: Pick<KernelStore, 'load'> | undefined;

  constructor(
    private readonly kernels: KernelManager,
    options: SessionManagerOptions = {},
  ) {
    this.store = options.store ?? (options.stateDir !== undefined ? new FileSessionStore(options.stateDir) : new MemorySessionStore());
    this.kernelRecords = options.kernelRecords;
    kernels.onRemoved((kernelId) => void this.reap(kernelId));
  }

  /** The model of a session whose kernel this gateway serves (list and get make sure of it). */
  model(s: Session): SessionModel {
    const k = this.kernels.registry.peek(s.kernelId);
    if (!k) throw sessionNotFound(s.id);
    return { id: s.id, path: s.path, name: s.name, type: s.type, kernel: k.model(), notebook: { path: s.path, name: s.name } };
  }

  /** The sessions `principal` may see whose kernels exist, those made through other gateways on the state dir included. */
  async list(principal: Principal = OPERATOR): Promise<Session[]> {
    const visible = (await this.store.loadAll()).map(toSession).filter((s) => canSee(principal, s));
    const served = await Promise.all(visible.map((s) => this.served(s)));
    return visible.filter((_, i) => served[i]);
  }

  /** The session, or KG_SESSION_NOT_FOUND when there is none, `principal` may not see it, or its kernel is gone. */
  async get(id: string, principal: Principal = OPERATOR): Promise<Session> {
    const r = await this.store.load(id);
    const s = r && toSession(r);
    if (!s || !canSee(principal, s) || !(await this.served(s))) throw sessionNotFound(id);
    return s;
  }

  /**
   * As in jupyter_server, a path that already has a session gets that session
   * back, but only one the caller may see (its own first): anyone else gets a
   * session of its own, and learns nothing of the others.
   */
  async create(req: SessionCreate): Promise<Session> {
    const principal = req.principal ?? OPERATOR;
    const owner = actingUser(principal, requestedUser(req.kernel?.env));
    const same = (await this.list(principal)).filter((s) => s.path === req.path);
    const found = same.find((s) => s.owner === owner && s.tenant === principal.tenant) ?? same[0];
    if (found) return found;
    const bound = await this.kernelFor(req.kernel, req.path, principal);
    // A kernel started here decides whom it is for (the manager, from the principal): the session agrees with it.
    const s: Session = {
      id: randomUUID(),
      path: req.path,
      name: req.name,
      type: req.type,
      kernelId: bound.id,
      owner: bound.started ? bound.owner : owner,
      tenant: bound.started ? bound.tenant : principal.tenant,
    };
    try {
      await this.store.save(toRecord(s));
    } catch (e) {
      // Not recorded: a kernel started for it would be nobody's session.
      if (bound.started) await this.kernels.shutdown(bound.id, principal).catch(() => undefined);
      throw e;
    }
    return s;
  }

  async update(id: string, patch: SessionPatch): Promise<Session> {
    const principal = patch.principal ?? OPERATOR;
    let s = await this.get(id, principal);
    // The kernel is found or started once; a save that lost to another gateway applies it again to what that one saved.
    let bound: { id: string; started: boolean } | undefined;
    if (patch.kernel && (patch.kernel.id ?? patch.kernel.name) !== undefined && (patch.kernel.id === undefined || patch.kernel.id !== s.kernelId)) {
      const path = patch.path ?? s.path;
      bound = await this.kernelFor(patch.kernel, path, principal);
    }
    let old: string;
    for (let attempt = 1; ; attempt++) {
      old = s.kernelId;
      if (patch.path !== undefined) s.path = patch.path;
      if (patch.name !== undefined) s.name = patch.name;
      if (patch.type !== undefined) s.type = patch.type;
      if (bound) s.kernelId = bound.id;
      try {
        await this.store.save(toRecord(s));
        break;
      } catch (e) {
        if (!(e instanceof SessionChanged)) return this.abandon(bound, principal, e);
        if (attempt >= SAVE_TRIES) return this.abandon(bound, principal, internalError(`session ${id} kept changing while it was updated`));
      }
      try {
        s = await this.get(id, principal);
      } catch (e) {
        return this.abandon(bound, principal, e);
      }
    }
    // A kernel started for this session alone goes with it, as in jupyter_server.
    if (bound?.started && old !== bound.id) await this.shutdownKernel(old, principal);
    return { ...s, revision: undefined };
  }

  /** An update not recorded: a kernel started for it would be nobody's session. */
  private async abandon(bound: { id: string; started: boolean } | undefined, principal: Principal, e: unknown): Promise<never> {
    if (bound?.started) await this.kernels.shutdown(bound.id, principal).catch(() => undefined);
    throw e;
  }

  /** Deletes the session and shuts its kernel down, as `principal` (a kernel it may not see is left alone). */
  async delete(id: string, principal: Principal = OPERATOR): Promise<void> {
    const s = await this.get(id, principal);
    await this.store.remove(s.id);
    await this.shutdownKernel(s.kernelId, principal);
  }

  private async shutdownKernel(kernelId: string, principal: Principal): Promise<void> {
    try {
      await this.kernels.shutdown(kernelId, principal);
    } catch (e) {
      if (!isNotFound(e)) throw e;
    }
  }

  private async kernelFor(
    kernel: SessionKernel | undefined,
    path: string,
    principal: Principal,
  ): Promise<{ id: string; started: boolean; owner: string | undefined; tenant: string }> {
    const k = kernel?.id !== undefined ? await this.kernels.find(kernel.id, principal) : await this.kernels.start({ name: kernel?.name, env: kernel?.env, path, principal });
    return { id: k.id, started: kernel?.id === undefined, owner: k.owner, tenant: k.tenant };
  }

  /**
   * Whether the session's kernel is served here now (one another gateway
   * supervises is followed from now on). A session whose kernel is gone (not
   * here, and not recorded either) is removed.
   */
  private async served(s: Session): Promise<boolean> {
    try {
      await this.kernels.find(s.kernelId);
      return true;
    } catch (e) {
      // Not reachable now (following it failed): hidden, not removed; its record decides that.
      if (!isNotFound(e)) return false;
    }
    // Only the version read: one bound to another kernel since (by another gateway) stays.
    if (!(await this.kernelRecorded(s.kernelId))) await this.store.remove(s.id, s.revision);
    return false;
  }

  private async kernelRecorded(kernelId: string): Promise<boolean> {
    if (this.kernels.has(kernelId)) return true;
    return this.kernelRecords ? (await this.kernelRecords.load(kernelId)) !== undefined : false;
  }

  /** Removes the sessions of a kernel that left this gateway, once it is gone for good (see REAP_CHECKS). */
  private async reap(kernelId: string): Promise<void> {
    try {
      for (let i = 0; i < REAP_CHECKS; i++) {
        if (!(await this.kernelRecorded(kernelId))) {
          for (const r of await this.store.loadAll()) if (r.kernelId === kernelId) await this.store.remove(r.id, r.revision);
          return;
        }
        await new Promise((resolve) => setTimeout(resolve, REAP_WAIT_MS).unref());
      }
    } catch {
      // Left for the next list or get, which removes a session whose kernel is gone.
    }
  }
}
