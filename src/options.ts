/**
 * What a module's options are made of. Each module declares its own slice
 * (src/gateway/options.ts, src/kernels/options.ts, src/bridge/options.ts,
 * src/log-options.ts): for every option its flag, its `KG_*` environment name,
 * its help line and its schema, and the rules that tie its options together.
 * src/config.ts composes the slices into the one table that `--help`, the
 * parser and the docs' options table are made from.
 */
import { z } from 'zod';

/** A setting that is wrong: kgate says why and exits with code 2 before it serves. */
export class ConfigError extends Error {}

export interface OptionDef<S extends z.ZodType = z.ZodType> {
  flag: string;
  type: 'string' | 'boolean';
  multiple?: boolean;
  env: string;
  help: string;
  schema: S;
}

/** One option; its environment name is `KG_` and the flag in upper case (`--max-kernels`: `KG_MAX_KERNELS`). */
export function opt<S extends z.ZodType>(flag: string, type: 'string' | 'boolean', help: string, schema: S, multiple = false): OptionDef<S> {
  return { flag, type, help, schema, multiple, env: `KG_${flag.toUpperCase().replace(/-/g, '_')}` };
}

/** The parsed values of a table of options, by key. */
export type ConfigOf<O extends Record<string, OptionDef>> = { [K in keyof O]: z.output<O[K]['schema']> };

/** A module's options, under the heading `--help` and the docs show them with. */
export interface OptionSlice<O extends Record<string, OptionDef> = Record<string, OptionDef>> {
  title: string;
  options: O;
  /**
   * Runs once every option has parsed: the rules that tie this slice's
   * options together, and what they imply (a file to read). Throws ConfigError.
   */
  finish?(config: ConfigOf<O>): void;
}

/** A slice, typed by its options (so `finish` sees their parsed values). */
export function slice<O extends Record<string, OptionDef>>(title: string, options: O, finish?: (config: ConfigOf<O>) => void): OptionSlice<O> {
  return finish ? { title, options, finish } : { title, options };
}

// Schemas for the common kinds of value.
export const seconds = z.coerce.number().positive().max(86_400);
export const bytes = z.coerce
  .number()
  .int()
  .min(1024)
  .max(2 ** 31);
export const bool = z.union([z.boolean(), z.enum(['true', 'false', '1', '0', 'yes', 'no']).transform((v) => ['true', '1', 'yes'].includes(v))]);
/** A list from repeated flags, or one comma-separated value. */
export const list = z.union([z.array(z.string()), z.string().transform((s) => s.split(',').filter(Boolean))]);
