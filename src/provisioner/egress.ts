/**
 * Egress for a sandboxed kernel, when the operator allows it: a network
 * namespace of kgate's own making per kernel, joined to the host by a veth
 * pair, with the deny list of the seed systems' kernel network policies
 * enforced by nftables *inside that namespace* and again on the host.
 *
 *   host                                   kernel's netns (kgate-<h>)
 *   kgv<h>  <addr>.1/30  ◄── veth ──►  eth0  <addr>.2/30, default via .1
 *   table inet kgate-<h>:                  table inet kgate:
 *     input: nothing from kgv<h>             output: lo, else deny list → reject
 *     forward: deny list, no IPv6,           input: lo and replies only
 *              no new connection in          (IPv6: none but lo)
 *     postrouting: masquerade <addr>.2
 *
 * The namespace is made by kgate (root) in the init user namespace, so it is
 * owned there: the kernel, root only in the user namespace bubblewrap makes
 * for it, has no CAP_NET_ADMIN over it and cannot change its addresses,
 * routes or rules (test/integration/sandbox-egress.test.ts tries). ZeroMQ
 * stays on ipc sockets, so nothing of kgate listens on the veth.
 *
 * Every name is made here from a hash of the kernel id (never a client's
 * text), so cleanup finds them again by name after kgate was killed; the
 * rulesets are kgate's own text with only those names and validated
 * addresses in them. Why this design: docs/operations.md ("Sandbox egress").
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { kernelLaunchRetryable, kernelStartFailed } from '../errors.js';

const IP = '/usr/sbin/ip';
const NFT = '/usr/sbin/nft';
const NSENTER = '/usr/bin/nsenter';
const COMMAND_TIMEOUT_MS = 10_000;

/**
 * Never reachable from a kernel, even with egress: loopback, RFC 1918,
 * link-local (the cloud metadata address among it), shared address space
 * (100.64.0.0/10), IETF protocol assignments and the benchmarking range (the
 * seed systems' list), plus multicast and the reserved block. The host's own
 * addresses are added at launch.
 */
export const DENIED_V4 = [
  '0.0.0.0/8',
  '10.0.0.0/8',
  '100.64.0.0/10',
  '127.0.0.0/8',
  '169.254.0.0/16',
  '172.16.0.0/12',
  '192.0.0.0/24',
  '192.168.0.0/16',
  '198.18.0.0/15',
  '224.0.0.0/3',
] as const;

/** The default pool of the kernels' /30 links: inside 198.18.0.0/15 (benchmarking, never a real network's), which the deny list holds anyway. */
export const DEFAULT_EGRESS_NET = '198.18.0.0/16';

/** One kernel's link and the names that find it again. */
export interface EgressLink {
  /** `kgate-<h>`, under /run/netns. */
  netns: string;
  /** The host side of the veth pair, `kgv<h>` (15 bytes at most, the kernel's limit). */
  hostIf: string;
  /** The host's nftables table, `inet kgate-<h>`. */
  table: string;
  hostAddr: string;
  kernelAddr: string;
}

const NAME = /^[0-9a-f]{10}$/;

/** The names of kernel `kernelId`'s link (a hash: the same after a restart of kgate, never text a client chose). */
export function egressNames(kernelId: string): Pick<EgressLink, 'netns' | 'hostIf' | 'table'> {
  const h = createHash('sha256').update(kernelId).digest('hex').slice(0, 10);
  return { netns: `kgate-${h}`, hostIf: `kgv${h}`, table: `kgate-${h}` };
}

/** Whether a recorded link is one this module made (a record from the state dir is checked before cleanup acts on it). */
export function isEgressLink(v: unknown): v is EgressLink {
  const l = v as Partial<EgressLink> | null;
  if (l === null || typeof l !== 'object') return false;
  const h = typeof l.netns === 'string' ? l.netns.slice('kgate-'.length) : '';
  return (
    NAME.test(h) &&
    l.netns === `kgate-${h}` &&
    l.hostIf === `kgv${h}` &&
    l.table === `kgate-${h}` &&
    typeof l.hostAddr === 'string' &&
    parseV4(l.hostAddr) !== undefined &&
    typeof l.kernelAddr === 'string' &&
    parseV4(l.kernelAddr) !== undefined
  );
}

export function parseV4(s: string): number | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
  if (!m) return undefined;
  const parts = m.slice(1).map(Number);
  if (parts.some((p) => p > 255)) return undefined;
  return ((parts[0]! << 24) >>> 0) + (parts[1]! << 16) + (parts[2]! << 8) + parts[3]!;
}

