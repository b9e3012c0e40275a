/**
 * The state dir as a KernelStore: ownership is a lease (holder, expiry,
 * renewed), the holder's pid only a fast hint on the same host, and a
 * takeover is made by one gateway of those that try at once.
 */
import { mkdtempSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { KernelStateStore } from '../../src/kernels/state.js';
import type { KernelRecord, RecordInput } from '../../src/kernels/store.js';

const input = (id: string): RecordInput => ({
  id,
  spec: { name: 'fake', resourceDir: '/nowhere', spec: { argv: ['x'], display_name: 'x', language: 'x' } },
  env: {},
  owner: 'alice',
  tenant: 'default',
  cwd: '/',
  conn: {
    transport: 'tcp',
    ip: '127.0.0.1',
    shell_port: 1,
    iopub_port: 2,
    stdin_port: 3,
    control_port: 4,
    hb_port: 5,
    key: 'k',
    signature_scheme: 'hmac-sha256',
    kernel_name: 'fake',
  },
  provisioner: { provisioner: 'fake' },
  pooled: false,
});

async function rewriteLease(dir: string, id: string, lease: Partial<NonNullable<KernelRecord['lease']>>): Promise<void> {
  const file = join(dir, `${id}.json`);
  const r = JSON.parse(await readFile(file, 'utf8')) as KernelRecord;
  r.lease = { ...r.lease!, ...lease };
  r.gateway = { pid: r.lease.pid, instance: r.lease.holder };
  await writeFile(file, JSON.stringify(r));
}

describe('state dir leases', () => {
  it('a record carries the lease of the gateway that wrote it; released, it has lapsed at once', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kgate-lease-'));
    const a = new KernelStateStore(dir, 1000);
    await a.init();
    await a.save(input('k1'));
    const r = (await a.load('k1'))!;
    expect(r.lease).toMatchObject({ holder: a.holder, host: hostname(), pid: process.pid });
    expect(r.lease!.expiresAt).toBeGreaterThan(Date.now());
    expect(a.holds(r)).toBe(true);
    await a.save(input('k1'), { release: true });
    expect((await a.load('k1'))!.lease!.expiresAt).toBe(0);
  });

  it("another host's unexpired lease is held; expired, it is not; on this host a dead holder process holds nothing", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kgate-lease-'));
    const a = new KernelStateStore(dir, 1000);
    const b = new KernelStateStore(dir, 1000);
    await a.init();
    await a.save(input('k1'));
    // Written by a replica on another host whose pid means nothing here.
    await rewriteLease(dir, 'k1', { holder: 'replica-2', host: 'elsewhere', pid: 1, expiresAt: Date.now() + 60_000 });
    expect(b.heldElsewhere((await b.load('k1'))!)).toBe(true);
    await rewriteLease(dir, 'k1', { expiresAt: Date.now() - 1 });
    expect(b.heldElsewhere((await b.load('k1'))!)).toBe(false);
    // This host, a process that does not exist: lapsed, whatever the expiry says.
    await rewriteLease(dir, 'k1', { host: hostname(), pid: 2 ** 22 + 12345, expiresAt: Date.now() + 60_000 });
    expect(b.heldElsewhere((await b.load('k1'))!)).toBe(false);
  });

  it('of two gateways taking over one lapsed kernel at once, exactly one gets it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kgate-lease-'));
    const a = new KernelStateStore(dir, 1000);
    const b = new KernelStateStore(dir, 1000);
    const c = new KernelStateStore(dir, 1000);
    await a.init();
    await a.save(input('k1'));
    await rewriteLease(dir, 'k1', { holder: 'gone', host: 'elsewhere', expiresAt: Date.now() - 1 });
    const r = (await a.load('k1'))!;
    const won = await Promise.all([b.takeOver(r), c.takeOver(r)]);
    expect(won.filter(Boolean)).toHaveLength(1);
    const now = (await a.load('k1'))!;
    expect(now.lease!.holder).toBe(won[0] ? b.holder : c.holder);
    // The winner wrote a fresh lease.
    expect(now.lease!.expiresAt).toBeGreaterThan(Date.now());
  });
});
