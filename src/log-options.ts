/** The logging options (src/log.ts makes the logger). */
import { z } from 'zod';
import { opt, slice, type ConfigOf } from './options.js';

const OPTIONS = {
  logLevel: opt(
    'log-level',
    'string',
    'fatal, error, warn, info, debug, trace or silent (default info)',
    z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  ),
} as const;

export type LogConfig = ConfigOf<typeof OPTIONS>;

export const LOG_OPTIONS = slice('Logging', OPTIONS);