export function formatV4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** A CIDR's first and last address, or undefined when it is not one. */
export function parseCidr(s: string): { first: number; last: number; prefix: number } | undefined {
  const [addr, len, ...rest] = s.split('/');
  const prefix = Number(len);
  const base = parseV4(addr ?? '');
  if (rest.length > 0 || base === undefined || !Number.isInteger(prefix) || prefix < 0 || prefix > 32) return undefined;
  const size = 2 ** (32 - prefix);
  const first = base - (base % size);
  return { first, last: first + size - 1, prefix };
}

function covered(addr: string, cidrs: readonly string[]): boolean {
  const n = parseV4(addr);
  return (
    n !== undefined &&
    cidrs.some((c) => {
      const r = parseCidr(c);
      return r !== undefined && n >= r.first && n <= r.last;
    })
  );
}

/** The deny list for one kernel: the fixed ranges and the host's own IPv4 addresses outside them (nftables refuses overlapping elements). */
export function denyList(hostAddrs: readonly string[]): string[] {
  const extra = [...new Set(hostAddrs)].filter((a) => parseV4(a) !== undefined && !covered(a, DENIED_V4));
  return [...DENIED_V4, ...extra.sort()];
}

/**
 * Inside the kernel's namespace: its own loopback is free; out, nothing on
 * the deny list and no IPv6 (refused at once, so a user sees an error rather
 * than a timeout); in, only replies.
 */
export function kernelRuleset(deny: readonly string[]): string {
  return `table inet kgate {
  chain output {
    type filter hook output priority filter; policy accept;
    oif "lo" accept
    meta nfproto ipv6 reject with icmpx admin-prohibited
    ip daddr { ${deny.join(', ')} } reject with icmpx admin-prohibited
  }
  chain input {
    type filter hook input priority filter; policy drop;
    iif "lo" accept
    ct state established,related accept
  }
}
`;
}

/**
 * On the host, the same deny list again where the kernel's packets are
 * forwarded (a second fence the kernel cannot reach either), nothing from the
 * kernel to the host itself (any of its addresses, now or later), no
 * connection into the kernel, and the masquerade that lets replies come back.
 */
export function hostRuleset(link: EgressLink, deny: readonly string[]): string {
  const dev = JSON.stringify(link.hostIf);
  return `table inet ${link.table} {
  chain input {
    type filter hook input priority filter; policy accept;
    iifname ${dev} drop
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname ${dev} meta nfproto ipv6 drop
    iifname ${dev} ip saddr != ${link.kernelAddr} drop
    iifname ${dev} ip daddr { ${deny.join(', ')} } drop
    oifname ${dev} ct state new drop
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr ${link.kernelAddr} oifname != ${dev} masquerade
  }
}
`;
}

function run(cmd: string, args: readonly string[], input?: string): Promise<string> {
  return new Promise((done, fail) => {
    const child = execFile(cmd, args, { timeout: COMMAND_TIMEOUT_MS, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) fail(new Error(`${[cmd, ...args].join(' ')}: ${(stderr || err.message).trim()}`));
      else done(stdout);
    });
    if (input !== undefined) child.stdin?.end(input);
  });
}

/** The host's addresses by family, from `ip -j addr`. */
async function hostAddresses(): Promise<{ v4: string[] }> {
  const links = JSON.parse(await run(IP, ['-j', 'addr', 'show'])) as Array<{ addr_info?: Array<{ family?: string; local?: string }> }>;
  const v4 = links.flatMap((l) => (l.addr_info ?? []).filter((a) => a.family === 'inet' && typeof a.local === 'string').map((a) => a.local!));
  return { v4 };
}

/** /30s handed out by this process and not yet on an interface: two kernels starting at once never get the same one. */
const reserved = new Set<number>();
let allocating: Promise<unknown> = Promise.resolve();

/** The lowest /30 of the pool that no host interface has an address in. */
async function allocate(pool: string): Promise<number> {
  const net = parseCidr(pool);
  if (!net || net.prefix > 28) throw kernelStartFailed(`the sandbox egress network ${JSON.stringify(pool)} is not an IPv4 CIDR of /28 or larger`);
  const used = new Set((await hostAddresses()).v4.map((a) => parseV4(a)!).map((n) => n - (n % 4)));
  for (let base = net.first; base + 3 <= net.last; base += 4) {
    if (used.has(base) || reserved.has(base)) continue;
    reserved.add(base);
    return base;
  }
  throw kernelLaunchRetryable(`the sandbox egress network ${pool} has no free /30 left (one per kernel with egress)`);
}

