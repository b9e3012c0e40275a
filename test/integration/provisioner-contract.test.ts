/**
 * One contract suite over every provisioner, as zeromq.js repeats its tests
 * over every transport: the same cases, with real ipykernels (Debian's
 * python3) and real clients, for `local`, `sandbox`, (once
 * src/provisioner/container.ts exists) `container` and `kubernetes` (on a real
 * API server and scheduler with a simulated node, test/helpers/k8s-target.ts,
 * started once for the file). Each provisioner gets its
 * kernelspecs (the same argv, `metadata.kernel_provisioner` naming it) and
 * one in-process kgate for the cases that allow it; adoption runs kgate as a
 * real process (dist/cli.js) killed with `kill -9`. What each case finds on
 * the host it reads from outside (/proc, /sys/fs/cgroup, the directories),
 * never from the provisioner's own bookkeeping.
 *
 * Nothing is skipped: a provisioner listed here that cannot run on this
 * machine fails every case with the reason. The results are printed as a
 * table (provisioner × case → pass/fail and ms).
 */
import { execFile, execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ServerOverrides } from '../../src/gateway/app.js';
import { events, type KernelStartFailedEvent } from '../../src/events.js';
import { CGROUP_PREFIX } from '../../src/provisioner/cgroups.js';
import { kubernetesProvisionerFactory } from '../../src/provisioner/kubernetes.js';
import { sandboxProvisionerFactory } from '../../src/provisioner/sandbox.js';
import { gatewayClient, interruptUntilReplied, KernelClient, startGateway, stdout, type GatewayClient, type TestGateway } from '../helpers/gateway.js';
import { ContractCluster, K8S_CONTRACT_NAMESPACE } from '../helpers/k8s-target.js';
import { CLI, startKgate, type Running } from '../helpers/kgate-process.js';
import { cgroupDirsNamed, hostProcesses, IPYKERNEL_ARGV, kernelCgroupDirs, pidsInKernelCgroup, writeKernelspec, type SpecOptions } from '../helpers/provisioner-specs.js';
import { until } from '../helpers/wait.js';

const root = realpathSync(mkdtempSync(join(tmpdir(), 'kgate-pc-')));
// A sandbox runs as "nobody" when kgate is root: it must reach the directories it binds.
chmodSync(root, 0o755);
const MISSING_ARGV0 = '/nonexistent/contract-kernel';
const PROCESS_TOKEN = 'contract-process-token';
const execFileAsync = promisify(execFile);

/** A provisioner under contract: where it keeps things, how to find a kernel's traces on the host. */
interface Target {
  name: string;
  /** Why it cannot run on this machine, or undefined (a reason is a failure of every case, never a skip). */
  problem(): Promise<string | undefined>;
  /** The kernelspec metadata that selects it, with its config and resources. */
  spec: Omit<SpecOptions, 'interruptMode' | 'argv'>;
  /** Overrides of an in-process kgate (the provisioner configured as a kgate process would configure it). */
  overrides(): ServerOverrides;
  /** Environment of a kgate process. */
  processEnv(): Record<string, string>;
  /** The host pids of the kernel's own process (ipykernel), found from outside. */
  kernelPids(id: string): Promise<number[]>;
  /** What of kernel `id` is on the host (processes, files, ipc sockets, cgroups, containers, mounts); empty once it is shut down. */
  traces(id: string): Promise<string[]>;
  /** What `traces` must find of a running kernel (so that finding nothing after a shutdown means something). */
  traceKinds: string[];
  /** Removes what killing its processes leaves (a container), after a failed case. */
  remove?(id: string): Promise<void>;
}

const dirs = (name: string): { dir: string; specs: string; runtime: string; state: string } => {
  const dir = join(root, name);
  return { dir, specs: join(dir, 'specs'), runtime: join(dir, 'runtime'), state: join(dir, 'state') };
};

/** ipykernel itself, not a wrapper (bwrap, a shell, conmon) whose command line carries its argv. */
const isKernelProcess = (cmdline: string): boolean => cmdline.startsWith(IPYKERNEL_ARGV.slice(0, 3).join(' '));

function paths(...ps: string[]): string[] {
  return ps.filter((p) => existsSync(p)).map((p) => `file ${p}`);
}

