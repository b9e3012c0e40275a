/**
 * jupyter_server's iopub rate limit, offered as an option: past the limit,
 * output stops and every client is told once, on the cell that ran; status
 * and replies still flow; the count starts afresh when the kernel goes idle.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KernelClient, startGateway, stdout, type TestGateway } from '../helpers/gateway.js';

let t: TestGateway;
let id: string;
beforeAll(async () => {
  t = await startGateway(['--iopub-msg-rate-limit', '100', '--iopub-data-rate-limit', '200000', '--rate-limit-window', '1']);
  id = await t.startKernel();
});
afterAll(async () => {
  await t.close();
});

const notices = (c: KernelClient, msgId: string): string[] =>
  c
    .outputs(msgId)
    .filter((m) => m.header.msg_type === 'stream' && String(m.content['text']).startsWith('IOPub '))
    .map((m) => String(m.content['text']));

describe('iopub rate limit', () => {
  it('stops a flood of messages past --iopub-msg-rate-limit, tells every client once, and lets the reply through', async () => {
    const a = await KernelClient.connect(t, id);
    const b = await KernelClient.connect(t, id, { protocol: 'v1' });
    const m = a.execute('for i in range(1000):\n    print(i, flush=True)');
    const reply = await a.reply(m);
    expect(reply.content['status']).toBe('ok');
    await b.next((x) => x.parent_header.msg_id === m && x.header.msg_type === 'status' && x.content['execution_state'] === 'idle');
    for (const c of [a, b]) {
      const n = notices(c, m);
      expect(n).toHaveLength(1);
      expect(n[0]).toContain('IOPub message rate exceeded');
      expect(n[0]).toContain('--iopub-msg-rate-limit=100');
      const printed = c.outputs(m).filter((x) => x.header.msg_type === 'stream' && x.content['name'] === 'stdout').length;
      expect(printed).toBeGreaterThan(0);
      expect(printed).toBeLessThan(1000);
    }
    // Idle resets the count: the next cell's output comes through whole.
    const next = a.execute('print("after")');
    await a.reply(next);
    expect(stdout(a.outputs(next))).toBe('after\n');
    a.close();
    b.close();
  });

  it('stops stream data past --iopub-data-rate-limit', async () => {
    const c = await KernelClient.connect(t, id);
    const m = c.execute("for i in range(50):\n    print('y' * 20000, flush=True)");
    await c.reply(m);
    const n = notices(c, m);
    expect(n).toHaveLength(1);
    expect(n[0]).toContain('IOPub data rate exceeded');
    expect(stdout(c.outputs(m)).length).toBeLessThan(50 * 20001);
    c.close();
  });
});
