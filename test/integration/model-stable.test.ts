/**
 * The model a start answers is the model the next GET returns: kgate's own
 * requests to the kernel (the kernel_info nudge, and later shutdown and
 * interrupt requests) change neither `execution_state` nor `last_activity`,
 * as jupyter_server leaves out the status and activity of its own requests
 * (`untracked_message_types`, jupyter_server PR 1429). A client's execute
 * changes both.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KernelClient, startGateway, type TestGateway } from '../helpers/gateway.js';
import { until } from '../helpers/wait.js';

interface KernelModel {
  id: string;
  execution_state: string;
  last_activity: string;
}

let t: TestGateway;
beforeAll(async () => {
  t = await startGateway();
});
afterAll(async () => {
  await t?.close();
});

async function getKernel(id: string): Promise<KernelModel> {
  const r = await t.api(`api/kernels/${id}`);
  expect(r.status).toBe(200);
  return (await r.json()) as KernelModel;
}

const stateOf = (m: KernelModel): [string, string] => [m.execution_state, m.last_activity];

/** The model stays what the start answered, at once and 300 ms later; then a real execute changes both fields. */
async function expectStableThenLive(started: KernelModel, get: () => Promise<KernelModel>): Promise<void> {
  expect(started.execution_state).toBe('idle');
  expect(stateOf(await get())).toEqual(stateOf(started));
  await new Promise((r) => setTimeout(r, 300));
  expect(stateOf(await get())).toEqual(stateOf(started));

  const c = await KernelClient.connect(t, started.id);
  const id = c.execute('import time\ntime.sleep(0.5)');
  let during: KernelModel | undefined;
  await until(async () => (during = await get()).execution_state === 'busy', 'the model to say busy', 10_000, 20);
  expect(during!.last_activity > started.last_activity).toBe(true);
  await c.reply(id);
  const after = await get();
  expect(after.execution_state).toBe('idle');
  expect(after.last_activity > started.last_activity).toBe(true);
  c.close();
}

describe('the model a start answers', () => {
  it('POST /api/kernels: the next GETs return it unchanged', async () => {
    const r = await t.api('api/kernels', { method: 'POST', json: { name: 'python3' } });
    expect(r.status).toBe(201);
    const started = (await r.json()) as KernelModel;
    await expectStableThenLive(started, () => getKernel(started.id));
  });

  it('POST /api/sessions: the next GETs of the session (and of its kernel) return it unchanged', async () => {
    const r = await t.api('api/sessions', { method: 'POST', json: { path: 'model-stable.ipynb', type: 'notebook', name: 'model-stable.ipynb', kernel: { name: 'python3' } } });
    expect(r.status).toBe(201);
    const session = (await r.json()) as { id: string; kernel: KernelModel };
    expect(stateOf(await getKernel(session.kernel.id))).toEqual(stateOf(session.kernel));
    await expectStableThenLive(session.kernel, async () => {
      const g = await t.api(`api/sessions/${session.id}`);
      expect(g.status).toBe(200);
      return ((await g.json()) as { kernel: KernelModel }).kernel;
    });
  });

  it("kgate's own interrupt request leaves the model as it was", async () => {
    const r = await t.api('api/kernels', { method: 'POST', json: { name: 'kgate-bench' } });
    expect(r.status).toBe(201);
    const started = (await r.json()) as KernelModel;
    // The bench kernel's interrupt_mode is message: kgate sends interrupt_request on control itself.
    expect((await t.api(`api/kernels/${started.id}/interrupt`, { method: 'POST' })).status).toBe(204);
    await new Promise((r) => setTimeout(r, 300));
    expect(stateOf(await getKernel(started.id))).toEqual(stateOf(started));
  });
});
