/**
 * Prints a results JSON (bench/results/latest.json by default) as one compact
 * Markdown table, a row per metric and a column per target, for the README:
 * kgate's cells carry their ratio to direct ZeroMQ, then to jupyter server
 * (rate limit off, same protocol), where both were measured.
 *
 *   npx tsx bench/tools/results-table.ts [results.json]
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { LETTERS } from '../lib/config.js';
import { TARGETS } from '../lib/lab.js';
import type { RatedRow } from '../lib/report.js';
import { fmt } from '../lib/stats.js';

const file = process.argv[2] ?? fileURLToPath(new URL('../results/latest.json', import.meta.url));
const results = JSON.parse(readFileSync(file, 'utf8')) as { rows: RatedRow[]; machine: Record<string, unknown>; started: string; scale: string };

const metrics: Array<{ scenario: RatedRow['scenario']; metric: string; unit: string }> = [];
for (const r of results.rows) {
  if (!metrics.some((m) => m.scenario === r.scenario && m.metric === r.metric)) metrics.push({ scenario: r.scenario, metric: r.metric, unit: r.unit });
}

const cell = (r: RatedRow | undefined): string => {
  if (!r || r.value === null) return r?.note?.startsWith('n/a') ? 'n/a' : r?.note?.startsWith('still open') ? 'open' : '–';
  const v = r.unit === 'code' ? String(r.value) : fmt(r.value);
  if (!r.target.startsWith('kgate')) return v;
  const ratios = [r.ratioDirect, r.ratioJupyter].map((x) => (x === null ? '–' : `${x.toFixed(2)}×`));
  return r.ratioDirect === null && r.ratioJupyter === null ? v : `${v} (${ratios.join(', ')})`;
};

console.log(`| ${['scenario: metric', 'unit', ...TARGETS.map((t) => t.label)].join(' | ')} |`);
console.log(`| --- | --- | ${TARGETS.map(() => '---:').join(' | ')} |`);
for (const m of metrics) {
  const cells = TARGETS.map((t) => cell(results.rows.find((r) => r.scenario === m.scenario && r.metric === m.metric && r.target === t.id)));
  console.log(`| ${LETTERS[m.scenario]} ${m.scenario}: ${m.metric} | ${m.unit} | ${cells.join(' | ')} |`);
}
