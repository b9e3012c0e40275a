/**
 * The states of one kernel and the moves between them, as one table (ws's
 * receiver keeps its `_state` so): a supervisor changes state only through
 * `transition()`, which checks the move here. A move not in the table is a
 * bug in kgate, never a client's fault: it throws.
 *
 *   starting ──▶ running ⇄ restarting
 *      │            │          │
 *      │            ├──────────┴──▶ shutting_down ──▶ gone
 *      ├───────────────────────────▶ shutting_down
 *      └──▶ dead ◀── restarting          running/restarting ──▶ gone (let go: released, or shut down by another gateway)
 */
import { internalError } from '../errors.js';

export type KernelPhase = 'starting' | 'running' | 'restarting' | 'shutting_down' | 'dead' | 'gone';

/** From each state, the states it may move to. `dead` and `gone` are final. */
export const LEGAL_MOVES: Readonly<Record<KernelPhase, readonly KernelPhase[]>> = {
  // A start that fails is dead; one cancelled by a shutdown goes through shutting_down.
  starting: ['running', 'shutting_down', 'dead'],
  // gone: let go without being stopped (--keep-kernels, or another gateway shut it down).
  running: ['restarting', 'shutting_down', 'gone'],
  // dead: the supervisor gave up; running: back up (or a followed kernel whose restart failed).
  restarting: ['running', 'shutting_down', 'dead', 'gone'],
  shutting_down: ['gone'],
  dead: [],
  gone: [],
};

export const ALL_PHASES = Object.keys(LEGAL_MOVES) as KernelPhase[];

export function canMove(from: KernelPhase, to: KernelPhase): boolean {
  return LEGAL_MOVES[from].includes(to);
}

/** Throws unless `from → to` is in the table. */
export function checkMove(kernelId: string, from: KernelPhase, to: KernelPhase): void {
  if (!canMove(from, to)) throw internalError(`kernel ${kernelId}: illegal state move ${from} → ${to} (a bug in kgate)`);
}