/** Serialised: the lookup of free addresses and the reservation are one step. */
function allocateSerially(pool: string): Promise<number> {
  const next = allocating.then(() => allocate(pool));
  allocating = next.catch(() => undefined);
  return next;
}

/** Forwarding on for the kernel's host interface, and for replies coming back (Docker and podman turn it on the same way). */
function enableForwarding(hostIf: string): boolean {
  writeFileSync(`/proc/sys/net/ipv4/conf/${hostIf}/forwarding`, '1');
  const global = '/proc/sys/net/ipv4/ip_forward';
  if (readFileSync(global, 'utf8').trim() === '1') return false;
  writeFileSync(global, '1');
  return true;
}

/** Why egress cannot be set up here, or undefined. */
export function egressProblem(): string | undefined {
  if (process.getuid?.() !== 0) return 'sandbox egress needs kgate to run as root (it makes a network namespace, a veth pair and nftables rules)';
  for (const [bin, pkg] of [
    [IP, 'iproute2'],
    [NFT, 'nftables'],
    [NSENTER, 'util-linux'],
  ] as const)
    if (!existsSync(bin)) return `sandbox egress needs ${bin} (Debian: apt-get install ${pkg})`;
  return undefined;
}

/**
 * Makes kernel `kernelId`'s namespace, link and rules; on any failure removes
 * what it made and throws KG_KERNEL_START_FAILED. `onForwarding` hears when
 * the host's IPv4 forwarding had to be turned on.
 */
export async function createEgress(kernelId: string, pool: string, onForwarding?: () => void): Promise<EgressLink> {
  const problem = egressProblem();
  if (problem) throw kernelStartFailed(problem);
  const names = egressNames(kernelId);
  const base = await allocateSerially(pool);
  const link: EgressLink = { ...names, hostAddr: formatV4(base + 1), kernelAddr: formatV4(base + 2) };
  const inNs = (args: string[]): Promise<string> => run(IP, ['-n', link.netns, ...args]);
  try {
    await run(IP, ['netns', 'add', link.netns]);
    await run(IP, ['link', 'add', link.hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', link.netns]);
    await run(IP, ['addr', 'add', `${link.hostAddr}/30`, 'dev', link.hostIf]);
    await run(IP, ['link', 'set', link.hostIf, 'addrgenmode', 'none']);
    await run(IP, ['link', 'set', link.hostIf, 'up']);
    await inNs(['link', 'set', 'lo', 'up']);
    await inNs(['link', 'set', 'eth0', 'addrgenmode', 'none']);
    await inNs(['addr', 'add', `${link.kernelAddr}/30`, 'dev', 'eth0']);
    await inNs(['link', 'set', 'eth0', 'up']);
    await inNs(['route', 'add', 'default', 'via', link.hostAddr]);
    const deny = denyList((await hostAddresses()).v4);
    await run(NSENTER, [`--net=/run/netns/${link.netns}`, '--', NFT, '-f', '-'], kernelRuleset(deny));
    await run(NFT, ['-f', '-'], hostRuleset(link, deny));
    if (enableForwarding(link.hostIf)) onForwarding?.();
    return link;
  } catch (e) {
    await removeEgress(link);
    throw kernelStartFailed(`the sandbox could not set up the kernel's egress: ${(e as Error).message}`, e);
  } finally {
    reserved.delete(base);
  }
}

/** Removes the namespace (and with it the veth pair) and the host's table; what is already gone is fine. Never throws. */
export async function removeEgress(link: Pick<EgressLink, 'netns' | 'hostIf' | 'table'>): Promise<string[]> {
  const left: string[] = [];
  const attempt = async (what: string, present: () => Promise<boolean>, remove: () => Promise<unknown>): Promise<void> => {
    try {
      if (await present()) await remove();
    } catch (e) {
      if (await present().catch(() => true)) left.push(`${what}: ${(e as Error).message}`);
    }
  };
  await attempt(
    `table ${link.table}`,
    async () => (await run(NFT, ['list', 'tables']).catch(() => '')).split('\n').includes(`table inet ${link.table}`),
    () => run(NFT, ['delete', 'table', 'inet', link.table]),
  );
  await attempt(
    `netns ${link.netns}`,
    async () => existsSync(`/run/netns/${link.netns}`),
    () => run(IP, ['netns', 'delete', link.netns]),
  );
  // Deleting the namespace deletes its end of the pair, and the pair with it; this is for a namespace that was never made.
  await attempt(
    `link ${link.hostIf}`,
    async () => existsSync(`/sys/class/net/${link.hostIf}`),
    () => run(IP, ['link', 'delete', link.hostIf]),
  );
  return left;
}
