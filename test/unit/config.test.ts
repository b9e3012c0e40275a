/**
 * The config is composed from the slice each module owns: every option is in
 * exactly one slice, `--help` and the docs list them slice by slice under the
 * slice's heading, and each slice's own rules run after parsing.
 */
import { describe, expect, it } from 'vitest';
import { ConfigError, helpText, loadConfig, optionsTable, OPTIONS, SLICES } from '../../src/config.js';

describe('config slices', () => {
  it('every option is in exactly one slice, and OPTIONS is their union in slice order', () => {
    const fromSlices = SLICES.flatMap((s) => Object.keys(s.options));
    expect(Object.keys(OPTIONS)).toEqual(fromSlices);
    expect(new Set(SLICES.flatMap((s) => Object.values(s.options).map((o) => o.env))).size).toBe(fromSlices.length);
  });

  it('--help and the docs list each slice under its heading, its options in order', () => {
    // How each text names an option: `--flag VALUE` (or `--flag ` for a switch) in --help, `` `--flag` `` in the docs.
    const listings: Array<[string, (o: { flag: string; type: string }) => string]> = [
      [helpText(), (o) => `--${o.flag}${o.type === 'string' ? ' VALUE' : ' '}`],
      [optionsTable(), (o) => `\`--${o.flag}\``],
    ];
    for (const [text, named] of listings) {
      let at = -1;
      for (const s of SLICES) {
        const heading = text.indexOf(s.title, at + 1);
        expect(heading, s.title).toBeGreaterThan(at);
        at = heading;
        for (const o of Object.values(s.options)) {
          const next = text.indexOf(named(o), at);
          expect(next, `--${o.flag} under ${s.title}`).toBeGreaterThan(at);
          at = next;
        }
      }
    }
  });

  it('a slice keeps its own rules: --auth-token and --auth-token-file together, a non-loopback address without a token', () => {
    expect(() => loadConfig(['--auth-token', 'a', '--auth-token-file', '/nonexistent'], {})).toThrow(ConfigError);
    expect(() => loadConfig(['--ip', '0.0.0.0', '--auth-token', ''], {})).toThrow(/without a token/);
    expect(() => loadConfig(['--headers-timeout', '20', '--request-timeout', '10'], {})).toThrow(/--headers-timeout/);
    expect(loadConfig(['--ip', '0.0.0.0', '--auth-token', '', '--allow-unauthenticated'], {}).authToken).toBe('');
  });

  it('flags win over KG_* variables, which win over the defaults', () => {
    const c = loadConfig(['--port', '1234'], { KG_PORT: '99', KG_MAX_QUEUED: '7', KG_LOG_LEVEL: 'debug' });
    expect(c.port).toBe(1234);
    expect(c.maxQueued).toBe(7);
    expect(c.logLevel).toBe('debug');
    expect(c.replayBytes).toBe(16 * 1024 * 1024);
  });
});
