/**
 * The lifecycle and relay events on kgate's diagnostics channels, as a
 * subscriber (metrics, the audit log) sees them, from a real kernel and real
 * WebSockets: a start, a client that attaches, sends a malformed frame and is
 * closed for it, and a shutdown.
 */
import diagnostics from 'node:diagnostics_channel';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, KernelClient, type TestGateway } from '../helpers/gateway.js';
import { until } from '../helpers/wait.js';

const NAMES = ['kgate:kernel:start', 'kgate:kernel:ready', 'kgate:kernel:shutdown', 'kgate:client:attach', 'kgate:client:detach', 'kgate:client:drop', 'kgate:link:drop'] as const;

const seen: Array<{ name: string; message: Record<string, unknown> }> = [];
const listener = (message: unknown, name: string | symbol): void => {
  seen.push({ name: String(name), message: message as Record<string, unknown> });
};

let g: TestGateway;

beforeAll(async () => {
  for (const n of NAMES) diagnostics.subscribe(n, listener);
  g = await startGateway();
});

afterAll(async () => {
  for (const n of NAMES) diagnostics.unsubscribe(n, listener);
  await g?.close();
});

const of = (name: string, kernelId: string): Array<Record<string, unknown>> => seen.filter((e) => e.name === name && e.message['kernelId'] === kernelId).map((e) => e.message);

describe('events', () => {
  it('a start, a client that sends a bad frame, and a shutdown are published with the kernel, protocol and reason, never a key or content', async () => {
    const id = await g.startKernel('kgate-bench');
    expect(of('kgate:kernel:ready', id)).toHaveLength(1);
    expect(of('kgate:kernel:ready', id)[0]).toMatchObject({ kernelspec: 'kgate-bench', pooled: false });

    const c = await KernelClient.connect(g, id, { protocol: 'v1' });
    await until(() => of('kgate:client:attach', id).length === 1, 'the attach event', 5000);
    expect(of('kgate:client:attach', id)[0]).toEqual({ kernelId: id, protocol: 'v1' });

    c.ws.send(Buffer.from('not a v1 frame'));
    const closed = await c.waitClosed();
    expect(closed.code).toBe(1007);
    await until(() => of('kgate:client:detach', id).length === 1, 'the detach event', 5000);
    expect(of('kgate:client:drop', id)).toEqual([{ kernelId: id, protocol: 'v1', reason: 'malformed', count: 1 }]);

    const r = await g.api(`api/kernels/${id}`, { method: 'DELETE' });
    expect(r.status).toBe(204);
    await until(() => of('kgate:kernel:shutdown', id).length === 1, 'the shutdown event', 10_000);

    const text = JSON.stringify(seen);
    expect(text).not.toContain('"key"');
    expect(text).not.toContain(g.token);
  });
});
