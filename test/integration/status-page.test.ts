/**
 * The status page in a real browser: Debian's Chromium, headless, driven by
 * playwright-core, against kgate run as a user runs it (the built CLI) with a
 * token, a warm pool of the bench kernel, an ipykernel and a kernelspec that
 * takes seconds to start (a wrapper script that sleeps, then runs the bench
 * kernel), so the page shows a start's progress. The page comes behind auth
 * with `?token=`, which must be gone from its address once it runs; every
 * value is shown as text (an owner that is HTML stays text); a WebSocket
 * client shows as a connection.
 */
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Locator, type Page } from 'playwright-core';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gatewayClient, startGateway, type GatewayClient } from '../helpers/gateway.js';
import { startKgate, type Running } from '../helpers/kgate-process.js';

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = fileURLToPath(new URL('../../test-artifacts/', import.meta.url));
const BENCH_KERNEL = fileURLToPath(new URL('../../dist/bench-kernel/main.js', import.meta.url));
const BUNDLE = fileURLToPath(new URL('../../dist/status/main.js', import.meta.url));
const TOKEN = 'status-token-0123456789';
/** Seconds the slow kernelspec waits before its kernel runs: more than two of the page's polls. */
const SLOW_SECONDS = 5;
/** An owner that is markup: the page must show it as text. */
const HTML_OWNER = '<img src=x onerror="document.title=1">carol';

let dir: string;
let kgate: Running;
let api: GatewayClient;
let browser: Browser;
const pageErrors: string[] = [];

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: bash scripts/setup.sh --test installs Debian's chromium`);
  if (!existsSync(BUNDLE)) throw new Error('dist/status/main.js is missing: run npm run build');
  dir = mkdtempSync(join(tmpdir(), 'kgate-status-page-'));
  // The argv runs a script of its own, no shell string: sleep, then become the bench kernel.
  const wrapper = join(dir, 'slow-kernel.sh');
  writeFileSync(wrapper, `#!/bin/sh\nsleep ${SLOW_SECONDS}\nexec "${process.execPath}" "${BENCH_KERNEL}" "$1"\n`);
  chmodSync(wrapper, 0o755);
  mkdirSync(join(dir, 'specs', 'kg-slow'), { recursive: true });
  writeFileSync(
    join(dir, 'specs', 'kg-slow', 'kernel.json'),
    JSON.stringify({ argv: [wrapper, '{connection_file}'], display_name: 'slow bench', language: 'text', interrupt_mode: 'message' }),
  );
  kgate = await startKgate(['--port', '0', '--auth-token', TOKEN, '--kernelspec-dir', join(dir, 'specs'), '--pool', 'kgate-bench=1', '--runtime-dir', join(dir, 'runtime')]);
  api = gatewayClient(kgate.url, TOKEN);
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: process.getuid?.() === 0 ? ['--no-sandbox'] : [] });
});

