/**
 * Sandbox egress (src/provisioner/egress.ts) attacked from inside real
 * sandboxed ipykernels, by executing code through kgate as a user would.
 * There is no internet here, so the test makes one: a network namespace
 * `kgpub` holding a "public" address (203.0.113.10, routed from the host
 * over a veth, not on the deny list) and, on the same interface, one address
 * in each denied range (10/8, 172.16/12, 192.168/16, the cloud metadata
 * address 169.254.169.254, 100.64/10), with one TCP server answering on all.
 * A kernel with egress reaches the public one and nothing else: not kgate's
 * port or another service on 127.0.0.1, not the host's side of its own veth,
 * not the host's address on the "public" link, none of the private ones; it
 * cannot change its namespace's rules, addresses or routes. Without egress
 * (the default) even the public one fails. A container with egress gets the
 * same namespace and list. Shutdown, and adoption after `kill -9` of kgate,
 * leave no namespace, veth or nftables table.
 *
 * Nothing is skipped: a machine without root, iproute2, nftables or
 * bubblewrap fails here with the reason.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, realpathSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { egressNames, egressProblem, removeEgress } from '../../src/provisioner/egress.js';
import { sandboxProvisionerFactory } from '../../src/provisioner/sandbox.js';
import { gatewayClient, KernelClient, startGateway, type TestGateway } from '../helpers/gateway.js';
import { CONNECT, ok } from '../helpers/kernel-attacks.js';
import { processesMatching } from '../helpers/procs.js';
import { writeKernelspec } from '../helpers/provisioner-specs.js';
import { until } from '../helpers/wait.js';

const PUB_NS = 'kgpub';
const PUB_IF = 'kgpubh';
const PUBLIC = '203.0.113.10';
/** The host's own address on the "public" link: public-looking, so only the rule for the host's own addresses stops it. */
const HOST_PUBLIC = '203.0.113.1';
const PRIVATE = {
  '10.0.0.0/8': '10.77.0.10',
  '172.16.0.0/12': '172.16.77.10',
  '192.168.0.0/16': '192.168.77.10',
  'cloud metadata': '169.254.169.254',
  '100.64.0.0/10': '100.64.77.10',
};
const PORT = 8000;
const TOKEN = 'sandbox-egress-token';
/** The container provisioner's test image (scripts/build-kernel-image.sh). */
const IMAGE = 'localhost/kgate-kernel-python3:bookworm';

const dir = realpathSync(mkdtempSync(join(tmpdir(), 'kgate-egress-')));
const stateDir = join(dir, 'state');
const runtimeDir = join(dir, 'runtime');
const specDir = join(dir, 'specs');
const baseDir = join(dir, 'sb');
let t: TestGateway;
let outside: ChildProcess | undefined;
/** The local addresses the server in kgpub accepted connections on. */
const accepted: string[] = [];
const hostServers: Server[] = [];
let hostAccepted = 0;
const kgates: ChildProcess[] = [];
/** Kernels of the kgate processes (the built-in sandbox, in its default base dir). */
const cliKernels: string[] = [];
const table: Array<{ attack: string; outcome: string }> = [];

