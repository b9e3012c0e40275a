import type { ScenarioId, Sizes } from '../lib/config.js';
import { TARGETS, type Lab, type Target } from '../lib/lab.js';
import type { Report } from '../lib/report.js';

export interface Context {
  lab: Lab;
  sizes: Sizes;
  report: Report;
  /** The targets selected for this run (BENCH_TARGETS); the others get rows saying so. */
  targets: readonly Target[];
  log(message: string): void;
}

export interface Scenario {
  id: ScenarioId;
  title: string;
  /** What it reports, as [metric, unit], so that every target gets a row for each. */
  metrics: ReadonlyArray<readonly [string, string]>;
  /** Targets this scenario cannot measure, with the reason printed in their rows. */
  notApplicable?: Partial<Record<Target['id'], string>>;
  /** Measures one target and adds its rows. */
  measure(ctx: Context, target: Target): Promise<void>;
}

export function errorText(e: unknown): string {
  const s = e instanceof Error ? e.message : String(e);
  return s.replace(/\s+/g, ' ').slice(0, 160);
}

/** Runs a scenario over every target, in order; a target that fails gets rows saying why. */
export async function runScenario(ctx: Context, s: Scenario): Promise<void> {
  for (const target of TARGETS) {
    const na = s.notApplicable?.[target.id];
    if (na !== undefined) {
      ctx.report.skip(s.id, target.id, s.metrics, `n/a: ${na}`);
      continue;
    }
    if (!ctx.targets.some((t) => t.id === target.id)) {
      ctx.report.skip(s.id, target.id, s.metrics, 'not selected (BENCH_TARGETS)');
      continue;
    }
    const before = ctx.report.rows.length;
    const t0 = performance.now();
    try {
      await s.measure(ctx, target);
      ctx.log(`${s.id}: ${target.label} done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    } catch (e) {
      ctx.log(`${s.id}: ${target.label} FAILED: ${errorText(e)}`);
      // Keep what was measured; fill in the rest.
      const have = new Set(ctx.report.rows.slice(before).map((r) => r.metric));
      ctx.report.skip(
        s.id,
        target.id,
        s.metrics.filter(([m]) => !have.has(m)),
        `error: ${errorText(e)}`,
      );
    }
  }
}
