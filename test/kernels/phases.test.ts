/** The transition table of a kernel's states: every legal move works, every other one throws. */
import { describe, expect, it } from 'vitest';
import { ErrorCodes, KgateError } from '../../src/errors.js';
import { ALL_PHASES, LEGAL_MOVES, canMove, checkMove } from '../../src/kernels/phases.js';
import { fakeManager } from '../helpers/fake-provisioner.js';

describe('kernel phases (the supervisor check uses a fake provisioner)', () => {
  it('every move not in the table throws KG_INTERNAL; every move in it passes', () => {
    let illegal = 0;
    for (const from of ALL_PHASES) {
      for (const to of ALL_PHASES) {
        if (LEGAL_MOVES[from].includes(to)) {
          expect(() => checkMove('k', from, to)).not.toThrow();
          continue;
        }
        illegal++;
        expect(canMove(from, to)).toBe(false);
        let caught: unknown;
        try {
          checkMove('k', from, to);
        } catch (e) {
          caught = e;
        }
        expect(caught, `${from} → ${to}`).toBeInstanceOf(KgateError);
        expect((caught as KgateError).code).toBe(ErrorCodes.INTERNAL);
      }
    }
    // 36 pairs, 11 legal.
    expect(illegal).toBe(25);
  });

  it('dead and gone are final', () => {
    expect(LEGAL_MOVES.dead).toEqual([]);
    expect(LEGAL_MOVES.gone).toEqual([]);
  });

  it("a supervisor's transition() refuses an illegal move and keeps its state", async () => {
    const { manager, close } = fakeManager();
    try {
      const k = await manager.start({ name: 'fake' });
      expect(k.phase).toBe('running');
      expect(() => k.transition('starting')).toThrow(/illegal state move running → starting/);
      expect(() => k.transition('dead')).toThrow(KgateError);
      expect(k.phase).toBe('running');
    } finally {
      await close();
    }
  });
});
