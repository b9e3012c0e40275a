import { afterEach, describe, expect, it } from 'vitest';
import { Dealer } from 'zeromq';
import { KernelLink } from '../../src/bridge/kernel-link.js';

describe('the shared ZeroMQ context', () => {
  const sockets: Dealer[] = [];
  afterEach(() => {
    for (const s of sockets.splice(0)) s.close();
  });

  it('holds more than the 204 kernels of libzmq’s default 1023 sockets', () => {
    expect(KernelLink).toBeDefined(); // importing the link sizes the context
    // 250 kernels' worth of sockets (5 each): the 1024th would throw "Too many open files" under the default.
    for (let i = 0; i < 1250; i++) sockets.push(new Dealer({ linger: 0 }));
    expect(sockets).toHaveLength(1250);
  });
});
