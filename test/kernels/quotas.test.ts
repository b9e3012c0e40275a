/**
 * Tenant quotas (--policy) on the control plane, with the fake provisioner:
 * decided and reserved before anything asynchronous, keyed on the principal's
 * tenant and user, and shared by gateways on one state dir.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ErrorCodes, type KgateError } from '../../src/errors.js';
import { KernelSpecStore } from '../../src/kernels/kernelspecs.js';
import { parsePolicy, PolicyFile, PolicyError } from '../../src/kernels/policy.js';
import { KernelStateStore } from '../../src/kernels/state.js';
import type { Principal } from '../../src/principal.js';
import { fakeManager, type FakeManager } from '../helpers/fake-provisioner.js';

const person = (user: string, tenant: string): Principal => ({ user, tenant, scopes: new Set(), via: 'jwt' });

/** Kernelspecs `fake` (no resources) and `gpu` (one MIG slice, 2 cores, 4Gi from its metadata). */
function specsDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'kgate-quota-specs-'));
  const write = (name: string, metadata: object): void => {
    mkdirSync(join(dir, name));
    writeFileSync(
      join(dir, name, 'kernel.json'),
      JSON.stringify({ argv: ['fake', '{connection_file}'], display_name: name, language: 'text', interrupt_mode: 'message', metadata }),
    );
  };
  write('fake', {});
  write('gpu', { kgate: { resources: { cpu: '2', memory: '4Gi', 'nvidia.com/mig-3g.20gb': 1 } } });
  return dir;
}

function managerWith(policy: string, extra: Parameters<typeof fakeManager>[1] = {}): FakeManager {
  // A launch timeout a loaded machine does not reach: a start that times out would read as a quota miscount.
  return fakeManager({}, { specs: new KernelSpecStore([specsDir()], 'fake'), policy: parsePolicy(policy), launchTimeoutMs: 20_000, ...extra });
}

/** Settles every start and sorts them: the kernels started, and the codes and messages of the refused. */
async function startAll(starts: Array<Promise<unknown>>): Promise<{ ok: number; refused: Map<string, string[]> }> {
  const results = await Promise.allSettled(starts);
  const refused = new Map<string, string[]>();
  let ok = 0;
  for (const r of results) {
    if (r.status === 'fulfilled') ok++;
    else {
      const e = r.reason as KgateError;
      refused.set(e.code, [...(refused.get(e.code) ?? []), e.message]);
    }
  }
  return { ok, refused };
}

const POLICY = `
default:
  max_kernels: 3
tenants:
  acme:
    max_kernels: 10
    max_kernels_per_user: 4
    resources: { cpu: "16", memory: 64Gi, nvidia.com/mig-3g.20gb: 2 }
    max_per_kernel: { cpu: "4", memory: 16Gi }
    kernelspecs: [fake, gpu]
  globex:
    kernelspecs: [fake]
`;

