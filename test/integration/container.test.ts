/**
 * The container provisioner with real ipykernels (Debian's python3-ipykernel
 * in the image scripts/build-kernel-image.sh builds) in rootful podman,
 * through an in-process kgate, and the attacks a user can make by executing
 * code: reach kgate's port or another service on 127.0.0.1, read kgate's
 * state dir or another kernel's connection file, write the root, allocate
 * past the memory limit, fork past the process limit. Each must fail for the
 * kernel while kgate and the other kernels go on; the outcomes are printed as
 * a table. Then adoption after `kill -9` of a real kgate process (dist/cli.js,
 * the built-in container provisioner), a missing image, and the start time of
 * ten kernels (median) next to local and sandbox.
 *
 * Nothing is skipped: a machine where podman cannot run the image fails here
 * with the reason.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ProvisionerRegistry } from '../../src/provisioner/registry.js';
import { containerProvisionerFactory } from '../../src/provisioner/container.js';
import { sandboxProvisionerFactory } from '../../src/provisioner/sandbox.js';
import { createLogger } from '../../src/log.js';
import { KernelClient, gatewayClient, interruptUntilReplied, startGateway, stdout, type GatewayClient, type TestGateway } from '../helpers/gateway.js';
import { startKgate, type Running } from '../helpers/kgate-process.js';
import { until } from '../helpers/wait.js';
import { CONNECT, FORK_BOMB, ok, PROBE, run, WRITE } from '../helpers/kernel-attacks.js';

const IMAGE = 'localhost/kgate-kernel-python3:bookworm';
const PODMAN = '/usr/bin/podman';
const PODMAN_ARGS = ['--cgroup-manager=cgroupfs', '--runtime=runc', '--events-backend=file'];
const dir = realpathSync(mkdtempSync(join(tmpdir(), 'kgate-ct-')));
const stateDir = join(dir, 'state');
const runtimeDir = join(dir, 'runtime');
const specDir = join(dir, 'specs');
// Short: the ipc socket paths must fit in 107 bytes.
const baseDir = mkdtempSync('/dev/shm/kgct-');
const INSTANCE = `test-${process.pid}`;
const MEMORY = 256 * 1024 * 1024;
const V1 = !existsSync('/sys/fs/cgroup/cgroup.controllers');
const PIDS = 64;
const CONF = join(dir, 'containers.conf');
let t: TestGateway;
let service: Server;
let serviceAccepted = 0;
const table: Array<{ attack: string; outcome: string }> = [];
const timings: Record<string, number[]> = {};

function kernelspec(name: string, provisioner: string, config: Record<string, unknown>, resources: Record<string, unknown>, into = specDir): void {
  const d = join(into, name);
  mkdirSync(d, { recursive: true, mode: 0o755 });
  const spec = {
    argv: ['/usr/bin/python3', '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
    display_name: name,
    language: 'python',
    metadata: { kernel_provisioner: { provisioner_name: provisioner, config }, kgate: { resources } },
  };
  writeFileSync(join(d, 'kernel.json'), JSON.stringify(spec));
}

function podman(args: string[]): string {
  return execFileSync(PODMAN, [...PODMAN_ARGS, ...args], { env: { ...process.env, CONTAINERS_CONF: CONF }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** The containers of a kernel (any state), by its label. */
function containersOf(id: string): string[] {
  return podman(['ps', '--all', '--quiet', `--filter=label=kgate.kernel-id=${id}`])
    .split('\n')
    .filter(Boolean);
}

/** Why podman cannot run the kernel image here, or undefined: a reason outside the project is a failure with that reason, never a skip. */
function podmanProblem(): string | undefined {
  if (!existsSync(PODMAN)) return `${PODMAN} is missing: install Debian's podman and runc (scripts/setup.sh --test does)`;
  writeFileSync(CONF, '[containers]\ndefault_ulimits = []\n');
  try {
    podman(['image', 'exists', IMAGE]);
  } catch {
    return `the image ${IMAGE} is missing: build it with scripts/build-kernel-image.sh (scripts/setup.sh --test does)`;
  }
  try {
    podman(['run', '--rm', '--network=none', IMAGE, '/usr/bin/python3', '-c', 'import ipykernel']);
    return undefined;
  } catch (e) {
    return `podman cannot run ${IMAGE} here: ${String((e as { stderr?: string }).stderr ?? e)}`;
  }
}

