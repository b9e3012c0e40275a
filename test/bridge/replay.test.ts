/**
 * ReplayStore and ReplayBudget without kernels: messages are fed as parts.
 * Bounds per session (--replay-bytes), per kernel (--replay-sessions,
 * --replay-kernel-bytes) and for the whole gateway (--replay-total-bytes,
 * one ReplayBudget shared by every kernel's store); past each, the oldest
 * sessions are given up first, and their reconnect is told output was lost.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { ReplayBudget, ReplayStore, type ReplayLimits, type Resumption } from '../../src/bridge/replay.js';
import { messageBytes, type MessageParts } from '../../src/bridge/wire.js';

const stores: ReplayStore[] = [];
afterEach(() => {
  for (const s of stores.splice(0)) s.clear();
});

function store(limits: Partial<ReplayLimits> = {}, budget = new ReplayBudget(1 << 30)): ReplayStore {
  const s = new ReplayStore({ maxBytes: 1 << 20, maxMs: 60_000, maxSessions: 64, maxKernelBytes: 1 << 30, budget, ...limits });
  stores.push(s);
  return s;
}

let seq = 0;
/** A message answering request `parent`, with `pad` bytes of content. */
function msg(parent: string, pad = 0): MessageParts {
  return {
    header: Buffer.from(JSON.stringify({ msg_id: `m${seq++}`, msg_type: 'stream' })),
    parent: Buffer.from(JSON.stringify({ msg_id: parent })),
    metadata: Buffer.from('{}'),
    content: Buffer.from(JSON.stringify({ name: 'stdout', text: 'x'.repeat(pad) })),
    buffers: [],
  };
}

const replayed = (r: Resumption): MessageParts[] => (r && 'replay' in r ? r.replay.map(([, m]) => m) : []);
const lostParent = (r: Resumption): string | undefined => (r && 'lost' in r ? ((JSON.parse(r.lost.parent?.toString() ?? '{}') as { msg_id?: string }).msg_id ?? '') : undefined);

describe('ReplayStore', () => {
  it('replays iopub and the session’s own replies, in order, and nothing of other sessions', () => {
    const s = store();
    s.park('a');
    const m1 = msg('r1');
    const reply = msg('r1');
    const other = msg('r2');
    const m2 = msg('r1');
    s.iopub(m1);
    expect(s.reply('a', 'shell', reply)).toBe(true);
    expect(s.reply('b', 'shell', other)).toBe(false);
    s.iopub(m2);
    const r = s.resume('a');
    expect(replayed(r)).toEqual([m1, reply, m2]);
    expect(r && 'replay' in r ? r.replay.map(([c]) => c) : []).toEqual(['iopub', 'shell', 'iopub']);
    expect(s.resume('a')).toBeUndefined();
  });

  it('a session parked later replays only what came after it parked', () => {
    const s = store();
    s.park('a');
    const early = msg('r1');
    s.iopub(early);
    s.park('b');
    const late = msg('r1');
    s.iopub(late);
    expect(replayed(s.resume('b'))).toEqual([late]);
    expect(replayed(s.resume('a'))).toEqual([early, late]);
  });

  it('past --replay-bytes, the session is given up and told on the cell that overflowed', () => {
    const s = store({ maxBytes: 2000 });
    s.park('a');
    s.iopub(msg('r1', 900));
    s.iopub(msg('r2', 900));
    s.iopub(msg('r3', 900));
    s.iopub(msg('r4', 10));
    expect(lostParent(s.resume('a'))).toBe('r3');
  });

  it('past --replay-sessions, the oldest session of the kernel is given up', () => {
    const s = store({ maxSessions: 2 });
    s.park('a');
    s.park('b');
    s.iopub(msg('r1'));
    s.park('c');
    s.iopub(msg('r2'));
    expect([...s.parkedKeys()]).toEqual(['b', 'c']);
    // Told on the cell whose kept output was dropped.
    expect(lostParent(s.resume('a'))).toBe('r1');
    expect(replayed(s.resume('b'))).toHaveLength(2);
    expect(replayed(s.resume('c'))).toHaveLength(1);
  });

  it('past --replay-kernel-bytes, the oldest sessions of the kernel are given up first', () => {
    const s = store({ maxBytes: 4000, maxKernelBytes: 5000 });
    s.park('a');
    s.park('b');
    s.park('c');
    s.reply('a', 'shell', msg('ra', 2000));
    s.reply('b', 'shell', msg('rb', 2000));
    expect([...s.parkedKeys()]).toEqual(['a', 'b', 'c']);
    s.reply('c', 'shell', msg('rc', 2000));
    expect([...s.parkedKeys()]).toEqual(['b', 'c']);
    expect(lostParent(s.resume('a'))).toBe('ra');
    expect(replayed(s.resume('b')).map((m) => JSON.parse(m.parent.toString()).msg_id)).toEqual(['rb']);
    expect(replayed(s.resume('c'))).toHaveLength(1);
  });

  it('output every session of a kernel shares is counted once', () => {
    const budget = new ReplayBudget(1 << 30);
    const s = store({ maxBytes: 4000, maxKernelBytes: 5000 }, budget);
    for (const key of ['a', 'b', 'c', 'd']) s.park(key);
    const m = msg('r1', 3000);
    s.iopub(m);
    expect([...s.parkedKeys()]).toEqual(['a', 'b', 'c', 'd']);
    expect(budget.usedBytes).toBe(messageBytes(m));
    for (const key of ['a', 'b', 'c', 'd']) expect(replayed(s.resume(key))).toEqual([m]);
    expect(budget.usedBytes).toBe(0);
  });

  it('a time bound still gives a session up', async () => {
    const s = store({ maxMs: 50 });
    s.park('a');
    s.iopub(msg('r1', 10));
    await new Promise((r) => setTimeout(r, 120));
    expect(lostParent(s.resume('a'))).toBe('r1');
  });

  it('markLost and parkedKeys: an adopted session is told its own text', () => {
    const s = store();
    s.park('a');
    s.markLost(['a', 'b'], 'lost while no gateway held the link');
    expect([...s.parkedKeys()]).toEqual(['a']);
    const r = s.resume('b');
    expect(r && 'lost' in r ? r.lost.text : undefined).toBe('lost while no gateway held the link');
  });
});

