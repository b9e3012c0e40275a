/**
 * `--default-provisioner`: a kernelspec that names no provisioner (Debian's
 * own python3, as installed) runs under the one the operator chose. With
 * `sandbox`, the python3 kernel is checked from inside, through kgate as a
 * user runs code: a network namespace with only a loopback, no view of
 * kgate's state dir, its own pid namespace; its model says so. A kernelspec
 * that names `local` still runs locally beside it, and an unknown name stops
 * kgate before it serves, with exit code 2.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/config.js';
import { buildGateway, KernelClient, startGateway, type TestGateway } from '../helpers/gateway.js';
import { ok, PROBE } from '../helpers/kernel-attacks.js';
import { writeKernelspec } from '../helpers/provisioner-specs.js';

const dir = realpathSync(mkdtempSync(join(tmpdir(), 'kgate-defprov-')));
const stateDir = join(dir, 'state');
const specDir = join(dir, 'specs');
let t: TestGateway;

beforeAll(async () => {
  mkdirSync(stateDir, { recursive: true });
  writeFileSync(join(stateDir, 'marker'), 'kgate state');
  writeKernelspec(specDir, 'named-local', { provisioner: 'local' });
  t = await startGateway(['--default-provisioner', 'sandbox', '--state-dir', stateDir, '--runtime-dir', join(dir, 'runtime')], { kernelspecDirs: [specDir] });
}, 30_000);

afterAll(async () => {
  await t?.close();
  rmSync(dir, { recursive: true, force: true });
});

const INTERFACES = 'import socket; print(sorted(n for _, n in socket.if_nameindex()))';

describe('--default-provisioner', () => {
  it('sandbox: the built-in python3 kernelspec (naming no provisioner) runs sandboxed, and its model says so; one naming local stays local', async () => {
    // Debian's python3 kernelspec, as installed: no metadata.kernel_provisioner.
    const spec = (await (await t.api('api/kernelspecs/python3')).json()) as { spec: { metadata?: Record<string, unknown> } };
    expect(spec.spec.metadata?.['kernel_provisioner']).toBeUndefined();
    const id = await t.startKernel('python3');
    const model = (await (await t.api(`api/kernels/${id}`)).json()) as { kgate: { provisioner: string } };
    expect(model.kgate.provisioner).toBe('sandbox');
    const c = await KernelClient.connect(t, id);
    // From inside: a network namespace with only a loopback, kgate's state dir out of sight, pid 1 its own.
    expect(await ok(c, INTERFACES)).toBe("['lo']");
    expect(await ok(c, PROBE(join(stateDir, 'marker')))).toBe('refused:FileNotFoundError');
    expect(await ok(c, 'import os; print(min(int(p) for p in os.listdir("/proc") if p.isdigit()))')).toBe('1');
    c.close();

    const local = await t.startKernel('named-local');
    expect(((await (await t.api(`api/kernels/${local}`)).json()) as { kgate: { provisioner: string } }).kgate.provisioner).toBe('local');
    const cl = await KernelClient.connect(t, local);
    // The host's interfaces (more than a loopback) and its files: the same checks, the other outcome.
    expect(await ok(cl, INTERFACES)).not.toBe("['lo']");
    expect(await ok(cl, PROBE(join(stateDir, 'marker')))).toBe('read:kgate state');
    cl.close();
    for (const k of [id, local]) expect((await t.api(`api/kernels/${k}`, { method: 'DELETE' })).status).toBe(204);
  }, 90_000);

  it('an unknown name stops the start: a ConfigError naming the provisioners there are, and exit code 2 from the CLI', async () => {
    await expect(buildGateway(['--default-provisioner', 'nosuch'])).rejects.toThrow(ConfigError);
    await expect(buildGateway(['--default-provisioner', 'nosuch'])).rejects.toThrow(/no provisioner "nosuch" \(it has [^)]*local[^)]*sandbox/);
    const cli = fileURLToPath(new URL('../../src/cli.ts', import.meta.url));
    const r = spawnSync(process.execPath, ['--import', 'tsx', cli, '--port', '0', '--default-provisioner', 'nosuch'], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/^kgate: --default-provisioner: this gateway has no provisioner "nosuch"/);
    // Not even a name: refused by the option's own schema, exit code 2 as well.
    const bad = spawnSync(process.execPath, ['--import', 'tsx', cli, '--port', '0', '--default-provisioner', '../x'], { encoding: 'utf8', timeout: 30_000 });
    expect(bad.status, bad.stderr).toBe(2);
    expect(bad.stderr).toContain('--default-provisioner (KG_DEFAULT_PROVISIONER)');
  }, 60_000);
});
