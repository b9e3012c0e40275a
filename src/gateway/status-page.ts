/**
 * The status page, `<base>status`: an operator's live view of the kernels,
 * pools and counters, drawn by a script that reads the same `GET api/kernels`
 * and `GET api/status` as any client. It adds no unauthenticated surface: the
 * page is a route like the others, behind the same auth (in a browser's
 * address bar, `?token=`, which its script then takes out of the address and
 * history and sends as `Authorization: token …`; see docs/operations.md).
 *
 * Since the page's own request is the only one that can carry the token in a
 * URL, its script and style are in the page (status/index.html, with the
 * bundle that `npm run build` makes in dist/status/ put in its place), and the
 * CSP allows exactly those two by their SHA-256 and nothing else: no file
 * beside the page to serve, with or without auth.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { notFound } from '../errors.js';

export const STATUS_PAGE_TEMPLATE = fileURLToPath(new URL('../../status/index.html', import.meta.url));
export const STATUS_PAGE_BUNDLE = fileURLToPath(new URL('../../dist/status/main.js', import.meta.url));

/** Where the template's inline module script gets the bundle. */
const BUNDLE_MARK = '/* kgate:status-bundle */';

export interface StatusPage {
  html: string;
  csp: string;
}

const sha256 = (text: string): string => `'sha256-${createHash('sha256').update(text, 'utf8').digest('base64')}'`;

/**
 * The page, with `bundle` inline, and its CSP. `frameAncestors` is the
 * gateway's own directive (--frame-ancestors), so the page is framed where
 * the API may be, and nowhere by default.
 */
export function buildStatusPage(template: string, bundle: string, frameAncestors: string): StatusPage {
  if (template.split(BUNDLE_MARK).length !== 2) throw new Error(`the status page template must hold ${BUNDLE_MARK} once`);
  // Either would end the script element early (or change how the HTML parser reads it); esbuild escapes both in strings.
  if (/<\/script|<!--/i.test(bundle)) throw new Error('the status page bundle holds </script or <!--: it cannot be put inline');
  const html = template.replace(BUNDLE_MARK, () => bundle);
  const styles = [...template.matchAll(/<style>([\s\S]*?)<\/style>/g)];
  if (styles.length !== 1) throw new Error('the status page template must hold one <style> element');
  const csp = [
    "default-src 'none'",
    `script-src ${sha256(bundle)}`,
    `style-src ${sha256(styles[0]![1]!)}`,
    "connect-src 'self'",
    'img-src data:',
    "base-uri 'none'",
    "form-action 'none'",
    frameAncestors,
  ].join('; ');
  return { html, csp };
}

export interface StatusPageOptions {
  /** The gateway's `frame-ancestors …` directive. */
  frameAncestors: string;
  template?: string;
  bundle?: string;
}

/** `GET /status` (under the base URL: register it in that prefix). */
export function statusPageRoutes(app: FastifyInstance, o: StatusPageOptions): void {
  let page: Promise<StatusPage> | undefined;
  const load = async (): Promise<StatusPage> => {
    const [template, bundle] = await Promise.all([readFile(o.template ?? STATUS_PAGE_TEMPLATE, 'utf8'), readFile(o.bundle ?? STATUS_PAGE_BUNDLE, 'utf8')]);
    return buildStatusPage(template, bundle, o.frameAncestors);
  };
  app.get('/status', async (req, reply) => {
    // Read on the first request and kept; a failed read is tried again on the next one.
    page ??= load();
    let p: StatusPage;
    try {
      p = await page;
    } catch (e) {
      page = undefined;
      req.log.warn({ err: e }, 'the status page could not be served');
      throw notFound('the status page is not built: run npm run build');
    }
    return reply
      .type('text/html; charset=utf-8')
      .header('Content-Security-Policy', p.csp)
      .header('X-Content-Type-Options', 'nosniff')
      .header('Cache-Control', 'no-store')
      .header('Referrer-Policy', 'no-referrer')
      .send(p.html);
  });
}
