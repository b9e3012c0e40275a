/** The shutdown drain (src/gateway/health.ts; the order of a graceful shutdown is in docs/operations.md). */
import { z } from 'zod';
import { opt, slice, type ConfigOf } from '../options.js';

const OPTIONS = {
  shutdownDrain: opt(
    'shutdown-drain',
    'string',
    'seconds between GET /readyz failing and new connections being refused when kgate is told to stop (SIGTERM, SIGINT): time for a load balancer to stop sending (default 0; 5 to 10 behind Kubernetes)',
    z.coerce.number().min(0).max(300).default(0),
  ),
} as const;

export type HealthConfig = ConfigOf<typeof OPTIONS>;

export const HEALTH_OPTIONS = slice('Health', OPTIONS);
