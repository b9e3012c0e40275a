/**
 * The demo page in a real browser: Debian's Chromium, headless, driven by
 * playwright-core. kgate runs as the quickstart runs it (the built CLI with
 * --demo-port), so the page comes from its own origin and reaches kgate
 * cross-origin through @jupyterlab/services; it runs `1+1`, a matplotlib plot
 * and an error, and the DOM must show them. The page is also embedded in an
 * <iframe> of a third origin: shown when that origin is in --frame-ancestors,
 * blocked when it is not.
 */
import { existsSync, mkdirSync, mkdtempSync } from 'node:fs';
import { createServer, get, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Frame, type Locator, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startKgate, type Running } from '../helpers/kgate-process.js';

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = fileURLToPath(new URL('../../test-artifacts/', import.meta.url));
const BUNDLE = fileURLToPath(new URL('../../demo/dist/main.js', import.meta.url));
const TOKEN = 'demo-token-0123456789';
const PLOT = 'import matplotlib.pyplot as plt\nplt.plot([1, 4, 2, 3])\nplt.show()';

let kgate: Running;
let demoUrl: string;
let embedder: Server;
let embedderPort: number;
let browser: Browser;
const pageErrors: string[] = [];

/** A page on a third origin that shows the demo page in an iframe. */
function startEmbedder(): Promise<Server> {
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(`<!doctype html><title>embedder</title><h1>An app that embeds kgate</h1><iframe title="kgate demo" src="${demoUrl}" width="900" height="900"></iframe>`);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

async function waitForLine(k: Running, pattern: RegExp, timeoutMs = 10_000): Promise<RegExpExecArray> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (const line of k.lines) {
      const m = pattern.exec(line);
      if (m) return m;
    }
    if (Date.now() > deadline) throw new Error(`no line matching ${pattern}: ${k.lines.join('\n')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function watch(page: Page): Promise<void> {
  page.on('pageerror', (e) => pageErrors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') pageErrors.push(`console: ${m.text()}`);
  });
}

/** Waits for the kernel to be started and idle, then runs `source` and waits for its cell to finish. */
async function runCell(frame: Page | Frame, source: string, how: 'click' | 'shift-enter' = 'click'): Promise<Locator> {
  await frame.locator('#status[data-state="idle"]').waitFor({ timeout: 60_000 });
  const before = await frame.locator('#outputs .cell').count();
  await frame.locator('#code').fill(source);
  if (how === 'click') await frame.locator('#run').click();
  else await frame.locator('#code').press('Shift+Enter');
  const cell = frame.locator('#outputs .cell').nth(before);
  await cell.and(frame.locator('[data-done="true"]')).waitFor({ timeout: 60_000 });
  return cell;
}

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: bash scripts/setup.sh --test installs Debian's chromium`);
  if (!existsSync(BUNDLE)) throw new Error('demo/dist/main.js is missing: run npm run build');
  embedder = await startEmbedder();
  embedderPort = (embedder.address() as { port: number }).port;
  kgate = await startKgate([
    '--port',
    '0',
    '--demo-port',
    '0',
    '--auth-token',
    TOKEN,
    '--frame-ancestors',
    `http://127.0.0.1:${embedderPort}`,
    '--runtime-dir',
    mkdtempSync(join(tmpdir(), 'kgate-rt-')),
  ]);
  const printed = (await waitForLine(kgate, /^demo page: (http:\/\/\S+)$/))[1]!;
  // A token the operator gave is never printed (it would reach whatever reads stdout): the user adds it.
  expect(kgate.lines.join('\n')).not.toContain(TOKEN);
  demoUrl = `${printed}&token=${TOKEN}`;
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: process.getuid?.() === 0 ? ['--no-sandbox'] : [] });
});

afterAll(async () => {
  await browser?.close();
  if (kgate) {
    kgate.child.kill('SIGTERM');
    await kgate.exited;
  }
  await new Promise((r) => embedder?.close(r));
});

