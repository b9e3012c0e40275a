/**
 * The status page's script (served inline in `<base>status` by
 * src/gateway/status-page.ts): polls `GET api/kernels` and `GET api/status`
 * every 2 s while the page is visible and renders the tables of
 * src/status-table.ts, which `kgate status` prints too. Every value goes in
 * through textContent; nothing from the gateway is parsed as HTML.
 *
 * The token arrives as `?token=` (the page itself is behind auth, so its own
 * request had to carry it): it is taken out of the address bar and the
 * history entry before the first API call and kept in this module only.
 */
import { KERNEL_COLUMNS, POOL_COLUMNS, clockOffset, counters, kernelRows, poolRows, type Column, type GatewayStatus, type KernelEntry } from '../../src/status-table.js';

const POLL_MS = 2000;
const TIMEOUT_MS = 10_000;

function takeToken(): string | undefined {
  const url = new URL(location.href);
  const token = url.searchParams.get('token') ?? undefined;
  if (url.searchParams.has('token')) {
    url.searchParams.delete('token');
    history.replaceState(history.state, '', `${url.pathname}${url.search}${url.hash}`);
  }
  return token;
}

const token = takeToken();
/** The gateway's base URL: the page is `<base>status`. */
const base = new URL('.', location.href);

const $ = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;
const updated = $<HTMLParagraphElement>('updated');
const version = $<HTMLParagraphElement>('version');
const counterList = $<HTMLDListElement>('counters');
const kernelTable = $<HTMLTableElement>('kernels');
const poolTable = $<HTMLTableElement>('pools');
const noKernels = $<HTMLParagraphElement>('no-kernels');
const noPools = $<HTMLParagraphElement>('no-pools');

/** A refusal that polling again cannot cure (the token is wrong or expired). */
class Refused extends Error {}

async function get<T>(path: string): Promise<{ body: T; date: string | null }> {
  const headers: Record<string, string> = token ? { Authorization: `token ${token}` } : {};
  const r = await fetch(new URL(path, base), { headers, cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer', signal: AbortSignal.timeout(TIMEOUT_MS) });
  if (r.status === 401) throw new Refused('the gateway refused the token (401): open this page again with ?token=… in its address');
  const text = await r.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Error(`GET ${path} answered ${r.status} with something other than JSON`);
  }
  if (!r.ok) {
    const message = typeof (body as { message?: unknown }).message === 'string' ? (body as { message: string }).message : '';
    throw new Error(`GET ${path} answered ${r.status}${message ? `: ${message}` : ''}`);
  }
  return { body: body as T, date: r.headers.get('date') };
}

function headerRow<R>(table: HTMLTableElement, columns: ReadonlyArray<Column<R>>): void {
  const tr = document.createElement('tr');
  for (const c of columns) {
    const th = document.createElement('th');
    th.scope = 'col';
    th.textContent = c.label;
    if (c.right) th.className = 'right';
    tr.append(th);
  }
  table.tHead!.replaceChildren(tr);
}

function bodyRows<R>(table: HTMLTableElement, columns: ReadonlyArray<Column<R>>, rows: readonly R[], decorate: (tr: HTMLTableRowElement, row: R) => void): void {
  const trs = rows.map((row) => {
    const tr = document.createElement('tr');
    for (const c of columns) {
      const td = document.createElement('td');
      td.dataset['col'] = c.key;
      td.textContent = String(row[c.key]);
      if (c.right) td.className = 'right';
      tr.append(td);
    }
    decorate(tr, row);
    return tr;
  });
  table.tBodies[0]!.replaceChildren(...trs);
}

function render(kernels: KernelEntry[], status: GatewayStatus, now: number): void {
  counterList.replaceChildren(
    ...counters(status, kernels, now).map(([label, value]) => {
      const div = document.createElement('div');
      const dt = document.createElement('dt');
      const dd = document.createElement('dd');
      dt.textContent = label;
      dd.textContent = value;
      dd.dataset['counter'] = label;
      div.append(dt, dd);
      return div;
    }),
  );
  const rows = kernelRows(kernels, now);
  bodyRows(kernelTable, KERNEL_COLUMNS, rows, (tr, row) => {
    tr.dataset['kernelId'] = row.fullId;
    const id = tr.querySelector<HTMLTableCellElement>('td[data-col="id"]')!;
    id.title = row.fullId;
    tr.querySelector<HTMLTableCellElement>('td[data-col="state"]')!.dataset['tone'] = row.tone;
  });
  noKernels.hidden = rows.length > 0;
  const pools = poolRows(status);
  bodyRows(poolTable, POOL_COLUMNS, pools, (tr, row) => {
    tr.dataset['pool'] = row.kernelspec;
  });
  noPools.hidden = pools.length > 0;
}

function say(text: string, state: 'ok' | 'error'): void {
  updated.textContent = text;
  updated.dataset['state'] = state;
}

let timer: ReturnType<typeof setTimeout> | undefined;
let running = false;
let stopped = false;

async function refresh(): Promise<void> {
  if (running || stopped) return;
  running = true;
  clearTimeout(timer);
  try {
    const [k, s] = await Promise.all([get<KernelEntry[]>('api/kernels'), get<GatewayStatus>('api/status')]);
    if (!Array.isArray(k.body)) throw new Error('GET api/kernels did not answer a list');
    const now = Date.now() + clockOffset(k.date, Date.now());
    render(k.body, s.body, now);
    say(`Updated ${new Date().toLocaleTimeString()}, every ${POLL_MS / 1000} s`, 'ok');
  } catch (e) {
    if (e instanceof Refused) stopped = true;
    const why = e instanceof Error ? (e.name === 'TimeoutError' ? `no answer within ${TIMEOUT_MS / 1000} s` : e.message) : String(e);
    say(`Could not refresh: ${why}${stopped ? '' : '; trying again'}`, 'error');
  } finally {
    running = false;
    if (!stopped && !document.hidden) timer = setTimeout(() => void refresh(), POLL_MS);
  }
}

// A hidden tab polls nothing; it refreshes at once when shown again.
document.addEventListener('visibilitychange', () => {
  if (document.hidden) clearTimeout(timer);
  else void refresh();
});

headerRow(kernelTable, KERNEL_COLUMNS);
headerRow(poolTable, POOL_COLUMNS);
void get<{ version: string }>('api')
  .then((r) => (version.textContent = `kgate ${r.body.version}`))
  .catch(() => undefined);
void refresh();
