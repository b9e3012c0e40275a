/**
 * Rows of figures, the table printed at the end (with ratios to direct ZeroMQ
 * and to jupyter server measured in the same run), the issue's targets checked
 * against them, and the JSON written next to it.
 */
import { LETTERS, type ScenarioId } from './config.js';
import { jupyterReference, TARGETS, type TargetId } from './lab.js';
import { fmt } from './stats.js';

export interface Row {
  scenario: ScenarioId;
  metric: string;
  unit: string;
  target: TargetId;
  /** null: not measured (n/a, skipped or failed: the note says which). */
  value: number | null;
  note?: string;
}

export interface RatedRow extends Row {
  ratioDirect: number | null;
  ratioJupyter: number | null;
}

export interface TargetCheck {
  goal: string;
  target: TargetId;
  measured: string;
  met: boolean | null;
  /** How far from the goal, said plainly (positive: margin; negative: missed by). */
  margin: string;
}

export class Report {
  readonly rows: Row[] = [];

  add(scenario: ScenarioId, target: TargetId, metric: string, unit: string, value: number | null, note?: string): void {
    this.rows.push(note === undefined ? { scenario, metric, unit, target, value } : { scenario, metric, unit, target, value, note });
  }

  /** A row for each metric, for a target that was not measured, saying why. */
  skip(scenario: ScenarioId, target: TargetId, metrics: ReadonlyArray<readonly [string, string]>, why: string): void {
    for (const [metric, unit] of metrics) this.add(scenario, target, metric, unit, null, why);
  }

  value(scenario: ScenarioId, metric: string, target: TargetId): number | null {
    return this.rows.find((r) => r.scenario === scenario && r.metric === metric && r.target === target)?.value ?? null;
  }

  rated(): RatedRow[] {
    return this.rows.map((r) => {
      const ratio = (ref: TargetId): number | null => {
        const v = this.value(r.scenario, r.metric, ref);
        return r.value === null || v === null || v === 0 || r.unit === 'code' ? null : r.value / v;
      };
      return { ...r, ratioDirect: ratio('direct'), ratioJupyter: ratio(jupyterReference(r.target)) };
    });
  }

  /** The table, as Markdown, in scenario order then target order. */
  table(): string {
    const label = (t: TargetId): string => TARGETS.find((x) => x.id === t)!.label;
    const order = (t: TargetId): number => TARGETS.findIndex((x) => x.id === t);
    const rows = this.rated();
    const keyed = rows.map((r, i) => ({ r, i }));
    keyed.sort((a, b) => {
      if (a.r.scenario !== b.r.scenario) return LETTERS[a.r.scenario].localeCompare(LETTERS[b.r.scenario]);
      const ma = rows.findIndex((x) => x.scenario === a.r.scenario && x.metric === a.r.metric);
      const mb = rows.findIndex((x) => x.scenario === b.r.scenario && x.metric === b.r.metric);
      if (ma !== mb) return ma - mb;
      return order(a.r.target) - order(b.r.target) || a.i - b.i;
    });
    const ratio = (x: number | null): string => (x === null ? '' : `${x.toFixed(x >= 100 ? 0 : 2)}×`);
    const out = ['| scenario | metric | target | value | unit | ÷ direct ZMQ | ÷ jupyter-server | note |', '| --- | --- | --- | ---: | --- | ---: | ---: | --- |'];
    for (const { r } of keyed) {
      out.push(
        `| ${LETTERS[r.scenario]} ${r.scenario} | ${r.metric} | ${label(r.target)} | ${r.value === null ? '–' : r.unit === 'code' ? String(r.value) : fmt(r.value)} | ${r.unit} | ${ratio(r.ratioDirect)} | ${ratio(r.ratioJupyter)} | ${r.note ?? ''} |`,
      );
    }
    return out.join('\n');
  }

