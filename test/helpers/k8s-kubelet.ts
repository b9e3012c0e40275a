/**
 * A real node for the Kubernetes tests: the kubelet built by scripts/build-k8s.sh with Debian's
 * containerd (CRI, runc, cgroupfs) and the bridge + host-local CNI plugins from /usr/lib/cni,
 * registered with a cluster from test/helpers/k8s-cluster.ts. Pods really run in containers, from
 * images imported into containerd (no registry: the pause image is assembled offline by
 * scripts/kubelet-assets.sh, the kernel image is `podman save`d from local storage).
 *
 *   const node = await startKubeletNode(cluster, { name: 'kgate-kubelet', podCidr: '10.247.1.0/24',
 *     extendedResources: { 'nvidia.com/mig-1g.5gb': '1' } });   // Node Ready, capacity patched
 *   await node.stop();   // pods, containers, mounts, cgroups, bridge gone; sysctls restored
 *
 * Needs root, containerd and the kubelet binary: without one, startKubeletNode throws and says
 * which (nothing is skipped). Why the settings differ from a stock node:
 * - containerd `restrict_oom_score_adj`: this machine lacks CAP_SYS_RESOURCE, so runc may not
 *   lower a process's oom_score_adj;
 * - kubelet `failCgroupV1: false` (the machine has cgroup v1), `failSwapOn: false`,
 *   `enforceNodeAllocatable: []` (no system-reserved cgroups to enforce), API ports on 127.0.0.1,
 *   no read-only port;
 * - the kubelet sets vm.overcommit_memory, kernel.panic and kernel.panic_on_oops for itself:
 *   they are saved before and written back by stop();
 * - a few paths are hard-coded in the kubelet and containerd (/var/lib/kubelet/device-plugins,
 *   /var/log/containers, /var/lib/cni/results, /run/containerd/{runc,s}, /run/netns/cni-*):
 *   stop() removes what this node made there.
 * The node uses the cluster's admin kubeconfig (a test node, not the Node authorizer's case).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, rmdirSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ApiException, CoreV1Api, type V1Node } from '@kubernetes/client-node';
import { stringify } from 'yaml';
import { defaultBinDir, type Cluster } from './k8s-cluster.js';

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const CONTAINERD = '/usr/bin/containerd';
const CTR = '/usr/bin/ctr';
const RUNC = '/usr/sbin/runc';
const CNI_BIN = '/usr/lib/cni';
const PAUSE_IMAGE = 'localhost/kgate-pause:1';
const SYSCTLS = ['vm/overcommit_memory', 'kernel/panic', 'kernel/panic_on_oops'];
/** Directories the kubelet, containerd or the CNI plugins write to whatever their configuration says. */
const HARD_CODED_DIRS = ['/var/lib/kubelet/device-plugins', '/var/log/containers', '/var/lib/cni/results', '/run/containerd/runc', '/run/containerd/s', '/run/netns'];

export interface KubeletNodeOptions {
  name: string;
  /** The pods' subnet (host-local IPAM on the node's own bridge). */
  podCidr: string;
  /** Extended resources written into the Node's status capacity (a fake MIG slice, a GPU). */
  extendedResources?: Record<string, string>;
  /** Images (local podman images) to import into containerd besides the pause image. */
  images?: string[];
  timeoutMs?: number;
}

