/**
 * What the status page and `kgate status` print, from models as the gateway
 * answers them: durations, memory, states with a start's progress, the
 * terminal's columns and what it does with control characters; and the page
 * itself, whose CSP hashes must be those of its inline script and style.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { buildStatusPage, STATUS_PAGE_TEMPLATE } from '../../src/gateway/status-page.js';
import { formatStatus, formatTable, printable } from '../../src/status-cli.js';
import { KERNEL_COLUMNS, formatBytes, formatDuration, formatResources, kernelRows, parseDate, type KernelEntry } from '../../src/status-table.js';

const NOW = Date.parse('2026-12-01T12:00:00.000Z');

function kernel(over: Partial<KernelEntry> & { phase?: string; progress?: string; owner?: string | null } = {}): KernelEntry {
  const { phase = 'running', progress, owner = 'alice', ...rest } = over;
  return {
    id: '0123456789abcdef-0000-4000-8000-000000000000',
    name: 'python3',
    last_activity: '2026-12-01T11:59:30.123456Z',
    execution_state: 'idle',
    connections: 2,
    kgate: {
      owner,
      tenant: 'default',
      provisioner: 'local',
      phase,
      started: '2026-12-01T10:55:00.000000Z',
      resources: { cpu: 0.5, memory: 512 * 1024 ** 2, extended: { 'nvidia.com/gpu': 1 } },
      ...(progress ? { progress } : {}),
    },
    ...rest,
  };
}

describe('the status table', () => {
  it('parses Jupyter dates (microseconds) and writes durations and memory as people read them', () => {
    expect(parseDate('2026-12-01T11:59:30.123456Z')).toBe(Date.parse('2026-12-01T11:59:30.123Z'));
    expect([0, 999, 42_000, 303_000, 3 * 3600_000 + 7 * 60_000, 2 * 86_400_000 + 4 * 3600_000].map(formatDuration)).toEqual(['0s', '0s', '42s', '5m03s', '3h07m', '2d04h']);
    expect(formatDuration(NaN)).toBe('-');
    expect(formatDuration(-5000)).toBe('0s');
    expect([100, 800 * 1024, 512 * 1024 ** 2, 1.5 * 1024 ** 3, 2 * 1024 ** 3].map(formatBytes)).toEqual(['100', '800Ki', '512Mi', '1.5Gi', '2Gi']);
    expect(formatResources({})).toBe('-');
    expect(formatResources({ cpu: 0.5, memory: 2 * 1024 ** 3, extended: { 'nvidia.com/gpu': 1 } })).toBe('cpu 0.5, mem 2Gi, nvidia.com/gpu 1');
  });

  it('one row per kernel: short id, owner, the state with a start in progress, age and idle time', () => {
    const [running] = kernelRows([kernel()], NOW);
    expect(running).toMatchObject({ id: '01234567', kernelspec: 'python3', owner: 'alice', state: 'idle', tone: 'idle', age: '1h05m', idle: '29s', connections: '2' });
    const [starting] = kernelRows([kernel({ phase: 'starting', progress: 'pulling', execution_state: 'starting', owner: null })], NOW);
    expect(starting).toMatchObject({ state: 'starting (pulling)', tone: 'starting', owner: '-' });
    expect(kernelRows([kernel({ phase: 'shutting_down' })], NOW)[0]!.state).toBe('shutting down');
    // A gateway without kgate's member (another Jupyter gateway): what is known, and - for the rest.
    const { kgate: _k, ...plain } = kernel({ execution_state: 'busy' });
    expect(kernelRows([plain], NOW)[0]).toMatchObject({ state: 'busy', owner: '-', provisioner: '-', age: '-', resources: '-' });
  });

  it('the terminal: fixed-width columns, long values cut with …, controls and bidi overrides shown as ?', () => {
    const owner = `\u001b]0;owned\u0007eve\u202e${'x'.repeat(40)}`;
    const lines = formatTable(KERNEL_COLUMNS, kernelRows([kernel({ owner })], NOW));
    expect(lines).toHaveLength(2);
    const at = lines[0]!.indexOf('OWNER');
    const cellText = lines[1]!.slice(at, at + 20);
    expect(cellText).toBe('?]0;owned?eve?xxxxx…');
    // eslint-disable-next-line no-control-regex -- no control character may reach the terminal
    for (const line of lines) expect(line).not.toMatch(/[\u0000-\u001f\u202e]/);
    expect(printable('a\nb\tc')).toBe('a?b?c');
    const report = formatStatus([], { started: '2026-12-01T11:00:00.000000Z', last_activity: '2026-12-01T11:59:58.000000Z', kernels: 0, connections: 0, pools: {} }, NOW);
    expect(report).toBe('kernels 0   starting 0   connections 0   up 1h00m   last activity 2s ago\n\nno kernels\n\nno warm pools\n');
  });
});

describe('the status page', () => {
  const template = readFileSync(STATUS_PAGE_TEMPLATE, 'utf8');
  const hash = (s: string): string => `'sha256-${createHash('sha256').update(s).digest('base64')}'`;

  it('puts the bundle inline and allows exactly it and the style, by hash', () => {
    const bundle = 'document.title="x";';
    const page = buildStatusPage(template, bundle, "frame-ancestors 'none'");
    const script = /<script type="module">([\s\S]*?)<\/script>/.exec(page.html)![1]!;
    const style = /<style>([\s\S]*?)<\/style>/.exec(page.html)![1]!;
    expect(script).toBe(bundle);
    expect(page.csp).toBe(
      `default-src 'none'; script-src ${hash(bundle)}; style-src ${hash(style)}; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`,
    );
    // A $ in the bundle is not a replacement pattern.
    expect(buildStatusPage(template, "a='$&$1';", '').html).toContain("a='$&$1';");
  });

  it('refuses a bundle that would end its script element early', () => {
    expect(() => buildStatusPage(template, 'x="</script><b>"', '')).toThrow(/cannot be put inline/);
    expect(() => buildStatusPage(template, 'x="<!--"', '')).toThrow(/cannot be put inline/);
    expect(() => buildStatusPage('<html></html>', 'x', '')).toThrow(/template/);
  });
});
