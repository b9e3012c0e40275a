/**
 * The meter (src/metering.ts) fed lifecycle events directly on kgate's own
 * diagnostics channels, with a clock the test moves: the seconds it charges
 * for known intervals, clipping, grouping and who sees what, restarts, warm
 * pools, GPU-seconds per resource name, and two gateways (one following, one
 * adopting after a crash) on one usage directory.
 */
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { events, type EventPrincipal } from '../../src/events.js';
import { createLogger } from '../../src/log.js';
import { Meter, supervisedBy, type UsageRow } from '../../src/metering.js';
import { FileUsageStore, MemoryUsageStore, splitByDay, type UsageStore } from '../../src/metering-store.js';
import { parseUsageTime } from '../../src/gateway/routes/usage.js';
import { operatorPrincipal, Scopes, type Principal } from '../../src/principal.js';
import type { ResourceRequest } from '../../src/provisioner/types.js';

const log = createLogger('silent');
const GIB = 2 ** 30;
const T0 = Date.parse('2026-12-01T10:00:00Z');
let t = T0;
const now = (): number => t;
const at = (s: number): void => void (t = T0 + s * 1000);
const iso = (s: number): string => new Date(T0 + s * 1000).toISOString();

/** A gateway's registry as the meter reads it. */
class Registry {
  readonly kernels = new Map<string, { follower: boolean; pooled: boolean; phase: string }>();
  set(id: string, state: Partial<{ follower: boolean; pooled: boolean; phase: string }> = {}): void {
    this.kernels.set(id, { follower: false, pooled: false, phase: 'running', ...this.kernels.get(id), ...state });
  }
  peek(id: string): { follower: boolean; pooled: boolean; phase: string } | undefined {
    return this.kernels.get(id);
  }
}

const meters: Meter[] = [];
afterEach(async () => {
  for (const m of meters.splice(0)) await m.close();
});

function meter(registry: Registry, store: UsageStore = new MemoryUsageStore(now), recorded?: (id: string) => Promise<boolean>): Meter {
  const m = new Meter({ store, intervalMs: 1e9, supervisedHere: supervisedBy(registry), recorded, now, log });
  meters.push(m);
  return m;
}

const base = (kernelId: string, owner: EventPrincipal, kernelspec = 'python3') => ({ kernelId, kernelspec, provisioner: 'local', owner });
const ready = (id: string, owner: EventPrincipal, resources: ResourceRequest = {}, kernelspec = 'python3', pooled = false): void =>
  events.kernelReady.publish({ ...base(id, owner, kernelspec), pooled, ms: 5, resources });
const shutdown = (id: string, owner: EventPrincipal): void => events.kernelShutdown.publish({ ...base(id, owner), reason: 'kernel shut down', ms: 0 });

const alice: EventPrincipal = { user: 'alice', tenant: 'acme' };
const bob: EventPrincipal = { user: 'bob', tenant: 'acme' };
const carol: EventPrincipal = { user: 'carol', tenant: 'globex' };
const principal = (user: string, tenant: string, scopes: string[] = []): Principal => ({ user, tenant, scopes: new Set(scopes), via: 'jwt' });
const ADMIN = operatorPrincipal();

async function rows(m: Meter, p: Principal = ADMIN, since = T0, until = T0 + 86_400_000): Promise<UsageRow[]> {
  return (await m.report(p, since, until)).usage;
}

/**
 * A gateway's file store that dies as kill -9 would: once `dead`, no write reaches the disk;
 * with `marksLost` only the marks are lost (a death between a checkpoint's append and its mark).
 */
function dyingStore(files: FileUsageStore): { store: UsageStore; death: { dead: boolean; marksLost: boolean } } {
  const death = { dead: false, marksLost: false };
  const store: UsageStore = {
    append: async (i) => (death.dead ? undefined : files.append(i)),
    scan: (s, u, v) => files.scan(s, u, v),
    mark: async (x) => (death.dead || death.marksLost ? undefined : files.mark(x)),
    lastMark: (id) => files.lastMark(id),
    unmark: async (id) => (death.dead ? undefined : files.unmark(id)),
    marked: () => files.marked(),
  };
  return { store, death };
}

