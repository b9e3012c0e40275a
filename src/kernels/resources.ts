/**
 * What a kernel asks for: its kernelspec's `metadata.kgate.resources`, over
 * which a start request may ask for other amounts with Enterprise Gateway's
 * names (KERNEL_CPUS, KERNEL_MEMORY, KERNEL_GPUS, and KERNEL_GPU_RESOURCE for
 * the kind of GPU, such as a MIG slice), so its users' clients work unchanged.
 * The policy then bounds it (admission.ts).
 */
import { badRequest, kernelStartFailed, truncate } from '../errors.js';
import type { KernelSpec, ResourceRequest } from '../provisioner/types.js';
import { formatMemory, parseCount, parseCpu, parseMemory } from './quantity.js';

/** A Kubernetes extended resource name: `vendor.domain/name`, as the device plugins register them. */
export const EXTENDED_RESOURCE = /^(?=.{3,253}$)[a-z0-9]([-a-z0-9.]*[a-z0-9])?\/[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;

/** The GPU a request asks for when it names none. */
export const DEFAULT_GPU_RESOURCE = 'nvidia.com/gpu';

/** Extended resources that are GPUs (whole or a MIG slice): a request for GPUs replaces the kernelspec's. */
const isGpu = (name: string): boolean => /\/(gpu|mig-[A-Za-z0-9._-]+)$/.test(name);

/**
 * Reads a `{ cpu, memory, <extended name>: count }` object (a kernelspec's
 * metadata or a policy's), answering the problems by key so each is named.
 */
export function parseResourceMap(raw: unknown, where: string): { resources: ResourceRequest; problems: string[] } {
  const problems: string[] = [];
  const resources: ResourceRequest = {};
  if (raw === undefined || raw === null) return { resources, problems };
  if (typeof raw !== 'object' || Array.isArray(raw)) return { resources, problems: [`${where}: must be a map of resource names to amounts`] };
  for (const [key, v] of Object.entries(raw as Record<string, unknown>)) {
    if (key === 'cpu') {
      const n = parseCpu(v);
      if (n === undefined) problems.push(`${where}.cpu: ${JSON.stringify(v)} is not a CPU quantity (such as "4", "0.5" or "500m")`);
      else resources.cpu = n;
    } else if (key === 'memory') {
      const n = parseMemory(v);
      if (n === undefined) problems.push(`${where}.memory: ${JSON.stringify(v)} is not a memory quantity (such as "16Gi", "512Mi" or "2G")`);
      else resources.memory = n;
    } else if (EXTENDED_RESOURCE.test(key)) {
      const n = parseCount(v);
      if (n === undefined) problems.push(`${where}.${key}: ${JSON.stringify(v)} is not a whole count`);
      else (resources.extended ??= {})[key] = n;
    } else {
      problems.push(`${where}: ${JSON.stringify(truncate(key))} is not a resource (cpu, memory, or an extended resource such as nvidia.com/gpu)`);
    }
  }
  return { resources, problems };
}

/** The kernelspec's own resources (`metadata.kgate.resources`); a mistake in it is the operator's, named as such. */
export function kernelspecResources(spec: KernelSpec): ResourceRequest {
  const kgate = spec.spec.metadata?.['kgate'];
  const raw = kgate !== null && typeof kgate === 'object' ? (kgate as Record<string, unknown>)['resources'] : undefined;
  const { resources, problems } = parseResourceMap(raw, `kernelspec ${spec.name}: metadata.kgate.resources`);
  if (problems.length > 0) throw kernelStartFailed(problems.join('; '));
  return resources;
}

/** The resources a start asks for: the kernelspec's, with the request's KERNEL_* amounts in their place. A bad value is the client's 400. */
export function requestedResources(spec: KernelSpec, env: Record<string, unknown> | undefined): ResourceRequest {
  const out = kernelspecResources(spec);
  const get = (name: string): string | undefined => {
    const v = env?.[name];
    if (v === undefined || v === null || v === '') return undefined;
    if (typeof v !== 'string') throw badRequest(`env.${name}: must be a string`);
    return v;
  };
  const cpus = get('KERNEL_CPUS');
  if (cpus !== undefined) {
    const n = parseCpu(cpus);
    if (n === undefined || n === 0) throw badRequest(`env.KERNEL_CPUS: ${JSON.stringify(truncate(cpus))} is not a CPU quantity (such as "2", "0.5" or "500m")`);
    out.cpu = n;
  }
  const memory = get('KERNEL_MEMORY');
  if (memory !== undefined) {
    const n = parseMemory(memory);
    if (n === undefined || n === 0) throw badRequest(`env.KERNEL_MEMORY: ${JSON.stringify(truncate(memory))} is not a memory quantity (such as "4Gi" or "512Mi")`);
    out.memory = n;
  }
  const gpus = get('KERNEL_GPUS');
  const kind = get('KERNEL_GPU_RESOURCE');
  if (kind !== undefined && !EXTENDED_RESOURCE.test(kind)) {
    throw badRequest(`env.KERNEL_GPU_RESOURCE: ${JSON.stringify(truncate(kind))} is not an extended resource name (such as nvidia.com/gpu or nvidia.com/mig-3g.20gb)`);
  }
  if (gpus !== undefined || kind !== undefined) {
    const count = gpus === undefined ? 1 : parseCount(gpus);
    if (count === undefined || count > 64) throw badRequest(`env.KERNEL_GPUS: ${JSON.stringify(truncate(gpus ?? ''))} is not a GPU count from 0 to 64`);
    const extended = Object.fromEntries(Object.entries(out.extended ?? {}).filter(([name]) => !isGpu(name)));
    if (count > 0) extended[kind ?? DEFAULT_GPU_RESOURCE] = count;
    if (Object.keys(extended).length > 0) out.extended = extended;
    else delete out.extended;
  }
  return out;
}

/** Every amount of a request by its name, for sums and messages: `cpu`, `memory`, and each extended name. */
export function amounts(r: ResourceRequest): Map<string, number> {
  const m = new Map<string, number>();
  if (r.cpu) m.set('cpu', r.cpu);
  if (r.memory) m.set('memory', r.memory);
  for (const [k, v] of Object.entries(r.extended ?? {})) if (v) m.set(k, v);
  return m;
}

/** An amount as a person writes it: memory in binary units, CPU in cores, counts as counts. */
export function formatAmount(name: string, n: number): string {
  return name === 'memory' ? formatMemory(n) : String(Number(n.toFixed(3)));
}
