/**
 * Sessions as jupyter_server serves them: a path (a notebook, a console) bound
 * to a kernel. `@jupyterlab/services` and Thebe start kernels through here.
 */
import { randomUUID } from 'node:crypto';
import { sessionNotFound } from '../errors.js';
import { operatorPrincipal, type Principal } from '../principal.js';
import type { KernelManager, KernelModel } from './manager.js';

export interface Session {
  id: string;
  path: string;
  name: string;
  type: string;
  kernelId: string;
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

export interface SessionCreate {
  path: string;
  name: string;
  type: string;
  kernel: { id?: string | undefined; name?: string | undefined } | undefined;
  /** Who asks; the operator when the caller has none. */
  principal?: Principal | undefined;
}

export interface SessionPatch {
  path?: string | undefined;
  name?: string | undefined;
  type?: string | undefined;
  kernel?: { id?: string | undefined; name?: string | undefined } | undefined;
  principal?: Principal | undefined;
}

export class SessionManager {
  private readonly sessions = new Map<string, Session>();

  constructor(private readonly kernels: KernelManager) {
    kernels.onRemoved((kernelId) => {
      for (const [id, s] of this.sessions) if (s.kernelId === kernelId) this.sessions.delete(id);
    });
  }

  model(s: Session): SessionModel {
    return {
      id: s.id,
      path: s.path,
      name: s.name,
      type: s.type,
      kernel: this.kernels.get(s.kernelId).model(),
      notebook: { path: s.path, name: s.name },
    };
  }

  list(): Session[] {
    return [...this.sessions.values()];
  }

  get(id: string): Session {
    const s = this.sessions.get(id);
    if (!s) throw sessionNotFound(id);
    return s;
  }

  /** As in jupyter_server, a path that already has a session gets that session back. */
  async create(req: SessionCreate): Promise<Session> {
    for (const s of this.sessions.values()) if (s.path === req.path) return s;
    const kernelId = await this.kernelFor(req.kernel, req.path, req.principal ?? operatorPrincipal());
    const s: Session = { id: randomUUID(), path: req.path, name: req.name, type: req.type, kernelId };
    this.sessions.set(s.id, s);
    return s;
  }

  async update(id: string, patch: SessionPatch): Promise<Session> {
    const s = this.get(id);
    if (patch.path !== undefined) s.path = patch.path;
    if (patch.name !== undefined) s.name = patch.name;
    if (patch.type !== undefined) s.type = patch.type;
    if (patch.kernel && (patch.kernel.id ?? patch.kernel.name) !== undefined) {
      const old = s.kernelId;
      if (patch.kernel.id === undefined || patch.kernel.id !== old) {
        const principal = patch.principal ?? operatorPrincipal();
        s.kernelId = await this.kernelFor(patch.kernel, s.path, principal);
        // A kernel started for this session alone goes with it, as in jupyter_server.
        if (patch.kernel.id === undefined && this.kernels.has(old)) await this.kernels.shutdown(old, principal);
      }
    }
    return s;
  }

  async delete(id: string): Promise<void> {
    const s = this.get(id);
    this.sessions.delete(id);
    if (this.kernels.has(s.kernelId)) await this.kernels.shutdown(s.kernelId);
  }

  private async kernelFor(kernel: SessionCreate['kernel'], path: string, principal: Principal): Promise<string> {
    if (kernel?.id !== undefined) return (await this.kernels.find(kernel.id, principal)).id;
    return (await this.kernels.start({ name: kernel?.name, path, principal })).id;
  }
}