describe('fake provisioner: tenant quotas (--policy)', () => {
  it('100 concurrent starts against max_kernels: 10 start exactly 10; the 90 others are refused at once, naming the limit and its value', async () => {
    const t = managerWith(POLICY);
    try {
      const users = ['u0', 'u1', 'u2', 'u3', 'u4', 'u5', 'u6', 'u7', 'u8', 'u9'];
      const r = await startAll(Array.from({ length: 100 }, (_, i) => t.manager.start({ name: 'fake', principal: person(users[i % 10]!, 'acme') })));
      expect(r.ok).toBe(10);
      expect([...r.refused.keys()]).toEqual([ErrorCodes.TENANT_QUOTA]);
      expect(r.refused.get(ErrorCodes.TENANT_QUOTA)!.length).toBe(90);
      expect(r.refused.get(ErrorCodes.TENANT_QUOTA)![0]).toBe('tenant "acme" runs its maximum of 10 kernels (tenants.acme.max_kernels); shut one down first');
      // Only the admitted were ever launched, and another tenant is not held to acme's count.
      expect(t.made.length).toBe(10);
      expect((await t.manager.start({ name: 'fake', principal: person('x', 'globex') })).tenant).toBe('globex');
    } finally {
      await t.close();
    }
  });

  it('100 concurrent starts by one user against max_kernels_per_user: 4 start exactly 4', async () => {
    const t = managerWith(POLICY);
    try {
      const r = await startAll(Array.from({ length: 100 }, () => t.manager.start({ name: 'fake', principal: person('alice', 'acme') })));
      expect(r.ok).toBe(4);
      expect(r.refused.get(ErrorCodes.USER_KERNEL_LIMIT)!.length).toBe(96);
      expect(r.refused.get(ErrorCodes.USER_KERNEL_LIMIT)![0]).toContain('4 kernels per user (tenants.acme.max_kernels_per_user)');
      // A spoofed KERNEL_USERNAME does not get alice past her limit.
      await expect(t.manager.start({ name: 'fake', principal: person('alice', 'acme'), env: { KERNEL_USERNAME: 'mallory' } })).rejects.toMatchObject({
        code: ErrorCodes.USER_KERNEL_LIMIT,
      });
    } finally {
      await t.close();
    }
  });

  it('a resource total: two kernels of one MIG slice against a quota of 2, the third refused; a shut-down kernel gives its slice back', async () => {
    const t = managerWith(POLICY);
    try {
      const a = await t.manager.start({ name: 'gpu', principal: person('alice', 'acme') });
      expect(a.resources).toEqual({ cpu: 2, memory: 4 * 2 ** 30, extended: { 'nvidia.com/mig-3g.20gb': 1 } });
      expect(t.made[0]!.requests[0]!.resources).toEqual(a.resources);
      await t.manager.start({ name: 'gpu', principal: person('bob', 'acme') });
      await expect(t.manager.start({ name: 'gpu', principal: person('carol', 'acme') })).rejects.toMatchObject({
        code: ErrorCodes.TENANT_QUOTA,
        message: 'tenant "acme" holds 2 of its 2 nvidia.com/mig-3g.20gb (tenants.acme.resources); this kernel asks for 1 more',
      });
      // A kernel without a GPU still starts: the quota bounds only what is asked for.
      await t.manager.start({ name: 'fake', principal: person('carol', 'acme') });
      await t.manager.shutdown(a.id);
      await t.manager.start({ name: 'gpu', principal: person('carol', 'acme') });
    } finally {
      await t.close();
    }
  });

  it("the request's KERNEL_CPUS / KERNEL_MEMORY / KERNEL_GPUS / KERNEL_GPU_RESOURCE, bounded by max_per_kernel", async () => {
    const t = managerWith(POLICY);
    try {
      const k = await t.manager.start({ name: 'gpu', principal: person('alice', 'acme'), env: { KERNEL_CPUS: '500m', KERNEL_MEMORY: '2Gi', KERNEL_GPUS: '0' } });
      expect(k.resources).toEqual({ cpu: 0.5, memory: 2 * 2 ** 30 });
      const g = await t.manager.start({ name: 'fake', principal: person('alice', 'acme'), env: { KERNEL_GPU_RESOURCE: 'nvidia.com/mig-3g.20gb' } });
      expect(g.resources).toEqual({ extended: { 'nvidia.com/mig-3g.20gb': 1 } });
      await expect(t.manager.start({ name: 'fake', principal: person('alice', 'acme'), env: { KERNEL_CPUS: '8' } })).rejects.toMatchObject({
        code: ErrorCodes.TENANT_QUOTA,
        message: 'a kernel of tenant "acme" may ask for at most 4 cpu (tenants.acme.max_per_kernel); this one asks for 8',
      });
      await expect(t.manager.start({ name: 'fake', principal: person('alice', 'acme'), env: { KERNEL_MEMORY: '32Gi' } })).rejects.toMatchObject({
        message: 'a kernel of tenant "acme" may ask for at most 16Gi memory (tenants.acme.max_per_kernel); this one asks for 32Gi',
      });
      for (const [name, value] of [
        ['KERNEL_CPUS', 'lots'],
        ['KERNEL_MEMORY', '-1'],
        ['KERNEL_GPUS', '1000'],
        ['KERNEL_GPU_RESOURCE', 'gpu; rm -rf /'],
      ] as const) {
        await expect(t.manager.start({ name: 'fake', principal: person('alice', 'acme'), env: { [name]: value } })).rejects.toMatchObject({
          code: ErrorCodes.BAD_REQUEST,
          message: expect.stringContaining(`env.${name}`),
        });
      }
    } finally {
      await t.close();
    }
  });

  it('kernelspecs: a tenant starts and is shown only those its entry lists; its default is one of them', async () => {
    const t = managerWith(POLICY);
    try {
      await expect(t.manager.start({ name: 'gpu', principal: person('x', 'globex') })).rejects.toMatchObject({
        code: ErrorCodes.KERNELSPEC_NOT_ALLOWED,
        message: 'tenant "globex" may not start kernelspec "gpu" (the policy allows fake)',
      });
      expect(t.manager.kernelspecAllowed(person('x', 'globex'), 'gpu')).toBe(false);
      expect(t.manager.kernelspecAllowed(person('x', 'acme'), 'gpu')).toBe(true);
      // Tenants not listed get `default`, which lists no kernelspecs: all of them.
      expect(t.manager.kernelspecAllowed(person('x', 'initech'), 'gpu')).toBe(true);
    } finally {
      await t.close();
    }
  });

  it('tenants not listed are held to `default`; the gateway-wide --max-kernels holds over all tenants', async () => {
    const t = managerWith(POLICY, { maxKernels: 5 });
    try {
      const r = await startAll(Array.from({ length: 6 }, () => t.manager.start({ name: 'fake', principal: person('x', 'initech') })));
      expect(r.ok).toBe(3);
      expect(r.refused.get(ErrorCodes.TENANT_QUOTA)![0]).toContain('(default.max_kernels)');
      const s = await startAll(Array.from({ length: 6 }, () => t.manager.start({ name: 'fake', principal: person('y', 'acme') })));
      expect(s.ok).toBe(2);
      expect([...s.refused.keys()]).toEqual([ErrorCodes.KERNEL_LIMIT]);
    } finally {
      await t.close();
    }
  });

  it("warm-pool kernels count once handed out: a pool of 3 does not use the tenant's 2, a hand-out does", async () => {
    const t = managerWith('default:\n  max_kernels: 2\n');
    try {
      t.manager.pools.configure({ fake: 3 });
      const until = Date.now() + 5000;
      while ((t.manager.pools.stats()['fake']?.ready ?? 0) < 3 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
      expect(t.manager.pools.stats()['fake']!.ready).toBe(3);
      const a = await t.manager.start({ name: 'fake', principal: person('alice', 'acme2') });
      const b = await t.manager.start({ name: 'fake', principal: person('bob', 'acme2') });
      expect([a.tenant, b.tenant, a.pooled, b.pooled]).toEqual(['acme2', 'acme2', false, false]);
      await expect(t.manager.start({ name: 'fake', principal: person('carol', 'acme2') })).rejects.toMatchObject({ code: ErrorCodes.TENANT_QUOTA });
    } finally {
      await t.close();
    }
  });

  it('two gateways on one state dir share the count: 100 concurrent starts split between them start exactly 10', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kgate-quota-state-'));
    const specs = specsDir();
    const one = managerWith(POLICY, { specs: new KernelSpecStore([specs], 'fake'), store: new KernelStateStore(dir) });
    const two = managerWith(POLICY, { specs: new KernelSpecStore([specs], 'fake'), store: new KernelStateStore(dir) });
    try {
      const users = ['u0', 'u1', 'u2', 'u3', 'u4'];
      const r = await startAll(Array.from({ length: 100 }, (_, i) => (i % 2 ? one : two).manager.start({ name: 'fake', principal: person(users[i % 5]!, 'acme') })));
      expect({ ok: r.ok, refused: [...r.refused.keys()] }).toEqual({ ok: 10, refused: [ErrorCodes.TENANT_QUOTA] });
      expect(r.refused.get(ErrorCodes.TENANT_QUOTA)!.length).toBe(90);
      expect(one.made.length + two.made.length).toBe(10);
      // The count is of the store's records: a kernel shut down on one gateway frees a slot on the other.
      // (Which gateway won the admissions is a race: either may hold all ten.)
      const [holder, other] = one.manager.list().length > 0 ? [one, two] : [two, one];
      await holder.manager.shutdown(holder.manager.list()[0]!.id);
      await other.manager.start({ name: 'fake', principal: person('u9', 'acme') });
      await expect(holder.manager.start({ name: 'fake', principal: person('u9', 'acme') })).rejects.toMatchObject({ code: ErrorCodes.TENANT_QUOTA });
    } finally {
      await Promise.all([one.close(), two.close()]);
    }
  });

  it('a reservation left by a gateway that died mid-start does not hold a slot: its process is gone', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kgate-quota-state-'));
    mkdirSync(join(dir, 'reservations'));
    // As a gateway killed between its reservation and its record leaves it (pid 2^22+1 is past Linux's pid_max default).
    const stale = { owner: 'ghost', tenant: 'acme', resources: {}, host: (await import('node:os')).hostname(), pid: 4_194_305, expiresAt: Date.now() + 60_000 };
    for (let i = 0; i < 10; i++) writeFileSync(join(dir, 'reservations', `stale${i}.json`), JSON.stringify(stale));
    // And a lock file it died holding.
    writeFileSync(join(dir, '.admission.lock'), JSON.stringify({ host: stale.host, pid: stale.pid }));
    const t = managerWith(POLICY, { store: new KernelStateStore(dir) });
    try {
      const k = await t.manager.start({ name: 'fake', principal: person('alice', 'acme') });
      expect(k.tenant).toBe('acme');
    } finally {
      await t.close();
    }
  });
});

