/**
 * What every KernelStore (src/kernels/store.ts) promises, as one suite run
 * against each implementation: the state dir (test/kernels/store-contract.test.ts)
 * and Kubernetes (test/integration/k8s-store.test.ts). Three stores on the
 * same shared state stand for three gateways.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { expect, it } from 'vitest';
import { kernelLimit } from '../../src/errors.js';
import type { Held } from '../../src/kernels/admission.js';
import type { KernelStore, RecordInput } from '../../src/kernels/store.js';

export interface StoreFixture {
  /** Three gateways (three holders) on one shared state, initialised. */
  stores(): Promise<[KernelStore, KernelStore, KernelStore]>;
  /** Makes the kernel's lease look like one its holder (not one of the three) last renewed long ago and then died. */
  lapse(id: string): Promise<void>;
}

export function recordInput(id: string = randomUUID(), key = randomBytes(32).toString('hex')): RecordInput {
  return {
    id,
    spec: { name: 'fake', resourceDir: '/nowhere', spec: { argv: ['x', '{connection_file}'], display_name: 'x', language: 'x' } },
    env: { KERNEL_USERNAME: 'alice' },
    owner: 'alice',
    tenant: 'default',
    cwd: '/',
    resources: { cpu: 0.5 },
    conn: {
      transport: 'tcp',
      ip: '127.0.0.1',
      shell_port: 1,
      iopub_port: 2,
      stdin_port: 3,
      control_port: 4,
      hb_port: 5,
      key,
      signature_scheme: 'hmac-sha256',
      kernel_name: 'fake',
    },
    provisioner: { provisioner: 'fake', pid: 1234 },
    pooled: false,
    sessions: ['s1'],
  };
}

/** Declares the contract's tests (call inside a describe). */
export function storeContract(f: StoreFixture): void {
  it('save, load, loadAll and remove round-trip a record; the store adds the version, the writer and its lease', async () => {
    const [a, b] = await f.stores();
    const input = recordInput();
    await a.save(input);
    const r = await b.load(input.id);
    expect(r).toMatchObject({ ...input, version: 1, gateway: { instance: a.holder } });
    expect(r!.lease!.holder).toBe(a.holder);
    expect(r!.lease!.expiresAt).toBeGreaterThan(Date.now());
    expect((await b.loadAll()).map((x) => x.id)).toContain(input.id);
    // Written again with a change: the new one is read.
    await a.save({ ...input, sessions: ['s1', 's2'] });
    expect((await b.load(input.id))!.sessions).toEqual(['s1', 's2']);
    await b.remove(input.id);
    expect(await a.load(input.id)).toBeUndefined();
    expect((await a.loadAll()).map((x) => x.id)).not.toContain(input.id);
    // Removing what is gone is harmless.
    await a.remove(input.id);
  });

  it('the writer holds the record; the others see it held elsewhere and cannot take it over while it is fresh', async () => {
    const [a, b] = await f.stores();
    const input = recordInput();
    await a.save(input);
    const ra = (await a.load(input.id))!;
    const rb = (await b.load(input.id))!;
    expect(a.holds(ra)).toBe(true);
    expect(a.heldElsewhere(ra)).toBe(false);
    expect(b.holds(rb)).toBe(false);
    expect(b.heldElsewhere(rb)).toBe(true);
    expect(await b.takeOver(rb)).toBe(false);
    expect((await b.load(input.id))!.lease!.holder).toBe(a.holder);
  });

  it('a lease given up (release) has lapsed at once: another gateway adopts it', async () => {
    const [a, b] = await f.stores();
    const input = recordInput();
    await a.save(input);
    await a.save(input, { release: true });
    const r = (await b.load(input.id))!;
    expect(r.lease!.expiresAt).toBe(0);
    expect(b.heldElsewhere(r)).toBe(false);
    expect(await b.takeOver(r)).toBe(true);
    const now = (await a.load(input.id))!;
    expect(now.lease!.holder).toBe(b.holder);
    expect(a.heldElsewhere(now)).toBe(true);
  });

  it('of two gateways taking over one lapsed kernel at once, exactly one gets it, 20 rounds over', async () => {
    const [a, b, c] = await f.stores();
    const input = recordInput();
    await a.save(input);
    for (let round = 0; round < 20; round++) {
      await f.lapse(input.id);
      const [rb, rc] = await Promise.all([b.load(input.id), c.load(input.id)]);
      expect(b.heldElsewhere(rb!) || c.heldElsewhere(rc!), `round ${round}: lapsed`).toBe(false);
      const won = await Promise.all([b.takeOver(rb!), c.takeOver(rc!)]);
      expect(won.filter(Boolean), `round ${round}`).toHaveLength(1);
      const now = (await a.load(input.id))!;
      expect(now.lease!.holder).toBe(won[0] ? b.holder : c.holder);
      expect(now.lease!.expiresAt).toBeGreaterThan(Date.now());
      // The loser sees the winner's lease as held elsewhere.
      const loser = won[0] ? c : b;
      expect(loser.heldElsewhere((await loser.load(input.id))!)).toBe(true);
    }
  });

  it('reserve under contention from two gateways never over-admits: limit 3, 10 at once, exactly 3 pass; a given-back slot is free again', async () => {
    const [a, b] = await f.stores();
    if (!a.reserve || !b.reserve) throw new Error('the store has no reserve');
    const tenant = `t-${randomBytes(4).toString('hex')}`;
    const mine = (all: Held[]): Held[] => all.filter((h) => h.tenant === tenant);
    const check = (all: Held[]): void => {
      if (mine(all).length >= 3) throw kernelLimit(3);
    };
    const tries = Array.from({ length: 10 }, (_, i) =>
      (i % 2 === 0 ? a : b).reserve!({ id: randomUUID(), owner: 'alice', tenant, resources: {} }, check, 60_000).then(
        (release) => ({ release }),
        (e: unknown) => ({ error: e }),
      ),
    );
    const results = await Promise.all(tries);
    const passed = results.flatMap((r) => ('release' in r ? [r.release] : []));
    expect(passed).toHaveLength(3);
    for (const r of results) if ('error' in r) expect(r.error).toMatchObject({ code: 'KG_KERNEL_LIMIT' });
    // A slot given back is free again.
    await passed[0]!();
    passed[0] = await b.reserve({ id: randomUUID(), owner: 'bob', tenant, resources: {} }, check, 60_000);
    for (const release of passed) await release();
    // A recorded kernel counts as much as a reservation; reservations given back count no more.
    const recorded = { ...recordInput(), tenant };
    await a.save(recorded);
    const seen: Held[][] = [];
    const release = await b.reserve({ id: randomUUID(), owner: 'bob', tenant, resources: {} }, (all) => void seen.push(mine(all)), 60_000);
    expect(seen).toEqual([[{ owner: 'alice', tenant, resources: recorded.resources }]]);
    await release();
    await a.remove(recorded.id);
  });
}
