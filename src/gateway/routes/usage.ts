/**
 * GET /api/usage?since=…&until=…: what the caller used (src/metering.ts) —
 * its own kernels; a tenant-admin its tenant's, an admin everyone's — in
 * [since, until), grouped by tenant, user and kernelspec.
 */
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { badRequest } from '../../errors.js';
import type { Meter } from '../../metering.js';
import { MAX_RANGE_MS } from '../../metering-store.js';

/** ISO 8601: a date, or a date and time with an optional offset (none: UTC). */
const ISO = /^(\d{4}-\d{2}-\d{2})(?:T(\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)(Z|[+-]\d{2}:?\d{2})?)?$/;

export const usageTime = z.string().max(64).regex(ISO).describe('ISO 8601: `2026-12-01`, `2026-12-01T10:00:00Z`, `2026-12-01T10:00:00+01:00` (no offset: UTC)');

const LAST = Date.parse('9999-12-31T23:59:59.999Z');

/** Epoch ms of an ISO 8601 time, or a 400 naming the parameter. */
export function parseUsageTime(name: string, v: unknown): number {
  if (typeof v !== 'string') throw badRequest(`${name}: must be given once, as an ISO 8601 date or time`);
  const m = ISO.exec(v);
  // The fraction is cut to milliseconds (Date.parse reads at most three digits everywhere).
  const t = m ? Date.parse(m[2] ? `${m[1]}T${m[2].replace(/(\.\d{3})\d+$/, '$1')}${m[3] ?? 'Z'}` : `${m[1]}T00:00:00Z`) : NaN;
  if (!Number.isFinite(t)) throw badRequest(`${name}: ${JSON.stringify(v.slice(0, 64))} is not an ISO 8601 date or time (such as 2026-12-01 or 2026-12-01T10:00:00Z)`);
  // An offset can carry a time past year 9999, which has no four-digit ISO form to answer with.
  if (t < 0 || t > LAST) throw badRequest(`${name}: must lie between 1970 and 9999 (UTC)`);
  return t;
}

const isoDate = z.iso.datetime();
const seconds = z.number().min(0);
const resources = z
  .object({
    cpu: z.number().min(0).optional().describe('cores'),
    memory: z.number().min(0).optional().describe('bytes'),
    extended: z.record(z.string(), z.number().min(0)).optional().describe('extended resources by name, such as `nvidia.com/gpu`'),
  })
  .describe('what the kernel reserved');

export const usageReport = z
  .object({
    since: isoDate,
    until: isoDate,
    usage: z.array(
      z.object({
        tenant: z.string(),
        user: z.string().nullable().describe('null: started with the operator token, for no user'),
        kernelspec: z.string(),
        kernels: z.number().int().min(0).describe('distinct kernels in this row'),
        kernel_seconds: seconds,
        core_seconds: seconds.describe('reserved CPU cores × seconds'),
        gib_seconds: seconds.describe('reserved memory in GiB (2^30 bytes) × seconds'),
        gpu_seconds: z.record(z.string(), seconds).describe('reserved count × seconds, per extended resource name (`nvidia.com/gpu`, `nvidia.com/mig-3g.20gb`)'),
        intervals: z
          .array(z.object({ kernel_id: z.string(), from: isoDate, to: isoDate, resources }))
          .describe('when each kernel was charged, clipped to [since, until); at most 1000 per row'),
        intervals_truncated: z.boolean().optional().describe('true when the row had more intervals than are listed (its sums cover them all)'),
      }),
    ),
  })
  .describe(
    'Usage in [since, until), grouped by tenant, user and kernelspec: the kernels this gateway supervises up to now, those of another gateway on the same state dir up to their last checkpoint',
  );

const DAY_MS = 86_400_000;

export function usageRoutes(app: FastifyInstance, meter: Meter): void {
  app.get<{ Querystring: Record<string, unknown> }>('/api/usage', async (req) => {
    const q = req.query;
    const now = Date.now();
    const until = q['until'] === undefined ? now : parseUsageTime('until', q['until']);
    // By default the current UTC day so far.
    const since = q['since'] === undefined ? Math.floor(Math.min(now, until - 1) / DAY_MS) * DAY_MS : parseUsageTime('since', q['since']);
    if (since >= until) throw badRequest('since: must be before until');
    if (until - since > MAX_RANGE_MS) throw badRequest(`since, until: at most ${MAX_RANGE_MS / DAY_MS} days apart; ask for a longer span in parts`);
    return meter.report(req.principal, since, until);
  });
}
