/**
 * The channels WebSocket against a real Debian ipykernel over real ZeroMQ,
 * in both the JSON and the v1 protocol.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KernelClient, startGateway, stdout, type TestGateway } from '../helpers/gateway.js';

let t: TestGateway;
let kernelId: string;

beforeAll(async () => {
  t = await startGateway();
  kernelId = await t.startKernel('python3');
});

afterAll(async () => {
  await t?.close();
});

const ECHO_TARGET = `
def _kgate_echo(comm, open_msg):
    @comm.on_msg
    def _recv(msg):
        comm.send({'n': len(msg['buffers'])}, buffers=msg['buffers'])
get_ipython().kernel.comm_manager.register_target('kgate_echo', _kgate_echo)
`;

describe.each(['json', 'v1'] as const)('%s protocol', (protocol) => {
  it('executes code and relays stream, error and display outputs', async () => {
    const c = await KernelClient.connect(t, kernelId, { protocol });
    const id = c.execute('print("hello from", 6*7)\nfrom IPython.display import display, HTML\ndisplay(HTML("<b>rich</b>"))');
    const reply = await c.reply(id);
    expect(reply.channel).toBe('shell');
    expect(reply.content['status']).toBe('ok');
    expect(stdout(c.outputs(id))).toBe('hello from 42\n');
    const display = c.outputs(id).find((m) => m.header.msg_type === 'display_data');
    expect((display?.content['data'] as Record<string, string>)['text/html']).toBe('<b>rich</b>');

    const err = c.execute('1/0');
    expect((await c.reply(err)).content['status']).toBe('error');
    const e = c.outputs(err).find((m) => m.header.msg_type === 'error');
    expect(e?.content['ename']).toBe('ZeroDivisionError');
    c.close();
  });

  it('round-trips 1 MiB of random binary buffers byte for byte, both ways', async () => {
    const c = await KernelClient.connect(t, kernelId, { protocol });
    await c.reply(c.execute(ECHO_TARGET));
    const commId = randomBytes(8).toString('hex');
    c.request('comm_open', { comm_id: commId, target_name: 'kgate_echo', data: {} });
    const payload = [randomBytes(1024 * 1024), randomBytes(7)];
    const sent = c.request('comm_msg', { comm_id: commId, data: {} }, 'shell', payload);
    const echoed = await c.next((m) => m.header.msg_type === 'comm_msg' && m.parent_header.msg_id === sent);
    expect(echoed.content['data']).toEqual({ n: 2 });
    expect(echoed.buffers).toHaveLength(2);
    expect(Buffer.compare(echoed.buffers[0]!, payload[0]!)).toBe(0);
    expect(Buffer.compare(echoed.buffers[1]!, payload[1]!)).toBe(0);
    c.close();
  });

  it('answers input() over stdin, to the client that asked only', async () => {
    const asker = await KernelClient.connect(t, kernelId, { protocol });
    const other = await KernelClient.connect(t, kernelId, { protocol });
    const id = asker.execute('name = input("who? ")\nprint("hi", name)', { allowStdin: true });
    const req = await asker.next((m) => m.header.msg_type === 'input_request');
    expect(req.channel).toBe('stdin');
    expect(req.content['prompt']).toBe('who? ');
    const answer = asker.request('input_reply', { value: 'kgate' }, 'stdin');
    expect(answer).toBeTruthy();
    await asker.reply(id);
    expect(stdout(asker.outputs(id))).toBe('hi kgate\n');
    // The other client saw the iopub output but never the input_request.
    await other.next((m) => m.parent_header.msg_id === id && m.header.msg_type === 'status' && m.content['execution_state'] === 'idle');
    expect(stdout(other.outputs(id))).toBe('hi kgate\n');
    expect(other.messages.some((m) => m.header.msg_type === 'input_request')).toBe(false);
    asker.close();
    other.close();
  });
});

describe('several clients on one kernel', () => {
  it('fans iopub out to every client and routes each reply only to its sender', async () => {
    const a = await KernelClient.connect(t, kernelId, { protocol: 'json' });
    const b = await KernelClient.connect(t, kernelId, { protocol: 'v1' });
    const fromA = a.execute('print("from a")');
    const fromB = b.execute('print("from b")');
    await a.reply(fromA);
    await b.reply(fromB);
    // iopub: both see both outputs.
    await a.next((m) => m.parent_header.msg_id === fromB && m.header.msg_type === 'status' && m.content['execution_state'] === 'idle');
    await b.next((m) => m.parent_header.msg_id === fromA && m.header.msg_type === 'status' && m.content['execution_state'] === 'idle');
    expect(stdout(a.outputs(fromB))).toBe('from b\n');
    expect(stdout(b.outputs(fromA))).toBe('from a\n');
    // shell: each reply went to its sender only.
    expect(a.messages.filter((m) => m.channel === 'shell').map((m) => m.parent_header.msg_id)).toEqual([fromA]);
    expect(b.messages.filter((m) => m.channel === 'shell').map((m) => m.parent_header.msg_id)).toEqual([fromB]);
    a.close();
    b.close();
  });

  it('replaces a socket when a second one opens with the same session_id', async () => {
    const first = await KernelClient.connect(t, kernelId, { session: 'same-session' });
    const second = await KernelClient.connect(t, kernelId, { session: 'same-session' });
    const closed = await first.waitClosed();
    expect(closed.code).toBe(1000);
    expect(closed.reason).toMatch(/replaced/);
    const id = second.execute('print("still here")');
    await second.reply(id);
    expect(stdout(second.outputs(id))).toBe('still here\n');
    second.close();
  });

  it('reports the number of connections in the kernel model', async () => {
    const a = await KernelClient.connect(t, kernelId);
    const b = await KernelClient.connect(t, kernelId);
    const model = (await (await t.api(`api/kernels/${kernelId}`)).json()) as { connections: number };
    expect(model.connections).toBeGreaterThanOrEqual(2);
    a.close();
    b.close();
  });
});