export interface KubeletNode {
  name: string;
  dir: string;
  /** ms from containerd's spawn to the Node Ready with its capacity patched. */
  startupMs: number;
  stop(): Promise<void>;
}

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/** Why this machine cannot run a kubelet node, or undefined when it can. */
export function kubeletUnavailable(binDir = defaultBinDir()): string | undefined {
  if (process.getuid?.() !== 0) return 'the kubelet node needs root (containers, mounts, cgroups, a bridge)';
  if (!existsSync(CONTAINERD) || !existsSync(CTR)) return `containerd is not installed (${CONTAINERD}; scripts/setup.sh --test installs it)`;
  if (!existsSync(RUNC)) return `runc is not installed (${RUNC})`;
  if (!existsSync(join(CNI_BIN, 'bridge')) || !existsSync(join(CNI_BIN, 'host-local'))) return `the CNI plugins are not installed (${CNI_BIN})`;
  if (!existsSync(join(binDir, 'kubelet'))) return `no kubelet in ${binDir} (scripts/build-k8s.sh builds it)`;
  return undefined;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function entries(dir: string): Set<string> {
  try {
    return new Set(readdirSync(dir));
  } catch {
    return new Set();
  }
}

function tryRun(file: string, args: string[]): string {
  try {
    return execFileSync(file, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch {
    return '';
  }
}

function tail(path: string, lines = 30): string {
  try {
    return readFileSync(path, 'utf8').split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

interface Proc {
  child: ChildProcess;
  exited: Promise<void>;
  logPath: string;
}

function startProcess(file: string, args: string[], logPath: string): Proc {
  const log = createWriteStream(logPath);
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  child.stdout.pipe(log, { end: false });
  child.stderr.pipe(log, { end: false });
  const exited = new Promise<void>((resolve) =>
    child.once('exit', () => {
      live.delete(child);
      log.end();
      resolve();
    }),
  );
  return { child, exited, logPath };
}

async function stopProcess(p: Proc | undefined, graceMs = 10_000): Promise<void> {
  if (!p || p.child.exitCode !== null || p.child.signalCode !== null) return;
  p.child.kill('SIGTERM');
  const killed = await Promise.race([p.exited.then(() => true), sleep(graceMs).then(() => false)]);
  if (!killed) {
    p.child.kill('SIGKILL');
    await p.exited;
  }
}

/** Cgroup directories named `kubepods` under each v1 hierarchy (or the v2 root), deepest first. */
function removeKubepodsCgroups(): void {
  const roots = existsSync('/sys/fs/cgroup/cgroup.controllers') ? ['/sys/fs/cgroup'] : [...entries('/sys/fs/cgroup')].map((c) => join('/sys/fs/cgroup', c));
  for (const root of roots) {
    const top = join(root, 'kubepods');
    if (!existsSync(top)) continue;
    const dirs: string[] = [];
    const walk = (d: string): void => {
      dirs.push(d);
      for (const e of entries(d)) {
        const p = join(d, e);
        try {
          if (statSync(p).isDirectory()) walk(p);
        } catch {
          // gone meanwhile
        }
      }
    };
    walk(top);
    for (const d of dirs.reverse()) {
      try {
        rmdirSync(d);
      } catch {
        // a cgroup still holding a process: killed with containerd's tasks; best effort
      }
    }
  }
}

function mountsUnder(prefix: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((m) => m === prefix || m.startsWith(`${prefix}/`))
    .sort((a, b) => b.length - a.length);
}

export async function startKubeletNode(cluster: Cluster, opts: KubeletNodeOptions): Promise<KubeletNode> {
  const binDir = defaultBinDir();
  const missing = kubeletUnavailable(binDir);
  if (missing) throw new Error(`cannot start a kubelet node: ${missing}`);
  const timeoutMs = opts.timeoutMs ?? 120_000;
  const t0 = performance.now();
  const dir = mkdtempSync('/tmp/kgate-kubelet-');
  const p = (...s: string[]): string => join(dir, ...s);
  for (const d of ['containerd/root', 'containerd/state', 'cni/conf', 'cni/state', 'kubelet', 'pod-logs', 'logs']) mkdirSync(p(d), { recursive: true });
  const sock = p('containerd/containerd.sock');
  const before = new Map(HARD_CODED_DIRS.map((d) => [d, entries(d)]));
  const createdParents = ['/var/lib/kubelet', '/var/lib/cni', '/run/containerd', '/var/log/containers'].filter((d) => !existsSync(d));
  const sysctls = new Map(SYSCTLS.map((s) => [s, readFileSync(`/proc/sys/${s}`, 'utf8').trim()]));
  const bridge = `kgk${randomBytes(4).toString('hex')}`;
  let containerd: Proc | undefined;
  let kubelet: Proc | undefined;
  const core = cluster.kubeConfig().makeApiClient(CoreV1Api);

  const ctr = (...args: string[]): string => tryRun(CTR, ['--address', sock, '--namespace', 'k8s.io', ...args]);

  const stop = async (): Promise<void> => {
    // Pods first, while the kubelet can still stop them as it would.
    const pods = await core.listPodForAllNamespaces({ fieldSelector: `spec.nodeName=${opts.name}` }).catch(() => undefined);
    for (const pod of pods?.items ?? []) {
      await core.deleteNamespacedPod({ name: pod.metadata!.name!, namespace: pod.metadata!.namespace!, gracePeriodSeconds: 0 }).catch(() => undefined);
    }
    await core.deleteNode({ name: opts.name }).catch(() => undefined);
    await stopProcess(kubelet);
    kubelet = undefined;
    if (containerd && containerd.child.exitCode === null) {
      for (const id of ctr('tasks', 'ls', '-q').split('\n').filter(Boolean)) {
        ctr('tasks', 'kill', '-s', 'SIGKILL', id);
      }
      await sleep(300);
      for (const id of ctr('tasks', 'ls', '-q').split('\n').filter(Boolean)) ctr('tasks', 'delete', '-f', id);
      for (const id of ctr('containers', 'ls', '-q').split('\n').filter(Boolean)) ctr('containers', 'delete', id);
    }
    await stopProcess(containerd);
    containerd = undefined;
    // A shim outlives containerd by design; these are this node's (they name its socket).
    for (const pid of readdirSync('/proc').filter((e) => /^\d+$/.test(e))) {
      try {
        if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(sock)) process.kill(Number(pid), 'SIGKILL');
      } catch {
        // exited meanwhile
      }
    }
    for (const m of [...mountsUnder(dir), ...[...entries('/run/netns')].filter((n) => !before.get('/run/netns')!.has(n)).flatMap((n) => mountsUnder(`/run/netns/${n}`))]) {
      tryRun('umount', ['-l', m]);
    }
    for (const n of entries('/run/netns')) if (!before.get('/run/netns')!.has(n)) tryRun('ip', ['netns', 'delete', n]);
    removeKubepodsCgroups();
    tryRun('ip', ['link', 'delete', bridge]);
    for (const [d, had] of before) {
      if (d === '/run/netns') continue;
      for (const e of entries(d)) if (!had.has(e)) rmSync(join(d, e), { recursive: true, force: true });
    }
    for (const d of createdParents) rmSync(d, { recursive: true, force: true });
    for (const [s, v] of sysctls) {
      try {
        writeFileSync(`/proc/sys/${s}`, v);
      } catch {
        // best effort: reported by the test's leftovers check
      }
    }
    rmSync(dir, { recursive: true, force: true });
  };

  try {
    writeFileSync(
      p('containerd/config.toml'),
      [
        'version = 2',
        `root = ${JSON.stringify(p('containerd/root'))}`,
        `state = ${JSON.stringify(p('containerd/state'))}`,
        '[grpc]',
        `  address = ${JSON.stringify(sock)}`,
        '[ttrpc]',
        `  address = ${JSON.stringify(p('containerd/containerd-ttrpc.sock'))}`,
        '[metrics]',
        '  address = ""',
        '[plugins."io.containerd.grpc.v1.cri"]',
        `  sandbox_image = "${PAUSE_IMAGE}"`,
        '  stream_server_address = "127.0.0.1"',
        '  stream_server_port = "0"',
        '  enable_selinux = false',
        '  restrict_oom_score_adj = true',
        '  [plugins."io.containerd.grpc.v1.cri".containerd]',
        '    snapshotter = "overlayfs"',
        '    default_runtime_name = "runc"',
        '    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]',
        '      runtime_type = "io.containerd.runc.v2"',
        '      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]',
        '        SystemdCgroup = false',
        `        BinaryName = "${RUNC}"`,
        '  [plugins."io.containerd.grpc.v1.cri".cni]',
        `    bin_dir = "${CNI_BIN}"`,
        `    conf_dir = ${JSON.stringify(p('cni/conf'))}`,
        '    max_conf_num = 1',
        '',
      ].join('\n'),
    );
    writeFileSync(
      p('cni/conf/10-kgate.conflist'),
      JSON.stringify({
        cniVersion: '1.0.0',
        name: `kgate-${bridge}`,
        plugins: [
          {
            type: 'bridge',
            bridge,
            isGateway: true,
            ipMasq: false,
            hairpinMode: true,
            ipam: { type: 'host-local', ranges: [[{ subnet: opts.podCidr }]], dataDir: p('cni/state') },
          },
          { type: 'loopback' },
        ],
      }),
    );
    containerd = startProcess(CONTAINERD, ['--config', p('containerd/config.toml')], p('logs/containerd.log'));
    const deadline = Date.now() + timeoutMs;
    while (!ctr('version').includes('Server')) {
      if (containerd.child.exitCode !== null || Date.now() > deadline) throw new Error(`containerd did not start:\n${tail(containerd.logPath)}`);
      await sleep(100);
    }

    const assets = execFileSync(join(REPO, 'scripts/kubelet-assets.sh'), (opts.images ?? []).length ? ['--kernel-image', opts.images![0]!] : [], { encoding: 'utf8' })
      .split('\n')
      .filter(Boolean);
    for (const extra of (opts.images ?? []).slice(1)) {
      assets.push(...execFileSync(join(REPO, 'scripts/kubelet-assets.sh'), ['--kernel-image', extra], { encoding: 'utf8' }).split('\n').filter(Boolean).slice(1));
    }
    for (const tar of assets) {
      execFileSync(CTR, ['--address', sock, '--namespace', 'k8s.io', 'images', 'import', tar], { stdio: ['ignore', 'ignore', 'pipe'] });
    }

    const [port, healthzPort] = [await freePort(), await freePort()];
    writeFileSync(
      p('kubelet-config.yaml'),
      stringify({
        apiVersion: 'kubelet.config.k8s.io/v1beta1',
        kind: 'KubeletConfiguration',
        address: '127.0.0.1',
        port,
        readOnlyPort: 0,
        healthzBindAddress: '127.0.0.1',
        healthzPort,
        authentication: { anonymous: { enabled: false }, webhook: { enabled: false } },
        authorization: { mode: 'AlwaysAllow' },
        cgroupDriver: 'cgroupfs',
        cgroupsPerQOS: true,
        enforceNodeAllocatable: [],
        failSwapOn: false,
        failCgroupV1: false,
        podLogsDir: p('pod-logs'),
        containerRuntimeEndpoint: `unix://${sock}`,
        imageServiceEndpoint: `unix://${sock}`,
        registerNode: true,
        makeIPTablesUtilChains: false,
        evictionHard: {},
        imageGCHighThresholdPercent: 100,
        imageGCLowThresholdPercent: 99,
        serializeImagePulls: false,
      }),
    );
    kubelet = startProcess(
      join(binDir, 'kubelet'),
      [
        `--config=${p('kubelet-config.yaml')}`,
        `--kubeconfig=${cluster.kubeconfigPath}`,
        `--root-dir=${p('kubelet')}`,
        `--cert-dir=${p('kubelet/pki')}`,
        `--hostname-override=${opts.name}`,
        '--node-ip=127.0.0.1',
        '--v=2',
      ],
      p('logs/kubelet.log'),
    );

    let node: V1Node | undefined;
    for (;;) {
      node = await core.readNode({ name: opts.name }).catch((e: unknown) => {
        if (e instanceof ApiException && e.code === 404) return undefined;
        throw e;
      });
      if (node?.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True')) break;
      if (kubelet.child.exitCode !== null || Date.now() > deadline) {
        throw new Error(`the kubelet's Node ${opts.name} did not become Ready:\n${tail(kubelet.logPath)}\n--- containerd:\n${tail(containerd.logPath, 10)}`);
      }
      await sleep(250);
    }

    if (opts.extendedResources && Object.keys(opts.extendedResources).length) {
      // No device plugin advertises these; the kubelet keeps capacity it did not set itself.
      for (let attempt = 0; ; attempt++) {
        const n = await core.readNode({ name: opts.name });
        n.status!.capacity = { ...n.status!.capacity, ...opts.extendedResources };
        n.status!.allocatable = { ...n.status!.allocatable, ...opts.extendedResources };
        try {
          await core.replaceNodeStatus({ name: opts.name, body: n });
          break;
        } catch (e) {
          if (!(e instanceof ApiException && e.code === 409) || attempt > 10) throw e;
        }
      }
    }
    let stopped = false;
    return {
      name: opts.name,
      dir,
      startupMs: performance.now() - t0,
      stop: async () => {
        if (stopped) return;
        stopped = true;
        await stop();
      },
    };
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
}