function procs(pred: (p: { cmdline: string; cgroup: string }) => boolean, what = ''): string[] {
  return hostProcesses()
    .filter(pred)
    .map((p) => `process ${p.pid}${what}: ${p.cmdline.slice(0, 120)}`);
}

function killQuietly(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

function mounts(...needles: string[]): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => needles.some((n) => l.includes(n)))
    .map((l) => `mount ${l.split(' ')[4]}`);
}

const local: Target = (() => {
  const d = dirs('local');
  const connectionFile = (id: string): string => join(d.runtime, `kernel-${id}.json`);
  return {
    name: 'local',
    problem: async () => (existsSync('/usr/bin/python3') ? undefined : "/usr/bin/python3 is missing: install Debian's python3-ipykernel"),
    spec: { provisioner: 'local' },
    overrides: () => ({}),
    processEnv: () => ({}),
    kernelPids: async (id) =>
      hostProcesses()
        .filter((p) => isKernelProcess(p.cmdline) && p.cmdline.includes(connectionFile(id)))
        .map((p) => p.pid),
    traces: async (id) => [...procs((p) => p.cmdline.includes(connectionFile(id))), ...paths(connectionFile(id), join(d.runtime, `home-${id}`), join(d.state, `${id}.json`))],
    traceKinds: ['process', 'file'],
  };
})();

const sandbox: Target = (() => {
  const d = dirs('sandbox');
  // The built-in sandbox's base directory follows $XDG_RUNTIME_DIR: a kgate process is given this one, the in-process kgate the same.
  const base = join(d.dir, 'kgate-sandbox');
  const BWRAP = '/usr/bin/bwrap';
  return {
    name: 'sandbox',
    problem: async () => {
      if (!existsSync(BWRAP)) return `${BWRAP} is missing: install Debian's bubblewrap (scripts/setup.sh --test does)`;
      try {
        execFileSync(BWRAP, ['--unshare-all', '--unshare-user', '--uid', '1000', '--gid', '1000', '--die-with-parent', '--ro-bind', '/', '/', 'true'], { stdio: 'pipe' });
        return undefined;
      } catch (e) {
        return `bubblewrap cannot make its namespaces here: ${String((e as { stderr?: Buffer }).stderr ?? e)}`;
      }
    },
    spec: { provisioner: 'sandbox', config: { pids: 64 }, resources: { memory: '256Mi' } },
    overrides: () => ({ provisioners: [sandboxProvisionerFactory({ baseDir: base, hide: [d.state, d.runtime] })] }),
    processEnv: () => ({ XDG_RUNTIME_DIR: d.dir }),
    kernelPids: async (id) => {
      const inside = new Set(pidsInKernelCgroup(id));
      return hostProcesses()
        .filter((p) => inside.has(p.pid) && isKernelProcess(p.cmdline))
        .map((p) => p.pid);
    },
    traces: async (id) => {
      const inside = new Set(pidsInKernelCgroup(id));
      return [
        ...procs((p) => p.cmdline.includes(join(base, id))),
        ...hostProcesses()
          .filter((p) => inside.has(p.pid))
          .map((p) => `process ${p.pid} in the kernel's cgroup: ${p.cmdline.slice(0, 120)}`),
        // The kernel's directory holds its connection file and ipc sockets.
        ...paths(join(base, id), join(d.state, `${id}.json`)),
        ...kernelCgroupDirs(id).map((c) => `cgroup ${c}`),
        ...mounts(join(base, id)),
      ];
    },
    // bwrap's mounts are in the sandbox's own mount namespace, not in the host's.
    traceKinds: ['process', 'file', 'cgroup'],
  };
})();