describe('ReplayBudget: one bound for the whole gateway', () => {
  it('past --replay-total-bytes, the oldest session of any kernel is given up first', () => {
    const budget = new ReplayBudget(5000);
    const k1 = store({ maxBytes: 4000 }, budget);
    const k2 = store({ maxBytes: 4000 }, budget);
    k1.park('a');
    k2.park('b');
    k1.park('c');
    k1.reply('a', 'shell', msg('ra', 2000));
    k2.reply('b', 'shell', msg('rb', 2000));
    expect(budget.usedBytes).toBeLessThanOrEqual(5000);
    k1.reply('c', 'shell', msg('rc', 2000));
    // 'a' (kernel 1) parked first, so it goes first, though kernel 2 made the last message.
    expect([...k1.parkedKeys()]).toEqual(['c']);
    expect([...k2.parkedKeys()]).toEqual(['b']);
    expect(budget.usedBytes).toBeLessThanOrEqual(5000);
    expect(lostParent(k1.resume('a'))).toBe('ra');
    expect(replayed(k2.resume('b'))).toHaveLength(1);
    expect(replayed(k1.resume('c'))).toHaveLength(1);
    expect(budget.usedBytes).toBe(0);
  });

  it('what a kernel kept goes back to the budget when its store is cleared', () => {
    const budget = new ReplayBudget(1 << 20);
    const k1 = store({}, budget);
    k1.park('a');
    k1.iopub(msg('r1', 1000));
    expect(budget.usedBytes).toBeGreaterThan(1000);
    k1.clear();
    expect(budget.usedBytes).toBe(0);
  });

  it('many kernels, many sessions: the total never passes the budget', () => {
    const budget = new ReplayBudget(64 * 1024);
    const kernels = Array.from({ length: 8 }, () => store({ maxBytes: 16 * 1024, maxKernelBytes: 32 * 1024 }, budget));
    let peak = 0;
    for (let round = 0; round < 50; round++) {
      for (const [i, k] of kernels.entries()) {
        k.park(`s${round}-${i}`);
        k.iopub(msg(`r${round}`, 1000 + ((round * 7 + i * 13) % 3000)));
        k.reply(`s${round}-${i}`, 'shell', msg(`r${round}`, 500));
        peak = Math.max(peak, budget.usedBytes);
      }
    }
    expect(peak).toBeLessThanOrEqual(64 * 1024);
    const kept = kernels.reduce((n, k) => n + [...k.parkedKeys()].length, 0);
    expect(kept).toBeGreaterThan(0);
    // The sessions kept are the latest ones.
    for (const k of kernels) for (const key of k.parkedKeys()) expect(Number(/^s(\d+)/.exec(key)![1])).toBeGreaterThan(40);
  });
});
