/**
 * kgate's settings: one table gives each option its flag, its `KG_*`
 * environment name, its help line and its schema, so `--help`, the parser and
 * the validation can never disagree.
 */
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { KERNEL_NAME } from './kernels/kernelspecs.js';
import { normalizeFrameAncestor, normalizeOrigin } from './gateway/origin.js';

const seconds = z.coerce.number().positive().max(86_400);
const bytes = z.coerce.number().int().min(1024).max(2 ** 31);
const bool = z.union([z.boolean(), z.enum(['true', 'false', '1', '0', 'yes', 'no']).transform((v) => ['true', '1', 'yes'].includes(v))]);
const list = z.union([z.array(z.string()), z.string().transform((s) => s.split(',').filter(Boolean))]);
/** A list from repeated flags, each of which may itself be a comma- or space-separated list. */
const words = z.union([z.array(z.string()), z.string()]).transform((v) => (Array.isArray(v) ? v : [v]).flatMap((s) => s.split(/[\s,]+/)).filter(Boolean));
const origins = words.pipe(
  z.array(z.string().transform((s, ctx) => normalizeOrigin(s) ?? (ctx.addIssue({ code: 'custom', message: `${JSON.stringify(s)} is not an origin like http://host:port, or *` }), z.NEVER))),
);
const frameAncestors = words
  .pipe(z.array(z.string().transform((s, ctx) => normalizeFrameAncestor(s) ?? (ctx.addIssue({ code: 'custom', message: `${JSON.stringify(s)} is not a frame-ancestors source` }), z.NEVER))))
  .refine((a) => a.length > 0 && (!a.includes("'none'") || a.length === 1), "'none' stands alone, and at least one source is needed");
/** `gw`, `/gw` and `/gw/` all mean `/gw/`; segments of plain path characters (no `:` or `*`, which routers read as parameters). */
const baseUrl = z
  .string()
  .max(512)
  .transform((s) => {
    const inner = s.replace(/^\/+|\/+$/g, '');
    return inner === '' ? '/' : `/${inner}/`;
  })
  .refine((s) => s === '/' || s.slice(1, -1).split('/').every((seg) => /^[A-Za-z0-9._~@-]+$/.test(seg) && !/^\.+$/.test(seg)), {
    message: 'must be a URL path such as /gw/: segments of A-Z a-z 0-9 . _ ~ @ -, none empty, "." or ".."',
  });
const poolSizes = list
  .default([])
  .pipe(z.array(z.string().regex(/^[A-Za-z0-9._-]{1,128}=([1-9]|[1-9]\d)$/, 'each pool is NAME=N, N from 1 to 99')))
  .transform((entries) => Object.fromEntries(entries.map((e) => [e.slice(0, e.lastIndexOf('=')), Number(e.slice(e.lastIndexOf('=') + 1))])) as Record<string, number>);

interface OptionDef<S extends z.ZodType> {
  flag: string;
  type: 'string' | 'boolean';
  multiple?: boolean;
  env: string;
  help: string;
  schema: S;
}

function opt<S extends z.ZodType>(flag: string, type: 'string' | 'boolean', help: string, schema: S, multiple = false): OptionDef<S> {
  return { flag, type, help, schema, multiple, env: `KG_${flag.toUpperCase().replace(/-/g, '_')}` };
}

const defaultRuntimeDir = (): string => join(process.env['XDG_RUNTIME_DIR'] || tmpdir(), `kgate-${process.getuid?.() ?? 'user'}`);