const container: Target = (() => {
  const d = dirs('container');
  const PODMAN = '/usr/bin/podman';
  const image = process.env['KGATE_IMAGE'] ?? 'localhost/kgate-kernel-python3:bookworm';
  // The built-in container provisioner's base directory (a kgate process has no option for it): the in-process kgate uses the built-in too.
  const base = join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), `kgate-container-${process.getuid?.() ?? 'user'}`);
  const conf = join(root, 'containers.conf');
  /** Every container id seen for a kernel, so what an old one left (after a restart, or once removed) is still looked for. */
  const seen = new Map<string, Set<string>>();
  const podman = async (args: string[]): Promise<string> => {
    // As kgate runs podman (src/provisioner/container.ts): cgroupfs, runc, file events, no default ulimits.
    if (!existsSync(conf)) writeFileSync(conf, '[containers]\ndefault_ulimits = []\n');
    const { stdout } = await execFileAsync(PODMAN, ['--cgroup-manager=cgroupfs', '--runtime=runc', '--events-backend=file', ...args], {
      env: { ...process.env, CONTAINERS_CONF: conf },
      timeout: 30_000,
    });
    return stdout;
  };
  const containersOf = async (id: string): Promise<string[]> => {
    const ids = (await podman(['ps', '--all', '--no-trunc', `--filter=label=kgate.kernel-id=${id}`, '--format={{.ID}}'])).split('\n').filter((l) => l !== '');
    const known = seen.get(id) ?? new Set<string>();
    for (const c of ids) known.add(c);
    seen.set(id, known);
    return ids;
  };
  return {
    name: 'container',
    problem: async () => {
      if (!existsSync(PODMAN)) return `${PODMAN} is missing: install Debian's podman and runc (scripts/setup.sh --test does)`;
      try {
        await podman(['image', 'exists', image]);
        return undefined;
      } catch (e) {
        const err = e as { code?: unknown; stderr?: string };
        if (err.code === 1) return `the kernel image ${image} is not on this host: build it with scripts/build-kernel-image.sh`;
        return `podman cannot check the image ${image}: ${String(err.stderr ?? e)}`;
      }
    },
    spec: { provisioner: 'container', config: { image, pids: 64 }, resources: { memory: '256Mi' } },
    overrides: () => ({}),
    processEnv: () => ({}),
    kernelPids: async (id) => {
      const cids = await containersOf(id);
      return hostProcesses()
        .filter((p) => isKernelProcess(p.cmdline) && cids.some((c) => p.cgroup.includes(`libpod-${c}`)))
        .map((p) => p.pid);
    },
    traces: async (id) => {
      const live = await containersOf(id);
      const cids = [...(seen.get(id) ?? [])];
      return [
        ...live.map((c) => `container ${c}`),
        ...procs((p) => p.cmdline.includes(join(base, id)) || cids.some((c) => p.cmdline.includes(c) || p.cgroup.includes(`libpod-${c}`))),
        ...paths(join(base, id), join(d.state, `${id}.json`)),
        // The container's own cgroups, and any kgate made for the kernel around them.
        ...cgroupDirsNamed((n) => n === CGROUP_PREFIX + id || cids.some((c) => n.includes(c))).map((c) => `cgroup ${c}`),
        ...mounts(join(base, id), ...cids),
      ];
    },
    traceKinds: ['container', 'process', 'file', 'cgroup', 'mount'],
    remove: async (id) => {
      for (const c of await containersOf(id)) await podman(['rm', '--force', '--time=0', c]).catch(() => undefined);
    },
  };
})();

/**
 * Kernels as pods, on a simulated node: pods and Secrets through the API, the node's processes,
 * network namespaces and pod files on the host. A pod cannot be signalled (its interrupts are messages).
 */
const kube = new ContractCluster();
beforeAll(() => kube.start(), 300_000);
afterAll(() => kube.stop(), 120_000);

const kubernetes: Target = {
  name: 'kubernetes',
  problem: async () => kube.problem(),
  spec: { provisioner: 'kubernetes', config: { image: 'localhost/kgate-kernel-python3:bookworm' }, resources: { memory: '256Mi' } },
  overrides: () => ({ provisioners: [kubernetesProvisionerFactory({ kubeconfig: kube.kubeconfig, namespace: K8S_CONTRACT_NAMESPACE })] }),
  processEnv: () => ({ KG_KUBECONFIG: kube.kubeconfig, KG_K8S_NAMESPACE: K8S_CONTRACT_NAMESPACE }),
  kernelPids: (id) => kube.kernelPids(id, isKernelProcess),
  traces: (id) => kube.traces(id),
  traceKinds: ['pod', 'secret', 'process', 'netns', 'veth', 'file'],
  remove: (id) => kube.remove(id),
};

const CONTAINER_SOURCE = fileURLToPath(new URL('../../src/provisioner/container.ts', import.meta.url));
// The container provisioner is listed once it exists; listed, it must run (a missing podman or image fails with the reason).
const targets: Target[] = [local, sandbox, ...(existsSync(CONTAINER_SOURCE) ? [container] : []), kubernetes];
const notListed = existsSync(CONTAINER_SOURCE) ? [] : ['container: not in the suite yet (src/provisioner/container.ts does not exist)'];

