/** The generated parts of docs/ match the code they describe (npm run docs rewrites them). */
import { describe, expect, it } from 'vitest';
import { generated } from '../../scripts/gen-docs.js';
import { OPTIONS } from '../../src/config.js';
import { readFileSync } from 'node:fs';

describe('docs', () => {
  it.each(generated())('$file is up to date with the code (run npm run docs)', ({ current, wanted }) => {
    expect(current).toBe(wanted);
  });

  it('the options table lists every option with its environment name', () => {
    const text = readFileSync(new URL('../../docs/configuration.md', import.meta.url), 'utf8');
    for (const o of Object.values(OPTIONS)) expect(text).toContain(`| \`--${o.flag}\` | \`${o.env}\` |`);
  });
});