export const OPTIONS = {
  ip: opt('ip', 'string', 'address to listen on (default 127.0.0.1)', z.string().min(1).default('127.0.0.1')),
  port: opt('port', 'string', 'port to listen on; 0 picks a free one (default 8888)', z.coerce.number().int().min(0).max(65535).default(8888)),
  baseUrl: opt('base-url', 'string', 'path prefix every route is served under, for a deployment behind a proxy (default /)', baseUrl.default('/')),
  authToken: opt(
    'auth-token',
    'string',
    'token every request must carry (Authorization: token X, or ?token=X); a random one is made and printed when none is given; "" turns auth off',
    z.string().max(1024).optional(),
  ),
  authTokenFile: opt(
    'auth-token-file',
    'string',
    'read the token from this file (its first line) instead of --auth-token: a token on the command line or in the environment can be read by local kernels from /proc',
    z.string().min(1).optional(),
  ),
  allowUnauthenticated: opt('allow-unauthenticated', 'boolean', 'allow an empty --auth-token on an address other than loopback', bool.default(false)),
  defaultKernelName: opt('default-kernel-name', 'string', 'kernelspec used when a request names none (default python3, else the first)', z.string().regex(KERNEL_NAME, 'must be a kernelspec name ([A-Za-z0-9._-], at most 128)').optional()),
  kernelspecDir: opt('kernelspec-dir', 'string', 'an extra directory of kernelspecs, searched first (repeatable)', list.default([]), true),
  runtimeDir: opt('runtime-dir', 'string', 'where connection files are written, mode 0700 (default $XDG_RUNTIME_DIR/kgate-UID, else the temp dir)', z.string().min(1).default(defaultRuntimeDir())),
  rootDir: opt('root-dir', 'string', 'working directory of kernels when KERNEL_WORKING_DIR is not given, and the directory KERNEL_WORKING_DIR must lie in (symlinks followed; relative names are taken under it) (default: the current directory)', z.string().min(1).default(process.cwd())),
  launchTimeout: opt('launch-timeout', 'string', 'seconds a kernel may take to answer kernel_info after launch; a request\'s KERNEL_LAUNCH_TIMEOUT may ask for up to 4 times this (default 60)', seconds.default(60)),
  shutdownWait: opt('shutdown-wait', 'string', 'seconds to wait after shutdown_request before SIGTERM (default 5)', seconds.default(5)),
  restartLimit: opt('restart-limit', 'string', 'automatic restart attempts in a row before a dying kernel is declared dead; the first at once, then 0.5 s doubling to 8 s (default 5)', z.coerce.number().int().min(0).max(100).default(5)),
  heartbeatInterval: opt('heartbeat-interval', 'string', 'seconds between heartbeat pings (default 3)', seconds.default(3)),
  heartbeatTimeout: opt('heartbeat-timeout', 'string', 'seconds without a heartbeat echo before a kernel counts as dead (default 30)', seconds.default(30)),
  verifySignatures: opt('verify-signatures', 'string', 'true or false: check the HMAC of every message from kernels (default true)', bool.default(true)),
  maxMessageSize: opt('max-message-size', 'string', 'largest WebSocket message a client may send, in bytes (default 67108864); larger ones close the socket with 1009', bytes.default(64 * 1024 * 1024)),
  maxClientBuffer: opt('max-client-buffer', 'string', 'bytes a client may leave unread before its output (stream, display data) is dropped, with a notice once it catches up; at twice this it is closed with 4008 (default 16777216)', bytes.default(16 * 1024 * 1024)),
  maxQueued: opt('max-queued', 'string', 'messages per kernel channel held while the kernel (re)starts or is busy sending (default 10000)', z.coerce.number().int().min(1).max(1_000_000).default(10_000)),
  maxClientInput: opt('max-client-input', 'string', "bytes of one client's messages kgate may hold for its kernel; past half of it kgate stops reading that socket until the kernel takes them, past all of it the socket is closed with 1013 (default 16777216)", bytes.default(16 * 1024 * 1024)),
  maxKernelInput: opt('max-kernel-input', 'string', 'bytes kgate may hold per kernel channel (shell, control, stdin) for all its clients together, while the kernel starts or does not read; same policy as --max-client-input (default 67108864)', bytes.default(64 * 1024 * 1024)),
  iopubHwm: opt('iopub-hwm', 'string', "iopub messages per kernel the gateway may hold unread before the kernel starts dropping them (ZeroMQ high-water mark; bounds the gateway's memory per kernel at this many messages; default 200: 12.5 MiB of 64 KiB messages)", z.coerce.number().int().min(100).max(10_000_000).default(200)),
  iopubMsgRateLimit: opt('iopub-msg-rate-limit', 'string', "iopub messages per second before output is paused, as jupyter_server's limit (default 0: off; jupyter_server uses 1000)", z.coerce.number().min(0).default(0)),
  iopubDataRateLimit: opt('iopub-data-rate-limit', 'string', "stream bytes per second before output is paused, as jupyter_server's limit (default 0: off; jupyter_server uses 1000000)", z.coerce.number().min(0).default(0)),
  rateLimitWindow: opt('rate-limit-window', 'string', 'seconds over which the iopub rates are averaged (default 3)', seconds.default(3)),
  wsDeflate: opt('ws-deflate', 'string', 'true or false: offer permessage-deflate on the channels WebSocket (default false: it costs CPU on every frame)', bool.default(false)),
  replayBytes: opt('replay-bytes', 'string', 'bytes of kernel output kept per disconnected client for its reconnect with the same session_id (default 16777216; 0: none)', z.coerce.number().int().min(0).max(2 ** 31).default(16 * 1024 * 1024)),
  replaySeconds: opt('replay-seconds', 'string', 'seconds output is kept for a disconnected client (default 120)', seconds.default(120)),
  replaySessions: opt('replay-sessions', 'string', 'disconnected sessions whose output is kept, per kernel; the oldest is given up past this (default 64)', z.coerce.number().int().min(1).max(100_000).default(64)),
  replayKernelBytes: opt('replay-kernel-bytes', 'string', 'bytes kept for all disconnected sessions of one kernel; the oldest session is given up past this (default 67108864)', bytes.default(64 * 1024 * 1024)),
  replayTotalBytes: opt('replay-total-bytes', 'string', "bytes kept for disconnected sessions in the whole gateway; the oldest session of any kernel is given up past this (default 268435456)", bytes.default(256 * 1024 * 1024)),
  stateDir: opt('state-dir', 'string', 'directory where each kernel is recorded, so a gateway started after a crash (or a second one) adopts the kernels still running (default: none)', z.string().min(1).optional()),
  keepKernels: opt('keep-kernels', 'string', 'true or false: on SIGTERM/SIGINT leave the kernels running for the next gateway on the same --state-dir (default false)', bool.default(false)),
  maxKernels: opt('max-kernels', 'string', 'kernels that may run at once, starting ones included; more are refused with 403 KG_KERNEL_LIMIT (default 0: no limit)', z.coerce.number().int().min(0).default(0)),
  maxKernelsPerUser: opt('max-kernels-per-user', 'string', 'kernels one user (auth identity, else KERNEL_USERNAME) may run at once (default 0: no limit)', z.coerce.number().int().min(0).default(0)),
  pool: opt('pool', 'string', 'NAME=N: keep N started kernels of kernelspec NAME ready to hand out (repeatable)', poolSizes, true),
  cullIdleTimeout: opt('cull-idle-timeout', 'string', 'seconds without a message either way after which a kernel is shut down (default 0: never)', z.coerce.number().min(0).max(31_536_000).default(0)),
  cullInterval: opt('cull-interval', 'string', 'seconds between checks for idle kernels (default 300)', seconds.default(300)),
  cullConnected: opt('cull-connected', 'string', 'true or false: cull idle kernels that still have clients (default false)', bool.default(false)),
  cullBusy: opt('cull-busy', 'string', 'true or false: cull kernels that are busy (default false)', bool.default(false)),
  checkOriginWithToken: opt('check-origin-with-token', 'string', "true or false: refuse a browser page's WebSocket whose Origin is not allowed (--allow-origin) even when it carries a valid token (default false, as jupyter_server: a page that holds the token is authorised)", bool.default(false)),
  allowOrigin: opt('allow-origin', 'string', 'browser origins (http://host:port) whose pages may call kgate, REST (CORS) and WebSocket alike; * for any (repeatable or comma list; default none: only non-browser clients and same-origin pages)', origins.default([]), true),
  frameAncestors: opt('frame-ancestors', 'string', "pages that may show kgate's responses in a frame: the Content-Security-Policy frame-ancestors sources (repeatable or comma list; default 'none')", frameAncestors.default(["'none'"]), true),
  demoPort: opt('demo-port', 'string', "also serve the demo page on this port of --ip, as a second origin that kgate allows (0 picks a free one; default off)", z.coerce.number().int().min(0).max(65535).optional()),
  envAllow: opt('env-allow', 'string', 'environment names beyond KERNEL_* that clients may pass to kernels (repeatable)', list.default([]), true),
  requestTimeout: opt('request-timeout', 'string', 'seconds a client may take to send a whole request, headers and body; then it gets 408 and the connection is closed (only receiving counts: a start waiting for its kernel is never cut off) (default 30)', seconds.default(30)),
  headersTimeout: opt('headers-timeout', 'string', "seconds a client may take to send a request's headers (default 10)", seconds.default(10)),
  keepAliveTimeout: opt('keep-alive-timeout', 'string', 'seconds an idle keep-alive connection is kept open (default 5)', seconds.default(5)),
  maxRequestsPerSocket: opt('max-requests-per-socket', 'string', 'requests served on one keep-alive connection before it is closed (default 1000; 0: no limit)', z.coerce.number().int().min(0).max(1_000_000).default(1000)),
  logLevel: opt('log-level', 'string', 'fatal, error, warn, info, debug, trace or silent (default info)', z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info')),
} as const;

type Options = typeof OPTIONS;
export type Config = { [K in keyof Options]: z.output<Options[K]['schema']> };

export class ConfigError extends Error {}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;

export function isLoopback(ip: string): boolean {
  return LOOPBACK.test(ip);
}

/** Builds and validates the config from flags over `KG_*` variables over defaults. */
export function loadConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): Config & { help: boolean; version: boolean } {
  const parseOptions: Record<string, { type: 'string' | 'boolean'; multiple?: boolean }> = { help: { type: 'boolean' }, version: { type: 'boolean' } };
  for (const o of Object.values(OPTIONS)) parseOptions[o.flag] = o.multiple ? { type: o.type, multiple: true } : { type: o.type };
  let values: Record<string, unknown>;
  try {
    ({ values } = parseArgs({ args: argv, options: parseOptions, strict: true, allowPositionals: false }));
  } catch (e) {
    throw new ConfigError(`${e instanceof Error ? e.message : String(e)} (see --help)`);
  }
  const out: Record<string, unknown> = { help: values['help'] === true, version: values['version'] === true };
  const problems: string[] = [];
  for (const [key, o] of Object.entries(OPTIONS)) {
    const raw = values[o.flag] ?? env[o.env];
    const r = (o.schema as z.ZodType).safeParse(raw);
    if (r.success) out[key] = r.data;
    else problems.push(`--${o.flag} (${o.env}): ${r.error.issues.map((i) => i.message).join('; ')}`);
  }
  if (problems.length > 0) throw new ConfigError(`invalid settings:\n  ${problems.join('\n  ')}`);
  const config = out as Config & { help: boolean; version: boolean };
  if (config.authTokenFile !== undefined) {
    if (config.authToken !== undefined) throw new ConfigError('give --auth-token or --auth-token-file, not both');
    (config as { authToken: string | undefined }).authToken = readTokenFile(config.authTokenFile);
  }
  if (config.headersTimeout > config.requestTimeout) throw new ConfigError('--headers-timeout must not be longer than --request-timeout');
  if (config.authToken === '' && !isLoopback(config.ip) && !config.allowUnauthenticated) {
    throw new ConfigError(`refusing to serve ${config.ip} without a token: give --auth-token, or --allow-unauthenticated if something in front of kgate authenticates`);
  }
  return config;
}