const ip = (...args: string[]): string => execFileSync('/usr/sbin/ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

function removePublicNet(): void {
  if (existsSync(`/run/netns/${PUB_NS}`)) ip('netns', 'delete', PUB_NS);
  // Deleting the namespace takes its veth pair with it, in the background.
  for (const a of ['link', ...Object.values(PRIVATE)]) {
    try {
      if (a === 'link') ip('link', 'delete', PUB_IF);
      else ip('route', 'delete', `${a}/32`);
    } catch {
      // not there
    }
  }
}

/** What is left on the host of kernel `id`'s egress: its namespace, its veth, its nftables table. */
function egressLeft(id: string): string[] {
  const n = egressNames(id);
  const tables = execFileSync('/usr/sbin/nft', ['list', 'tables'], { encoding: 'utf8' }).split('\n');
  return [
    ...(ip('netns', 'list').includes(n.netns) ? [`netns ${n.netns}`] : []),
    ...(existsSync(`/sys/class/net/${n.hostIf}`) ? [`link ${n.hostIf}`] : []),
    ...(tables.includes(`table inet ${n.table}`) ? [`table ${n.table}`] : []),
  ];
}

function hostServer(host: string): Promise<number> {
  const s = createServer((c) => {
    hostAccepted++;
    c.destroy();
  });
  hostServers.push(s);
  return new Promise((r) => s.listen(0, host, () => r((s.address() as { port: number }).port)));
}

/** The "internet": kgpub with the public address and the private ones, one TCP server on all of them, routed from the host. */
async function makePublicNet(): Promise<void> {
  removePublicNet();
  ip('netns', 'add', PUB_NS);
  ip('link', 'add', PUB_IF, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', PUB_NS);
  ip('addr', 'add', `${HOST_PUBLIC}/24`, 'dev', PUB_IF);
  ip('link', 'set', PUB_IF, 'up');
  ip('-n', PUB_NS, 'link', 'set', 'lo', 'up');
  ip('-n', PUB_NS, 'addr', 'add', `${PUBLIC}/24`, 'dev', 'eth0');
  for (const a of Object.values(PRIVATE)) {
    ip('-n', PUB_NS, 'addr', 'add', `${a}/32`, 'dev', 'eth0');
    ip('route', 'add', `${a}/32`, 'dev', PUB_IF);
  }
  ip('-n', PUB_NS, 'link', 'set', 'eth0', 'up');
  ip('-n', PUB_NS, 'route', 'add', 'default', 'via', HOST_PUBLIC);
  const server = `import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', ${PORT})); s.listen(64)
print('ready', flush=True)
while True:
    c, _ = s.accept(); print('accepted', c.getsockname()[0], flush=True); c.close()`;
  outside = spawn('/usr/sbin/ip', ['netns', 'exec', PUB_NS, '/usr/bin/python3', '-c', server], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((ready, fail) => {
    let buf = '';
    outside!.stdout!.setEncoding('utf8');
    outside!.stdout!.on('data', (d: string) => {
      buf += d;
      const lines = buf.split('\n');
      buf = lines.pop()!;
      for (const l of lines) {
        if (l === 'ready') ready();
        else if (l.startsWith('accepted ')) accepted.push(l.slice('accepted '.length));
      }
    });
    outside!.once('exit', (code) => fail(new Error(`the server in ${PUB_NS} exited with ${code}`)));
  });
}

beforeAll(async () => {
  const problem = egressProblem() ?? (existsSync('/usr/bin/bwrap') ? undefined : 'bubblewrap is missing (scripts/setup.sh --test installs it)');
  if (problem) throw new Error(problem);
  chmodSync(dir, 0o755);
  mkdirSync(specDir, { mode: 0o755 });
  writeKernelspec(specDir, 'egress', { provisioner: 'sandbox', config: { egress: true } });
  writeKernelspec(specDir, 'no-egress', { provisioner: 'sandbox' });
  writeKernelspec(specDir, 'container-egress', { provisioner: 'container', config: { image: IMAGE, egress: true } });
  await makePublicNet();
  t = await startGateway(['--state-dir', stateDir, '--runtime-dir', runtimeDir], {
    kernelspecDirs: [specDir],
    provisioners: [sandboxProvisionerFactory({ baseDir, hide: [stateDir, runtimeDir] })],
  });
}, 60_000);

afterAll(async () => {
  await t?.close();
  for (const k of kgates) k.kill('SIGKILL');
  for (const s of hostServers) s.close();
  for (const pid of processesMatching(baseDir)) process.kill(pid, 'SIGKILL');
  for (const id of cliKernels) for (const pid of processesMatching(id)) process.kill(pid, 'SIGKILL');
  for (const id of cliKernels) await removeEgress(egressNames(id));
  outside?.kill('SIGKILL');
  removePublicNet();
  rmSync(dir, { recursive: true, force: true });
  if (table.length > 0) console.log(`sandbox egress attacks:\n${table.map((r) => `  ${r.attack.padEnd(58)} ${r.outcome}`).join('\n')}`);
});

const REFUSED = /^refused:(ECONNREFUSED|EHOSTUNREACH|ENETUNREACH|EACCES|EPERM|timeout|TimeoutError)$/;

describe('sandbox egress', () => {
  it('reaches a public address and nothing private, loopback or of the host; cannot change its rules; off by default; shutdown leaves nothing', async () => {
    const e = await t.startKernel('egress');
    const n = await t.startKernel('no-egress');
    const ce = await KernelClient.connect(t, e);
    const cn = await KernelClient.connect(t, n);
    const link = t.gw.ctx.kernels.get(e).provisioner.getInfo()['egress'] as { netns: string; hostAddr: string; kernelAddr: string };
    expect(link.netns).toBe(egressNames(e).netns);
    expect(await ok(ce, 'import socket; print(sorted(n for _, n in socket.if_nameindex()))')).toBe("['eth0', 'lo']");

    // The public address: reached, and the server saw the connection come in.
    const pub = await ok(ce, CONNECT(PUBLIC, PORT));
    expect(pub).toBe('connected');
    await until(() => accepted.includes(PUBLIC), 'the public server saw the connection');
    table.push({ attack: `egress kernel: connect to a public address (${PUBLIC})`, outcome: pub });

    // What it must not reach: each private range (a server answers on every one of them), the host's loopback and its own addresses.
    const kgatePort = Number(new URL(t.url).port);
    const servicePort = await hostServer('127.0.0.1');
    const vethPort = await hostServer(link.hostAddr);
    const hostPublicPort = await hostServer(HOST_PUBLIC);
    const targets: Array<[string, string, number]> = [
      ...Object.entries(PRIVATE).map(([what, a]): [string, string, number] => [`${what} (${a})`, a, PORT]),
      ["kgate's own port on 127.0.0.1", '127.0.0.1', kgatePort],
      ['a TCP service of the test on 127.0.0.1', '127.0.0.1', servicePort],
      [`the host's side of the kernel's veth (${link.hostAddr})`, link.hostAddr, vethPort],
      [`the host's own address on the public link (${HOST_PUBLIC})`, HOST_PUBLIC, hostPublicPort],
    ];
    for (const [what, host, port] of targets) {
      const out = await ok(ce, CONNECT(host, port));
      expect(out, what).toMatch(REFUSED);
      table.push({ attack: `egress kernel: connect to ${what}`, outcome: out });
    }
    // IPv6: none, to any address.
    const v6 = await ok(
      ce,
      `import socket, errno\ns = socket.socket(socket.AF_INET6)\ns.settimeout(3)\ntry:\n    s.connect(('2001:db8::1', 80)); print('connected')\nexcept OSError as e:\n    print('refused:' + (errno.errorcode.get(e.errno, '') or type(e).__name__))`,
    );
    expect(v6).toMatch(REFUSED);
    table.push({ attack: 'egress kernel: connect over IPv6 (2001:db8::1)', outcome: v6 });
    expect(accepted.filter((a) => a !== PUBLIC)).toEqual([]);
    expect(hostAccepted).toBe(0);

    // Its namespace is kgate's (owned by the init user namespace): no rule, address or route of it can be changed from inside, no raw socket made.
    for (const [what, argv] of [
      ['flush its nftables rules', ['/usr/sbin/nft', 'flush', 'ruleset']],
      ['add a private address to eth0', ['/usr/sbin/ip', 'addr', 'add', '10.77.0.99/32', 'dev', 'eth0']],
      ['replace its default route', ['/usr/sbin/ip', 'route', 'replace', 'default', 'dev', 'eth0']],
    ] as const) {
      const out = await ok(
        ce,
        `import subprocess\nr = subprocess.run(${JSON.stringify(argv)}, capture_output=True, text=True)\nprint('changed' if r.returncode == 0 else 'refused:' + r.stderr.strip().splitlines()[0][:60])`,
      );
      expect(out, what).toMatch(/^refused:.*(Operation not permitted|not permitted)/);
      table.push({ attack: `egress kernel: ${what}`, outcome: out });
    }
    const raw = await ok(
      ce,
      `import socket\ntry:\n    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP); print('made')\nexcept OSError as e:\n    print('refused:' + type(e).__name__)`,
    );
    expect(raw).toBe('refused:PermissionError');
    table.push({ attack: 'egress kernel: open a raw socket', outcome: raw });
    expect(await ok(ce, CONNECT(PRIVATE['10.0.0.0/8'], PORT))).toMatch(REFUSED);

    // Egress off (the default): only a loopback, so not even the public address.
    expect(await ok(cn, 'import socket; print(sorted(n for _, n in socket.if_nameindex()))')).toBe("['lo']");
    const off = await ok(cn, CONNECT(PUBLIC, PORT));
    expect(off).toMatch(REFUSED);
    table.push({ attack: `kernel without egress: connect to ${PUBLIC}`, outcome: off });

    // A restart in place keeps the namespace and its link.
    expect((await t.api(`api/kernels/${e}/restart`, { method: 'POST' })).status).toBe(200);
    expect(await ok(ce, CONNECT(PUBLIC, PORT))).toBe('connected');
    expect((t.gw.ctx.kernels.get(e).provisioner.getInfo()['egress'] as { netns: string }).netns).toBe(link.netns);

    // Shutdown leaves no namespace, veth or table.
    ce.close();
    cn.close();
    for (const id of [e, n]) expect((await t.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
    await until(() => egressLeft(e).length === 0, `kernel ${e}'s egress removed (left: ${egressLeft(e).join(', ')})`, 10_000);
    expect(processesMatching(baseDir)).toEqual([]);
  }, 180_000);

  it('a container with egress: the same namespace and deny list as a sandbox, and nothing left when it ends', async () => {
    execFileSync('/usr/bin/podman', ['image', 'exists', IMAGE]);
    const id = await t.startKernel('container-egress');
    const c = await KernelClient.connect(t, id);
    const link = t.gw.ctx.kernels.get(id).provisioner.getInfo()['egress'] as { netns: string; hostAddr: string };
    expect(link.netns).toBe(egressNames(id).netns);
    expect(await ok(c, 'import socket; print(sorted(n for _, n in socket.if_nameindex()))')).toBe("['eth0', 'lo']");
    const pub = await ok(c, CONNECT(PUBLIC, PORT));
    expect(pub).toBe('connected');
    table.push({ attack: `container with egress: connect to ${PUBLIC}`, outcome: pub });
    for (const [what, host, port] of [
      ['10.0.0.0/8', PRIVATE['10.0.0.0/8'], PORT],
      ['cloud metadata', PRIVATE['cloud metadata'], PORT],
      [`the host's side of its veth (${link.hostAddr})`, link.hostAddr, await hostServer(link.hostAddr)],
      ["kgate's own port on 127.0.0.1", '127.0.0.1', Number(new URL(t.url).port)],
    ] as const) {
      const out = await ok(c, CONNECT(host, port));
      expect(out, what).toMatch(REFUSED);
      table.push({ attack: `container with egress: connect to ${what}`, outcome: out });
    }
    expect(accepted.filter((a) => a !== PUBLIC)).toEqual([]);
    expect(hostAccepted).toBe(0);
    c.close();
    expect((await t.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
    await until(() => egressLeft(id).length === 0, `the container's egress removed (left: ${egressLeft(id).join(', ')})`, 10_000);
    expect(execFileSync('/usr/bin/podman', ['ps', '-a', '--format={{.ID}}', `--filter=label=kgate.kernel-id=${id}`], { encoding: 'utf8' }).trim()).toBe('');
  }, 120_000);

  it('survives kill -9 of kgate: the next kgate adopts the kernel with its egress and removes the namespace at shutdown', async () => {
    const sd = join(dir, 'state2');
    const args = ['--port', '0', '--auth-token', TOKEN, '--state-dir', sd, '--runtime-dir', join(dir, 'runtime2'), '--kernelspec-dir', specDir, '--log-level', 'warn'];
    const first = await startCli(args);
    const c1 = gatewayClient(first.url, TOKEN);
    const id = await c1.startKernel('egress');
    cliKernels.push(id);
    expect(egressLeft(id)).toHaveLength(3);
    first.child.kill('SIGKILL');
    await new Promise((r) => first.child.once('exit', r));
    // The kernel and its namespace outlive the gateway.
    expect(egressLeft(id)).toHaveLength(3);
    const second = await startCli(args);
    const c2 = gatewayClient(second.url, TOKEN);
    const k = await KernelClient.connect(c2, id);
    expect(await ok(k, CONNECT(PUBLIC, PORT))).toBe('connected');
    expect(await ok(k, CONNECT(PRIVATE['192.168.0.0/16'], PORT))).toMatch(REFUSED);
    k.close();
    expect((await c2.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
    await until(() => egressLeft(id).length === 0, `the adopted kernel's egress removed (left: ${egressLeft(id).join(', ')})`, 10_000);
    table.push({ attack: 'kill -9 of kgate, adoption, shutdown', outcome: 'adopted with egress; namespace, veth and table removed' });
  }, 120_000);
});

/** kgate as a user runs it, from the sources (tsx), so the test needs no build: answers its URL once it listens. */
async function startCli(args: string[]): Promise<{ child: ChildProcess; url: string }> {
  const cli = fileURLToPath(new URL('../../src/cli.ts', import.meta.url));
  const child = spawn(process.execPath, ['--import', 'tsx', cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env } });
  kgates.push(child);
  let errors = '';
  child.stderr!.on('data', (d: Buffer) => {
    errors = (errors + d.toString()).slice(-8192);
  });
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`kgate did not start: ${errors}`)), 30_000);
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const m = /^kgate listening on (http:\/\/\S+\/)$/m.exec(buf);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
    child.once('exit', (code) => reject(new Error(`kgate exited with ${code}: ${errors}`)));
  });
  return { child, url };
}
