/**
 * Usage metering end to end: kgate as a real process with --state-dir, real
 * ipykernel and bench kernels run for known times by two users of a tenant
 * (static tokens), one handed out from a warm pool; GET /api/usage gives
 * their kernel-, core-, GiB- and GPU-seconds within a second, each caller its
 * own. Then kgate is killed with SIGKILL while a kernel runs, a new kgate on
 * the same state dir adopts it, and the figures survive and include the time
 * across the crash.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { afterAll, describe, expect, it } from 'vitest';
import { gatewayClient, type GatewayClient } from '../helpers/gateway.js';
import { startKgate, type Running } from '../helpers/kgate-process.js';
import { processesMatching } from '../helpers/procs.js';
import { until } from '../helpers/wait.js';
import type { UsageRow } from '../../src/metering.js';

const OPERATOR = 'metering-operator-token';
const TOKENS = { alice: 'metering-alice-token-0123456789', bob: 'metering-bob-token-0123456789', admin: 'metering-acme-admin-token-0123' };
const GIB = 2 ** 30;
const running: Running[] = [];
const dir = mkdtempSync(join(tmpdir(), 'kgate-metering-'));
const stateDir = join(dir, 'state');
const runtimeDir = join(dir, 'runtime');
const tokenFile = join(dir, 'tokens.yaml');
const sha = (t: string): string => createHash('sha256').update(t).digest('hex');
writeFileSync(
  tokenFile,
  [
    'tokens:',
    `  - { sha256: ${sha(TOKENS.alice)}, user: alice, tenant: acme }`,
    `  - { sha256: ${sha(TOKENS.bob)}, user: bob, tenant: acme }`,
    `  - { sha256: ${sha(TOKENS.admin)}, user: ops, tenant: acme, scopes: [kgate:tenant-admin] }`,
  ].join('\n'),
);

afterAll(async () => {
  for (const k of running) k.child.kill('SIGKILL');
  for (const pid of processesMatching(runtimeDir)) process.kill(pid, 'SIGKILL');
});

interface Clients {
  k: Running;
  op: GatewayClient;
  alice: GatewayClient;
  bob: GatewayClient;
  admin: GatewayClient;
}

async function kgate(extra: string[] = []): Promise<Clients> {
  const k = await startKgate([
    '--port',
    '0',
    '--auth-token',
    OPERATOR,
    '--token-file',
    tokenFile,
    '--state-dir',
    stateDir,
    '--runtime-dir',
    runtimeDir,
    '--metering-interval',
    '1',
    ...extra,
  ]);
  running.push(k);
  return { k, op: gatewayClient(k.url, OPERATOR), alice: gatewayClient(k.url, TOKENS.alice), bob: gatewayClient(k.url, TOKENS.bob), admin: gatewayClient(k.url, TOKENS.admin) };
}

type Row = UsageRow;

/** Queries from a minute before the test (not the default, the current UTC day: a run across midnight would split). */
const FROM = new Date(Date.now() - 60_000).toISOString();

/** Each answer is checked against kgate's own OpenAPI description (GET /api/spec.json). */
let fitsSpec: ((body: unknown) => boolean) | undefined;

async function usage(c: GatewayClient): Promise<Row[]> {
  if (!fitsSpec) {
    const spec = (await (await c.api('api/spec.json')).json()) as { paths: Record<string, Record<string, unknown>>; components: unknown };
    expect(spec.paths['/api/usage']?.['get']).toBeDefined();
    const validate = new Ajv2020({ strict: false, allErrors: true }).compile({ $ref: '#/components/schemas/Usage', components: spec.components });
    fitsSpec = (body) => validate(body) || (expect.fail(JSON.stringify(validate.errors)), false);
  }
  const r = await c.api(`api/usage?since=${FROM}`);
  expect(r.status, await r.clone().text()).toBe(200);
  const body = (await r.json()) as { usage: Row[] };
  expect(fitsSpec(body)).toBe(true);
  return body.usage;
}