afterAll(async () => {
  await browser?.close();
  if (kgate) {
    kgate.child.kill('SIGTERM');
    await kgate.exited;
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function newPage(): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.on('pageerror', (e) => pageErrors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') pageErrors.push(`console: ${m.text()}`);
  });
  return page;
}

async function start(name: string, owner: string): Promise<string> {
  const r = await api.api('api/kernels', { method: 'POST', json: { name, env: { KERNEL_USERNAME: owner } } });
  expect(r.status, await r.clone().text()).toBe(201);
  return ((await r.json()) as { id: string }).id;
}

const cell = (row: Locator, col: string): Locator => row.locator(`td[data-col="${col}"]`);

describe('the status page', () => {
  it('is behind auth: no token, a 401 in JSON; a wrong one too', async () => {
    const none = await fetch(`${kgate.url}status`);
    expect(none.status).toBe(401);
    expect(((await none.json()) as { code: string }).code).toBe('KG_UNAUTHORIZED');
    expect((await fetch(`${kgate.url}status?token=wrong-${TOKEN}`)).status).toBe(401);
  });

  it('is served with a strict CSP that allows its own inline script and style by hash alone', async () => {
    const r = await fetch(`${kgate.url}status`, { headers: { Authorization: `token ${TOKEN}` } });
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^text\/html/);
    const csp = r.headers.get('content-security-policy') ?? '';
    const directives = new Map(csp.split(/;\s*/).map((d) => [d.split(' ')[0]!, d.split(' ').slice(1).join(' ')]));
    expect(directives.get('default-src')).toBe("'none'");
    expect(directives.get('script-src')).toMatch(/^'sha256-[A-Za-z0-9+/]+=*'$/);
    expect(directives.get('style-src')).toMatch(/^'sha256-[A-Za-z0-9+/]+=*'$/);
    expect(directives.get('connect-src')).toBe("'self'");
    expect(directives.get('frame-ancestors')).toBe("'none'");
    expect(csp).not.toContain('unsafe');
    expect(r.headers.get('x-content-type-options')).toBe('nosniff');
    expect(r.headers.get('cache-control')).toBe('no-store');
    expect(r.headers.get('referrer-policy')).toBe('no-referrer');
  });

  it('shows the kernels (a slow start with its progress), a connection, the pool and the counters', async () => {
    const python = await start('python3', 'alice');
    const page = await newPage();
    const response = await page.goto(`${kgate.url}status?token=${TOKEN}`);
    expect(response?.status()).toBe(200);
    expect(response?.headers()['content-security-policy']).toContain("default-src 'none'");
    // The token is out of the address (and the history entry) once the script runs.
    await page.locator('#updated[data-state="ok"]').waitFor({ timeout: 10_000 });
    expect(page.url()).toBe(`${kgate.url}status`);
    expect(await page.evaluate<string>('location.href')).not.toContain(TOKEN);

    const rows = page.locator('#kernels tbody tr');
    const pythonRow = page.locator(`#kernels tr[data-kernel-id="${python}"]`);
    await expect.poll(() => cell(pythonRow, 'state').textContent(), { timeout: 10_000 }).toBe('idle');
    expect(await cell(pythonRow, 'id').textContent()).toBe(python.slice(0, 8));
    expect(await cell(pythonRow, 'id').getAttribute('title')).toBe(python);
    expect(await cell(pythonRow, 'kernelspec').textContent()).toBe('python3');
    expect(await cell(pythonRow, 'provisioner').textContent()).toBe('local');
    expect(await cell(pythonRow, 'owner').textContent()).toBe('alice');
    expect(await cell(pythonRow, 'tenant').textContent()).toBe('default');
    expect(await cell(pythonRow, 'connections').textContent()).toBe('0');
    expect(await cell(pythonRow, 'age').textContent()).toMatch(/^\d+s$/);
    expect(await cell(pythonRow, 'idle').textContent()).toMatch(/^\d+s$/);

    // A start that takes seconds shows as starting, with the launch phase it is in.
    const slowStart = start('kg-slow', HTML_OWNER);
    // The API first: kgate's member of the model says where the launch is, and holds nothing else.
    type Listed = Array<{ id: string; name: string; kgate: Record<string, unknown> }>;
    let slowModel: Listed[number] | undefined;
    await expect
      .poll(async () => (slowModel = ((await (await api.api('api/kernels')).json()) as Listed).find((k) => k.name === 'kg-slow'))?.kgate['progress'], {
        timeout: 5000,
        interval: 50,
      })
      .toBe('connecting');
    expect(slowModel!.kgate).toMatchObject({ owner: HTML_OWNER, tenant: 'default', provisioner: 'local', phase: 'starting', resources: {} });
    expect(Object.keys(slowModel!.kgate).sort()).toEqual(['owner', 'phase', 'progress', 'provisioner', 'resources', 'started', 'tenant']);
    const slowRow = rows.filter({ has: page.locator('td[data-col="kernelspec"]', { hasText: /^kg-slow$/ }) });
    await expect.poll(() => cell(slowRow, 'state').textContent(), { timeout: 10_000 }).toBe('starting (connecting)');
    expect(await cell(slowRow, 'state').getAttribute('data-tone')).toBe('starting');
    expect(await page.locator('dd[data-counter="starting"]').textContent()).toBe('1');
    await page.screenshot({ path: join(ARTIFACTS, 'status-starting.png'), fullPage: true });
    const slow = await slowStart;
    expect(await slowRow.getAttribute('data-kernel-id')).toBe(slow);
    await expect.poll(() => cell(slowRow, 'state').textContent(), { timeout: 10_000 }).toBe('idle');

    // The owner that is markup is text: no element was made of it, and its handler never ran.
    expect(await cell(slowRow, 'owner').textContent()).toBe(HTML_OWNER);
    expect(await cell(slowRow, 'owner').locator('img').count()).toBe(0);
    expect(await page.title()).toBe('kgate status');

    // A WebSocket client of the python kernel shows as a connection, in its row and the counters.
    const ws = new WebSocket(`${api.wsUrl}api/kernels/${python}/channels`, { headers: { Authorization: `token ${TOKEN}` } });
    await new Promise<void>((resolve, reject) => ws.once('open', () => resolve()).once('error', reject));
    try {
      await expect.poll(() => cell(pythonRow, 'connections').textContent(), { timeout: 10_000 }).toBe('1');
      expect(await page.locator('dd[data-counter="connections"]').textContent()).toBe('1');
      // The pooled kernel is listed nowhere: two kernels; the pool shows as its own row.
      expect(await rows.count()).toBe(2);
      expect(await page.locator('dd[data-counter="kernels"]').textContent()).toBe('2');
      const pool = page.locator('#pools tr[data-pool="kgate-bench"]');
      expect(await cell(pool, 'kernelspec').textContent()).toBe('kgate-bench');
      expect(await cell(pool, 'target').textContent()).toBe('1');
      await expect.poll(() => cell(pool, 'ready').textContent(), { timeout: 20_000 }).toBe('1');
      await expect.poll(() => page.locator('#updated').getAttribute('data-state')).toBe('ok');
      mkdirSync(ARTIFACTS, { recursive: true });
      await page.screenshot({ path: join(ARTIFACTS, 'status.png'), fullPage: true });
    } finally {
      ws.close();
    }
    expect(pageErrors).toEqual([]);
    await page.close();
  });

  it('says so on the page when the gateway refuses its token, and stops polling', async () => {
    const page = await newPage();
    // A page loaded by a request that carried a good token, whose script then holds a wrong one: as a token that expired.
    await page.route(/\/api\//, (route) => route.continue({ headers: { ...route.request().headers(), authorization: `token wrong-${TOKEN}` } }));
    await page.goto(`${kgate.url}status?token=${TOKEN}`);
    const updated = page.locator('#updated[data-state="error"]');
    await updated.waitFor({ timeout: 10_000 });
    expect(await updated.textContent()).toContain('refused the token (401)');
    await page.close();
    // Only the 401 of the failed fetches is expected in the console.
    expect(pageErrors.every((e) => /401/.test(e))).toBe(true);
    pageErrors.length = 0;
  });

  it('under --base-url: the page and the API it reads are both below it', async () => {
    const t = await startGateway(['--base-url', '/kg/']);
    try {
      expect((await fetch(new URL('/status', t.url), { headers: { Authorization: `token ${t.token}` } })).status).toBe(404);
      const page = await newPage();
      const seen: string[] = [];
      page.on('request', (r) => seen.push(new URL(r.url()).pathname));
      await page.goto(`${t.url}status?token=${t.token}`);
      await page.locator('#updated[data-state="ok"]').waitFor({ timeout: 10_000 });
      expect(page.url()).toBe(`${t.url}status`);
      expect(await page.locator('#no-kernels').isVisible()).toBe(true);
      expect(await page.locator('#no-pools').isVisible()).toBe(true);
      expect(await page.locator('dd[data-counter="kernels"]').textContent()).toBe('0');
      expect(new Set(seen)).toEqual(new Set(['/kg/status', '/kg/api', '/kg/api/kernels', '/kg/api/status']));
      expect(pageErrors).toEqual([]);
      await page.close();
    } finally {
      await t.close();
    }
  });
});
