/**
 * Every error code kgate can answer has one status and one documented meaning
 * (src/gateway/http-errors.ts), and docs/api.md's table is made from that table.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ErrorCodes, KgateError, truncate } from '../../src/errors.js';
import * as errors from '../../src/errors.js';
import { HTTP_ERRORS, errorBody, errorHeaders, httpStatusOf, reasonPhrase } from '../../src/gateway/http-errors.js';

const apiDoc = readFileSync(new URL('../../docs/api.md', import.meta.url), 'utf8');

describe('error codes', () => {
  it.each(Object.values(ErrorCodes))('%s has a status and is in the error table of docs/api.md', (code) => {
    const def = HTTP_ERRORS[code];
    expect(def.status).toBeGreaterThanOrEqual(400);
    expect(def.when.length).toBeGreaterThan(10);
    expect(apiDoc).toContain(`| \`${code}\` | ${def.status} | ${def.when} |`);
  });

  it('each factory makes an error whose body carries its code and the reason phrase of its status', () => {
    const made: KgateError[] = [];
    for (const f of Object.values(errors)) {
      if (typeof f !== 'function' || f === KgateError || f === truncate) continue;
      const e = (f as (...a: string[]) => unknown)('x', 'y');
      if (e instanceof KgateError) made.push(e);
    }
    expect(made.length).toBeGreaterThan(12);
    for (const e of made) {
      const status = httpStatusOf(e);
      expect(errorBody(e), e.code).toEqual({ reason: reasonPhrase(status), message: e.message, code: e.code });
    }
  });

  it('an unschedulable or retryable launch tells the client when to ask again', () => {
    const e = errors.kernelUnschedulable('0/3 nodes are available: 3 Insufficient nvidia.com/mig-3g.20gb.', 30);
    expect(httpStatusOf(e)).toBe(503);
    expect(errorHeaders(e)).toEqual({ 'Retry-After': '30' });
    expect(errorHeaders(errors.kernelNotFound('k'))).toEqual({});
  });

  it('truncate keeps echoes of client input short', () => {
    expect(truncate('a'.repeat(10_000)).length).toBeLessThanOrEqual(65);
    expect(truncate('short')).toBe('short');
  });
});
