/**
 * Namespace plumbing for the simulated node (test/k8s/sim-node.ts): a Linux
 * bridge per node holding its pod CIDR's gateway address, and per pod a
 * network namespace joined to it by a veth pair (the pod's own IP on `eth0`,
 * loopback up, a default route via the bridge), so a process on the host
 * reaches `podIP:port` directly, as it would reach a pod through a CNI
 * plugin's bridge. Also the pod's private mount namespace, kept in a file
 * (`unshare --mount=FILE`) so the volumes can be bind-mounted into it before
 * the container's command runs there (`nsenter`), with no shell in between.
 *
 * Every command is an argv array run by execFile; names are derived from
 * hashes of the node and pod names, so a client's text never reaches them.
 * Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN).
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, rmSync, rmdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';

const RUN_ROOT = '/run/kgsim';
const COMMAND_TIMEOUT_MS = 15_000;

/** Runs one command (argv) and resolves with its stdout; rejects with its stderr. */
export function run(file: string, args: readonly string[]): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    execFile(file, args, { timeout: COMMAND_TIMEOUT_MS, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${file} ${args.join(' ')}: ${stderr.trim() || err.message}`));
      else resolvePromise(stdout);
    });
  });
}

/** Like run, for cleanup: a thing already gone is not a failure. */
async function runQuiet(file: string, args: readonly string[]): Promise<void> {
  try {
    await run(file, args);
  } catch {
    // already gone
  }
}

function hash(text: string, length: number): string {
  return createHash('sha256').update(text).digest('hex').slice(0, length);
}

function ipToInt(ip: string): number {
  const parts = ip.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) throw new Error(`not an IPv4 address: ${ip}`);
  return ((parts[0]! << 24) | (parts[1]! << 16) | (parts[2]! << 8) | parts[3]!) >>> 0;
}

function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

export interface Cidr {
  network: number;
  prefix: number;
}

export function parseCidr(cidr: string): Cidr {
  const [ip, bits] = cidr.split('/');
  const prefix = Number(bits);
  if (ip === undefined || !Number.isInteger(prefix) || prefix < 8 || prefix > 30) throw new Error(`a pod CIDR must be IPv4 a.b.c.d/8..30: ${cidr}`);
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  return { network: (ipToInt(ip) & mask) >>> 0, prefix };
}

/**
 * Host directories made to serve as mount points (a pod's `mountPath` need
 * not exist on the host). Every pod holding one leaves a file in
 * `holds/<hash of the path>/`, so a pod's cleanup, in this process or in
 * another test worker's, removes a directory only when no live pod's mount
 * sits on it (removing it would detach that mount from the pod's namespace).
 */
const HOLDS_DIR = join(RUN_ROOT, 'holds');
const CREATED = 'created';
let holdSeq = 0;

function holdDir(path: string): string {
  return join(HOLDS_DIR, hash(path, 16));
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Makes the missing directories of `path` and holds each one made by a holder; returns the hold's id. */
function holdMountPoint(path: string): string {
  const id = `${process.pid}-${++holdSeq}`;
  const target = resolve(path);
  const missing: string[] = [];
  for (let p = target; !existsSync(p); p = dirname(p)) missing.unshift(p);
  for (const p of missing) {
    mkdirSync(p);
    mkdirSync(holdDir(p), { recursive: true });
    writeFileSync(join(holdDir(p), CREATED), p);
  }
  for (let p = target; existsSync(join(holdDir(p), CREATED)); p = dirname(p)) writeFileSync(join(holdDir(p), id), '');
  return id;
}

function releaseMountPoint(path: string, id: string): void {
  for (let p = resolve(path); existsSync(join(holdDir(p), CREATED)); p = dirname(p)) {
    const dir = holdDir(p);
    rmSync(join(dir, id), { force: true });
    // A hold of a process that died without cleanup does not keep the directory.
    const live = readdirSync(dir).filter((f) => f !== CREATED && pidAlive(Number(f.split('-')[0])));
    if (live.length > 0) continue;
    try {
      rmdirSync(p);
    } catch {
      // something else put a file there; leave it
    }
    rmSync(dir, { recursive: true, force: true });
  }
  try {
    rmdirSync(HOLDS_DIR);
  } catch {
    // another hold is still there
  }
}

/** A directory (or a tmpfs) to appear at `target` inside the pod's mount namespace. */
export type PodMount = { kind: 'bind'; source: string; target: string; readOnly: boolean } | { kind: 'tmpfs'; target: string; sizeBytes?: number | undefined };

export interface PodSandbox {
  key: string;
  netns: string;
  ip: string;
  hostVeth: string;
  /** The file that keeps the pod's mount namespace. */
  mountNs: string;
  /** A private directory for the pod's volume files. */
  dataDir: string;
  /** Host directories held as mount points, with the hold's id. */
  mountPoints: { path: string; id: string }[];
}

/** One node's bridge, IP pool and pod sandboxes. */
export class NodeNetwork {
  readonly bridge: string;
  readonly gateway: string;
  readonly prefix: number;
  private readonly tag: string;
  /** Where the node's mount namespaces and pod files live (under /run/kgsim). */
  readonly runDir: string;
  private readonly mountNsDir: string;
  private readonly firstHost: number;
  private readonly lastHost: number;
  private readonly usedIps = new Set<number>();
  private nextIp = 0;
  private readonly pods = new Map<string, PodSandbox>();

  constructor(nodeName: string, podCidr: string) {
    const { network, prefix } = parseCidr(podCidr);
    this.tag = hash(nodeName, 8);
    this.bridge = `kgsim-${this.tag}`;
    this.prefix = prefix;
    this.gateway = intToIp(network + 1);
    this.firstHost = network + 2;
    this.nextIp = this.firstHost;
    this.lastHost = network + 2 ** (32 - prefix) - 2;
    this.runDir = join(RUN_ROOT, this.tag);
    this.mountNsDir = join(this.runDir, 'mnt');
  }

  /** Makes the bridge (after clearing whatever a crashed earlier agent of this node left). */
  async up(): Promise<void> {
    await this.down();
    await run('ip', ['link', 'add', 'name', this.bridge, 'type', 'bridge']);
    await run('ip', ['addr', 'add', `${this.gateway}/${this.prefix}`, 'dev', this.bridge]);
    await run('ip', ['link', 'set', this.bridge, 'up']);
    // Mount namespaces can only be kept in a file on a private mount (as ip-netns does with /run/netns).
    mkdirSync(this.mountNsDir, { recursive: true });
    await run('mount', ['--bind', this.mountNsDir, this.mountNsDir]);
    await run('mount', ['--make-private', this.mountNsDir]);
  }

  /**
   * Round robin over the CIDR, as host-local IPAM does: an address freed a moment ago is
   * still in the host's neighbour table with the deleted pod's MAC, so a new pod given it
   * at once is unreachable until that entry ages out (a minute of SYN retries).
   */
  private allocateIp(): number {
    const size = this.lastHost - this.firstHost + 1;
    for (let i = 0; i < size; i++) {
      const n = this.firstHost + ((this.nextIp - this.firstHost + i) % size);
      if (!this.usedIps.has(n)) {
        this.usedIps.add(n);
        this.nextIp = n + 1 > this.lastHost ? this.firstHost : n + 1;
        return n;
      }
    }
    throw new Error(`pod CIDR of bridge ${this.bridge} is exhausted`);
  }

  /** A network namespace with its own IP on the bridge, and a mount namespace with the volumes in place (`volumes` writes their files into the pod's data directory). */
  async addPod(key: string, volumes: (dataDir: string) => Promise<readonly PodMount[]>): Promise<PodSandbox> {
    const podTag = hash(`${this.tag}/${key}`, 12);
    const ipInt = this.allocateIp();
    const sandbox: PodSandbox = {
      key,
      netns: `${this.bridge}-${podTag}`,
      ip: intToIp(ipInt),
      hostVeth: `kv${podTag}`,
      mountNs: join(this.mountNsDir, podTag),
      dataDir: join(this.runDir, 'pods', podTag),
      mountPoints: [],
    };
    this.pods.set(key, sandbox);
    try {
      mkdirSync(sandbox.dataDir, { recursive: true, mode: 0o755 });
      const ns = sandbox.netns;
      await run('ip', ['netns', 'add', ns]);
      await run('ip', ['link', 'add', sandbox.hostVeth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
      await run('ip', ['link', 'set', sandbox.hostVeth, 'master', this.bridge]);
      await run('ip', ['link', 'set', sandbox.hostVeth, 'up']);
      await run('ip', ['-n', ns, 'addr', 'add', `${sandbox.ip}/${this.prefix}`, 'dev', 'eth0']);
      await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
      await run('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
      await run('ip', ['-n', ns, 'route', 'add', 'default', 'via', this.gateway]);
      writeFileSync(sandbox.mountNs, '');
      await run('unshare', [`--mount=${sandbox.mountNs}`, '--propagation', 'private', 'true']);
      for (const m of await volumes(sandbox.dataDir)) await this.mount(sandbox, m);
      return sandbox;
    } catch (e) {
      await this.removePod(key);
      throw e;
    }
  }

  private async mount(sandbox: PodSandbox, m: PodMount): Promise<void> {
    // An absolute path with no `..`: never read as an option of mount, never outside the root.
    if (!m.target.startsWith('/') || m.target.split('/').includes('..')) {
      throw new Error(`a mountPath must be an absolute path with no "..": ${m.target}`);
    }
    sandbox.mountPoints.push({ path: m.target, id: holdMountPoint(m.target) });
    const enter = ['--mount=' + sandbox.mountNs, '--'];
    if (m.kind === 'tmpfs') {
      const size = m.sizeBytes !== undefined ? `,size=${m.sizeBytes}` : '';
      await run('nsenter', [...enter, 'mount', '-t', 'tmpfs', '-o', `mode=1777${size}`, 'tmpfs', m.target]);
      return;
    }
    await run('nsenter', [...enter, 'mount', '--bind', m.source, m.target]);
    if (m.readOnly) await run('nsenter', [...enter, 'mount', '-o', 'remount,bind,ro', m.target]);
  }

  /** Makes the pod's root read-only (after its volumes are mounted), as `readOnlyRootFilesystem` asks. */
  async readOnlyRoot(sandbox: PodSandbox): Promise<void> {
    await run('nsenter', ['--mount=' + sandbox.mountNs, '--', 'mount', '-o', 'remount,bind,ro', '/']);
  }

  /** The argv prefix that runs a command in the pod's network and mount namespaces. */
  enterArgv(sandbox: PodSandbox): string[] {
    return ['nsenter', `--net=/run/netns/${sandbox.netns}`, `--mount=${sandbox.mountNs}`, '--'];
  }

  /** Removes a pod's namespaces, veth, files and mount points; its processes must be gone first. */
  async removePod(key: string): Promise<void> {
    const sandbox = this.pods.get(key);
    if (!sandbox) return;
    this.pods.delete(key);
    await runQuiet('umount', [sandbox.mountNs]);
    rmSync(sandbox.mountNs, { force: true });
    await runQuiet('ip', ['netns', 'del', sandbox.netns]);
    await runQuiet('ip', ['link', 'del', sandbox.hostVeth]);
    // The kernel destroys a veth whose namespace went asynchronously: wait (bounded) so that "removed" means gone.
    for (let i = 0; i < 100 && existsSync(`/sys/class/net/${sandbox.hostVeth}`); i++) await new Promise((r) => setTimeout(r, 20));
    rmSync(sandbox.dataDir, { recursive: true, force: true });
    for (const { path, id } of sandbox.mountPoints) releaseMountPoint(path, id);
    this.usedIps.delete(ipToInt(sandbox.ip));
  }

  /** Removes every pod sandbox, the bridge and the run directory, including any a crashed agent of this node left. */
  async down(): Promise<void> {
    for (const key of [...this.pods.keys()]) await this.removePod(key);
    const prefix = `${this.bridge}-`;
    for (const line of (await run('ip', ['netns', 'list'])).split('\n')) {
      const name = line.split(' ')[0] ?? '';
      if (name.startsWith(prefix)) await runQuiet('ip', ['netns', 'del', name]);
    }
    if (existsSync(`/sys/class/net/${this.bridge}`)) {
      for (const link of readdirSync(`/sys/class/net/${this.bridge}/brif`)) await runQuiet('ip', ['link', 'del', link]);
      await runQuiet('ip', ['link', 'del', this.bridge]);
    }
    if (existsSync(this.mountNsDir)) {
      for (const f of readdirSync(this.mountNsDir)) await runQuiet('umount', [join(this.mountNsDir, f)]);
      await runQuiet('umount', [this.mountNsDir]);
    }
    rmSync(this.runDir, { recursive: true, force: true });
    try {
      rmdirSync(RUN_ROOT);
    } catch {
      // another node's directory is still there
    }
  }
}