function readTokenFile(path: string): string {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError(`--auth-token-file: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  const token = (text.split(/\r?\n/, 1)[0] ?? '').trim();
  if (token === '') throw new ConfigError(`--auth-token-file: ${path} holds no token on its first line`);
  if (token.length > 1024) throw new ConfigError(`--auth-token-file: the token in ${path} is longer than 1024 characters`);
  return token;
}

/** The options as a Markdown table, for docs/configuration.md (scripts/gen-docs.ts). */
export function optionsTable(): string {
  const cell = (s: string): string => s.replace(/\|/g, '\\|');
  const rows = Object.values(OPTIONS).map((o) => `| \`--${o.flag}\` | \`${o.env}\` | ${cell(o.help)} |`);
  return ['| option | environment | meaning |', '| --- | --- | --- |', ...rows].join('\n');
}

export function helpText(): string {
  const lines = ['Usage: kgate [options]', '', 'A headless Jupyter kernel gateway.', '', 'Options (each also from the environment variable shown):'];
  for (const o of Object.values(OPTIONS)) {
    const flag = `--${o.flag}${o.type === 'string' ? ' VALUE' : ''}`;
    lines.push(`  ${flag.padEnd(30)} ${o.env}`, `      ${o.help}`);
  }
  lines.push(`  ${'--help'.padEnd(30)} show this help`, `  ${'--version'.padEnd(30)} print the version`);
  return lines.join('\n');
}
