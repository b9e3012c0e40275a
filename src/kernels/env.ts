/**
 * The environment a client may pass to its kernel: `KERNEL_*` names and an
 * allow-list, values capped in length and free of characters a shell or a
 * template could act on. Values are never echoed back in errors.
 */
import { badRequest } from '../errors.js';

export const MAX_ENV_VALUE = 4096;
export const MAX_ENV_VARS = 64;
const NAME = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;
// `$` and backtick expand in shells, newline/CR split lines in env files, NUL ends C strings.
const FORBIDDEN = /[$`\n\r\0]/;

export interface EnvPolicy {
  /** Names beyond `KERNEL_*` that clients may set. */
  allow: ReadonlySet<string>;
}

/** Keeps the allowed names, rejects bad values with a 400 that names the variable only. */
export function sanitizeEnv(env: Record<string, unknown> | undefined, policy: EnvPolicy): Record<string, string> {
  const out: Record<string, string> = {};
  if (env === undefined) return out;
  let count = 0;
  for (const [name, value] of Object.entries(env)) {
    if (!(name.startsWith('KERNEL_') || policy.allow.has(name))) continue;
    if (!NAME.test(name)) throw badRequest(`environment variable name ${JSON.stringify(name.slice(0, 64))} is not a valid name`);
    if (typeof value !== 'string') throw badRequest(`environment variable ${name} must be a string`);
    if (value.length > MAX_ENV_VALUE) throw badRequest(`environment variable ${name} is longer than ${MAX_ENV_VALUE} characters`);
    if (FORBIDDEN.test(value)) throw badRequest(`environment variable ${name} holds a forbidden character ($, backtick, newline, CR or NUL)`);
    if (++count > MAX_ENV_VARS) throw badRequest(`more than ${MAX_ENV_VARS} environment variables`);
    out[name] = value;
  }
  return out;
}
