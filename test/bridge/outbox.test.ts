/**
 * The Outbox without ZeroMQ: a stand-in DEALER whose sends complete when the
 * test says so, and owners that record what the outbox tells them.
 */
import { describe, expect, it } from 'vitest';
import type { Dealer } from 'zeromq';
import { Outbox, type InputOwner, type OutboxLimits } from '../../src/bridge/outbox.js';

class FakeDealer {
  readonly sent: Buffer[][] = [];
  private readonly pending: Array<() => void> = [];

  send(frames: Buffer[]): Promise<void> {
    this.sent.push(frames);
    return new Promise((resolve) => this.pending.push(resolve));
  }

  get waiting(): number {
    return this.pending.length;
  }

  /** Completes the oldest pending send and lets the outbox react. */
  async complete(): Promise<void> {
    this.pending.shift()?.();
    for (let i = 0; i < 3; i++) await Promise.resolve();
  }

  /** Completes sends until none is pending. */
  async drain(max = 1000): Promise<void> {
    for (let i = 0; i < max && this.pending.length > 0; i++) await this.complete();
  }
}

class Owner implements InputOwner {
  inputBytes = 0;
  drainWaits = 0;
  released = 0;
  inputReleased(): void {
    this.released++;
  }
}

const KiB = 1024;
const frame = (tag: string, size = 0): Buffer[] => [Buffer.from(tag), Buffer.alloc(size)];
const tags = (d: FakeDealer): string[] => d.sent.map((f) => f[0]!.toString());

function outbox(limits: Partial<OutboxLimits> = {}, probe?: () => void): { o: Outbox; d: FakeDealer } {
  const d = new FakeDealer();
  const o = new Outbox(d as unknown as Dealer, { maxBytes: 64 * KiB, maxMessages: 100, window: 0, ...limits }, probe);
  return { o, d };
}

