/**
 * The sandbox provisioner with real ipykernels (Debian's python3) in
 * bubblewrap, through an in-process kgate, and the attacks a user can make by
 * executing code: reach kgate's port or another service on 127.0.0.1, read
 * kgate's state and runtime dirs or another kernel's connection file, write
 * outside the allowed paths, hog the CPU, allocate past the memory limit,
 * fork past the process limit. Each attack must fail for the kernel while
 * kgate and the other kernels go on; the outcomes are printed as a table.
 *
 * Nothing is skipped: a machine where bubblewrap cannot run fails here with
 * the reason.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, realpathSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ProvisionerRegistry } from '../../src/provisioner/registry.js';
import { sandboxProvisionerFactory } from '../../src/provisioner/sandbox.js';
import { createLogger } from '../../src/log.js';
import { KernelClient, interruptUntilReplied, startGateway, stdout, type TestGateway } from '../helpers/gateway.js';
import { processesMatching } from '../helpers/procs.js';
import { until } from '../helpers/wait.js';
import { kernelCgroupDirs } from '../helpers/provisioner-specs.js';
import { CONNECT, FORK_BOMB, ok, PROBE, run, WRITE } from '../helpers/kernel-attacks.js';

const BWRAP = '/usr/bin/bwrap';
const dir = realpathSync(mkdtempSync(join(tmpdir(), 'kgate-sb-')));
const work = join(dir, 'work');
const stateDir = join(work, 'state');
const runtimeDir = join(work, 'runtime');
const specDir = join(dir, 'specs');
const baseDir = join(dir, 'sb');
const MEMORY = 256 * 1024 * 1024;
const PIDS = 64;
let t: TestGateway;
let service: Server;
let serviceAccepted = 0;
const table: Array<{ attack: string; outcome: string }> = [];

function kernelspec(name: string, config: Record<string, unknown>, resources: Record<string, unknown>): void {
  const d = join(specDir, name);
  mkdirSync(d, { recursive: true });
  const spec = {
    argv: ['/usr/bin/python3', '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
    display_name: name,
    language: 'python',
    metadata: { kernel_provisioner: { provisioner_name: 'sandbox', config }, kgate: { resources } },
  };
  writeFileSync(join(d, 'kernel.json'), JSON.stringify(spec));
}

/** Why bubblewrap cannot run here, or undefined: a reason outside the project is a failure with that reason, never a skip. */
function bwrapProblem(): string | undefined {
  if (!existsSync(BWRAP)) return `${BWRAP} is missing: install Debian's bubblewrap (scripts/setup.sh --test does)`;
  try {
    execFileSync(BWRAP, ['--unshare-all', '--unshare-user', '--uid', '1000', '--gid', '1000', '--die-with-parent', '--ro-bind', '/', '/', 'true'], { stdio: 'pipe' });
    return undefined;
  } catch (e) {
    return `bubblewrap cannot make its namespaces here: ${String((e as { stderr?: Buffer }).stderr ?? e)}`;
  }
}

beforeAll(async () => {
  const problem = bwrapProblem();
  if (problem) throw new Error(problem);
  // The sandbox runs as "nobody" when kgate is root: it must be able to reach the directories it binds.
  chmodSync(dir, 0o755);
  mkdirSync(work, { mode: 0o755 });
  writeFileSync(join(work, 'notebook.txt'), 'readable');
  // What a local kernel's connection file would be, in kgate's runtime dir.
  mkdirSync(runtimeDir, { mode: 0o700 });
  writeFileSync(join(runtimeDir, 'kernel-local.json'), '{"key": "secret"}', { mode: 0o600 });
  kernelspec('sandboxed', { working_dir: 'read-only', pids: PIDS }, { memory: '256Mi', cpu: '0.25' });
  chmodSync(specDir, 0o755);
  service = createServer((s) => {
    serviceAccepted++;
    s.destroy();
  });
  await new Promise<void>((r) => service.listen(0, '127.0.0.1', r));
  t = await startGateway(['--root-dir', work, '--state-dir', stateDir, '--runtime-dir', runtimeDir], {
    kernelspecDirs: [specDir],
    provisioners: [sandboxProvisionerFactory({ baseDir, hide: [stateDir, runtimeDir] })],
  });
}, 30_000);

