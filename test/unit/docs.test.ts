/** The generated parts of docs/ match the code they describe (npm run docs rewrites them). */
import { describe, expect, it } from 'vitest';
import { generated } from '../../scripts/gen-docs.js';
import { OPTIONS } from '../../src/config.js';
import { WsClose } from '../../src/errors.js';
import { readFileSync } from 'node:fs';

describe('docs', () => {
  it.each(generated())('$file is up to date with the code (run npm run docs)', ({ current, wanted }) => {
    expect(current).toBe(wanted);
  });

  it('the options table lists every option with its environment name', () => {
    const text = readFileSync(new URL('../../docs/configuration.md', import.meta.url), 'utf8');
    for (const o of Object.values(OPTIONS)) expect(text).toContain(`| \`--${o.flag}\` | \`${o.env}\` |`);
  });

  it('the close-code table of docs/api.md has every code kgate or its WebSocket library closes with', () => {
    const text = readFileSync(new URL('../../docs/api.md', import.meta.url), 'utf8');
    // 1008 (too many fragments) and 1009 (too large) are sent by ws on kgate's behalf, from the limits kgate gives it.
    for (const code of new Set([...Object.values(WsClose), 1008, 1009])) expect(text, String(code)).toMatch(new RegExp(`^\\| ${code} \\| .+ \\| .+ \\|$`, 'm'));
  });
});
