/**
 * kgate's settings, composed from the slice each module owns
 * (src/gateway/options.ts, src/kernels/options.ts, src/bridge/options.ts,
 * src/log-options.ts) into one table: `--help`, the parser, the validation
 * and the docs' options table are all made from it, so they cannot disagree.
 */
import { parseArgs } from 'node:util';
import type { z } from 'zod';
import { BRIDGE_OPTIONS, type BridgeConfig } from './bridge/options.js';
import { GATEWAY_OPTIONS, type GatewayConfig } from './gateway/options.js';
import { KERNEL_OPTIONS, type KernelsConfig } from './kernels/options.js';
import { AUDIT_OPTIONS, type AuditConfig } from './audit-options.js';
import { HEALTH_OPTIONS, type HealthConfig } from './gateway/health-options.js';
import { LOG_OPTIONS, type LogConfig } from './log-options.js';
import { METERING_OPTIONS, type MeteringConfig } from './metering-options.js';
import { METRICS_OPTIONS, type MetricsConfig } from './metrics-options.js';
import { PROVISIONER_OPTIONS, type ProvisionerConfig } from './provisioner/options.js';
import { KUBERNETES_OPTIONS, type KubernetesConfig } from './provisioner/k8s-options.js';
import { ConfigError, type OptionDef, type OptionSlice } from './options.js';

export { ConfigError };

/** The slices, in the order `--help` and the docs list them. */
export const SLICES: readonly OptionSlice[] = [
  GATEWAY_OPTIONS,
  KERNEL_OPTIONS,
  PROVISIONER_OPTIONS,
  KUBERNETES_OPTIONS,
  BRIDGE_OPTIONS,
  METERING_OPTIONS,
  METRICS_OPTIONS,
  HEALTH_OPTIONS,
  AUDIT_OPTIONS,
  LOG_OPTIONS,
];

/** Every option by its key in Config. */
export const OPTIONS = {
  ...GATEWAY_OPTIONS.options,
  ...KERNEL_OPTIONS.options,
  ...PROVISIONER_OPTIONS.options,
  ...KUBERNETES_OPTIONS.options,
  ...BRIDGE_OPTIONS.options,
  ...METERING_OPTIONS.options,
  ...METRICS_OPTIONS.options,
  ...HEALTH_OPTIONS.options,
  ...AUDIT_OPTIONS.options,
  ...LOG_OPTIONS.options,
} as const;

export type Config = GatewayConfig & KernelsConfig & ProvisionerConfig & KubernetesConfig & BridgeConfig & MeteringConfig & MetricsConfig & HealthConfig & AuditConfig & LogConfig;

// Two slices that declared the same key or flag would silently shadow each other.
{
  const keys = SLICES.flatMap((s) => Object.keys(s.options));
  const flags = SLICES.flatMap((s) => Object.values(s.options).map((o) => o.flag));
  if (new Set(keys).size !== keys.length || new Set(flags).size !== flags.length) throw new Error('two option slices declare the same option');
}

/** Builds and validates the config from flags over `KG_*` variables over defaults. */
export function loadConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): Config & { help: boolean; version: boolean } {
  const parseOptions: Record<string, { type: 'string' | 'boolean'; multiple?: boolean }> = { help: { type: 'boolean' }, version: { type: 'boolean' } };
  for (const o of Object.values<OptionDef>(OPTIONS)) parseOptions[o.flag] = o.multiple ? { type: o.type, multiple: true } : { type: o.type };
  let values: Record<string, unknown>;
  try {
    ({ values } = parseArgs({ args: argv, options: parseOptions, strict: true, allowPositionals: false }));
  } catch (e) {
    throw new ConfigError(`${e instanceof Error ? e.message : String(e)} (see --help)`);
  }
  const out: Record<string, unknown> = { help: values['help'] === true, version: values['version'] === true };
  const problems: string[] = [];
  for (const s of SLICES) {
    for (const [key, o] of Object.entries(s.options)) {
      const raw = values[o.flag] ?? env[o.env];
      const r = (o.schema as z.ZodType).safeParse(raw);
      if (r.success) out[key] = r.data;
      else problems.push(`--${o.flag} (${o.env}): ${r.error.issues.map((i) => i.message).join('; ')}`);
    }
  }
  if (problems.length > 0) throw new ConfigError(`invalid settings:\n  ${problems.join('\n  ')}`);
  // Each slice's own rules, once every value is known to be well-formed.
  for (const s of SLICES) s.finish?.(out);
  return out as Config & { help: boolean; version: boolean };
}

/** The options as Markdown, a table per slice under its heading, for docs/configuration.md (scripts/gen-docs.ts). */
export function optionsTable(): string {
  const cell = (s: string): string => s.replace(/\|/g, '\\|');
  return SLICES.map((s) =>
    [
      `**${s.title}**`,
      '',
      '| option | environment | meaning |',
      '| --- | --- | --- |',
      ...Object.values(s.options).map((o) => `| \`--${o.flag}\` | \`${o.env}\` | ${cell(o.help)} |`),
    ].join('\n'),
  ).join('\n\n');
}

export function helpText(): string {
  const lines = ['Usage: kgate [options]', '', 'A headless Jupyter kernel gateway.', '', 'Options (each also from the environment variable shown):'];
  for (const s of SLICES) {
    lines.push('', `${s.title}:`);
    for (const o of Object.values(s.options)) {
      const flag = `--${o.flag}${o.type === 'string' ? ' VALUE' : ''}`;
      lines.push(`  ${flag.padEnd(30)} ${o.env}`, `      ${o.help}`);
    }
  }
  lines.push('', `  ${'--help'.padEnd(30)} show this help`, `  ${'--version'.padEnd(30)} print the version`);
  return lines.join('\n');
}
