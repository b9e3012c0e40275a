/**
 * The supervisor on a fake provisioner (test/helpers/fake-provisioner.ts),
 * injected through the manager's options: restart limit and backoff, the
 * stable-run reset, typed launch errors, the launch timeout, progress,
 * cancelled starts, and a relaunch that answers a new address.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { KernelLink, type LinkClient } from '../../src/bridge/kernel-link.js';
import { ErrorCodes, KgateError, kernelUnschedulable } from '../../src/errors.js';
import { events, type KernelDeathEvent, type KernelProgressEvent, type KernelRestartEvent, type KernelStartFailedEvent } from '../../src/events.js';
import { errorHeaders, httpStatusOf } from '../../src/gateway/http-errors.js';
import { restartBackoffMs } from '../../src/kernels/supervisor.js';
import type { ConnectionInfo } from '../../src/provisioner/types.js';
import { until } from '../helpers/wait.js';
import { fakeManager, testLinkOptions, type FakeManager } from '../helpers/fake-provisioner.js';

let t: FakeManager | undefined;
const unsubscribe: Array<() => void> = [];
afterEach(async () => {
  for (const u of unsubscribe.splice(0)) u();
  await t?.close();
  t = undefined;
});

function record<T>(ch: { subscribe(l: (m: T) => void): void; unsubscribe(l: (m: T) => void): boolean }): Array<T & { at: number }> {
  const seen: Array<T & { at: number }> = [];
  const l = (m: T): void => void seen.push({ ...m, at: Date.now() });
  ch.subscribe(l);
  unsubscribe.push(() => ch.unsubscribe(l));
  return seen;
}

async function rejection(p: Promise<unknown>): Promise<KgateError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(KgateError);
    return e as KgateError;
  }
  throw new Error('expected a rejection');
}

describe('fake provisioner: restart limit and backoff', () => {
  it('restartBackoffMs: the first attempt at once, then 0.5 s doubling up to 8 s', () => {
    expect([1, 2, 3, 4, 5, 6, 7, 10].map(restartBackoffMs)).toEqual([0, 500, 1000, 2000, 4000, 8000, 8000, 8000]);
  });

  it('a kernel whose replacements die while starting is restarted --restart-limit times with growing waits, then given up as dead', async () => {
    // Launch 1 runs; every relaunch dies at once. Backoff scaled down 25x: 0, 20, 40 ms.
    t = fakeManager({ script: ['ok', 'die', 'die', 'die'] }, { restartLimit: 3, restartBackoff: (n) => restartBackoffMs(n) / 25 });
    const restarts = record<KernelRestartEvent>(events.kernelRestart);
    const deaths = record<KernelDeathEvent>(events.kernelDeath);
    const k = await t.manager.start({ name: 'fake' });
    const p = t.made[0]!;
    p.die(137);
    await until(() => k.phase === 'dead', 'the kernel to be given up', 3000, 5);
    expect(p.launches).toBe(4);
    expect(restarts.map((r) => [r.cause, r.attempt])).toEqual([
      ['death', 1],
      ['death', 2],
      ['death', 3],
    ]);
    expect(restarts[1]!.at - restarts[0]!.at).toBeGreaterThanOrEqual(15);
    expect(restarts[2]!.at - restarts[1]!.at).toBeGreaterThanOrEqual(35);
    expect(deaths.map((d) => d.final)).toEqual([false, true]);
    expect(deaths[1]!.reason).toMatch(/3 automatic restart attempts in a row \(--restart-limit 3\)/);
    expect(t.manager.has(k.id)).toBe(false);
  });

  it('a kernel that ran longer than the stable run starts the count again; one that dies sooner uses it up', async () => {
    // Long enough that a restart under load (launch and nudge) is well inside it.
    t = fakeManager({}, { restartLimit: 1, stableRunMs: 300 });
    const k = await t.manager.start({ name: 'fake' });
    const p = t.made[0]!;
    p.die();
    await until(() => k.phase === 'running' && p.launches === 2, 'the first restart', 2000, 5);
    expect(k.restarts).toBe(1);
    // Past the stable run: the count resets, so the one attempt allowed is there again.
    await new Promise((r) => setTimeout(r, 330));
    p.die();
    await until(() => k.phase === 'running' && p.launches === 3, 'the restart after a stable run', 2000, 5);
    expect(k.restarts).toBe(1);
    // At once again: the count stands at the limit, so it is given up.
    p.die();
    await until(() => k.phase === 'dead', 'the kernel to be given up', 2000, 5);
    expect(p.launches).toBe(3);
  });

  it('a lost heartbeat is a death too: restarted in place, same address', async () => {
    t = fakeManager({}, { heartbeat: { intervalMs: 20, timeoutMs: 200 } });
    const k = await t.manager.start({ name: 'fake' });
    const before = k.conn!;
    const p = t.made[0]!;
    p.kernel!.silenceHeartbeat();
    await until(() => p.launches === 2 && k.phase === 'running', 'the restart after the heartbeat stopped', 2000, 5);
    expect(k.conn!.shell_port).toBe(before.shell_port);
    expect(p.requests[1]!.reuse).toEqual(before);
  });
});

describe('fake provisioner: launch', () => {
  it("an unschedulable start reaches the caller as KG_KERNEL_UNSCHEDULABLE, 503 with Retry-After and the scheduler's reason; nothing is left", async () => {
    const reason = '0/3 nodes are available: 3 Insufficient nvidia.com/mig-3g.20gb.';
    t = fakeManager({ script: [kernelUnschedulable(reason, 45)] });
    const failed = record<KernelStartFailedEvent>(events.kernelStartFailed);
    const e = await rejection(t.manager.start({ name: 'fake' }));
    expect(e.code).toBe(ErrorCodes.KERNEL_UNSCHEDULABLE);
    expect(e.message).toContain(reason);
    expect(e.retryAfterSec).toBe(45);
    expect(httpStatusOf(e)).toBe(503);
    expect(errorHeaders(e)).toMatchObject({ 'Retry-After': '45' });
    expect(failed.map((f) => f.code)).toEqual([ErrorCodes.KERNEL_UNSCHEDULABLE]);
    expect(t.manager.list()).toEqual([]);
  });

  it("the launch timeout covers the provisioner's own launch (a pod that never schedules)", async () => {
    t = fakeManager({ script: ['hang'] }, { launchTimeoutMs: 80 });
    const started = Date.now();
    const e = await rejection(t.manager.start({ name: 'fake' }));
    expect(e.code).toBe(ErrorCodes.KERNEL_START_TIMEOUT);
    expect(Date.now() - started).toBeLessThan(500);
    expect(t.manager.list()).toEqual([]);
  });

  it('progress phases reach events.kernelProgress in order; the request carries principal, config and resources', async () => {
    t = fakeManager({ phases: ['scheduling', 'pulling'] });
    const progress = record<KernelProgressEvent>(events.kernelProgress);
    const k = await t.manager.start({ name: 'fake', resources: { cpu: 1, extended: { 'nvidia.com/gpu': 1 } } });
    expect(progress.filter((p) => p.kernelId === k.id).map((p) => p.phase)).toEqual(['scheduling', 'pulling', 'starting', 'connecting']);
    const req = t.made[0]!.requests[0]!;
    expect(req.principal).toEqual({ user: undefined, tenant: 'default' });
    expect(req.config).toEqual({});
    expect(req.resources).toEqual({ cpu: 1, extended: { 'nvidia.com/gpu': 1 } });
    expect(req.key).toMatch(/^[0-9a-f]{64}$/);
  });

  it('a shutdown during the launch cancels the start: KG_KERNEL_START_CANCELLED, nothing left', async () => {
    t = fakeManager({ script: ['hang'] });
    const start = t.manager.start({ name: 'fake' });
    await until(() => t!.manager.list().length === 1, 'the kernel to be registered', 1000, 2);
    const k = t.manager.list()[0]!;
    expect(k.phase).toBe('starting');
    const down = t.manager.shutdown(k.id);
    const e = await rejection(start);
    expect(e.code).toBe(ErrorCodes.KERNEL_START_CANCELLED);
    await down;
    expect(k.phase).toBe('gone');
    expect(t.manager.list()).toEqual([]);
    expect(t.made[0]!.requests).toHaveLength(1);
  });

  it('interrupts by message when the provisioner or the kernelspec can only take messages', async () => {
    t = fakeManager();
    const k = await t.manager.start({ name: 'fake' });
    await t.manager.interrupt(k.id);
    expect(t.made[0]!.kernel!.received.filter((r) => r.type === 'interrupt_request')).toEqual([{ channel: 'control', type: 'interrupt_request' }]);
    expect(t.made[0]!.signals).toEqual([]);
  });
});

/** A fake client of the link: it records whether it was closed. */
function fakeClient(): LinkClient & { closed: number[] } {
  const closed: number[] = [];
  return {
    closed,
    identity: Buffer.from('s:fake'),
    identityKey: 's:fake',
    deliver: () => false,
    caughtUp: () => true,
    close: (code: number) => void closed.push(code),
  } as unknown as LinkClient & { closed: number[] };
}