describe('metering', () => {
  it('charges kernel-, core-, GiB- and GPU-seconds per resource name for the time from ready to shutdown', async () => {
    const reg = new Registry();
    const m = meter(reg);
    at(0);
    reg.set('k1');
    ready('k1', alice, { cpu: 2, memory: 4 * GIB, extended: { 'nvidia.com/gpu': 1, 'nvidia.com/mig-3g.20gb': 2 } });
    await m.flush();
    at(100);
    m.checkpoint();
    at(150);
    reg.set('k1', { phase: 'gone' });
    shutdown('k1', alice);
    await m.flush();
    at(400);
    const [row, ...rest] = await rows(m);
    expect(rest).toEqual([]);
    expect(row).toMatchObject({
      tenant: 'acme',
      user: 'alice',
      kernelspec: 'python3',
      kernels: 1,
      kernel_seconds: 150,
      core_seconds: 300,
      gib_seconds: 600,
      gpu_seconds: { 'nvidia.com/gpu': 150, 'nvidia.com/mig-3g.20gb': 300 },
    });
    // The checkpoint's two stretches are listed as one run.
    expect(row!.intervals).toEqual([
      { kernel_id: 'k1', from: iso(0), to: iso(150), resources: { cpu: 2, memory: 4 * GIB, extended: { 'nvidia.com/gpu': 1, 'nvidia.com/mig-3g.20gb': 2 } } },
    ]);
  });

  it('clips to [since, until), and counts a running kernel up to now', async () => {
    const reg = new Registry();
    const m = meter(reg);
    at(0);
    reg.set('k1');
    ready('k1', alice, { cpu: 1 });
    await m.flush();
    at(30);
    m.checkpoint();
    at(90);
    const clipped = await rows(m, ADMIN, T0 + 20_000, T0 + 60_000);
    expect(clipped[0]).toMatchObject({ kernel_seconds: 40, core_seconds: 40, intervals: [{ from: iso(20), to: iso(60) }] });
    // Not checkpointed since 30 s: still counted to now.
    expect((await rows(m))[0]!.kernel_seconds).toBe(90);
    expect(await rows(m, ADMIN, T0 - 60_000, T0)).toEqual([]);
  });

  it('groups by tenant, user and kernelspec; each caller sees its own, a tenant admin its tenant, an admin all', async () => {
    const reg = new Registry();
    const m = meter(reg);
    at(0);
    for (const id of ['a1', 'a2', 'b1', 'c1']) reg.set(id);
    ready('a1', alice);
    ready('a2', alice, {}, 'kgate-bench');
    ready('b1', bob);
    ready('c1', carol);
    await m.flush();
    at(10);
    ready('a3', alice); // not in this gateway's registry: another gateway's kernel, not charged here
    reg.set('a4');
    ready('a4', alice);
    await m.flush();
    at(20);
    const all = await rows(m);
    expect(all.map((r) => [r.tenant, r.user, r.kernelspec, r.kernels, r.kernel_seconds])).toEqual([
      ['acme', 'alice', 'kgate-bench', 1, 20],
      ['acme', 'alice', 'python3', 2, 30],
      ['acme', 'bob', 'python3', 1, 20],
      ['globex', 'carol', 'python3', 1, 20],
    ]);
    expect((await rows(m, principal('alice', 'acme'))).map((r) => r.user)).toEqual(['alice', 'alice']);
    expect((await rows(m, principal('bob', 'acme'))).map((r) => r.kernel_seconds)).toEqual([20]);
    expect((await rows(m, principal('dave', 'acme', [Scopes.TENANT_ADMIN]))).map((r) => r.user)).toEqual(['alice', 'alice', 'bob']);
    expect(await rows(m, principal('alice', 'globex'))).toEqual([]);
    expect((await rows(m, principal('x', 'other', [Scopes.ADMIN]))).length).toBe(4);
  });

  it('a restart does not stop the meter; a final death does', async () => {
    const reg = new Registry();
    const m = meter(reg);
    at(0);
    reg.set('k1');
    ready('k1', alice, { cpu: 0.5 });
    await m.flush();
    at(10);
    reg.set('k1', { phase: 'restarting' });
    events.kernelDeath.publish({ ...base('k1', alice), reason: 'process exited with code 1', final: false });
    events.kernelRestart.publish({ ...base('k1', alice), cause: 'death', attempt: 1 });
    await m.flush();
    at(20);
    reg.set('k1', { phase: 'running' });
    events.kernelRestart.publish({ ...base('k1', alice), cause: 'request', attempt: 1 });
    at(40);
    m.checkpoint();
    at(50);
    reg.set('k1', { phase: 'dead' });
    events.kernelDeath.publish({ ...base('k1', alice), reason: 'gave up', final: true });
    await m.flush();
    at(500);
    expect((await rows(m))[0]).toMatchObject({ kernel_seconds: 50, core_seconds: 25 });
  });

  it('a kernel waiting in a warm pool is charged to no one; handed out, it is charged to its owner from then', async () => {
    const reg = new Registry();
    const m = meter(reg);
    at(0);
    // What a pool holds is pooled; even an event for it (the supervisor publishes none) is not charged.
    reg.set('p1', { pooled: true });
    ready('p1', { user: undefined, tenant: 'default' });
    await m.flush();
    at(60);
    m.checkpoint();
    expect(await rows(m)).toEqual([]);
    reg.set('p1', { pooled: false });
    ready('p1', alice, { cpu: 1 }, 'python3', true);
    await m.flush();
    at(100);
    expect((await rows(m))[0]).toMatchObject({ user: 'alice', kernel_seconds: 40, core_seconds: 40, intervals: [{ from: iso(60), to: iso(100) }] });
  });

  it('a follower replica does not charge; after a takeover the new supervisor charges from the last checkpoint, and overlap counts once', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kgate-meter-'));
    const [sa, sb] = [new FileUsageStore(dir), new FileUsageStore(dir)];
    await sa.init();
    const [ra, rb] = [new Registry(), new Registry()];
    const [a, b] = [meter(ra, sa), meter(rb, sb)];
    at(0);
    ra.set('k1');
    rb.set('k1', { follower: true });
    ready('k1', alice, { memory: GIB, extended: { 'nvidia.com/gpu': 2 } });
    await Promise.all([a.flush(), b.flush()]);
    at(10);
    a.checkpoint();
    b.checkpoint();
    await Promise.all([a.flush(), b.flush()]);
    // A stalls past its lease; B takes over at 25 s, and A writes one more checkpoint before it notices (to 30 s).
    at(25);
    rb.set('k1', { follower: false });
    events.kernelAdopt.publish({ ...base('k1', alice), how: 'takeover', resources: { memory: GIB, extended: { 'nvidia.com/gpu': 2 } } });
    await Promise.all([a.flush(), b.flush()]);
    at(30);
    a.checkpoint();
    ra.set('k1', { follower: true });
    events.kernelRelease.publish({ ...base('k1', alice), how: 'stepped_down', reason: 'another gateway holds its lease' });
    await Promise.all([a.flush(), b.flush()]);
    at(60);
    rb.set('k1', { phase: 'gone' });
    shutdown('k1', alice);
    await Promise.all([a.flush(), b.flush()]);
    at(100);
    for (const m of [a, b]) {
      expect((await rows(m))[0]).toMatchObject({ kernel_seconds: 60, gib_seconds: 60, gpu_seconds: { 'nvidia.com/gpu': 120 }, intervals: [{ from: iso(0), to: iso(60) }] });
    }
    // Both wrote lines for 10..30 s; the files hold them all, the report counts the time once.
    const lines = readFileSync(join(dir, '2026-12-01.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { from: string; to: string });
    // A: 0..10 and 10..30 (written after the takeover); B: from A's checkpoint at 10 to the shutdown.
    expect(lines.map((l) => [l.from, l.to]).sort()).toEqual([
      [iso(0), iso(10)],
      [iso(10), iso(30)],
      [iso(10), iso(60)],
    ]);
    expect(readdirSync(join(dir, 'open'))).toEqual([]);
  });

  it('after a crash the adopting gateway charges from the last checkpoint; a restart of the gateway loses nothing recorded', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kgate-meter-'));
    const files = new FileUsageStore(dir);
    await files.init();
    // The first gateway's store stops taking writes when it "dies" (kill -9: nothing after it reaches the disk).
    const dying = dyingStore(files);
    const ra = new Registry();
    const a = meter(ra, dying.store);
    at(0);
    ra.set('k1');
    ready('k1', bob, { cpu: 4 });
    await a.flush();
    at(10);
    a.checkpoint();
    await a.flush();
    at(17);
    dying.death.dead = true;
    ra.kernels.clear();
    // The new gateway on the same dir adopts at 20 s: 10..20 s was not checkpointed, and is charged all the same.
    at(20);
    const rb = new Registry();
    const b = meter(rb, new FileUsageStore(dir), async (id) => rb.kernels.has(id));
    rb.set('k1');
    events.kernelAdopt.publish({ ...base('k1', bob), how: 'adopted', resources: {} });
    await b.flush();
    at(35);
    rb.set('k1', { phase: 'gone' });
    shutdown('k1', bob);
    await b.flush();
    // The record's resources were empty; the checkpoint's are used.
    expect((await rows(b))[0]).toMatchObject({ user: 'bob', kernel_seconds: 35, core_seconds: 140 });
    // A third gateway (a restart) reads the same figures from the files.
    const c = meter(new Registry(), new FileUsageStore(dir));
    at(1000);
    expect((await rows(c))[0]).toMatchObject({ kernel_seconds: 35, core_seconds: 140, intervals: [{ kernel_id: 'k1', from: iso(0), to: iso(35) }] });
  });

  it('a gateway killed between a checkpoint append and its mark: the adopter charges from the end of what was appended, not again', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kgate-meter-'));
    const files = new FileUsageStore(dir);
    await files.init();
    // The first gateway dies in its checkpoint, between the append and the mark: nothing after reaches the disk.
    const dying = dyingStore(files);
    const ra = new Registry();
    const a = meter(ra, dying.store);
    at(0);
    ra.set('k1');
    ready('k1', bob, { cpu: 1 });
    await a.flush();
    dying.death.marksLost = true;
    at(10);
    a.checkpoint();
    await a.flush();
    dying.death.dead = true;
    ra.kernels.clear();
    // The mark still says 0 s; 0..10 s is on disk.
    expect((await files.lastMark('k1'))?.to).toBe(T0);
    at(12);
    const rb = new Registry();
    const b = meter(rb, new FileUsageStore(dir), async (id) => rb.kernels.has(id));
    rb.set('k1');
    events.kernelAdopt.publish({ ...base('k1', bob), how: 'adopted', resources: {} });
    await b.flush();
    at(20);
    rb.set('k1', { phase: 'gone' });
    shutdown('k1', bob);
    await b.flush();
    const c = meter(new Registry(), new FileUsageStore(dir));
    at(1000);
    // 0..10 s once, then 10..20 s: 20 s in all, the intervals touching and not overlapping.
    expect((await rows(c))[0]).toMatchObject({ kernel_seconds: 20, intervals: [{ kernel_id: 'k1', from: iso(0), to: iso(20) }] });
    const lines = readdirSync(dir)
      .filter((f) => f.endsWith('.jsonl'))
      .flatMap((f) => readFileSync(join(dir, f), 'utf8').trim().split('\n'))
      .map((l) => JSON.parse(l) as { from: string; to: string });
    expect(lines.map((l) => [l.from, l.to])).toEqual([
      [iso(0), iso(10)],
      [iso(10), iso(20)],
    ]);
  });

  it('splits an interval at UTC midnight, one line per day file', async () => {
    const from = Date.parse('2026-12-01T23:59:00Z');
    const parts = splitByDay({ kernelId: 'k', tenant: 't', user: null, kernelspec: 's', from, to: from + 2 * 86_400_000, resources: {} });
    expect(parts.map((p) => [new Date(p.from).toISOString(), new Date(p.to).toISOString()])).toEqual([
      ['2026-12-01T23:59:00.000Z', '2026-12-02T00:00:00.000Z'],
      ['2026-12-02T00:00:00.000Z', '2026-12-03T00:00:00.000Z'],
      ['2026-12-03T00:00:00.000Z', '2026-12-03T23:59:00.000Z'],
    ]);
    const dir = mkdtempSync(join(tmpdir(), 'kgate-meter-'));
    const s = new FileUsageStore(dir);
    await s.init();
    await s.append(parts.slice(0, 1));
    await s.append(splitByDay({ kernelId: 'k', tenant: 't', user: null, kernelspec: 's', from: from + 60_000, to: from + 120_000, resources: {} }));
    expect(readdirSync(dir).sort()).toEqual(['2026-12-01.jsonl', '2026-12-02.jsonl', 'open']);
    const seen: number[] = [];
    await s.scan(Date.parse('2026-12-02T00:00:00Z'), Date.parse('2026-12-03T00:00:00Z'), (i) => seen.push(i.to - i.from));
    expect(seen).toEqual([60_000]);
  });

  it('reads ISO 8601 dates and times for GET /api/usage, UTC when no offset is given, and refuses the rest with KG_BAD_REQUEST', () => {
    expect(parseUsageTime('since', '2026-12-01')).toBe(Date.parse('2026-12-01T00:00:00Z'));
    expect(parseUsageTime('since', '2026-12-01T10:00')).toBe(Date.parse('2026-12-01T10:00:00Z'));
    expect(parseUsageTime('since', '2026-12-01T10:00:00.123456789Z')).toBe(Date.parse('2026-12-01T10:00:00.123Z'));
    expect(parseUsageTime('since', '2026-12-01T10:00:00+01:00')).toBe(Date.parse('2026-12-01T09:00:00Z'));
    for (const bad of ['yesterday', '2026-13-01', '2026-12-01T25:00:00Z', '1969-12-31', '9999-12-31T23:00:00-05:00', '', ['2026-12-01', '2026-12-02']]) {
      expect(() => parseUsageTime('since', bad), JSON.stringify(bad)).toThrow(expect.objectContaining({ code: 'KG_BAD_REQUEST' }));
    }
  });
});
