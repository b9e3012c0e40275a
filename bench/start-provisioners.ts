/**
 * Start time of Debian's python3 ipykernel under each provisioner that runs
 * on one host: local (a child process), sandbox (bubblewrap, cgroup, ipc),
 * sandbox with egress (its network namespace, veth and nftables rules made
 * first) and container (rootful podman, the image
 * scripts/build-kernel-image.sh builds),
 * measured as a client sees it: POST /api/kernels, then the channels
 * WebSocket, then the first kernel_info_reply to a kernel_info_request.
 * Rounds alternate the provisioners so each sees the same machine load; one
 * warm-up round is not counted. Prints a Markdown table with the medians and
 * the ratios to local.
 *
 *   npm run bench:start-provisioners     (BENCH_RUNS=N, default 10, at most 50; root, bwrap and podman needed)
 */
import { randomUUID } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { loadConfig } from '../src/config.js';
import { createServer } from '../src/gateway/app.js';
import { fmt, median } from './lib/stats.js';

const RUNS = Math.min(50, Math.max(1, Number(process.env['BENCH_RUNS'] ?? 10)));
const TOKEN = 'bench-start-provisioners';
const IMAGE = process.env['BENCH_IMAGE'] ?? 'localhost/kgate-kernel-python3:bookworm';
const ARGV = ['/usr/bin/python3', '-m', 'ipykernel_launcher', '-f', '{connection_file}'];
/** What is measured: a name, the provisioner, its kernelspec config. */
const PROVISIONERS = [
  { name: 'local', provisioner: 'local', config: {} },
  { name: 'sandbox', provisioner: 'sandbox', config: {} },
  { name: 'sandbox + egress', provisioner: 'sandbox', config: { egress: true } },
  { name: 'container', provisioner: 'container', config: { image: IMAGE } },
] as const;
const specName = (name: string): string => `bench-${name.replace(/[^a-z]+/g, '-')}`;

const dir = mkdtempSync(join(tmpdir(), 'kgate-bench-prov-'));
chmodSync(dir, 0o755);
const specDir = join(dir, 'specs');
for (const p of PROVISIONERS) {
  mkdirSync(join(specDir, specName(p.name)), { recursive: true, mode: 0o755 });
  writeFileSync(
    join(specDir, specName(p.name), 'kernel.json'),
    JSON.stringify({ argv: ARGV, display_name: p.name, language: 'python', metadata: { kernel_provisioner: { provisioner_name: p.provisioner, config: p.config } } }),
  );
}
chmodSync(specDir, 0o755);

/** POST → 201, and POST → the first kernel_info_reply on the channels WebSocket, in ms. */
async function startOnce(base: string, spec: string): Promise<{ created: number; ready: number; id: string }> {
  const t0 = performance.now();
  const r = await fetch(`${base}api/kernels`, { method: 'POST', headers: { Authorization: `token ${TOKEN}` }, body: JSON.stringify({ name: spec }) });
  const created = performance.now() - t0;
  if (r.status !== 201) throw new Error(`${spec}: start failed: ${r.status} ${await r.text()}`);
  const id = ((await r.json()) as { id: string }).id;
  const session = randomUUID();
  const ws = new WebSocket(`${base.replace(/^http/, 'ws')}api/kernels/${id}/channels?session_id=${session}&token=${TOKEN}`);
  const msgId = randomUUID();
  await new Promise<void>((done, fail) => {
    const timer = setTimeout(() => fail(new Error(`${spec}: no kernel_info_reply within 60 s`)), 60_000);
    ws.on('message', (data: Buffer) => {
      const m = JSON.parse(data.toString()) as { msg_type?: string; header: { msg_type: string }; parent_header: { msg_id?: string } };
      if (m.header.msg_type === 'kernel_info_reply' && m.parent_header.msg_id === msgId) {
        clearTimeout(timer);
        done();
      }
    });
    ws.once('error', fail);
    ws.once('open', () =>
      ws.send(
        JSON.stringify({
          header: { msg_id: msgId, msg_type: 'kernel_info_request', session, username: 'bench', date: new Date().toISOString(), version: '5.3' },
          parent_header: {},
          metadata: {},
          content: {},
          channel: 'shell',
        }),
      ),
    );
  });
  const ready = performance.now() - t0;
  ws.close();
  return { created, ready, id };
}

async function main(): Promise<void> {
  const config = loadConfig(['--port', '0', '--auth-token', TOKEN, '--kernelspec-dir', specDir, '--runtime-dir', join(dir, 'rt'), '--log-level', 'silent'], {});
  const gw = await createServer(config);
  const { port } = await gw.listen();
  const base = `http://127.0.0.1:${port}/`;
  const del = (id: string): Promise<Response> => fetch(`${base}api/kernels/${id}`, { method: 'DELETE', headers: { Authorization: `token ${TOKEN}` } });
  const times = new Map<string, { created: number[]; ready: number[] }>(PROVISIONERS.map((p) => [p.name, { created: [], ready: [] }]));
  try {
    for (let round = 0; round <= RUNS; round++) {
      for (const p of PROVISIONERS) {
        const s = await startOnce(base, specName(p.name));
        await del(s.id);
        // Round 0 warms the caches (Python's bytecode, podman's storage) for every provisioner alike.
        if (round === 0) continue;
        times.get(p.name)!.created.push(s.created);
        times.get(p.name)!.ready.push(s.ready);
      }
    }
  } finally {
    await gw.close();
  }
  const local = median(times.get('local')!.ready);
  console.log(`kgate kernel start by provisioner, Debian python3 ipykernel, median of ${RUNS} (one warm-up round)`);
  console.log('| provisioner | POST → kernel_info_reply (p50) | min – max | POST → 201 (p50) | × local |');
  console.log('| --- | ---: | ---: | ---: | ---: |');
  for (const p of PROVISIONERS) {
    const t = times.get(p.name)!;
    const m = median(t.ready);
    console.log(`| ${p.name} | ${fmt(m)} ms | ${fmt(Math.min(...t.ready))} – ${fmt(Math.max(...t.ready))} ms | ${fmt(median(t.created))} ms | ${fmt(m / local)}× |`);
  }
}

main()
  .catch((e: unknown) => {
    console.error(e);
    process.exitCode = 1;
  })
  .finally(() => rmSync(dir, { recursive: true, force: true }));
