/** Every error code kgate can answer is documented in docs/api.md's table, with its status. */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ErrorCodes, KgateError, truncate } from '../../src/errors.js';
import * as errors from '../../src/errors.js';

const readme = readFileSync(new URL('../../docs/api.md', import.meta.url), 'utf8');

describe('error codes', () => {
  it.each(Object.values(ErrorCodes))('%s is in the error table of docs/api.md', (code) => {
    expect(readme).toMatch(new RegExp(`\\| \`${code}\` \\| \\d{3} \\|`));
  });

  it('each factory gives the status docs/api.md documents for its code', () => {
    const made: KgateError[] = [];
    for (const f of Object.values(errors)) {
      if (typeof f !== 'function' || f === KgateError || f === truncate) continue;
      const e = (f as (...a: string[]) => unknown)('x', 'y');
      if (e instanceof KgateError) made.push(e);
    }
    expect(made.length).toBeGreaterThan(8);
    for (const e of made) {
      expect(readme, e.code).toMatch(new RegExp(`\\| \`${e.code}\` \\| ${e.status} \\|`));
      expect(e.toBody()).toEqual({ reason: e.reason, message: e.message, code: e.code });
    }
  });

  it('truncate keeps echoes of client input short', () => {
    expect(truncate('a'.repeat(10_000)).length).toBeLessThanOrEqual(65);
    expect(truncate('short')).toBe('short');
  });
});