/** The seconds charged to one kernel, summed over the rows its intervals are in. */
function secondsOf(rows: Row[], id: string): number {
  return rows.flatMap((r) => r.intervals.filter((i) => i.kernel_id === id)).reduce((s, i) => s + (Date.parse(i.to) - Date.parse(i.from)) / 1000, 0);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const since = (t: number): number => (Date.now() - t) / 1000;

describe('usage metering', () => {
  it('charges known run times within a second, per caller, and keeps them across kill -9 and an adoption', async () => {
    const first = await kgate(['--pool', 'kgate-bench=1']);
    const pooledAt = Date.now();
    await until(
      async () => ((await (await first.op.api('api/status')).json()) as { pools: Record<string, { ready: number }> }).pools['kgate-bench']?.ready === 1,
      'a ready pooled kernel',
      30_000,
    );

    const gpu = { KERNEL_CPUS: '2', KERNEL_MEMORY: '1536Mi', KERNEL_GPUS: '2', KERNEL_GPU_RESOURCE: 'nvidia.com/mig-3g.20gb' };
    const a = await first.alice.startKernel('python3', gpu);
    const aStarted = Date.now();
    const b = await first.bob.startKernel('python3');
    const bStarted = Date.now();
    // Waited in the pool since the gateway started; charged to alice from now only.
    await sleep(1000);
    const pooled = await first.alice.startKernel('kgate-bench');
    const handedOut = Date.now();
    await sleep(2500);

    expect((await first.bob.api(`api/kernels/${b}`, { method: 'DELETE' })).status).toBe(204);
    const bSeconds = since(bStarted);
    expect((await first.alice.api(`api/kernels/${pooled}`, { method: 'DELETE' })).status).toBe(204);
    const pooledSeconds = since(handedOut);

    const all = await usage(first.op);
    const aliceRows = await usage(first.alice);
    const bobRows = await usage(first.bob);
    const adminRows = await usage(first.admin);
    const aNow = since(aStarted);
    console.log(
      'before kill -9',
      JSON.stringify({ a: secondsOf(all, a), expectedA: aNow, b: secondsOf(all, b), expectedB: bSeconds, pooled: secondsOf(all, pooled), expectedPooled: pooledSeconds }),
    );
    console.log('before kill -9, rows', JSON.stringify(all.map(({ intervals: _i, ...r }) => r)));

    // Each caller sees its own; the tenant admin both; the operator everything.
    expect(aliceRows.map((r) => [r.user, r.kernelspec])).toEqual([
      ['alice', 'kgate-bench'],
      ['alice', 'python3'],
    ]);
    expect(bobRows.map((r) => [r.user, r.kernelspec])).toEqual([['bob', 'python3']]);
    expect(adminRows.map((r) => r.user)).toEqual(['alice', 'alice', 'bob']);
    const shape = (rows: Row[]): unknown[] => rows.map((r) => [r.tenant, r.user, r.kernelspec, r.kernels]);
    expect(shape(all.filter((r) => r.tenant === 'acme'))).toEqual(shape(adminRows));
    // Ended kernels' rows are the same to everyone who may see them.
    expect(adminRows.find((r) => r.user === 'bob')).toEqual(bobRows[0]);

    const bRow = bobRows[0]!;
    expect(Math.abs(bRow.kernel_seconds - bSeconds)).toBeLessThan(1);
    expect(bRow).toMatchObject({ kernels: 1, core_seconds: 0, gib_seconds: 0, gpu_seconds: {} });
    const pooledRow = aliceRows.find((r) => r.kernelspec === 'kgate-bench')!;
    expect(Math.abs(pooledRow.kernel_seconds - pooledSeconds)).toBeLessThan(1);
    // Not the time it waited in the pool.
    expect(pooledRow.kernel_seconds).toBeLessThan(since(pooledAt) - 1);
    const aRow = aliceRows.find((r) => r.kernelspec === 'python3')!;
    expect(Math.abs(aRow.kernel_seconds - aNow)).toBeLessThan(1);
    expect(aRow.core_seconds).toBeCloseTo(2 * aRow.kernel_seconds, 2);
    expect(aRow.gib_seconds).toBeCloseTo((1536 * 2 ** 20 * aRow.kernel_seconds) / GIB, 2);
    expect(Object.keys(aRow.gpu_seconds)).toEqual(['nvidia.com/mig-3g.20gb']);
    expect(aRow.gpu_seconds['nvidia.com/mig-3g.20gb']).toBeCloseTo(2 * aRow.kernel_seconds, 2);

    // Bad queries are 400s in kgate's JSON.
    for (const q of [
      '?since=yesterday',
      '?until=2026-13-45T99:00:00Z',
      '?since=2026-12-02&until=2026-12-01',
      '?since=2026-01-01&until=2026-03-01',
      '?since=2026-12-01&since=2026-12-02',
    ]) {
      const r = await first.alice.api(`api/usage${q}`);
      expect(r.status, q).toBe(400);
      expect(((await r.json()) as { code: string }).code, q).toBe('KG_BAD_REQUEST');
    }

    // kill -9 while alice's kernel runs, a checkpoint after the last query; no gateway for 2 s.
    await sleep(1200);
    first.k.child.kill('SIGKILL');
    await first.k.exited;
    const killedAt = Date.now();
    await sleep(2000);

    const second = await kgate();
    expect(((await (await second.alice.api('api/kernels')).json()) as Array<{ id: string }>).map((k) => k.id)).toEqual([a]);
    await sleep(1500);
    expect((await second.alice.api(`api/kernels/${a}`, { method: 'DELETE' })).status).toBe(204);
    const aSeconds = since(aStarted);

    const after = await usage(second.op);
    console.log(
      'after kill -9 and adoption',
      JSON.stringify({ a: secondsOf(after, a), expectedA: aSeconds, secondsSinceKill: (Date.now() - killedAt) / 1000, b: secondsOf(after, b), pooled: secondsOf(after, pooled) }),
    );
    console.log('after kill -9, rows', JSON.stringify(after.map(({ intervals: _i, ...r }) => r)));
    const aAfter = after.find((r) => r.user === 'alice' && r.kernelspec === 'python3')!;
    // The whole run, the two seconds without a gateway included, with what it reserved.
    expect(Math.abs(aAfter.kernel_seconds - aSeconds)).toBeLessThan(1);
    expect(aAfter.intervals).toHaveLength(1);
    expect(aAfter.core_seconds).toBeCloseTo(2 * aAfter.kernel_seconds, 2);
    expect(aAfter.gpu_seconds['nvidia.com/mig-3g.20gb']).toBeCloseTo(2 * aAfter.kernel_seconds, 2);
    // What was recorded before the crash is there as it was.
    expect(after.find((r) => r.user === 'bob')).toEqual(bRow);
    expect(after.find((r) => r.kernelspec === 'kgate-bench')).toEqual(pooledRow);
    // Alice's own view after the adoption agrees.
    expect((await usage(second.alice)).map((r) => r.kernel_seconds)).toEqual([pooledRow.kernel_seconds, aAfter.kernel_seconds]);

    second.k.child.kill('SIGTERM');
    expect(await second.k.exited).toBe(0);
    // A clean restart reads the same figures from the state dir.
    const third = await kgate();
    expect(await usage(third.op)).toEqual(after);
    third.k.child.kill('SIGTERM');
    await third.k.exited;
  });

  it('two replicas on one state dir: the follower never charges; after a takeover the kernel is charged once, with no gap', async () => {
    const replicaDir = join(dir, 'replicas');
    const replica = async (): Promise<Running & { op: GatewayClient }> => {
      const k = await startKgate(['--port', '0', '--auth-token', OPERATOR, '--state-dir', replicaDir, '--runtime-dir', runtimeDir, '--metering-interval', '1']);
      running.push(k);
      return { ...k, op: gatewayClient(k.url, OPERATOR) };
    };
    const [g1, g2] = [await replica(), await replica()];
    const id = await g1.op.startKernel('python3', { KERNEL_CPUS: '1' });
    const started = Date.now();
    // g2 follows the kernel (it lists and relays it) and charges nothing of its own.
    expect(((await (await g2.op.api('api/kernels')).json()) as Array<{ id: string }>).map((k) => k.id)).toEqual([id]);
    await sleep(2500);
    const fromG1 = secondsOf(await usage(g1.op), id);
    const fromG2 = secondsOf(await usage(g2.op), id);
    // g2 sees g1's checkpoints (at most a second behind), never more than g1 itself.
    expect(Math.abs(fromG1 - since(started))).toBeLessThan(1);
    expect(fromG2).toBeLessThanOrEqual(fromG1 + 0.1);
    expect(fromG2).toBeGreaterThan(fromG1 - 1.5);

    g1.child.kill('SIGKILL');
    await g1.exited;
    // g2 takes the kernel over once g1's lease lapses (its process is gone: at once on one host).
    await sleep(3000);
    expect((await g2.op.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
    const total = since(started);
    const rows = await usage(g2.op);
    const intervals = rows.flatMap((r) => r.intervals.filter((i) => i.kernel_id === id));
    console.log('replicas: takeover after kill -9', JSON.stringify({ charged: secondsOf(rows, id), expected: total, intervals: intervals.length }));
    expect(intervals).toHaveLength(1);
    expect(Math.abs(secondsOf(rows, id) - total)).toBeLessThan(1);
    // The lines on disk do not overlap: no stretch was written by both replicas (the report would hide it).
    const lines = readdirSync(join(replicaDir, 'usage'))
      .filter((f) => f.endsWith('.jsonl'))
      .flatMap((f) =>
        readFileSync(join(replicaDir, 'usage', f), 'utf8')
          .trim()
          .split('\n'),
      )
      .map((l) => JSON.parse(l) as { kernelId: string; from: string; to: string })
      .filter((l) => l.kernelId === id)
      .map((l) => [Date.parse(l.from), Date.parse(l.to)] as const)
      .sort((x, y) => x[0] - y[0]);
    expect(lines.length).toBeGreaterThan(3);
    for (let i = 1; i < lines.length; i++) expect(lines[i]![0]).toBeGreaterThanOrEqual(lines[i - 1]![1]);
    expect(lines.reduce((sum, [from, to]) => sum + (to - from) / 1000, 0)).toBeCloseTo(secondsOf(rows, id), 2);
    const row = rows.find((r) => r.intervals.some((i) => i.kernel_id === id))!;
    expect(row.core_seconds).toBeCloseTo(row.kernel_seconds, 2);
    g2.child.kill('SIGTERM');
    await g2.exited;
  });
});