describe('the demo page', () => {
  it('is served from its own origin, with the gateway and token in its address', () => {
    const page = new URL(demoUrl);
    const gateway = new URL(kgate.url);
    expect(page.origin).not.toBe(gateway.origin);
    const hash = new URLSearchParams(page.hash.slice(1));
    expect(hash.get('kgate')).toBe(kgate.url);
    expect(hash.get('token')).toBe(TOKEN);
  });

  it('is served with its own CSP, framed only where --frame-ancestors says, and nothing but its files', async () => {
    const page = new URL(demoUrl);
    const r = await fetch(new URL('/', page));
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^text\/html/);
    const csp = r.headers.get('content-security-policy') ?? '';
    expect(csp).toContain(`frame-ancestors http://127.0.0.1:${embedderPort}`);
    expect(csp).toContain("script-src 'self'");
    expect(r.headers.get('referrer-policy')).toBe('no-referrer');
    expect((await fetch(new URL('/dist/main.js', page))).headers.get('content-type')).toMatch(/^text\/javascript/);
    // Sent as is (fetch would resolve the dots first).
    const status = (path: string): Promise<number | undefined> =>
      new Promise((resolve, reject) => get({ host: page.hostname, port: page.port, path }, (res) => (res.resume(), resolve(res.statusCode))).on('error', reject));
    for (const path of ['/package.json', '/src/main.ts', '/dist/../../package.json', '/dist/%2e%2e/%2e%2e/package.json', '/dist/..%2f..%2fpackage.json']) {
      expect(await status(path), path).toBe(404);
    }
  });

  it('starts a kernel on kgate and shows a result, stdout, an error and a matplotlib image', async () => {
    const page = await browser.newPage({ viewport: { width: 1000, height: 1100 } });
    await watch(page);
    await page.goto(demoUrl);

    const sum = await runCell(page, '1+1', 'shift-enter');
    expect(await sum.locator('pre.result').textContent()).toBe('2');

    const status = await page.locator('#status').textContent();
    const kernelId = /Kernel (\S+) \(python3\): idle/.exec(status ?? '')?.[1];
    expect(kernelId, status ?? '').toBeTruthy();
    const listed = (await (await fetch(`${kgate.url}api/kernels`, { headers: { Authorization: `token ${TOKEN}` } })).json()) as Array<{ id: string }>;
    expect(listed.map((k) => k.id)).toContain(kernelId);

    const failing = await runCell(page, "print('hello from the kernel')\n1/0");
    expect(await failing.locator('pre.stream.stdout').textContent()).toBe('hello from the kernel\n');
    const traceback = (await failing.locator('pre.error').textContent()) ?? '';
    expect(traceback).toContain('ZeroDivisionError');
    expect(traceback).not.toContain('\u001b[');

    const plot = await runCell(page, PLOT);
    const img = plot.locator('img');
    expect(await img.getAttribute('src')).toMatch(/^data:image\/png;base64,[A-Za-z0-9+/]+=*$/);
    // Decoded by the browser, not just a src attribute.
    expect(await img.evaluate((el) => (el as unknown as { complete: boolean; naturalWidth: number }).naturalWidth)).toBeGreaterThan(100);

    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'demo.png'), fullPage: true });
    expect(pageErrors).toEqual([]);
    await page.close();
  });

  it('works inside an iframe of an origin named in --frame-ancestors, and is blocked in one that is not', async () => {
    const page = await browser.newPage({ viewport: { width: 1000, height: 1100 } });
    await watch(page);
    await page.goto(`http://127.0.0.1:${embedderPort}/`);
    const frame = page.frameLocator('iframe');
    await frame.locator('#status[data-state="idle"]').waitFor({ timeout: 60_000 });
    const inner = page.frames().find((f) => f !== page.mainFrame())!;
    const cell = await runCell(inner, '6*7');
    expect(await cell.locator('pre.result').textContent()).toBe('42');
    await page.screenshot({ path: join(ARTIFACTS, 'demo-embedded.png') });
    expect(pageErrors).toEqual([]);

    // The same embedding page from another origin (localhost, not 127.0.0.1) is refused by the browser.
    const other = await browser.newPage();
    const blocked: string[] = [];
    other.on('console', (m) => blocked.push(m.text()));
    await other.goto(`http://localhost:${embedderPort}/`);
    await expect.poll(() => blocked.some((t) => /frame-ancestors/.test(t)), { timeout: 10_000 }).toBe(true);
    const child = other.frames().find((f) => f !== other.mainFrame())!;
    expect(await child.locator('#status').count()).toBe(0);
    await other.close();
    await page.close();
  });
});