const CASES = [
  'start',
  'execute',
  'stdin',
  'interrupt by signal',
  'interrupt by message',
  'restart',
  'automatic restart after kill -9',
  'shutdown leaves nothing',
  'a launch that fails',
  'adoption after kill -9 of kgate',
] as const;
type Case = (typeof CASES)[number];
const results = new Map<string, Map<Case, string>>();
const running: Running[] = [];

afterAll(() => {
  for (const k of running) if (k.child.exitCode === null) k.child.kill('SIGKILL');
  rmSync(root, { recursive: true, force: true });
  const w = 34;
  const head = `  ${'case'.padEnd(w)}${targets.map((t) => t.name.padEnd(16)).join('')}`;
  const rows = CASES.map((c) => `  ${c.padEnd(w)}${targets.map((t) => (results.get(t.name)?.get(c) ?? 'not run').padEnd(16)).join('')}`);
  console.log(['provisioner contract:', head, ...rows, ...notListed.map((n) => `  ${n}`)].join('\n'));
});

async function run(c: KernelClient, code: string, opts: { allowStdin?: boolean } = {}): Promise<{ status: string; out: string; reply: Record<string, unknown> }> {
  // ipykernel aborts requests for a moment after an error (stop_on_error): one answered "aborted" is sent again, as a user would.
  for (let i = 0; ; i++) {
    const m = c.execute(code, opts);
    const r = await c.reply(m);
    const status = r.content['status'] as string;
    if (status !== 'aborted' || i >= 20) return { status, out: stdout(c.outputs(m)).trim(), reply: r.content };
    await new Promise((res) => setTimeout(res, 100));
  }
}

async function ok(c: KernelClient, code: string): Promise<string> {
  const r = await run(c, code);
  expect(r.status, JSON.stringify(r.reply)).toBe('ok');
  return r.out;
}

async function model(t: GatewayClient, id: string): Promise<{ id: string; execution_state: string }> {
  return (await (await t.api(`api/kernels/${id}`)).json()) as { id: string; execution_state: string };
}

/** Runs `time.sleep(30)`, interrupts it once it runs, and answers how long the KeyboardInterrupt took from the first interrupt. */
async function interruptSleep(t: GatewayClient, c: KernelClient, id: string): Promise<number> {
  // Interrupted once the cell visibly runs, as a user does: a SIGINT that lands after execute_input but before
  // ipykernel runs the cell escapes into its dispatcher, and the request is never answered.
  const m = c.execute("import time\nprint('sleeping', flush=True)\ntime.sleep(30)");
  await c.next((x) => x.parent_header.msg_id === m && x.header.msg_type === 'stream');
  const t0 = Date.now();
  const reply = await interruptUntilReplied(c, m, () => t.api(`api/kernels/${id}/interrupt`, { method: 'POST' }));
  expect(reply.content['status']).toBe('error');
  expect(reply.content['ename']).toBe('KeyboardInterrupt');
  return Date.now() - t0;
}

