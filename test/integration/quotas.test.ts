/**
 * Tenant quotas (--policy) end to end: kgate as its own process, real
 * (bench) kernels, 100 concurrent starts over HTTP. The operator token is
 * tenant `default`; a per-user limit is keyed on the KERNEL_USERNAME the
 * operator (allowed to impersonate) names. JWT users are in ownership.test.ts.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI, startKgate, type Running } from '../helpers/kgate-process.js';

const TOKEN = 'quota-test-token-0123456789';
const running: Running[] = [];

afterAll(async () => {
  for (const k of running) k.child.kill('SIGTERM');
  await Promise.all(running.map((k) => k.exited));
});

/** A kernelspec dir: `mig`, the bench kernel holding one MIG slice (from its metadata). */
function specsDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'kgate-quota-specs-'));
  mkdirSync(join(dir, 'mig'));
  const bench = join(CLI, '..', 'bench-kernel', 'main.js');
  writeFileSync(
    join(dir, 'mig', 'kernel.json'),
    JSON.stringify({
      argv: [process.execPath, bench, '{connection_file}'],
      display_name: 'bench kernel with a MIG slice',
      language: 'text',
      interrupt_mode: 'message',
      metadata: { kgate: { resources: { cpu: '1', memory: '1Gi', 'nvidia.com/mig-3g.20gb': 1 } } },
    }),
  );
  return dir;
}

