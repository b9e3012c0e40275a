/**
 * The tenant policy (`--policy FILE`, YAML): what each tenant may run at
 * once. Read and checked whole at start, with one line per mistake, and again
 * on SIGHUP, when a bad file leaves the policy in force as it was.
 *
 *   default:            # tenants not listed
 *     max_kernels: 20
 *   tenants:
 *     acme:
 *       max_kernels: 10
 *       max_kernels_per_user: 2
 *       resources: { cpu: "16", memory: 64Gi, nvidia.com/mig-3g.20gb: 2 }
 *       max_per_kernel: { cpu: "4", memory: 16Gi }
 *       kernelspecs: [python3]
 *
 * A tenant that is listed has exactly the limits of its block (a key it does
 * not set is not limited); `default` is for every tenant not listed.
 */
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { ConfigError } from '../options.js';
import type { ResourceRequest } from '../provisioner/types.js';
import { KERNEL_NAME } from './kernelspecs.js';
import { amounts, parseResourceMap } from './resources.js';

/** One tenant's limits, as admission reads them. */
export interface TenantLimits {
  maxKernels?: number | undefined;
  maxKernelsPerUser?: number | undefined;
  /** Totals the tenant may hold at once, by resource name (`cpu` in cores, `memory` in bytes, extended by name). */
  resources?: ReadonlyMap<string, number> | undefined;
  /** What one kernel may ask for, by resource name. */
  maxPerKernel?: ReadonlyMap<string, number> | undefined;
  /** Kernelspecs the tenant may start (undefined: all). */
  kernelspecs?: ReadonlySet<string> | undefined;
  /** Its kernels may reach the internet (never private ranges); undefined: no egress (the kubernetes provisioner's NetworkPolicy). */
  egress?: boolean | undefined;
}

export interface Policy {
  /** The limits of `tenant`, and the policy key they come from (for messages: `tenants.acme`, `default`). */
  limitsFor(tenant: string): { limits: TenantLimits; where: string } | undefined;
}

/** No policy file: no tenant limits. */
export const NO_POLICY: Policy = { limitsFor: () => undefined };

const TENANT = /^[A-Za-z0-9._@+-]{1,128}$/;

const count = z.number().int('must be a whole number').min(0, 'must be 0 or more').max(1_000_000);

const tenantBlock = z
  .object({
    max_kernels: count.optional(),
    max_kernels_per_user: count.optional(),
    resources: z.unknown().optional(),
    max_per_kernel: z.unknown().optional(),
    kernelspecs: z.array(z.string().regex(KERNEL_NAME, 'is not a kernelspec name')).max(1000).optional(),
    egress: z.boolean().optional(),
  })
  .strict();

const policyFile = z
  .object({
    default: tenantBlock.optional(),
    tenants: z.record(z.string(), tenantBlock).optional(),
  })
  .strict();

type Block = z.infer<typeof tenantBlock>;

const toMap = (r: ResourceRequest): ReadonlyMap<string, number> => {
  const m = amounts(r);
  // An amount of 0 is a limit too (no GPUs for this tenant), which amounts() leaves out.
  if (r.cpu === 0) m.set('cpu', 0);
  if (r.memory === 0) m.set('memory', 0);
  for (const [k, v] of Object.entries(r.extended ?? {})) if (v === 0) m.set(k, 0);
  return m;
};

function limitsOf(b: Block, where: string, problems: string[]): TenantLimits {
  const res = parseResourceMap(b.resources, `${where}.resources`);
  const per = parseResourceMap(b.max_per_kernel, `${where}.max_per_kernel`);
  problems.push(...res.problems, ...per.problems);
  return {
    maxKernels: b.max_kernels,
    maxKernelsPerUser: b.max_kernels_per_user,
    resources: b.resources === undefined ? undefined : toMap(res.resources),
    maxPerKernel: b.max_per_kernel === undefined ? undefined : toMap(per.resources),
    kernelspecs: b.kernelspecs === undefined ? undefined : new Set(b.kernelspecs),
    egress: b.egress,
  };
}

/** A policy file that is wrong, with every mistake on its own line (at start, kgate says it and exits with code 2). */
export class PolicyError extends ConfigError {}

/** Parses a policy document, or throws PolicyError naming each mistake by its place in the file. */
export function parsePolicy(text: string, file = 'policy'): Policy {
  let doc: unknown;
  try {
    doc = parseYaml(text, { uniqueKeys: true, maxAliasCount: 100 });
  } catch (e) {
    throw new PolicyError(`${file}: not valid YAML: ${e instanceof Error ? e.message.split('\n')[0] : String(e)}`);
  }
  if (doc === null || doc === undefined) doc = {};
  const problems: string[] = [];
  const listed = (doc as { tenants?: unknown }).tenants;
  if (listed !== null && typeof listed === 'object' && !Array.isArray(listed)) {
    for (const name of Object.keys(listed)) if (!TENANT.test(name)) problems.push(`tenants.${name.slice(0, 64)}: is not a tenant name ([A-Za-z0-9._@+-], at most 128)`);
  }
  const r = policyFile.safeParse(doc);
  if (!r.success) {
    const lines = r.error.issues.map((i) => `${i.path.length > 0 ? i.path.join('.') : '(top)'}: ${i.message}`);
    throw new PolicyError([...lines, ...problems].map((p) => `${file}: ${p}`).join('\n'));
  }
  const fallback = r.data.default ? limitsOf(r.data.default, 'default', problems) : undefined;
  const tenants = new Map<string, TenantLimits>();
  for (const [name, b] of Object.entries(r.data.tenants ?? {})) tenants.set(name, limitsOf(b, `tenants.${name}`, problems));
  if (problems.length > 0) throw new PolicyError(problems.map((p) => `${file}: ${p}`).join('\n'));
  return {
    limitsFor(tenant) {
      const t = tenants.get(tenant);
      if (t) return { limits: t, where: `tenants.${tenant}` };
      return fallback ? { limits: fallback, where: 'default' } : undefined;
    },
  };
}

/** The policy file in force, read again on reload. */
export class PolicyFile implements Policy {
  private current: Policy;

  /** Reads the file now (synchronously, at start): a bad file stops kgate before it serves. */
  constructor(readonly path: string) {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (e) {
      throw new PolicyError(`${path}: cannot read the policy file: ${e instanceof Error ? e.message : String(e)}`);
    }
    this.current = parsePolicy(text, path);
  }

  limitsFor(tenant: string): ReturnType<Policy['limitsFor']> {
    return this.current.limitsFor(tenant);
  }

  /** Reads the file again; when it is bad, throws PolicyError and the policy in force stays. */
  async reload(): Promise<void> {
    const text = await readFile(this.path, 'utf8').catch((e: unknown) => {
      throw new PolicyError(`${this.path}: cannot read the policy file: ${e instanceof Error ? e.message : String(e)}`);
    });
    this.current = parsePolicy(text, this.path);
  }
}
