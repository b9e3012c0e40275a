/**
 * KernelLink.send's input bounds without a kernel: the link is never opened,
 * so the kernel is never ready and everything a client sends is held, which
 * is what a kernel that is starting (or not reading) looks like to it.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log.js';
import { Input, KernelLink, type LinkClient } from '../../src/bridge/kernel-link.js';
import { ReplayBudget } from '../../src/bridge/replay.js';
import type { MessageParts } from '../../src/bridge/wire.js';

const KiB = 1024;
const links: KernelLink[] = [];
afterEach(() => {
  for (const l of links.splice(0)) l.close();
});

function link(maxClient = 16 * KiB, maxKernel = 64 * KiB): KernelLink {
  const l = new KernelLink(
    { transport: 'tcp', ip: '127.0.0.1', shell_port: 1, iopub_port: 2, stdin_port: 3, control_port: 4, hb_port: 5, key: 'k', signature_scheme: 'hmac-sha256', kernel_name: 'x' },
    {
      verifySignatures: true,
      maxQueued: 1000,
      maxKernelInputBytes: maxKernel,
      maxClientInputBytes: maxClient,
      iopubHighWaterMark: 200,
      replay: { maxBytes: 1 << 20, maxMs: 60_000, maxSessions: 4, maxKernelBytes: 1 << 20, budget: new ReplayBudget(1 << 20) },
      log: createLogger('silent'),
    },
  );
  links.push(l);
  return l;
}

class Client implements LinkClient {
  readonly identity: Buffer;
  readonly identityKey: string;
  inputBytes = 0;
  drainWaits = 0;
  constructor(name: string) {
    this.identity = Buffer.from(`s:${name}`);
    this.identityKey = this.identity.toString('latin1');
  }
  deliver(): boolean {
    return false;
  }
  caughtUp(): boolean {
    return true;
  }
  close(): void {}
  inputReleased(): void {}
}

function message(type: string, pad: number): MessageParts {
  return {
    header: Buffer.from(JSON.stringify({ msg_id: 'x', msg_type: type, session: 's' })),
    parent: Buffer.from('{}'),
    metadata: Buffer.from('{}'),
    content: Buffer.from(JSON.stringify({ pad: 'x'.repeat(pad) })),
    buffers: [],
  };
}

describe('KernelLink.send: bounds on what clients send', () => {
  it('holds while the kernel is not ready; pauses past half the client bound; refuses past it', () => {
    const l = link(16 * KiB);
    const c = new Client('a');
    expect(l.send('shell', c, message('execute_request', 4 * KiB))).toBe(Input.Taken);
    expect(l.send('shell', c, message('execute_request', 4 * KiB))).toBe(Input.Pause);
    expect(c.inputBytes).toBeGreaterThan(8 * KiB);
    expect(l.send('control', c, message('debug_request', 4 * KiB))).toBe(Input.Pause);
    expect(l.send('shell', c, message('execute_request', 4 * KiB))).toBe(Input.Refused);
    expect(l.dropped.inputQueueFull).toBe(1);
    // Another client is not held back by the first one's bound.
    expect(l.send('shell', new Client('b'), message('execute_request', 1 * KiB))).toBe(Input.Taken);
  });

  it('takes one message larger than the client bound when nothing of that client is held', () => {
    const l = link(16 * KiB, 1024 * KiB);
    const c = new Client('a');
    expect(l.send('shell', c, message('comm_msg', 40 * KiB))).toBe(Input.Pause);
    expect(l.send('shell', c, message('comm_msg', 10))).toBe(Input.Refused);
  });

  it('the kernel channel bound is shared by every client: they are paused, then refused', () => {
    const l = link(64 * KiB, 32 * KiB);
    const clients = Array.from({ length: 4 }, (_, i) => new Client(`c${i}`));
    const verdicts = clients.map((c) => l.send('shell', c, message('execute_request', 6 * KiB)));
    expect(verdicts).toEqual([Input.Taken, Input.Taken, Input.Pause, Input.Pause]);
    expect(clients[2]!.drainWaits).toBe(1);
    expect(l.send('shell', new Client('late'), message('execute_request', 9 * KiB))).toBe(Input.Refused);
    // Other channels have bounds of their own.
    expect(l.send('control', new Client('late'), message('interrupt_request', 10))).toBe(Input.Taken);
  });

  it('drops an input_reply no input_request asked for, and counts it; the client is not refused', () => {
    const l = link();
    const c = new Client('a');
    expect(l.send('stdin', c, message('input_reply', 100))).toBe(Input.Dropped);
    expect(l.send('stdin', c, message('input_reply', 100))).toBe(Input.Dropped);
    expect(l.dropped.staleInput).toBe(2);
    expect(l.dropped.inputQueueFull).toBe(0);
    expect(c.inputBytes).toBe(0);
  });

  it('refuses everything once closed', () => {
    const l = link();
    l.close();
    expect(l.send('shell', new Client('a'), message('execute_request', 10))).toBe(Input.Refused);
  });
});
