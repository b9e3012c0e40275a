/**
 * A sandboxed kernel outlives a gateway killed with `kill -9` when there is a
 * state dir (bwrap runs without --die-with-parent then), and the next kgate
 * on the same state dir adopts it: same process, same state, same ipc
 * sockets. One that died while no gateway ran is cleaned up on adoption (its
 * cgroup and directory go). kgate runs as a real process (dist/cli.js, with
 * the built-in sandbox provisioner), killed for real. A launch that cannot
 * run its argv in the sandbox is a clear KG_KERNEL_START_FAILED that leaves
 * nothing behind.
 */
import { chmodSync, existsSync, rmdirSync, rmSync, mkdirSync, mkdtempSync, readdirSync, realpathSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CGROUP_PREFIX } from '../../src/provisioner/cgroups.js';
import { gatewayClient, KernelClient, stdout, type GatewayClient } from '../helpers/gateway.js';
import { startKgate, type Running } from '../helpers/kgate-process.js';
import { processesMatching } from '../helpers/procs.js';
import { cgroupDirsNamed, kernelCgroupDirs } from '../helpers/provisioner-specs.js';

const TOKEN = 'sandbox-adoption-token';
const dir = realpathSync(mkdtempSync(join(tmpdir(), 'kgate-sba-')));
const stateDir = join(dir, 'state');
const runtimeDir = join(dir, 'runtime');
const specDir = join(dir, 'specs');
/** The built-in sandbox's base directory (no XDG_RUNTIME_DIR here: /dev/shm). */
const BASE = process.env['XDG_RUNTIME_DIR'] ? join(process.env['XDG_RUNTIME_DIR'], 'kgate-sandbox') : `/dev/shm/kgate-sandbox-${process.getuid!()}`;
const running: Running[] = [];
const started: string[] = [];

function spec(name: string, argv0: string): void {
  mkdirSync(join(specDir, name), { recursive: true, mode: 0o755 });
  writeFileSync(
    join(specDir, name, 'kernel.json'),
    JSON.stringify({
      argv: [argv0, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
      display_name: name,
      language: 'python',
      metadata: { kernel_provisioner: { provisioner_name: 'sandbox' }, kgate: { resources: { memory: '256Mi' } } },
    }),
  );
}
// The sandbox runs as "nobody" when kgate is root: it must be able to reach the kernelspec directory it binds.
chmodSync(dir, 0o755);
spec('sandboxed', '/usr/bin/python3');
// A program that exists on the host, in a directory the sandbox does not bind.
mkdirSync(join(dir, 'not-bound'), { mode: 0o755 });
writeFileSync(join(dir, 'not-bound', 'python3'), '#!/bin/sh\nexec /usr/bin/python3 "$@"\n', { mode: 0o755 });
spec('outside', join(dir, 'not-bound', 'python3'));

afterAll(async () => {
  for (const k of running) k.child.kill('SIGKILL');
  for (const id of started) for (const pid of processesMatching(join(BASE, id))) process.kill(pid, 'SIGKILL');
  // What a gateway killed without a state dir leaves: the kernel's empty cgroup and its directory (nothing records them).
  await new Promise((r) => setTimeout(r, 200));
  for (const id of started) {
    for (const d of kernelCgroupDirs(id)) rmdirSync(d);
    rmSync(join(BASE, id), { recursive: true, force: true });
  }
});

/** Every kernel cgroup on the host, sorted (what a run leaves behind is compared before and after). */
const allKernelCgroups = (): string[] => cgroupDirsNamed((name) => name.startsWith(CGROUP_PREFIX)).sort();

async function kgate(): Promise<Running & { t: GatewayClient }> {
  const k = await startKgate(['--port', '0', '--auth-token', TOKEN, '--state-dir', stateDir, '--runtime-dir', runtimeDir, '--kernelspec-dir', specDir]);
  running.push(k);
  return { ...k, t: gatewayClient(k.url, TOKEN) };
}

async function run(c: KernelClient, code: string): Promise<string> {
  const m = c.execute(code);
  const r = await c.reply(m);
  expect(r.content['status'], JSON.stringify(r.content)).toBe('ok');
  return stdout(c.outputs(m)).trim();
}

describe('sandbox provisioner: adoption after kill -9, and a failed launch', () => {
  it('adopts the live sandbox with its state, cleans up the dead one, and shutdown leaves nothing', async () => {
    const first = await kgate();
    const a = await first.t.startKernel('sandboxed');
    const dead = await first.t.startKernel('sandboxed');
    started.push(a, dead);
    const c = await KernelClient.connect(first.t, a);
    await run(c, 'x = 42');
    const pidsA = processesMatching(join(BASE, a));
    expect(pidsA.length).toBeGreaterThan(0);

    first.child.kill('SIGKILL');
    await first.exited;
    await c.waitClosed();
    // Without --die-with-parent the sandbox outlives the gateway; then one dies while no gateway runs.
    expect(processesMatching(join(BASE, a))).toEqual(pidsA);
    for (const pid of processesMatching(join(BASE, dead))) process.kill(pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 300));
    expect(kernelCgroupDirs(dead).length).toBeGreaterThan(0);

    const second = await kgate();
    const listed = ((await (await second.t.api('api/kernels')).json()) as Array<{ id: string }>).map((k) => k.id);
    expect(listed).toEqual([a]);
    expect(kernelCgroupDirs(dead)).toEqual([]);
    expect(existsSync(join(BASE, dead))).toBe(false);
    const c2 = await KernelClient.connect(second.t, a);
    expect(await run(c2, 'print(x)')).toBe('42');
    expect(processesMatching(join(BASE, a))).toEqual(pidsA);
    c2.close();

    expect((await second.t.api(`api/kernels/${a}`, { method: 'DELETE' })).status).toBe(204);
    expect(processesMatching(join(BASE, a))).toEqual([]);
    expect(kernelCgroupDirs(a)).toEqual([]);
    expect(existsSync(join(BASE, a))).toBe(false);

    // An argv the sandbox cannot run: bwrap's own error, in a clear start failure, and nothing left.
    const before = { dirs: readdirSync(BASE).sort(), cgroups: allKernelCgroups() };
    const r = await second.t.api('api/kernels', { method: 'POST', json: { name: 'outside' } });
    const body = (await r.json()) as { code: string; message: string };
    expect(r.status).toBe(500);
    expect(body.code).toBe('KG_KERNEL_START_FAILED');
    expect(body.message).toMatch(/execvp|No such file/);
    expect({ dirs: readdirSync(BASE).sort(), cgroups: allKernelCgroups() }).toEqual(before);
    second.child.kill('SIGKILL');
    await second.exited;
  }, 120_000);

  it('without a state dir the sandbox ends with the gateway, even after kill -9 (--die-with-parent)', async () => {
    const k = await startKgate(['--port', '0', '--auth-token', TOKEN, '--runtime-dir', runtimeDir, '--kernelspec-dir', specDir]);
    running.push(k);
    const t = gatewayClient(k.url, TOKEN);
    const id = await t.startKernel('sandboxed');
    started.push(id);
    expect(processesMatching(join(BASE, id)).length).toBeGreaterThan(0);
    k.child.kill('SIGKILL');
    await k.exited;
    const deadline = Date.now() + 5000;
    while (processesMatching(join(BASE, id)).length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(processesMatching(join(BASE, id))).toEqual([]);
  }, 60_000);
});
