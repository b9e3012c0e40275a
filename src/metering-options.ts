/** The usage metering options (src/metering.ts). */
import { opt, seconds, slice, type ConfigOf } from './options.js';

const OPTIONS = {
  meteringInterval: opt(
    'metering-interval',
    'string',
    "seconds between checkpoints of the running kernels' usage (to usage/ in --state-dir): what a kill -9 of kgate can lose of a kernel no gateway adopts; an adopted one is charged from its last checkpoint (default 10)",
    seconds.default(10),
  ),
} as const;

export type MeteringConfig = ConfigOf<typeof OPTIONS>;

export const METERING_OPTIONS = slice('Usage metering', OPTIONS);
