/**
 * `kgate status --url URL [--token TOKEN]`: the status page's table in a
 * terminal, from the same `GET api/kernels` and `GET api/status`
 * (src/status-table.ts makes the rows of both). The token may come from
 * KG_TOKEN instead, which keeps it off the command line (other local users
 * can read a process's arguments in /proc). Exit 0 when both answered, 1 when
 * the gateway refused or could not be reached (one line on stderr), 2 for a
 * wrong invocation.
 */
import { parseArgs } from 'node:util';
import { KERNEL_COLUMNS, POOL_COLUMNS, clockOffset, counters, kernelRows, poolRows, type Column, type GatewayStatus, type KernelEntry } from './status-table.js';

export const STATUS_USAGE = `usage: kgate status [--url URL] [--token TOKEN]

Prints the kernels, warm pools and counters of the gateway at URL (default:
KG_URL, else http://127.0.0.1:8888/), as its status page shows them.
  --url URL        the gateway's base URL (with its --base-url)
  --token TOKEN    a token it accepts; KG_TOKEN in the environment keeps it
                   off the command line, where other local users can read it
  --timeout S      seconds to wait for each answer (default 10)`;

const DEFAULT_URL = 'http://127.0.0.1:8888/';

export interface StatusIo {
  out(text: string): void;
  err(text: string): void;
  env: Record<string, string | undefined>;
}

const processIo: StatusIo = {
  out: (t) => process.stdout.write(t),
  err: (t) => process.stderr.write(t),
  env: process.env,
};

/** A wrong invocation (exit 2), or the gateway's refusal or silence (exit 1): one line either way. */
class StatusFailure extends Error {
  constructor(
    message: string,
    readonly exitCode: 1 | 2,
  ) {
    super(message);
  }
}

/**
 * What a gateway sends is printed to a terminal: its controls (escape
 * sequences that move the cursor, retitle the window or fake a line) and
 * bidirectional overrides are shown as `?`.
 */
// eslint-disable-next-line no-control-regex -- matching control characters is the point
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;
export const printable = (s: string): string => s.replace(UNPRINTABLE, '?');

function fit(text: string, width: number, right: boolean): string {
  const chars = [...printable(text)];
  const cut = chars.length > width ? `${chars.slice(0, width - 1).join('')}…` : chars.join('');
  const pad = ' '.repeat(Math.max(0, width - [...cut].length));
  return right ? pad + cut : cut + pad;
}

/** Fixed-width columns, each as wide as its widest cell up to its `max`, two spaces apart. */
export function formatTable<R>(columns: ReadonlyArray<Column<R>>, rows: readonly R[]): string[] {
  const widths = columns.map((c) => Math.min(c.max, Math.max(c.title.length, ...rows.map((r) => [...printable(String(r[c.key]))].length))));
  const line = (cells: string[]): string =>
    cells
      .map((cell, i) => fit(cell, widths[i]!, columns[i]!.right === true))
      .join('  ')
      .trimEnd();
  return [line(columns.map((c) => c.title)), ...rows.map((r) => line(columns.map((c) => String(r[c.key]))))];
}

/** The whole report, as `kgate status` prints it. */
export function formatStatus(kernels: readonly KernelEntry[], status: GatewayStatus, now: number): string {
  const lines = [
    counters(status, kernels, now)
      .map(([label, value]) => `${label} ${printable(value)}`)
      .join('   '),
    '',
  ];
  const rows = kernelRows(kernels, now);
  lines.push(...(rows.length > 0 ? formatTable(KERNEL_COLUMNS, rows) : ['no kernels']), '');
  const pools = poolRows(status);
  lines.push(...(pools.length > 0 ? formatTable(POOL_COLUMNS, pools) : ['no warm pools']));
  return `${lines.join('\n')}\n`;
}

function baseUrl(raw: string): URL {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new StatusFailure(`--url ${JSON.stringify(printable(raw).slice(0, 200))} is not a URL`, 2);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new StatusFailure('--url must be an http: or https: URL', 2);
  // A token belongs in KG_TOKEN or --token, not in a URL that this prints in its messages.
  if (u.search || u.hash || u.username || u.password)
    throw new StatusFailure("--url must be the gateway's base URL alone (no query, fragment or user); give the token with KG_TOKEN or --token", 2);
  if (!u.pathname.endsWith('/')) u.pathname += '/';
  return u;
}

