/**
 * The benchmark at tiny sizes, as a child process, to keep it working: it
 * must finish, print a row for every scenario and target (the scale scenarios
 * and the peers of today among them), kgate must lose no message in the
 * floods, and the CPU-per-message figures must be there for kgate and for the
 * direct client (the floor). No timing is asserted (speed is measured in the
 * benchmark, not in tests). Needs `npm run build` (dist/cli.js and
 * dist/bench-kernel), Debian's python3-jupyter-server and python3-ipykernel,
 * and the peers in .venv-peers (scripts/setup-bench-peers.sh; a peer that is
 * missing gets rows saying so, and the test still passes).
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { LETTERS, SCENARIO_IDS } from '../bench/lib/config.js';
import { TARGETS } from '../bench/lib/lab.js';
import type { Row } from '../bench/lib/report.js';

const REPO = fileURLToPath(new URL('..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'kgate-bench-smoke-'));

afterAll(() => rmSync(dir, { recursive: true, force: true }));

function runBench(out: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [join(REPO, 'node_modules/tsx/dist/cli.mjs'), 'bench/run.ts'],
      {
        cwd: REPO,
        env: { ...process.env, BENCH_SCALE: 'tiny', BENCH_OUT: out, BENCH_ONLY: '', BENCH_TARGETS: '' },
        timeout: 540_000,
        killSignal: 'SIGTERM',
        maxBuffer: 16 * 1024 * 1024,
      },
      (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

describe('bench/run.ts at BENCH_SCALE=tiny', () => {
  it('completes with a row for every scenario and target, and kgate loses nothing in the floods', async () => {
    const out = join(dir, 'bench.json');
    const r = await runBench(out);
    expect(r.code, r.stderr.slice(-4000)).toBe(0);
    const results = JSON.parse(readFileSync(out, 'utf8')) as { rows: Row[] };
    const lines = r.stdout.split('\n');
    for (const s of SCENARIO_IDS) {
      for (const t of TARGETS) {
        const rows = results.rows.filter((x) => x.scenario === s && x.target === t.id);
        expect(rows.length, `${s} × ${t.id}`).toBeGreaterThan(0);
        expect(
          lines.some((l) => l.startsWith(`| ${LETTERS[s]} ${s} |`) && l.includes(`| ${t.label} |`)),
          `printed ${s} × ${t.label}`,
        ).toBe(true);
        // kgate must have been measured everywhere (jupyter server rows may carry an error);
        // whether it closes a slow client is its policy, reported, not asserted here.
        if (t.server === 'kgate') {
          for (const row of rows.filter((x) => x.unit !== 'code')) expect(row.value, `${s} ${row.metric} ${t.id}: ${row.note ?? ''}`).not.toBeNull();
        }
      }
    }
    for (const s of ['flood-small', 'flood-large'] as const) {
      for (const t of ['kgate-json', 'kgate-v1'] as const) {
        const lost = results.rows.find((x) => x.scenario === s && x.target === t && x.metric === 'lost');
        expect(lost?.value, `${s} lost on ${t}`).toBe(0);
      }
    }
    const value = (s: Row['scenario'], metric: string, t: string): number | null | undefined =>
      results.rows.find((x) => x.scenario === s && x.metric === metric && x.target === t)?.value;
    expect(value('flood-small', 'client CPU per message', 'direct'), 'the floor: the direct client CPU per message').toBeGreaterThan(0);
    expect(value('flood-large', 'client CPU per MiB', 'direct'), 'the floor: the direct client CPU per MiB').toBeGreaterThan(0);
    for (const t of ['kgate-json', 'kgate-v1']) {
      expect(value('flood-small', 'gateway CPU per message', t), `kgate CPU per message, ${t}`).toBeGreaterThanOrEqual(0);
      expect(value('many-kernels', 'gateway RSS per kernel link', t), `RSS per kernel link, ${t}`).not.toBeNull();
      expect(value('many-kernels', 'sustained requests/s (p99 ≤ 100 ms)', t), `many kernels, ${t}`).not.toBeNull();
    }
  }, 560_000);
});