/**
 * A link that records its rebinds (it makes a new inner link each time): a
 * link whose sockets move to a new address while its clients stay.
 */
class RebindingLink {
  inner: KernelLink;
  readonly rebound: ConnectionInfo[] = [];
  readonly clients = [fakeClient()];
  constructor(
    conn: ConnectionInfo,
    private readonly make: (c: ConnectionInfo) => KernelLink,
  ) {
    this.inner = make(conn);
  }
  rebind(conn: ConnectionInfo): void {
    this.rebound.push(conn);
    this.inner.close();
    this.inner = this.make(conn);
    this.inner.open();
  }
  open(): void {
    this.inner.open();
  }
  nudge(ms: number, signal?: AbortSignal): Promise<void> {
    return this.inner.nudge(ms, signal);
  }
  suspend(): void {
    this.inner.suspend();
  }
  request(...a: Parameters<KernelLink['request']>): ReturnType<KernelLink['request']> {
    return this.inner.request(...a);
  }
  broadcastStatus(s: Parameters<KernelLink['broadcastStatus']>[0]): void {
    this.inner.broadcastStatus(s);
  }
  allClients(): LinkClient[] {
    return this.clients;
  }
  sessionKeys(): string[] {
    return [];
  }
  close(): void {
    this.inner.close();
  }
  get executionState(): KernelLink['executionState'] {
    return this.inner.executionState;
  }
  get lastActivity(): number {
    return this.inner.lastActivity;
  }
  get connections(): number {
    return this.clients.length;
  }
}
describe('fake provisioner: a relaunch that answers a new address', () => {
  it('rebinds the link and the heartbeat to it; the clients are not closed', async () => {
    const links: RebindingLink[] = [];
    t = fakeManager(
      { newAddressOnRestart: true },
      {
        heartbeat: { intervalMs: 20, timeoutMs: 200 },
        createLink: (conn, log) => {
          const l = new RebindingLink(conn, (c) => new KernelLink(c, { ...linkOptions, log }));
          links.push(l);
          return l as unknown as KernelLink;
        },
      },
    );
    const k = await t.manager.start({ name: 'fake' });
    const first = k.conn!;
    await t.manager.restart(k.id);
    expect(k.phase).toBe('running');
    const second = k.conn!;
    expect(second.shell_port).not.toBe(first.shell_port);
    expect(second.key).toBe(first.key);
    expect(links).toHaveLength(1);
    expect(links[0]!.rebound).toEqual([second]);
    expect(links[0]!.clients[0]!.closed).toEqual([]);
    // The heartbeat follows: the kernel at the new address stays up past the heartbeat timeout (200 ms)…
    await new Promise((r) => setTimeout(r, 300));
    expect(k.phase).toBe('running');
    expect(t.made[0]!.launches).toBe(2);
    // …and its death there is seen.
    t.made[0]!.kernel!.silenceHeartbeat();
    await until(() => t!.made[0]!.launches === 3 && k.phase === 'running', 'the restart after the new kernel stopped', 2000, 5);
    expect(links[0]!.clients[0]!.closed).toEqual([]);
  });

  it('with the real KernelLink.rebind: the kernel answers at the new address, clients stay', async () => {
    t = fakeManager({ newAddressOnRestart: true });
    const k = await t.manager.start({ name: 'fake' });
    const client = fakeClient();
    k.link!.attach(client);
    await t.manager.restart(k.id);
    expect(k.phase).toBe('running');
    expect(client.closed).toEqual([]);
  });
});

const linkOptions = testLinkOptions;
