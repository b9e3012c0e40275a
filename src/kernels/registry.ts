/**
 * The kernels this gateway serves, by id: its own and those it follows.
 * Removal is announced (sessions drop theirs); a pooled kernel is not here
 * until it is handed out.
 */
import { kernelNotFound } from '../errors.js';
import type { KernelSupervisor } from './supervisor.js';

export class KernelRegistry {
  private readonly kernels = new Map<string, KernelSupervisor>();
  private readonly removedListeners: Array<(id: string) => void> = [];

  onRemoved(listener: (id: string) => void): void {
    this.removedListeners.push(listener);
  }

  add(k: KernelSupervisor): void {
    this.kernels.set(k.id, k);
  }

  /** The kernel, or KG_KERNEL_NOT_FOUND. */
  get(id: string): KernelSupervisor {
    const k = this.kernels.get(id);
    if (!k) throw kernelNotFound(id);
    return k;
  }

  peek(id: string): KernelSupervisor | undefined {
    return this.kernels.get(id);
  }

  has(id: string): boolean {
    return this.kernels.has(id);
  }

  list(): KernelSupervisor[] {
    return [...this.kernels.values()];
  }

  get size(): number {
    return this.kernels.size;
  }

  /** The kernels that hold their resources, as admission counts them: all but the dead (and gone) ones. */
  *held(): IterableIterator<KernelSupervisor> {
    for (const k of this.kernels.values()) if (k.phase !== 'dead' && k.phase !== 'gone') yield k;
  }

  /** Removes this very kernel (not a newer one with its id) and tells the listeners; false when it was not here. */
  remove(k: KernelSupervisor): boolean {
    if (this.kernels.get(k.id) !== k) return false;
    this.kernels.delete(k.id);
    for (const l of this.removedListeners) l(k.id);
    return true;
  }

  /** Forgets every kernel without announcing it (the gateway is leaving). */
  clear(): void {
    this.kernels.clear();
  }
}
