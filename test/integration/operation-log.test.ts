/**
 * Interrupts, restarts and shutdowns that clients ask for are in kgate's log
 * at info level, with who asked (remote address, route, user when the
 * identity has one) — and never the token, whether it came in a header or in
 * the query.
 */
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { createGateway, type Gateway } from '../../src/gateway/app.js';
import { gatewayClient, type GatewayClient } from '../helpers/gateway.js';
import { until } from '../helpers/wait.js';

const TOKEN = 'op-log-token-5f1e2d3c4b';
const lines: Array<Record<string, unknown>> = [];
let raw = '';
let gw: Gateway;
let t: GatewayClient;

beforeAll(async () => {
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      raw += chunk.toString();
      for (const l of chunk.toString().split('\n')) if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  gw = await createGateway(loadConfig(['--port', '0', '--auth-token', TOKEN], {}), pino({ level: 'info' }, sink));
  const { port } = await gw.listen();
  t = gatewayClient(`http://127.0.0.1:${port}/`, TOKEN);
});

afterAll(async () => {
  await gw?.close();
});

const asked = (route: string, kernel: string): Array<Record<string, unknown>> =>
  lines.filter((l) => l['route'] === route && l['kernel'] === kernel && l['level'] === 30 && l['remote'] === '127.0.0.1');

describe('client-asked operations in the log', () => {
  it('logs interrupt, restart and shutdown of a kernel and of a session, with who asked, never the token', async () => {
    const id = await t.startKernel('kgate-bench');
    expect((await t.api(`api/kernels/${id}/interrupt?token=${TOKEN}`, { method: 'POST', headers: { Authorization: '' } })).status).toBe(204);
    expect((await t.api(`api/kernels/${id}/restart`, { method: 'POST' })).status).toBe(200);
    expect((await t.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
    await until(() => asked('DELETE /api/kernels/:id', id).length > 0, 'the shutdown in the log', 5000);
    expect(asked('POST /api/kernels/:id/interrupt', id)).toHaveLength(1);
    expect(asked('POST /api/kernels/:id/restart', id)).toHaveLength(1);
    expect(asked('DELETE /api/kernels/:id', id)).toHaveLength(1);

    const r = await t.api('api/sessions', { method: 'POST', json: { path: 'log.ipynb', type: 'notebook', name: 'log', kernel: { name: 'kgate-bench' } } });
    const s = (await r.json()) as { id: string; kernel: { id: string } };
    // Changing the kernel of a session shuts the old one down.
    const p = await t.api(`api/sessions/${s.id}`, { method: 'PATCH', json: { kernel: { name: 'kgate-bench' } } });
    const newKernel = ((await p.json()) as { kernel: { id: string } }).kernel.id;
    expect(asked('PATCH /api/sessions/:id', s.kernel.id)).toHaveLength(1);
    expect((await t.api(`api/sessions/${s.id}?token=${TOKEN}`, { method: 'DELETE', headers: { Authorization: '' } })).status).toBe(204);
    expect(asked('DELETE /api/sessions/:id', newKernel)).toHaveLength(1);

    expect(raw).not.toContain(TOKEN);
  });
});
