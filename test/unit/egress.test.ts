/** The egress module's pure parts: names, the deny list, the rulesets, records read back; and the options that drive it. */
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config.js';
import { sandboxSpecConfig } from '../../src/provisioner/sandbox.js';
import { DENIED_V4, denyList, egressNames, hostRuleset, isEgressLink, kernelRuleset, parseCidr } from '../../src/provisioner/egress.js';

describe('egress', () => {
  it('names come from a hash of the kernel id, fit an interface name, and are the same every time', () => {
    const n = egressNames('0b8f3c2e-1111-4222-8333-444455556666');
    expect(n).toEqual(egressNames('0b8f3c2e-1111-4222-8333-444455556666'));
    expect(n.netns).toMatch(/^kgate-[0-9a-f]{10}$/);
    expect(Buffer.byteLength(n.hostIf)).toBeLessThanOrEqual(15);
    expect(egressNames('x; rm -rf /').netns).toMatch(/^kgate-[0-9a-f]{10}$/);
  });

  it("the deny list holds the seed systems' ranges and the host's own addresses outside them, without overlaps", () => {
    for (const r of ['10.0.0.0/8', '100.64.0.0/10', '172.16.0.0/12', '192.0.0.0/24', '198.18.0.0/15', '192.168.0.0/16', '169.254.0.0/16', '127.0.0.0/8'])
      expect(DENIED_V4).toContain(r);
    expect(denyList(['192.0.2.2', '10.1.2.3', '203.0.113.1', '192.0.2.2', 'fd00::2'])).toEqual([...DENIED_V4, '192.0.2.2', '203.0.113.1']);
  });

  it('the rulesets: loopback free, IPv6 and the list refused inside; the host drops what comes from the veth to itself, and masquerades', () => {
    const deny = denyList(['192.0.2.2']);
    const inside = kernelRuleset(deny);
    expect(inside).toContain('oif "lo" accept');
    expect(inside).toContain('meta nfproto ipv6 reject');
    expect(inside).toContain(`ip daddr { ${deny.join(', ')} } reject`);
    expect(inside).toMatch(/chain input \{\s+type filter hook input priority filter; policy drop;/);
    const link = { ...egressNames('k'), hostAddr: '198.18.0.1', kernelAddr: '198.18.0.2' };
    const host = hostRuleset(link, deny);
    expect(host).toContain(`iifname "${link.hostIf}" drop`);
    expect(host).toContain(`ip saddr 198.18.0.2 oifname != "${link.hostIf}" masquerade`);
    expect(host).toContain(`oifname "${link.hostIf}" ct state new drop`);
  });

  it('a record read back is used only when its names are ones this module makes', () => {
    const good = { ...egressNames('k'), hostAddr: '198.18.0.1', kernelAddr: '198.18.0.2' };
    expect(isEgressLink(good)).toBe(true);
    expect(isEgressLink({ ...good, netns: 'default' })).toBe(false);
    expect(isEgressLink({ ...good, hostIf: 'eth0' })).toBe(false);
    expect(isEgressLink({ ...good, table: 'filter' })).toBe(false);
    expect(isEgressLink({ ...good, kernelAddr: '1.2.3' })).toBe(false);
    expect(isEgressLink(null)).toBe(false);
  });

  it('parses CIDRs', () => {
    expect(parseCidr('198.18.0.0/16')).toEqual({ first: 0xc6120000, last: 0xc612ffff, prefix: 16 });
    expect(parseCidr('10.0.0.5/30')?.first).toBe(0x0a000004);
    for (const bad of ['10.0.0.0', '10.0.0.0/33', '300.0.0.0/8', '10.0.0.0/8/1']) expect(parseCidr(bad)).toBeUndefined();
  });
});

describe('egress in a kernelspec', () => {
  it("--sandbox-egress is the default of a kernelspec that does not say; the kernelspec's own egress wins either way", () => {
    expect(sandboxSpecConfig('s', {}, { pids: 256 }).egress).toBe(false);
    expect(sandboxSpecConfig('s', {}, { pids: 256, egress: true }).egress).toBe(true);
    expect(sandboxSpecConfig('s', { egress: false }, { pids: 256, egress: true }).egress).toBe(false);
    expect(sandboxSpecConfig('s', { egress: true }, { pids: 256 }).egress).toBe(true);
    expect(() => sandboxSpecConfig('s', { egress: 'yes' }, { pids: 256 })).toThrow(/config\.egress must be true or false/);
  });
});

describe('provisioner options', () => {
  it('defaults: local, no egress, the 198.18.0.0/16 pool; a bad pool or name is a ConfigError', () => {
    const c = loadConfig([], {});
    expect(c.defaultProvisioner).toBe('local');
    expect(c.sandboxEgress).toBe(false);
    expect(c.egressNet).toBe('198.18.0.0/16');
    expect(loadConfig(['--default-provisioner', 'sandbox', '--sandbox-egress', '--egress-net', '10.99.0.0/20'], {})).toMatchObject({
      defaultProvisioner: 'sandbox',
      sandboxEgress: true,
      egressNet: '10.99.0.0/20',
    });
    expect(loadConfig([], { KG_DEFAULT_PROVISIONER: 'container' }).defaultProvisioner).toBe('container');
    expect(() => loadConfig(['--egress-net', '10.0.0.0/30'], {})).toThrow(ConfigError);
    expect(() => loadConfig(['--default-provisioner', 'a b'], {})).toThrow(ConfigError);
  });
});