describe('Outbox', () => {
  it('holds client messages until released; the link’s own go at once, first', async () => {
    const { o, d } = outbox();
    const a = new Owner();
    o.push(frame('c1'), 10, a);
    o.pushOwn(frame('own'));
    expect(tags(d)).toEqual(['own']);
    await d.complete();
    expect(tags(d)).toEqual(['own']);
    expect(a.inputBytes).toBe(10);
    o.release();
    // Handed to ZeroMQ: no longer counted against its client.
    expect(tags(d)).toEqual(['own', 'c1']);
    expect(a.inputBytes).toBe(0);
  });

  it('one pending send at a time; an owner counts its bytes until ZeroMQ is handed them', async () => {
    const { o, d } = outbox();
    o.release();
    const a = new Owner();
    for (let i = 0; i < 3; i++) o.push(frame(`m${i}`), 1000, a);
    expect(d.waiting).toBe(1);
    expect(a.inputBytes).toBe(2000);
    await d.complete();
    expect(a.inputBytes).toBe(1000);
    expect(a.released).toBe(1);
    await d.drain();
    expect(tags(d)).toEqual(['m0', 'm1', 'm2']);
    expect(a.inputBytes).toBe(0);
  });

  it('bounded in bytes and in messages; a message larger than the bound goes when nothing is queued', () => {
    const { o } = outbox({ maxBytes: 4 * KiB, maxMessages: 3 });
    const a = new Owner();
    expect(o.fits(10 * KiB)).toBe(true);
    o.push(frame('big', 10), 10 * KiB, a);
    expect(o.fits(1)).toBe(false);
    const { o: o2 } = outbox({ maxBytes: 4 * KiB, maxMessages: 3 });
    o2.push(frame('a'), 1 * KiB, a);
    o2.push(frame('b'), 1 * KiB, a);
    expect(o2.fits(2 * KiB)).toBe(true);
    expect(o2.fits(3 * KiB)).toBe(false);
    o2.push(frame('c'), 10, a);
    expect(o2.fits(1)).toBe(false);
  });

  it('congested past half its bound; owners waiting on it are told once it drains below a quarter', async () => {
    const { o, d } = outbox({ maxBytes: 8 * KiB });
    const a = new Owner();
    const b = new Owner();
    o.release();
    // The first goes to ZeroMQ at once; five wait.
    for (let i = 0; i < 6; i++) o.push(frame(`a${i}`), KiB, a);
    expect(o.congested).toBe(true);
    o.wait(a);
    o.wait(a);
    o.push(frame('b0'), KiB, b);
    o.wait(b);
    expect(a.drainWaits).toBe(1);
    expect(b.drainWaits).toBe(1);
    // 6 KiB queued: drains to 2 KiB (a quarter) after four sends complete.
    for (let i = 0; i < 3; i++) await d.complete();
    expect(b.drainWaits).toBe(1);
    await d.complete();
    expect(a.drainWaits).toBe(0);
    expect(b.drainWaits).toBe(0);
    expect(b.released).toBeGreaterThan(0);
    expect(o.congested).toBe(false);
  });

  it('with a window: stops past it and probes; the probe’s reply lets the rest go', async () => {
    let probes = 0;
    const { o, d } = outbox({ maxBytes: 1 << 20, window: 4 * KiB }, () => {
      probes++;
      o.pushOwn(frame(`probe${probes}`));
    });
    o.release();
    const a = new Owner();
    for (let i = 0; i < 6; i++) o.push(frame(`m${i}`), KiB, a);
    await d.drain();
    // Half the window sent: a probe goes behind it; at the window the rest waits here, counted.
    expect(tags(d)).toEqual(['m0', 'm1', 'probe1', 'm2', 'm3']);
    expect(a.inputBytes).toBe(2 * KiB);
    o.probeAnswered();
    await d.drain();
    expect(tags(d)).toEqual(['m0', 'm1', 'probe1', 'm2', 'm3', 'm4', 'probe2', 'm5']);
    expect(a.inputBytes).toBe(0);
    // Probes go out each half window, so a kernel that keeps up always has work queued.
    o.probeAnswered();
    o.push(frame('m6'), KiB, a);
    await d.drain();
    expect(tags(d).slice(-2)).toEqual(['m6', 'probe3']);
  });

  it('a message larger than the window goes once nothing is in flight', async () => {
    const { o, d } = outbox({ maxBytes: 1 << 20, window: 4 * KiB }, () => o.pushOwn(frame('probe')));
    o.release();
    const a = new Owner();
    o.push(frame('small'), KiB, a);
    o.push(frame('huge'), 16 * KiB, a);
    await d.drain();
    expect(tags(d)).toEqual(['small', 'probe']);
    o.probeAnswered();
    await d.drain();
    expect(tags(d).slice(2)).toEqual(['huge', 'probe']);
  });

  it('hold() forgets what the old process had in flight', async () => {
    const { o, d } = outbox({ maxBytes: 1 << 20, window: 2 * KiB }, () => o.pushOwn(frame('probe')));
    o.release();
    const a = new Owner();
    o.push(frame('m0'), 2 * KiB, a);
    o.push(frame('m1'), KiB, a);
    await d.drain();
    expect(tags(d)).toEqual(['m0', 'probe']);
    o.hold();
    o.release();
    await d.drain();
    expect(tags(d)).toEqual(['m0', 'probe', 'm1', 'probe']);
  });

  it('purge drops what one owner has queued and releases its bytes', async () => {
    const { o, d } = outbox();
    o.release();
    const a = new Owner();
    const b = new Owner();
    o.push(frame('a0'), 100, a);
    o.push(frame('b0'), 100, b);
    o.push(frame('a1'), 100, a);
    o.push(frame('b1'), 100, b);
    expect(a.inputBytes).toBe(100);
    o.purge(a);
    // a0 was already with ZeroMQ; a1 is gone.
    expect(a.inputBytes).toBe(0);
    await d.drain();
    expect(tags(d)).toEqual(['a0', 'b0', 'b1']);
    expect(a.inputBytes).toBe(0);
    expect(b.inputBytes).toBe(0);
  });
});