describe.each(targets)('provisioner contract: $name', (target) => {
  const d = dirs(target.name);
  const specName = (kind: string): string => `contract-${target.name}-${kind}`;
  const cells = new Map<Case, string>();
  results.set(target.name, cells);
  let t: TestGateway | undefined;
  let problem: string | undefined;
  const kernels: { signal?: string; message?: string } = {};
  const clients: { signal?: KernelClient; message?: KernelClient } = {};
  /** Every kernel id a case started, to clean up after a failure. */
  const started: string[] = [];

  /** A case, timed and recorded for the table; it fails with the provisioner's problem when it cannot run here. */
  const contract = (name: Case, fn: () => Promise<void>, timeoutMs = 60_000): void => {
    it(
      name,
      async ({ task }) => {
        const t0 = Date.now();
        try {
          if (problem) throw new Error(`the ${target.name} provisioner cannot run here: ${problem}`);
          await fn();
          // A soft expectation that failed has not thrown, but it has failed the case.
          cells.set(name, `${task.result?.errors?.length ? 'FAIL' : 'pass'} ${Date.now() - t0}ms`);
        } catch (e) {
          cells.set(name, `FAIL ${Date.now() - t0}ms`);
          throw e;
        }
      },
      timeoutMs,
    );
  };

  const gw = (): TestGateway => {
    if (!t) throw new Error('the in-process kgate did not start');
    return t;
  };

  beforeAll(async () => {
    problem = await target.problem();
    if (problem) return;
    mkdirSync(d.specs, { recursive: true, mode: 0o755 });
    chmodSync(d.dir, 0o755);
    writeKernelspec(d.specs, specName('signal'), { ...target.spec, interruptMode: 'signal' });
    writeKernelspec(d.specs, specName('message'), { ...target.spec, interruptMode: 'message' });
    writeKernelspec(d.specs, specName('missing'), { ...target.spec, argv: [MISSING_ARGV0, '-f', '{connection_file}'] });
    t = await startGateway(['--kernelspec-dir', d.specs, '--runtime-dir', d.runtime], target.overrides());
  }, 30_000);

  afterAll(async () => {
    clients.signal?.close();
    clients.message?.close();
    await t?.close();
    // A case that failed midway may leave a kernel (one started by a kgate process outlives it): killed and removed here.
    for (const id of started) {
      const left = await target.traces(id).catch(() => []);
      if (left.length === 0) continue;
      console.log(`${target.name}: removing what kernel ${id} left: ${left.join('; ')}`);
      for (const line of left) {
        const pid = /^process (\d+)/.exec(line)?.[1];
        if (pid) killQuietly(Number(pid));
      }
      await target.remove?.(id);
    }
  });

  contract('start', async () => {
    const ids = await Promise.all(
      (['signal', 'message'] as const).map(async (kind) => {
        const r = await gw().api('api/kernels', { method: 'POST', json: { name: specName(kind) } });
        expect(r.status, await r.clone().text()).toBe(201);
        const k = (await r.json()) as { id: string; name: string; execution_state: string };
        expect(k.name).toBe(specName(kind));
        expect(k.execution_state).toBe('idle');
        kernels[kind] = k.id;
        started.push(k.id);
        return k.id;
      }),
    );
    for (const id of ids) {
      expect(await target.kernelPids(id)).toHaveLength(1);
      const found = await target.traces(id);
      for (const kind of target.traceKinds)
        expect(
          found.some((f) => f.startsWith(`${kind} `)),
          `a running kernel's ${kind}: ${found.join('; ')}`,
        ).toBe(true);
    }
    clients.signal = await KernelClient.connect(gw(), kernels.signal!);
    clients.message = await KernelClient.connect(gw(), kernels.message!);
  });

  contract('execute', async () => {
    expect(await ok(clients.signal!, 'print(6*7)')).toBe('42');
    expect(await ok(clients.message!, 'print(6*7)')).toBe('42');
  });

  contract('stdin', async () => {
    const c = clients.signal!;
    const m = c.execute('name = input("who? ")\nprint("hi", name)', { allowStdin: true });
    const req = await c.next((x) => x.header.msg_type === 'input_request' && x.parent_header.msg_id === m);
    expect(req.channel).toBe('stdin');
    expect(req.content['prompt']).toBe('who? ');
    c.request('input_reply', { value: 'kgate' }, 'stdin');
    const r = await c.reply(m);
    expect(r.content['status']).toBe('ok');
    expect(stdout(c.outputs(m))).toBe('hi kgate\n');
  });

  contract('interrupt by signal', async () => {
    const ms = await interruptSleep(gw(), clients.signal!, kernels.signal!);
    expect(ms).toBeLessThan(10_000);
    expect(await ok(clients.signal!, 'print("after")')).toBe('after');
  });

  contract('interrupt by message', async () => {
    const ms = await interruptSleep(gw(), clients.message!, kernels.message!);
    expect(ms).toBeLessThan(10_000);
    expect(await ok(clients.message!, 'print("after")')).toBe('after');
  });

  contract('restart', async () => {
    const c = clients.signal!;
    const id = kernels.signal!;
    await ok(c, 'x = 41');
    const before = await target.kernelPids(id);
    expect(before).toHaveLength(1);
    const r = await gw().api(`api/kernels/${id}/restart`, { method: 'POST' });
    expect(r.status).toBe(200);
    expect(((await r.json()) as { id: string }).id).toBe(id);
    // A new process, without the old one's state, and the client's socket stayed open through it.
    const after = await target.kernelPids(id);
    expect(after).toHaveLength(1);
    expect(after).not.toEqual(before);
    expect(await ok(c, "print('x' in globals())")).toBe('False');
    expect(c.closed).toBeUndefined();
  });

  contract('automatic restart after kill -9', async () => {
    const c = clients.message!;
    const id = kernels.message!;
    await ok(c, 'y = 1');
    const [pid, ...more] = await target.kernelPids(id);
    expect(more).toEqual([]);
    process.kill(pid!, 'SIGKILL');
    await c.next((m) => m.channel === 'iopub' && m.header.msg_type === 'status' && m.content['execution_state'] === 'restarting');
    await until(async () => (await model(gw(), id)).execution_state === 'idle' && (await target.kernelPids(id)).length === 1, 'the kernel to be back', 30_000);
    expect(await target.kernelPids(id)).not.toContain(pid);
    expect(await ok(c, "print('y' in globals(), 6*7)")).toBe('False 42');
    expect(c.closed).toBeUndefined();
  });

  contract('shutdown leaves nothing', async () => {
    const ids = [kernels.signal!, kernels.message!];
    clients.signal?.close();
    clients.message?.close();
    const codes = await Promise.all(ids.map(async (id) => (await gw().api(`api/kernels/${id}`, { method: 'DELETE' })).status));
    expect(codes).toEqual([204, 204]);
    expect((await Promise.all(ids.map((id) => target.traces(id)))).flat()).toEqual([]);
    expect((await gw().api(`api/kernels/${ids[0]}`)).status).toBe(404);
  });

  contract('a launch that fails', async () => {
    const failed: string[] = [];
    const onFailed = (e: KernelStartFailedEvent): void => {
      if (e.kernelspec === specName('missing')) {
        failed.push(e.kernelId);
        started.push(e.kernelId);
      }
    };
    events.kernelStartFailed.subscribe(onFailed);
    try {
      const r = await gw().api('api/kernels', { method: 'POST', json: { name: specName('missing') } });
      const body = (await r.json()) as { code: string; message: string; reason: string };
      expect(r.status).toBe(500);
      expect(body.code).toBe('KG_KERNEL_START_FAILED');
      // Names what could not be run, and why.
      // Soft: what was left behind is still checked below when the message falls short.
      expect.soft(body.message).toContain(MISSING_ARGV0);
      expect.soft(body.message).toMatch(/ENOENT|No such file|not found/i);
    } finally {
      events.kernelStartFailed.unsubscribe(onFailed);
    }
    expect(failed).toHaveLength(1);
    expect(await target.traces(failed[0]!)).toEqual([]);
    expect(((await (await gw().api('api/kernels')).json()) as unknown[]).length).toBe(0);
  });

  contract(
    'adoption after kill -9 of kgate',
    async () => {
      if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first`);
      const kgate = async (): Promise<Running & { t: GatewayClient }> => {
        const k = await startKgate(
          ['--port', '0', '--auth-token', PROCESS_TOKEN, '--state-dir', d.state, '--runtime-dir', d.runtime, '--kernelspec-dir', d.specs],
          target.processEnv(),
        );
        running.push(k);
        return { ...k, t: gatewayClient(k.url, PROCESS_TOKEN) };
      };
      const first = await kgate();
      const id = await first.t.startKernel(specName('signal'));
      started.push(id);
      const c = await KernelClient.connect(first.t, id);
      await ok(c, 'x = 42');
      const pids = await target.kernelPids(id);
      expect(pids).toHaveLength(1);

      first.child.kill('SIGKILL');
      await first.exited;
      await c.waitClosed();
      // The kernel outlives the gateway (there is a state dir), and the next kgate on it adopts it: same process, same state.
      expect(await target.kernelPids(id)).toEqual(pids);
      const second = await kgate();
      const listed = ((await (await second.t.api('api/kernels')).json()) as Array<{ id: string }>).map((k) => k.id);
      expect(listed).toEqual([id]);
      const c2 = await KernelClient.connect(second.t, id);
      expect(await ok(c2, 'print(x)')).toBe('42');
      expect(await target.kernelPids(id)).toEqual(pids);
      c2.close();

      expect((await second.t.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
      expect(await target.traces(id)).toEqual([]);
      second.child.kill('SIGTERM');
      expect(await second.exited).toBe(0);
      expect(readdirSync(d.state).filter((f) => f.endsWith('.json'))).toEqual([]);
    },
    90_000,
  );
});