async function gateway(policy: string, extra: string[] = [], stateDir?: string): Promise<Running & { post: (body: object) => Promise<Response> }> {
  const dir = mkdtempSync(join(tmpdir(), 'kgate-quota-'));
  const file = join(dir, 'policy.yaml');
  writeFileSync(file, policy);
  const k = await startKgate([
    '--port',
    '0',
    '--auth-token',
    TOKEN,
    '--policy',
    file,
    '--kernelspec-dir',
    specsDir(),
    '--runtime-dir',
    join(dir, 'runtime'),
    ...(stateDir ? ['--state-dir', stateDir] : []),
    ...extra,
  ]);
  running.push(k);
  const post = (body: object): Promise<Response> =>
    fetch(`${k.url}api/kernels`, { method: 'POST', headers: { Authorization: `token ${TOKEN}`, 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  return { ...k, post };
}

/** Status counts of settled responses, and the distinct error bodies. */
async function tally(responses: Response[]): Promise<{ statuses: Record<number, number>; errors: Map<string, number> }> {
  const statuses: Record<number, number> = {};
  const errors = new Map<string, number>();
  for (const r of responses) {
    statuses[r.status] = (statuses[r.status] ?? 0) + 1;
    if (r.status !== 201) {
      const b = (await r.json()) as { code: string; message: string };
      errors.set(`${b.code}: ${b.message}`, (errors.get(`${b.code}: ${b.message}`) ?? 0) + 1);
    } else await r.body?.cancel();
  }
  return { statuses, errors };
}

describe('tenant quotas over HTTP (real bench kernels)', () => {
  it('100 concurrent starts against max_kernels: 10 start exactly 10; 90 get 403 KG_TENANT_QUOTA naming the limit', async () => {
    const g = await gateway('default:\n  max_kernels: 10\n');
    const t = await tally(await Promise.all(Array.from({ length: 100 }, () => g.post({ name: 'kgate-bench' }))));
    console.log('concurrent starts, tenant max_kernels 10:', JSON.stringify(t.statuses), [...t.errors]);
    expect(t.statuses).toEqual({ 201: 10, 403: 90 });
    expect([...t.errors]).toEqual([['KG_TENANT_QUOTA: tenant "default" runs its maximum of 10 kernels (default.max_kernels); shut one down first', 90]]);
    const list = (await (await fetch(`${g.url}api/kernels`, { headers: { Authorization: `token ${TOKEN}` } })).json()) as Array<{ execution_state: string }>;
    expect(list.length).toBe(10);
  });

  it('100 concurrent starts for one user against max_kernels_per_user: 2 start exactly 2', async () => {
    const g = await gateway('default:\n  max_kernels_per_user: 2\n');
    const t = await tally(await Promise.all(Array.from({ length: 100 }, () => g.post({ name: 'kgate-bench', env: { KERNEL_USERNAME: 'alice' } }))));
    console.log('concurrent starts, max_kernels_per_user 2:', JSON.stringify(t.statuses), [...t.errors]);
    expect(t.statuses).toEqual({ 201: 2, 403: 98 });
    expect([...t.errors]).toEqual([['KG_USER_KERNEL_LIMIT: user "alice" runs the maximum of 2 kernels per user (default.max_kernels_per_user); shut one down first', 98]]);
    // Another user still gets theirs.
    expect((await g.post({ name: 'kgate-bench', env: { KERNEL_USERNAME: 'bob' } })).status).toBe(201);
  });

  it('a resource total: two kernels of one MIG slice against a quota of 2, the third refused; a DELETE frees its slice', async () => {
    const g = await gateway('default:\n  resources: { nvidia.com/mig-3g.20gb: 2 }\n  max_per_kernel: { cpu: "2" }\n');
    const a = await g.post({ name: 'mig' });
    expect(a.status).toBe(201);
    const first = (await a.json()) as { id: string };
    expect((await g.post({ name: 'mig' })).status).toBe(201);
    const third = await g.post({ name: 'mig' });
    expect(third.status).toBe(403);
    expect(await third.json()).toEqual({
      reason: 'Forbidden',
      code: 'KG_TENANT_QUOTA',
      message: 'tenant "default" holds 2 of its 2 nvidia.com/mig-3g.20gb (default.resources); this kernel asks for 1 more',
    });
    const big = await g.post({ name: 'mig', env: { KERNEL_CPUS: '3' } });
    expect(await big.json()).toMatchObject({
      code: 'KG_TENANT_QUOTA',
      message: 'a kernel of tenant "default" may ask for at most 2 cpu (default.max_per_kernel); this one asks for 3',
    });
    const bad = await g.post({ name: 'mig', env: { KERNEL_MEMORY: 'a lot' } });
    expect(bad.status).toBe(400);
    expect(await bad.json()).toMatchObject({ code: 'KG_BAD_REQUEST' });
    expect((await fetch(`${g.url}api/kernels/${first.id}`, { method: 'DELETE', headers: { Authorization: `token ${TOKEN}` } })).status).toBe(204);
    expect((await g.post({ name: 'mig' })).status).toBe(201);
  });

  it('two kgate processes on one state dir share the count: 100 concurrent starts split between them start exactly 10', async () => {
    const state = mkdtempSync(join(tmpdir(), 'kgate-quota-state-'));
    const [a, b] = await Promise.all([gateway('default:\n  max_kernels: 10\n', [], state), gateway('default:\n  max_kernels: 10\n', [], state)]);
    const t = await tally(await Promise.all(Array.from({ length: 100 }, (_, i) => (i % 2 ? a : b).post({ name: 'kgate-bench' }))));
    console.log('concurrent starts split over two replicas, max_kernels 10:', JSON.stringify(t.statuses));
    expect(t.statuses).toEqual({ 201: 10, 403: 90 });
  });

  it('SIGHUP reads the policy again: a new limit holds from the next start; a bad file is logged and the policy in force stays', async () => {
    const g = await gateway('default:\n  max_kernels: 1\n');
    const file = g.child.spawnargs[g.child.spawnargs.indexOf('--policy') + 1]!;
    expect((await g.post({ name: 'kgate-bench' })).status).toBe(201);
    expect((await g.post({ name: 'kgate-bench' })).status).toBe(403);
    const logged = (text: string): Promise<void> =>
      new Promise((resolve) => {
        const seen = (d: Buffer): void => {
          if (d.toString().includes(text)) {
            g.child.stdout!.off('data', seen);
            g.child.stderr!.off('data', seen);
            resolve();
          }
        };
        g.child.stdout!.on('data', seen);
        g.child.stderr!.on('data', seen);
      });
    writeFileSync(file, 'default:\n  max_kernels: 2\n');
    let done = logged('reloaded');
    g.child.kill('SIGHUP');
    await done;
    expect((await g.post({ name: 'kgate-bench' })).status).toBe(201);
    expect((await g.post({ name: 'kgate-bench' })).status).toBe(403);
    writeFileSync(file, 'default:\n  max_kernels: many\n');
    done = logged('reload failed');
    g.child.kill('SIGHUP');
    await done;
    const still = await g.post({ name: 'kgate-bench' });
    expect(await still.json()).toMatchObject({ code: 'KG_TENANT_QUOTA', message: expect.stringContaining('maximum of 2 kernels') });
  });

  it('a bad policy file stops kgate before it serves, naming each mistake; exit code 2', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kgate-quota-'));
    const file = join(dir, 'policy.yaml');
    writeFileSync(file, 'default:\n  max_kernels: ten\ntenants:\n  acme:\n    resources: { memory: 64Gx }\n    kernelspec: [python3]\n');
    const child = spawn(process.execPath, [CLI, '--port', '0', '--auth-token', TOKEN, '--policy', file], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    expect(code).toBe(2);
    expect(err).toContain(`${file}: default.max_kernels: Invalid input: expected number, received string`);
    expect(err).toContain(`${file}: tenants.acme: Unrecognized key: "kernelspec"`);
    expect(err).not.toContain('    at ');
  });
});