beforeAll(async () => {
  const problem = podmanProblem();
  if (problem) throw new Error(problem);
  chmodSync(dir, 0o755);
  mkdirSync(stateDir, { mode: 0o700 });
  mkdirSync(runtimeDir, { mode: 0o700 });
  writeFileSync(join(stateDir, 'secret.json'), '{"key": "secret"}', { mode: 0o600 });
  kernelspec('containerised', 'container', { image: IMAGE, pids: PIDS }, { memory: '256Mi', cpu: '0.5' });
  kernelspec('missing-image', 'container', { image: 'localhost/kgate-no-such-image:1' }, {});
  kernelspec('sandboxed', 'sandbox', {}, { memory: '256Mi' });
  service = createServer((s) => {
    serviceAccepted++;
    s.destroy();
  });
  await new Promise<void>((r) => service.listen(0, '127.0.0.1', r));
  t = await startGateway(['--state-dir', stateDir, '--runtime-dir', runtimeDir], {
    kernelspecDirs: [specDir],
    provisioners: [containerProvisionerFactory({ baseDir, instance: INSTANCE }), sandboxProvisionerFactory({ baseDir: join(baseDir, 'sb'), hide: [stateDir, runtimeDir] })],
  });
}, 120_000);

afterAll(async () => {
  await t?.close();
  service?.close();
  try {
    for (const c of podman(['ps', '--all', '--quiet', `--filter=label=kgate.instance=${INSTANCE}`])
      .split('\n')
      .filter(Boolean))
      podman(['rm', '--force', '--time=0', c]);
  } catch {
    // podman missing: the beforeAll said so
  }
  rmSync(baseDir, { recursive: true, force: true });
  rmSync(dir, { recursive: true, force: true });
  if (table.length > 0) console.log(`container attacks:\n${table.map((r) => `  ${r.attack.padEnd(52)} ${r.outcome}`).join('\n')}`);
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const lines = Object.entries(timings).map(([p, xs]) => `  ${p.padEnd(10)} median ${median(xs)} ms of ${xs.length} (min ${Math.min(...xs)}, max ${Math.max(...xs)})`);
  if (lines.length > 0) console.log(`kernel start time (POST /api/kernels until it answers):\n${lines.join('\n')}`);
});

describe('registry', () => {
  it('a kernelspec naming provisioner_name: container gets the built-in container provisioner', () => {
    const reg = new ProvisionerRegistry([], 'local', createLogger('silent'));
    const p = reg.create({
      name: 'c',
      resourceDir: specDir,
      spec: { argv: ['x'], display_name: 'c', language: 'python', metadata: { kernel_provisioner: { provisioner_name: 'container', config: { image: IMAGE } } } },
    });
    expect(p.name).toBe('container');
  });
});

