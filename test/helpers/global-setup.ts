/**
 * Runs once before the test files. The suite starts many ipykernels at once;
 * with a shared IPython history database they collide ("Session/line number
 * was not unique in database", printed into a cell's stdout). Kernels get a
 * private IPYTHONDIR whose config keeps history in memory, and the user's own
 * ~/.ipython is left untouched.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export default function setup(): () => void {
  const dir = mkdtempSync(join(tmpdir(), 'kgate-test-ipython-'));
  mkdirSync(join(dir, 'profile_default'), { recursive: true });
  writeFileSync(join(dir, 'profile_default', 'ipython_kernel_config.py'), "c.HistoryManager.hist_file = ':memory:'\n");
  process.env['IPYTHONDIR'] = dir;
  return () => rmSync(dir, { recursive: true, force: true });
}
