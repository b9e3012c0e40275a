import { expect } from 'vitest';
import { FrameError } from '../../src/bridge/client-message.js';
import { WsClose } from '../../src/errors.js';

/** `f` must throw a FrameError that closes the client's socket with 1007, and nothing else. */
export function expectFrameError(f: () => unknown): void {
  let thrown: unknown;
  try {
    f();
  } catch (e) {
    thrown = e;
  }
  expect(thrown, 'expected a FrameError').toBeInstanceOf(FrameError);
  expect((thrown as FrameError).closeCode).toBe(WsClose.InvalidFrame);
}