  /** The issue's targets, for kgate JSON and v1, as far as this run measured them. */
  checks(fullSockets: number): TargetCheck[] {
    const out: TargetCheck[] = [];
    const pct = (x: number): string => `${(x * 100).toFixed(0)} %`;
    for (const t of ['kgate-json', 'kgate-v1'] as const) {
      const p50 = this.value('execute', 'round trip p50', t);
      const d50 = this.value('execute', 'round trip p50', 'direct');
      if (p50 !== null && d50 !== null) {
        const over = p50 - d50;
        out.push({
          goal: 'execute round trip p50 within 0.1 ms of direct ZeroMQ',
          target: t,
          measured: `${fmt(p50)} ms vs ${fmt(d50)} ms (+${over.toFixed(3)} ms)`,
          met: over <= 0.1,
          margin: over <= 0.1 ? `${(0.1 - over).toFixed(3)} ms to spare` : `missed by ${(over - 0.1).toFixed(3)} ms`,
        });
      }
      const m = this.value('flood-small', 'msgs/s', t);
      const dm = this.value('flood-small', 'msgs/s', 'direct');
      const lost = this.value('flood-small', 'lost', t);
      if (m !== null && dm !== null && lost !== null) {
        const r = m / dm;
        const ok = r >= 0.7 && lost === 0;
        out.push({
          goal: '100-byte flood ≥ 0.7× direct msgs/s, no loss',
          target: t,
          measured: `${r.toFixed(2)}× (${fmt(m)} vs ${fmt(dm)} msgs/s), ${lost} lost`,
          met: ok,
          margin:
            r >= 0.7
              ? lost === 0
                ? `${(r - 0.7).toFixed(2)}× to spare`
                : `${lost} messages lost`
              : `missed by ${(0.7 - r).toFixed(2)}× (${pct(1 - r / 0.7)} short)${lost ? `, ${lost} lost` : ''}`,
        });
      }
      const mb = this.value('flood-large', 'MB/s', t);
      const dmb = this.value('flood-large', 'MB/s', 'direct');
      if (mb !== null && dmb !== null) {
        const r = mb / dmb;
        out.push({
          goal: '64 KiB flood ≥ 0.8× direct MB/s',
          target: t,
          measured: `${r.toFixed(2)}× (${fmt(mb)} vs ${fmt(dmb)} MB/s)`,
          met: r >= 0.8,
          margin: r >= 0.8 ? `${(r - 0.8).toFixed(2)}× to spare` : `missed by ${(0.8 - r).toFixed(2)}× (${pct(1 - r / 0.8)} short)`,
        });
      }
      const cpuSmall = this.value('flood-small', 'gateway CPU per message', t);
      if (cpuSmall !== null) {
        out.push({
          goal: '≤ 5 µs of kgate CPU per 100-byte message (issue 16)',
          target: t,
          measured: `${fmt(cpuSmall)} µs`,
          met: cpuSmall <= 5,
          margin: cpuSmall <= 5 ? `${fmt(5 - cpuSmall)} µs to spare` : `missed by ${fmt(cpuSmall - 5)} µs (${fmt(cpuSmall / 5)}× the target)`,
        });
      }
      const cpuLarge = this.value('flood-large', 'gateway CPU per MiB', t);
      if (cpuLarge !== null) {
        out.push({
          goal: '≤ 0.5 ms of kgate CPU per MiB of 64 KiB messages (issue 16)',
          target: t,
          measured: `${fmt(cpuLarge)} ms`,
          met: cpuLarge <= 0.5,
          margin: cpuLarge <= 0.5 ? `${fmt(0.5 - cpuLarge)} ms to spare` : `missed by ${fmt(cpuLarge - 0.5)} ms (${fmt(cpuLarge / 0.5)}× the target)`,
        });
      }
      const held = this.value('sockets', 'sockets held', t);
      const per = this.value('sockets', 'RSS per socket', t);
      if (held !== null && per !== null) {
        const ok = held >= fullSockets && per <= 20;
        out.push({
          goal: `${fullSockets.toLocaleString('en-US')} WebSockets on one kernel at ≤ 20 KB each`,
          target: t,
          measured: `${held} held, ${fmt(per)} KiB each`,
          met: ok,
          margin: ok ? `${fmt(20 - per)} KiB to spare` : held < fullSockets ? `${fullSockets - held} short` : `missed by ${fmt(per - 20)} KiB per socket`,
        });
      }
      const grow = this.value('slow-client', 'peak RSS growth', t);
      const rel = this.value('slow-client', 'reader vs no slow client', t);
      if (grow !== null && rel !== null) {
        const ok = grow <= 64 && rel >= 0.8;
        out.push({
          goal: 'a non-reading client: RSS growth ≤ 64 MB, other clients within 20 %',
          target: t,
          measured: `+${fmt(grow)} MiB, reader at ${rel.toFixed(2)}× its throughput without it`,
          met: ok,
          margin: ok
            ? `${fmt(64 - grow)} MiB and ${(rel - 0.8).toFixed(2)}× to spare`
            : [grow > 64 ? `RSS over by ${fmt(grow - 64)} MiB` : '', rel < 0.8 ? `reader ${pct(1 - rel)} slower` : ''].filter(Boolean).join(', '),
        });
      }
    }
    return out;
  }
}

export function checksText(checks: TargetCheck[]): string {
  const label = (t: TargetId): string => TARGETS.find((x) => x.id === t)!.label;
  return checks.map((c) => `- ${c.met ? 'MET   ' : 'MISSED'} ${label(c.target)}: ${c.goal}: ${c.measured}; ${c.margin}`).join('\n');
}