function reasonOf(e: unknown): string {
  const cause = (e as { cause?: { code?: unknown; message?: unknown } }).cause;
  if (cause && typeof cause.code === 'string') return cause.code;
  if (cause && typeof cause.message === 'string') return cause.message;
  return e instanceof Error ? e.message : String(e);
}

async function getJson<T>(base: URL, path: string, token: string | undefined, timeoutMs: number): Promise<{ body: T; date: string | null }> {
  const url = new URL(path, base);
  let r: Response;
  let text: string;
  try {
    r = await fetch(url, { headers: token ? { Authorization: `token ${token}` } : {}, signal: AbortSignal.timeout(timeoutMs) });
    text = await r.text();
  } catch (e) {
    if (e instanceof Error && e.name === 'TimeoutError') throw new StatusFailure(`no answer from ${base.href} within ${timeoutMs / 1000} s`, 1);
    throw new StatusFailure(`cannot reach ${base.href}: ${printable(reasonOf(e))}`, 1);
  }
  if (r.status === 401) {
    throw new StatusFailure(
      token
        ? `${base.href} refused the token (401 Unauthorized): give a valid one with KG_TOKEN or --token`
        : `${base.href} needs a token (401 Unauthorized): give it with KG_TOKEN or --token`,
      1,
    );
  }
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new StatusFailure(`GET ${url.pathname} answered ${r.status} with something other than JSON: is ${base.href} a kgate gateway?`, 1);
  }
  if (!r.ok) {
    const message = typeof (body as { message?: unknown } | null)?.message === 'string' ? `: ${printable((body as { message: string }).message).slice(0, 300)}` : '';
    throw new StatusFailure(`GET ${url.pathname} answered ${r.status}${message}`, 1);
  }
  return { body: body as T, date: r.headers.get('date') };
}

/** Runs `kgate status` with the arguments after `status`; resolves to the exit code. */
export async function statusCommand(argv: string[], io: StatusIo = processIo): Promise<number> {
  try {
    let values;
    try {
      ({ values } = parseArgs({
        args: argv,
        options: { url: { type: 'string' }, token: { type: 'string' }, timeout: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
        strict: true,
        allowPositionals: false,
      }));
    } catch (e) {
      throw new StatusFailure(`${e instanceof Error ? e.message : String(e)}\n${STATUS_USAGE}`, 2);
    }
    if (values.help) {
      io.out(`${STATUS_USAGE}\n`);
      return 0;
    }
    const base = baseUrl(values.url ?? io.env['KG_URL'] ?? DEFAULT_URL);
    const token = values.token ?? io.env['KG_TOKEN'] ?? undefined;
    const timeout = Number(values.timeout ?? 10);
    if (!Number.isFinite(timeout) || timeout <= 0 || timeout > 600) throw new StatusFailure('--timeout is seconds, more than 0 and at most 600', 2);
    const [k, s] = await Promise.all([
      getJson<KernelEntry[]>(base, 'api/kernels', token || undefined, timeout * 1000),
      getJson<GatewayStatus>(base, 'api/status', token || undefined, timeout * 1000),
    ]);
    if (!Array.isArray(k.body)) throw new StatusFailure(`GET ${base.pathname}api/kernels did not answer a list: is ${base.href} a kgate gateway?`, 1);
    if (typeof s.body !== 'object' || s.body === null || typeof s.body.kernels !== 'number') {
      throw new StatusFailure(`GET ${base.pathname}api/status did not answer a status: is ${base.href} a kgate gateway?`, 1);
    }
    const now = Date.now() + clockOffset(k.date, Date.now());
    io.out(formatStatus(k.body, s.body, now));
    return 0;
  } catch (e) {
    if (!(e instanceof StatusFailure)) throw e;
    io.err(`kgate status: ${e.message}\n`);
    return e.exitCode;
  }
}