describe('the policy file', () => {
  it('a bad policy names every mistake by its place in the file', () => {
    const bad = `
default:
  max_kernel: 3
tenants:
  acme:
    max_kernels: -1
    resources: { cpu: lots, memory: 64Gx, nvidia.com/gpu: 1.5, disk: 1 }
    kernelspecs: ["../etc"]
  "bad tenant":
    max_kernels: 1
`;
    let err: unknown;
    try {
      parsePolicy(bad, 'p.yaml');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(PolicyError);
    const lines = (err as Error).message.split('\n');
    expect(lines).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^p\.yaml: default: Unrecognized key.*max_kernel/),
        'p.yaml: tenants.acme.max_kernels: must be 0 or more',
        'p.yaml: tenants.acme.kernelspecs.0: is not a kernelspec name',
        expect.stringMatching(/^p\.yaml: tenants\.bad tenant: is not a tenant name/),
      ]),
    );
    // Resource values are checked once the shape is right.
    expect(() => parsePolicy('tenants:\n  acme:\n    resources: { cpu: lots, memory: 64Gx, nvidia.com/gpu: 1.5, disk: 1 }\n', 'p.yaml')).toThrow(
      [
        'p.yaml: tenants.acme.resources.cpu: "lots" is not a CPU quantity (such as "4", "0.5" or "500m")',
        'p.yaml: tenants.acme.resources.memory: "64Gx" is not a memory quantity (such as "16Gi", "512Mi" or "2G")',
        'p.yaml: tenants.acme.resources.nvidia.com/gpu: 1.5 is not a whole count',
        'p.yaml: tenants.acme.resources: "disk" is not a resource (cpu, memory, or an extended resource such as nvidia.com/gpu)',
      ].join('\n'),
    );
    expect(() => parsePolicy('default: [1, 2\n', 'p.yaml')).toThrow(/^p\.yaml: not valid YAML/);
    expect(() => parsePolicy('tenants:\n  acme: {}\n  acme: {}\n', 'p.yaml')).toThrow(/not valid YAML/);
  });

  it('a reload with a bad file keeps the policy in force; a good one replaces it', async () => {
    const path = join(mkdtempSync(join(tmpdir(), 'kgate-policy-')), 'policy.yaml');
    writeFileSync(path, 'default:\n  max_kernels: 1\n');
    const p = new PolicyFile(path);
    expect(p.limitsFor('any')?.limits.maxKernels).toBe(1);
    writeFileSync(path, 'default:\n  max_kernels: lots\n');
    await expect(p.reload()).rejects.toBeInstanceOf(PolicyError);
    expect(p.limitsFor('any')?.limits.maxKernels).toBe(1);
    writeFileSync(path, 'default:\n  max_kernels: 7\n');
    await p.reload();
    expect(p.limitsFor('any')?.limits.maxKernels).toBe(7);
    expect(() => new PolicyFile(join(path, 'missing'))).toThrow(/cannot read the policy file/);
  });
});
