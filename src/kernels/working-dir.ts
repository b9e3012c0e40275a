import { realpath, stat } from 'node:fs/promises';
import { resolve, sep } from 'node:path';
import { badRequest } from '../errors.js';

/**
 * The kernel's working directory: KERNEL_WORKING_DIR confined to the root
 * dir (--root-dir), symlinks followed (realpath), relative names taken under
 * the root; the root itself when none is asked for. Anything else is a 400
 * that states the rule and never echoes the value.
 */
export async function workingDir(env: Record<string, string>, rootDir: string): Promise<string> {
  const asked = env['KERNEL_WORKING_DIR'];
  if (asked === undefined || asked === '') return rootDir;
  const refused = badRequest('KERNEL_WORKING_DIR must name an existing directory inside the root dir (--root-dir); a relative name is taken under it');
  const root = await realpath(rootDir).catch(() => resolve(rootDir));
  let real: string;
  try {
    real = await realpath(resolve(root, asked));
    if (!(await stat(real)).isDirectory()) throw refused;
  } catch {
    throw refused;
  }
  const inside = root.endsWith(sep) ? root : root + sep;
  if (real !== root && !real.startsWith(inside)) throw refused;
  return real;
}
