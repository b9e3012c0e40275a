/** The Prometheus metrics options (src/metrics.ts; served at GET /metrics). */
import { z } from 'zod';
import { ConfigError, opt, slice, type ConfigOf } from './options.js';

const OPTIONS = {
  metricsToken: opt(
    'metrics-token',
    'string',
    "a scrape token of its own for GET /metrics on the main port (Authorization: Bearer X), good for that route only; the operator's token is accepted there too. Prefer KG_METRICS_TOKEN: a command line can be read by local kernels from /proc",
    z.string().min(16, 'must be at least 16 characters').max(1024).optional(),
  ),
  metricsPort: opt(
    'metrics-port',
    'string',
    'also serve GET /metrics without auth on this port of --metrics-ip (0 picks a free one; default off)',
    z.coerce.number().int().min(0).max(65535).optional(),
  ),
  metricsIp: opt(
    'metrics-ip',
    'string',
    'address the --metrics-port listens on (default 127.0.0.1: anyone who can reach it reads the metrics)',
    z.string().min(1).default('127.0.0.1'),
  ),
} as const;

export type MetricsConfig = ConfigOf<typeof OPTIONS>;

export const METRICS_OPTIONS = slice('Metrics', OPTIONS, (c) => {
  if (c.metricsIp !== '127.0.0.1' && c.metricsPort === undefined) throw new ConfigError('--metrics-ip is for --metrics-port, which is not given');
});
