/**
 * What one scrape of GET /metrics costs kgate's event loop: a gateway in this
 * process with N real kernels (ipykernel) and a socket on each, then
 * `GatewayMetrics.text()` (what the route serves) timed many times, and a
 * whole HTTP scrape on the main port. The per-second cost of a 1 s scrape
 * interval is the median over 1000 ms.
 *
 *   npx tsx bench/tools/metrics-scrape-cost.ts          # 4 kernels, 1000 scrapes
 *   npx tsx bench/tools/metrics-scrape-cost.ts 16 2000
 */
import { startGateway, KernelClient } from '../../test/helpers/gateway.js';

const kernels = Number(process.argv[2] ?? 4);
const scrapes = Number(process.argv[3] ?? 1000);

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
}

async function main(): Promise<void> {
  const t = await startGateway();
  const clients: KernelClient[] = [];
  try {
    for (let i = 0; i < kernels; i++) clients.push(await KernelClient.connect(t, await t.startKernel()));
    const text: number[] = [];
    let bytes = 0;
    for (let i = 0; i < scrapes; i++) {
      const t0 = performance.now();
      bytes = (await t.gw.metrics.text()).length;
      text.push(performance.now() - t0);
    }
    const http: number[] = [];
    for (let i = 0; i < Math.min(scrapes, 500); i++) {
      const t0 = performance.now();
      const r = await fetch(new URL('metrics', t.url), { headers: { Authorization: `token ${t.token}` } });
      await r.text();
      http.push(performance.now() - t0);
    }
    const p50 = quantile(text, 0.5);
    console.log(`${kernels} kernels, ${clients.length} sockets, ${bytes} bytes of exposition`);
    console.log(`GatewayMetrics.text(): p50 ${p50.toFixed(3)} ms, p99 ${quantile(text, 0.99).toFixed(3)} ms over ${scrapes}`);
    console.log(`HTTP scrape (client and server in this process): p50 ${quantile(http, 0.5).toFixed(3)} ms, p99 ${quantile(http, 0.99).toFixed(3)} ms over ${http.length}`);
    console.log(`at one scrape a second: ${((p50 / 1000) * 100).toFixed(3)} % of the event loop`);
  } finally {
    for (const c of clients) c.close();
    await t.close();
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
