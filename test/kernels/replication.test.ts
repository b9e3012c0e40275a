/**
 * Replication on a state dir with short leases, two gateways (kernel
 * managers) in this process and fake kernels in a shared FakeCluster: the
 * supervising gateway renews its lease; a follower takes a kernel over when
 * the lease is given up, or when it lapses (a replica on another host that
 * stopped renewing, where no pid can tell), never before; and then it
 * supervises the kernel (restarts it when it dies).
 */
import { mkdtempSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { events, type KernelAdoptEvent } from '../../src/events.js';
import { KernelStateStore } from '../../src/kernels/state.js';
import type { KernelRecord } from '../../src/kernels/store.js';
import { until } from '../helpers/wait.js';
import { FakeCluster, fakeManager, type FakeManager } from '../helpers/fake-provisioner.js';

const LEASE_MS = 150;
const open: FakeManager[] = [];
afterEach(async () => {
  await Promise.allSettled(open.splice(0).map((m) => m.close()));
});

function pair(): { a: FakeManager; b: FakeManager; dir: string; cluster: FakeCluster } {
  const dir = mkdtempSync(join(tmpdir(), 'kgate-replication-'));
  const cluster = new FakeCluster();
  const a = fakeManager({}, { store: new KernelStateStore(dir, LEASE_MS) }, cluster);
  const b = fakeManager({}, { store: new KernelStateStore(dir, LEASE_MS) }, cluster);
  open.push(a, b);
  return { a, b, dir, cluster };
}

const recordOf = async (dir: string, id: string): Promise<KernelRecord> => JSON.parse(await readFile(join(dir, `${id}.json`), 'utf8')) as KernelRecord;

describe('fake provisioner: leases', () => {
  it('the supervising gateway renews its lease; a follower takes the kernel over once it is given up, then supervises it', async () => {
    const { a, b, dir, cluster } = pair();
    const adopted: KernelAdoptEvent[] = [];
    const onAdopt = (m: KernelAdoptEvent): void => void adopted.push(m);
    events.kernelAdopt.subscribe(onAdopt);
    try {
      const k = await a.manager.start({ name: 'fake' });
      const followed = await b.manager.find(k.id);
      expect(followed.follower).toBe(true);
      // Past two lease lengths, still A's, and unexpired: renewed.
      await new Promise((r) => setTimeout(r, 2 * LEASE_MS));
      const r = await recordOf(dir, k.id);
      expect(r.lease!.expiresAt).toBeGreaterThan(Date.now());
      expect(followed.follower).toBe(true);
      // A leaves with --keep-kernels: the lease is given up, the kernel keeps running.
      await a.manager.releaseAll();
      await until(() => !followed.follower, 'B to take the kernel over', 2000, 10);
      expect(adopted.map((e) => [e.kernelId, e.how])).toEqual([[k.id, 'takeover']]);
      expect((await recordOf(dir, k.id)).lease!.holder).not.toBe(r.lease!.holder);
      // B supervises now: a death is restarted by B's provisioner.
      cluster.processes.get(k.id)!.die(137);
      await until(() => b.made[0]!.launches === 1 && followed.phase === 'running' && cluster.processes.get(k.id)!.exitCode === undefined, 'B to restart it', 2000, 10);
    } finally {
      events.kernelAdopt.unsubscribe(onAdopt);
    }
  });

  it('a lease of a replica on another host is respected until it expires, then taken over', async () => {
    const { a, b, dir } = pair();
    const k = await a.manager.start({ name: 'fake' });
    await a.manager.releaseAll();
    // The record as a replica elsewhere wrote it: its pid means nothing here, only its expiry counts.
    const r = await recordOf(dir, k.id);
    const expiresAt = Date.now() + 300;
    r.lease = { holder: 'replica-elsewhere', host: 'elsewhere.example', pid: 1, expiresAt };
    r.gateway = { pid: 1, instance: 'replica-elsewhere' };
    await writeFile(join(dir, `${k.id}.json`), JSON.stringify(r));
    const followed = await b.manager.find(k.id);
    expect(followed.follower).toBe(true);
    await new Promise((res) => setTimeout(res, 150));
    expect(followed.follower).toBe(true);
    await until(() => !followed.follower, 'the takeover after the lease expired', 2000, 10);
    expect(Date.now()).toBeGreaterThanOrEqual(expiresAt);
  });
});
