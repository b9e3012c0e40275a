/**
 * Bounded replay on reconnect, with real ipykernels: output a client's session
 * missed while its socket was closed is replayed in order when it reconnects
 * with the same session_id; past the byte or the time bound it is dropped and
 * the client is told plainly that output was lost.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { KernelClient, stdout, startGateway, type Msg, type TestGateway } from '../helpers/gateway.js';

const gateways: TestGateway[] = [];
afterAll(async () => {
  await Promise.all(gateways.map((g) => g.close()));
});

async function gateway(args: string[] = []): Promise<TestGateway> {
  const t = await startGateway(args);
  gateways.push(t);
  return t;
}

/** Sends `code` and closes the socket as soon as the kernel has taken it. */
async function executeAndLeave(c: KernelClient, code: string): Promise<string> {
  const id = c.execute(code);
  await c.next((m) => m.parent_header.msg_id === id && m.header.msg_type === 'execute_input');
  c.close();
  await c.waitClosed();
  return id;
}

const notice = (msgs: Msg[]): Msg | undefined =>
  msgs.find((m) => m.header.msg_type === 'stream' && String(m.content['text']).startsWith('[kgate] Output sent while this client was disconnected was lost'));

describe('replay on reconnect', () => {
  it('replays what the session missed, in order, then live traffic', async () => {
    const t = await gateway();
    const id = await t.startKernel();
    const session = randomUUID();
    const first = await KernelClient.connect(t, id, { session, protocol: 'v1' });
    const sent = await executeAndLeave(first, 'import time\nfor i in range(5):\n    print(i, flush=True)\n    time.sleep(0.2)\n"done"');
    await new Promise((r) => setTimeout(r, 1500));

    // Another session sees none of it.
    const other = await KernelClient.connect(t, id);
    await new Promise((r) => setTimeout(r, 200));
    expect(other.messages.filter((m) => m.parent_header.msg_id === sent)).toEqual([]);
    other.close();

    const back = await KernelClient.connect(t, id, { session, protocol: 'v1' });
    const reply = await back.reply(sent);
    expect(reply.content['status']).toBe('ok');
    // Nothing lost, nothing twice: what the first socket got before it closed, then the replay.
    expect(stdout(first.outputs(sent)) + stdout(back.outputs(sent))).toBe('0\n1\n2\n3\n4\n');
    expect(stdout(back.outputs(sent))).not.toBe('');
    const result = back.outputs(sent).find((m) => m.header.msg_type === 'execute_result');
    expect((result?.content['data'] as Record<string, string>)['text/plain']).toBe("'done'");
    // In the order the kernel sent them: busy, execute_input, the five prints, the result, idle.
    const kinds = back.outputs(sent).map((m) => m.header.msg_type);
    expect(kinds.indexOf('execute_result')).toBeGreaterThan(kinds.lastIndexOf('stream'));
    expect(notice(back.messages)).toBeUndefined();
    // And then live traffic on the same socket.
    const live = back.execute('print("live")');
    await back.reply(live);
    expect(stdout(back.outputs(live))).toBe('live\n');
    back.close();
  });

  it('past the byte bound, the reconnecting client is told that output was lost, on the cell that made it', async () => {
    const t = await gateway(['--replay-bytes', '20000']);
    const id = await t.startKernel();
    const session = randomUUID();
    const sent = await executeAndLeave(await KernelClient.connect(t, id, { session }), "import time\nfor i in range(10):\n    print('x' * 5000, flush=True)\n    time.sleep(0.05)");
    await new Promise((r) => setTimeout(r, 1500));
    const back = await KernelClient.connect(t, id, { session });
    const n = await back.next((m) => notice([m]) !== undefined);
    expect(n.content['name']).toBe('stderr');
    expect(n.parent_header.msg_id).toBe(sent);
    expect(String(n.content['text'])).toContain('--replay-bytes');
    // Nothing kept was replayed after the notice: no partial output to mislead.
    expect(back.messages.filter((m) => m.header.msg_type === 'stream' && m !== n)).toEqual([]);
    back.close();
  });

  it('past the time bound, the same', async () => {
    const t = await gateway(['--replay-seconds', '0.5']);
    const id = await t.startKernel();
    const session = randomUUID();
    // The output comes a second after the socket closed, well past the 0.5 s bound,
    // so it cannot reach the first socket nor be kept.
    const sent = await executeAndLeave(await KernelClient.connect(t, id, { session }), "import time\ntime.sleep(1)\nprint('missed', flush=True)");
    await new Promise((r) => setTimeout(r, 2500));
    const back = await KernelClient.connect(t, id, { session });
    const n = await back.next((m) => notice([m]) !== undefined);
    expect(n.parent_header.msg_id).toBe(sent);
    expect(stdout(back.outputs(sent))).toBe('');
    back.close();
  });

  it('a reconnect with nothing missed gets nothing extra', async () => {
    const t = await gateway();
    const id = await t.startKernel();
    const session = randomUUID();
    const c = await KernelClient.connect(t, id, { session });
    await c.reply(c.execute('1'));
    c.close();
    await c.waitClosed();
    const back = await KernelClient.connect(t, id, { session });
    await back.reply(back.request('kernel_info_request', {}));
    expect(back.messages.filter((m) => m.header.msg_type === 'stream')).toEqual([]);
    back.close();
  });
});