afterAll(async () => {
  await t?.close();
  service?.close();
  for (const pid of processesMatching(baseDir)) process.kill(pid, 'SIGKILL');
  if (table.length > 0) console.log(`sandbox attacks:\n${table.map((r) => `  ${r.attack.padEnd(52)} ${r.outcome}`).join('\n')}`);
});

/** The stderr stream text of a run's output messages (kgate's own notices come this way). */
function stderrOf(msgs: Array<{ header: { msg_type: string }; content: unknown }>): string {
  return msgs
    .filter((m) => m.header.msg_type === 'stream' && (m.content as { name?: string }).name === 'stderr')
    .map((m) => (m.content as { text: string }).text)
    .join('');
}

describe('registry', () => {
  it('a kernelspec naming provisioner_name: sandbox gets the built-in sandbox provisioner', () => {
    const reg = new ProvisionerRegistry([], 'local', createLogger('silent'));
    const p = reg.create({
      name: 's',
      resourceDir: specDir,
      spec: { argv: ['x'], display_name: 's', language: 'python', metadata: { kernel_provisioner: { provisioner_name: 'sandbox' } } },
    });
    expect(p.name).toBe('sandbox');
  });
});

describe('sandbox provisioner: a real ipykernel in bubblewrap', () => {
  it('starts, executes, is interrupted and restarted over ipc, and every attack fails while kgate and the other kernels go on; shutdown leaves nothing', async () => {
    const a = await t.startKernel('sandboxed');
    const b = await t.startKernel('sandboxed');
    const ids = [a, b];
    const ca = await KernelClient.connect(t, a);
    const cb = await KernelClient.connect(t, b);
    expect(await ok(ca, 'print(6*7)')).toBe('42');
    const connA = t.gw.ctx.kernels.get(a).conn!;
    const connB = t.gw.ctx.kernels.get(b).conn!;
    expect(connA.transport).toBe('ipc');
    expect(connA.ip).toBe(join(baseDir, a, 'k'));
    expect(ids.flatMap(kernelCgroupDirs).length).toBeGreaterThan(0);

    // Network: its own namespace has only a loopback, with nothing on it.
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

    // Files: kgate's state and runtime dirs (inside the read-only working dir: hidden), the sandboxes' base dir, another kernel's connection file.
    expect(await ok(ca, PROBE(join(work, 'notebook.txt')))).toBe('read:readable');
    for (const [what, path, expected] of [
      ["kgate's state dir (kernel records and keys)", stateDir, /^listed:$/],
      ["kgate's runtime dir", runtimeDir, /^listed:$/],
      ["the sandboxes' base dir (every kernel's dir)", baseDir, /^refused:FileNotFoundError$/],
      ["another kernel's connection file", join(baseDir, b, 'connection.json'), /^refused:FileNotFoundError$/],
      ['/etc/shadow', '/etc/shadow', /^refused:FileNotFoundError$/],
      ["kgate's HOME (/root)", '/root', /^refused:FileNotFoundError$/],
    ] as const) {
      const out = await ok(ca, PROBE(path));
      expect(out, what).toMatch(expected);
      table.push({ attack: `read ${what}`, outcome: out === 'listed:' ? 'empty (hidden by a tmpfs)' : out });
    }
    // Its own connection file is there, for its own key only.
    expect(await ok(ca, 'import os; print(sorted(os.listdir("/run/kgate")))')).toBe("['connection.json', 'k-1', 'k-2', 'k-3', 'k-4', 'k-5']");
    expect(await ok(ca, 'import os; print(sorted(int(p) for p in os.listdir("/proc") if p.isdigit())[:1])')).toBe('[1]');

    for (const [what, path] of [
      ['the working directory (read-only)', join(work, 'planted')],
      ['/usr', '/usr/planted'],
      ['/etc', '/etc/planted'],
      ['/ (the sandbox root)', '/planted'],
    ] as const) {
      const out = await ok(ca, WRITE(path));
      expect(out, what).toMatch(/^refused:/);
      table.push({ attack: `write ${what}`, outcome: out });
    }
    expect(existsSync(join(work, 'planted'))).toBe(false);
    expect(await ok(ca, WRITE('/tmp/allowed'))).toBe('written');
    expect(await ok(ca, WRITE('/home/kernel/allowed'))).toBe('written');

    // CPU: 0.25 cores, so a busy loop of 2 s wall time gets about 0.5 s of CPU.
    const cpu = Number(
      await ok(
        ca,
        'import time, resource\nu = resource.getrusage(resource.RUSAGE_SELF).ru_utime\nt = time.time()\nwhile time.time() - t < 2: pass\nprint(round(resource.getrusage(resource.RUSAGE_SELF).ru_utime - u, 2))',
      ),
    );
    // Unbounded it would be about 2 s; the CFS quota holds it near 0.5 s.
    expect(cpu).toBeLessThan(1);
    table.push({ attack: 'busy loop for 2 s (limit 0.25 cores)', outcome: `bounded: ${cpu} s of CPU in 2 s` });

    // Interrupt (SIGINT to the kernel's processes, not to bwrap) and restart in place, over the same ipc sockets.
    const sleeping = ca.execute('import time; time.sleep(60)');
    const interrupted = await interruptUntilReplied(ca, sleeping, () => t.api(`api/kernels/${a}/interrupt`, { method: 'POST' }));
    expect(interrupted.content['ename']).toBe('KeyboardInterrupt');
    expect((await t.api(`api/kernels/${a}/restart`, { method: 'POST' })).status).toBe(200);
    expect(await ok(ca, 'print(6*7)')).toBe('42');
    expect(t.gw.ctx.kernels.get(a).conn).toEqual(connA);

    // A fork bomb: bounded by the pids limit; kgate and the other kernel go on.
    const bomb = await run(cb, FORK_BOMB, 60_000);
    expect(bomb.out).toMatch(/^stopped \d+ BlockingIOError$/);
    expect(Number(bomb.out.split(' ')[1])).toBeLessThan(PIDS);
    table.push({ attack: `fork bomb (pids limit ${PIDS})`, outcome: `${bomb.out}; the kernel survives` });
    expect(await ok(ca, 'print("a goes on")')).toBe('a goes on');

    // Memory: past its 256 MiB the kernel is killed by its cgroup, reported so, and restarted; kgate and the other kernel go on.
    const provB = t.gw.ctx.kernels.get(b).provisioner;
    const hog = cb.execute(`x = b'1' * (${MEMORY} * 2)\nprint('allocated')`);
    await until(() => provB.lastExit?.()?.reason === 'out_of_memory', 'the kernel killed for memory', 30_000);
    expect(provB.lastExit?.()?.detail).toMatch(/memory limit of 256 ?Mi/);
    expect(stdout(cb.outputs(hog))).not.toContain('allocated');
    table.push({ attack: 'allocate 512 MiB (limit 256 MiB)', outcome: `killed: ${provB.lastExit?.()?.detail}` });
    expect(await ok(ca, 'print("a goes on")')).toBe('a goes on');
    expect((await t.api('api/kernels')).status).toBe(200);
    await until(
      async () => ((await (await t.api(`api/kernels/${b}`)).json()) as { execution_state: string }).execution_state === 'idle',
      'the kernel restarted after its OOM kill',
      30_000,
    );
    expect(await ok(cb, 'print("b restarted")')).toBe('b restarted');
    expect(t.gw.ctx.kernels.get(b).conn).toEqual(connB);
    // Reported as killed for memory: to the client that was running the cell, and in the kernel's model.
    expect(stdout(cb.outputs(hog)) + stderrOf(cb.outputs(hog))).toMatch(/kgate: the kernel was killed: it reached its memory limit of 256 ?Mi; it is being restarted/);
    const model = (await (await t.api(`api/kernels/${b}`)).json()) as { kgate: { last_death?: { reason: string; message: string } } };
    expect(model.kgate.last_death).toMatchObject({ reason: 'out_of_memory', message: expect.stringMatching(/memory limit of 256 ?Mi/) });

    // Shutdown leaves nothing: no process, no cgroup, no ipc socket or connection file.
    ca.close();
    cb.close();
    for (const id of ids) expect((await t.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
    expect(processesMatching(baseDir)).toEqual([]);
    expect(ids.flatMap(kernelCgroupDirs)).toEqual([]);
    expect(readdirSync(baseDir)).toEqual([]);
  }, 180_000);
});