describe('container provisioner: a real ipykernel in podman', () => {
  it('starts, executes, is interrupted and restarted over ipc, and every attack fails while kgate and the other kernels go on; shutdown leaves nothing', async () => {
    // A client's value that looks like podman options is only ever the kernel's variable.
    const a = await t.startKernel('containerised', { KERNEL_PROBE: '--privileged --network=host x=y' });
    const b = await t.startKernel('containerised');
    const ids = [a, b];
    const ca = await KernelClient.connect(t, a);
    const cb = await KernelClient.connect(t, b);
    expect(await ok(ca, 'print(6*7)')).toBe('42');
    const connA = t.gw.ctx.kernels.get(a).conn!;
    const connB = t.gw.ctx.kernels.get(b).conn!;
    expect(connA.transport).toBe('ipc');
    expect(connA.ip).toBe(join(baseDir, a, 'k'));
    expect(containersOf(a)).toHaveLength(1);
    const inspect = JSON.parse(podman(['inspect', '--type=container', containersOf(a)[0]!]))[0] as {
      Config: { Labels: Record<string, string>; User: string };
      HostConfig: { NetworkMode: string; ReadonlyRootfs: boolean; Memory: number; PidsLimit: number; NanoCpus: number; CapDrop?: string[]; SecurityOpt?: string[] };
    };
    expect(inspect.Config.Labels).toMatchObject({ 'kgate.kernel-id': a, 'kgate.instance': INSTANCE });
    expect(inspect.Config.User).toBe('1000:1000');
    expect(inspect.HostConfig).toMatchObject({ NetworkMode: 'none', ReadonlyRootfs: true, PidsLimit: PIDS, NanoCpus: 500_000_000 });
    // cgroup v1: the memory limit is on the kernel's parent cgroup (so its OOM kills can be counted); v2: podman's own.
    if (V1) expect(readFileSync(`/sys/fs/cgroup/memory/kgate-kernel-${a}/memory.limit_in_bytes`, 'utf8').trim()).toBe(String(MEMORY));
    else expect(inspect.HostConfig.Memory).toBe(MEMORY);
    expect(await ok(ca, 'import os; print(os.getuid(), os.getgid())')).toBe('1000 1000');
    expect(await ok(ca, "import os; print(os.environ.get('KERNEL_PROBE'))")).toBe('--privileged --network=host x=y');
    // The kernel's own environment, not kgate's (podman runs with kgate's PATH and HOME).
    expect(await ok(ca, "import os; print(os.environ['HOME'], os.environ['PATH'], 'CONTAINERS_CONF' in os.environ)")).toBe('/home/kernel /usr/local/bin:/usr/bin:/bin False');
    expect(await ok(ca, "print([l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1])")).toBe('0000000000000000');
    expect(await ok(ca, "print([l for l in open('/proc/self/status') if l.startswith('NoNewPrivs')][0].split()[1])")).toBe('1');

    // Network: none, only a loopback with nothing on it.
    const kgatePort = Number(new URL(t.url).port);
    const servicePort = (service.address() as { port: number }).port;
    expect(await ok(ca, 'import socket; print(sorted(n for _, n in socket.if_nameindex()))')).toBe("['lo']");
    for (const [what, host, port] of [
      ["kgate's own port", '127.0.0.1', kgatePort],
      ['a TCP service of the test on 127.0.0.1', '127.0.0.1', servicePort],
      ['a non-loopback address (10.0.0.1:80)', '10.0.0.1', 80],
    ] as const) {
      const out = await ok(ca, CONNECT(host, port));
      expect(out, what).toMatch(/^refused:(ECONNREFUSED|ENETUNREACH|EHOSTUNREACH)$/);
      table.push({ attack: `connect to ${what}`, outcome: out });
    }
    expect(serviceAccepted).toBe(0);

    // Files: the host's are not there at all (the image's root, not the host's).
    for (const [what, path, expected] of [
      ["kgate's state dir (kernel records and keys)", stateDir, /^refused:FileNotFoundError$/],
      ["a file in kgate's state dir", join(stateDir, 'secret.json'), /^refused:FileNotFoundError$/],
      ["the containers' base dir (every kernel's dir)", baseDir, /^refused:FileNotFoundError$/],
      ["another kernel's connection file", join(baseDir, b, 'connection.json'), /^refused:FileNotFoundError$/],
      ["the image's /etc/shadow", '/etc/shadow', /^refused:PermissionError$/],
      ['/root', '/root', /^refused:PermissionError$/],
    ] as const) {
      const out = await ok(ca, PROBE(path));
      expect(out, what).toMatch(expected);
      table.push({ attack: `read ${what}`, outcome: out });
    }
    expect(await ok(ca, 'import os; print(sorted(os.listdir("/run/kgate")))')).toBe("['connection.json', 'k-1', 'k-2', 'k-3', 'k-4', 'k-5']");
    for (const [what, path] of [
      ['/ (read-only root)', '/planted'],
      ['/usr', '/usr/planted'],
      ['/etc', '/etc/planted'],
    ] as const) {
      const out = await ok(ca, WRITE(path));
      expect(out, what).toMatch(/^refused:(OSError:30|PermissionError:13)$/);
      table.push({ attack: `write ${what}`, outcome: out });
    }
    expect(await ok(ca, WRITE('/tmp/allowed'))).toBe('written');
    expect(await ok(ca, WRITE('/home/kernel/allowed'))).toBe('written');

    // Interrupt (podman kill --signal SIGINT, passed on by the container's init) and restart in place, over the same ipc sockets.
    const sleeping = ca.execute('import time; time.sleep(60)');
    const interrupted = await interruptUntilReplied(ca, sleeping, () => t.api(`api/kernels/${a}/interrupt`, { method: 'POST' }));
    expect(interrupted.content['ename']).toBe('KeyboardInterrupt');
    const before = containersOf(a);
    expect((await t.api(`api/kernels/${a}/restart`, { method: 'POST' })).status).toBe(200);
    expect(await ok(ca, 'print(6*7)')).toBe('42');
    expect(t.gw.ctx.kernels.get(a).conn).toEqual(connA);
    expect(containersOf(a)).toHaveLength(1);
    expect(containersOf(a)).not.toEqual(before);

    // A fork bomb: bounded by the pids limit; kgate and the other kernel go on.
    const bomb = await run(cb, FORK_BOMB, 60_000);
    expect(bomb.out).toMatch(/^stopped \d+ BlockingIOError$/);
    expect(Number(bomb.out.split(' ')[1])).toBeLessThan(PIDS);
    table.push({ attack: `fork bomb (pids limit ${PIDS})`, outcome: `${bomb.out}; the kernel survives` });
    expect(await ok(ca, 'print("a goes on")')).toBe('a goes on');

    // Memory: past its 256 MiB the kernel is killed (podman: OOMKilled), reported so, and restarted; kgate and the other kernel go on.
    const provB = t.gw.ctx.kernels.get(b).provisioner;
    const hog = cb.execute(`x = b'1' * (${MEMORY} * 2)\nprint('allocated')`);
    await until(() => provB.lastExit?.()?.reason === 'out_of_memory', 'the kernel killed for memory', 60_000);
    expect(provB.lastExit?.()?.detail).toMatch(/memory limit of 256 ?Mi/);
    expect(stdout(cb.outputs(hog))).not.toContain('allocated');
    table.push({ attack: 'allocate 512 MiB (limit 256 MiB)', outcome: `killed: ${provB.lastExit?.()?.detail}` });
    expect(await ok(ca, 'print("a goes on")')).toBe('a goes on');
    await until(
      async () => ((await (await t.api(`api/kernels/${b}`)).json()) as { execution_state: string }).execution_state === 'idle',
      'the kernel restarted after its OOM kill',
      60_000,
    );
    expect(await ok(cb, 'print("b restarted")')).toBe('b restarted');
    expect(t.gw.ctx.kernels.get(b).conn).toEqual(connB);
    const model = (await (await t.api(`api/kernels/${b}`)).json()) as { kgate: { last_death?: { reason: string; message: string } } };
    expect(model.kgate.last_death).toMatchObject({ reason: 'out_of_memory', message: expect.stringMatching(/memory limit of 256 ?Mi/) });

    // Shutdown leaves nothing: no container (in any state), no ipc socket or connection file.
    ca.close();
    cb.close();
    for (const id of ids) expect((await t.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
    for (const id of ids) expect(containersOf(id)).toEqual([]);
    for (const id of ids) expect(readdirSync('/sys/fs/cgroup').filter((c) => existsSync(`/sys/fs/cgroup/${c}/kgate-kernel-${id}`))).toEqual([]);
    expect(readdirSync(baseDir).filter((f) => f !== 'containers.conf' && f !== 'sb')).toEqual([]);
  }, 300_000);

  it('a missing image is a clear KG_KERNEL_START_FAILED naming it, at once, and leaves nothing', async () => {
    const started = Date.now();
    const r = await t.api('api/kernels', { method: 'POST', json: { name: 'missing-image' } });
    const body = (await r.json()) as { code: string; message: string };
    expect(r.status).toBe(500);
    expect(body.code).toBe('KG_KERNEL_START_FAILED');
    expect(body.message).toContain('localhost/kgate-no-such-image:1');
    expect(Date.now() - started).toBeLessThan(5000);
    expect(readdirSync(baseDir).filter((f) => f !== 'containers.conf' && f !== 'sb')).toEqual([]);
    table.push({ attack: 'start with a missing image', outcome: `${r.status} ${body.code} in ${Date.now() - started} ms` });
  }, 30_000);

  it('start time of 10 kernels (median), container next to local and sandbox', async () => {
    for (const [label, spec] of [
      ['local', 'python3'],
      ['sandbox', 'sandboxed'],
      ['container', 'containerised'],
    ] as const) {
      timings[label] = [];
      for (let i = 0; i < 10; i++) {
        const t0 = Date.now();
        const id = await t.startKernel(spec);
        timings[label].push(Date.now() - t0);
        expect((await t.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
      }
    }
    expect(timings['container']!.length).toBe(10);
  }, 300_000);
});

describe('container provisioner: adoption after kill -9 of kgate', () => {
  const TOKEN = 'container-adoption-token';
  const aDir = realpathSync(mkdtempSync(join(tmpdir(), 'kgate-cta-')));
  const running: Running[] = [];
  /** The built-in container provisioner's base directory. */
  const BASE = `/dev/shm/kgate-container-${process.getuid!()}`;

  afterAll(() => {
    for (const k of running) k.child.kill('SIGKILL');
  });

  async function kgate(withState: boolean): Promise<Running & { t: GatewayClient }> {
    const specs = join(aDir, 'specs');
    if (!existsSync(specs)) kernelspec('containerised', 'container', { image: IMAGE }, { memory: '256Mi' }, specs);
    const k = await startKgate([
      '--port',
      '0',
      '--auth-token',
      TOKEN,
      ...(withState ? ['--state-dir', join(aDir, 'state')] : []),
      '--runtime-dir',
      join(aDir, 'runtime'),
      '--kernelspec-dir',
      specs,
    ]);
    running.push(k);
    return { ...k, t: gatewayClient(k.url, TOKEN) };
  }

  it('adopts the live container with its state, removes the one whose kernel died, and shutdown leaves nothing', async () => {
    const first = await kgate(true);
    const a = await first.t.startKernel('containerised');
    const dead = await first.t.startKernel('containerised');
    const c = await KernelClient.connect(first.t, a);
    const m = c.execute('x = 42');
    await c.reply(m);
    const [containerA] = containersOf(a);
    expect(containerA).toBeDefined();

    first.child.kill('SIGKILL');
    await first.exited;
    await c.waitClosed();
    // The container outlives the gateway; then the other one's kernel dies while no gateway runs.
    expect(podman(['inspect', '--format={{.State.Running}}', containerA!]).trim()).toBe('true');
    podman(['kill', '--signal=SIGKILL', containersOf(dead)[0]!]);
    await until(() => podman(['inspect', '--format={{.State.Running}}', containersOf(dead)[0]!]).trim() === 'false', 'the killed container ended', 10_000);

    const second = await kgate(true);
    const listed = ((await (await second.t.api('api/kernels')).json()) as Array<{ id: string }>).map((k) => k.id);
    expect(listed).toEqual([a]);
    await until(() => containersOf(dead).length === 0, 'the dead kernel container removed', 20_000);
    expect(existsSync(join(BASE, dead))).toBe(false);
    const c2 = await KernelClient.connect(second.t, a);
    const m2 = c2.execute('print(x)');
    await c2.reply(m2);
    expect(stdout(c2.outputs(m2)).trim()).toBe('42');
    expect(containersOf(a)).toEqual([containerA]);
    c2.close();
    table.push({ attack: 'kill -9 of kgate (state dir)', outcome: 'container adopted with its state; the dead one removed' });

    expect((await second.t.api(`api/kernels/${a}`, { method: 'DELETE' })).status).toBe(204);
    expect(containersOf(a)).toEqual([]);
    expect(existsSync(join(BASE, a))).toBe(false);
    second.child.kill('SIGKILL');
    await second.exited;
  }, 180_000);

  it('without a state dir, the next gateway removes the containers a killed one left', async () => {
    const first = await kgate(false);
    const id = await first.t.startKernel('containerised');
    expect(containersOf(id)).toHaveLength(1);
    first.child.kill('SIGKILL');
    await first.exited;
    const second = await kgate(false);
    // The sweep runs at the first container launch of a gateway.
    const other = await second.t.startKernel('containerised');
    await until(() => containersOf(id).length === 0, "the killed gateway's container removed", 20_000);
    expect(existsSync(join(BASE, id))).toBe(false);
    expect((await second.t.api(`api/kernels/${other}`, { method: 'DELETE' })).status).toBe(204);
    expect(containersOf(other)).toEqual([]);
    second.child.kill('SIGKILL');
    await second.exited;
  }, 120_000);
});
