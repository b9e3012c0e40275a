/**
 * The channels WebSocket against a real Debian ipykernel over real ZeroMQ,
 * in both the JSON and the v1 protocol.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KernelClient, makeRequest, startGateway, stdout, type TestGateway } from '../helpers/gateway.js';
import { until } from '../helpers/wait.js';

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

/** A masked client text frame (RFC 6455 §5.2), as a browser would send it. */
function maskedTextFrame(text: string): Buffer {
  const payload = Buffer.from(text, 'utf8');
  const n = payload.length;
  const head = n < 126 ? Buffer.from([0x81, 0x80 | n]) : n < 65536 ? Buffer.from([0x81, 0x80 | 126, n >> 8, n & 0xff]) : Buffer.alloc(10);
  if (n >= 65536) {
    head[0] = 0x81;
    head[1] = 0x80 | 127;
    head.writeBigUInt64BE(BigInt(n), 2);
  }
  const mask = randomBytes(4);
  const masked = Buffer.alloc(n);
  for (let i = 0; i < n; i++) masked[i] = payload[i]! ^ mask[i & 3]!;
  return Buffer.concat([head, mask, masked]);
}

describe('a socket closed for a malformed frame', () => {
  it('relays nothing it sent after it: a valid execute_request in the same write never reaches the kernel', async () => {
    const observer = await KernelClient.connect(t, kernelId);
    const { port } = new URL(t.url);
    const socket = net.connect({ port: Number(port), host: '127.0.0.1' });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    let received = Buffer.alloc(0);
    socket.on('data', (d: Buffer) => (received = Buffer.concat([received, d])));
    socket.on('error', () => undefined);
    const path = `${new URL(t.url).pathname}api/kernels/${kernelId}/channels?session_id=${randomUUID()}&token=${t.token}`;
    socket.write(
      `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
    );
    await until(() => received.includes('\r\n\r\n'), 'the upgrade answer', 10_000, 10);
    expect(received.toString('latin1')).toMatch(/^HTTP\/1\.1 101 /);
    received = Buffer.alloc(0);

    // One write: a frame that is not JSON, then a valid execute_request.
    const leak = makeRequest(
      'execute_request',
      { code: 'print("leak")', silent: false, store_history: false, user_expressions: {}, allow_stdin: false, stop_on_error: true },
      randomUUID(),
    );
    socket.write(Buffer.concat([maskedTextFrame('{"header": not json'), maskedTextFrame(JSON.stringify({ ...leak, buffers: [] }))]));
    // kgate answers with a close frame (opcode 8) carrying 1007.
    await until(() => received.length >= 4, 'the close frame', 10_000, 10);
    expect(received[0]! & 0x0f).toBe(8);
    expect(received.readUInt16BE(2)).toBe(1007);
    socket.destroy();

    // The kernel runs requests in order: had the leak been relayed, its output would come before this one's reply.
    const sentinel = observer.execute('print("sentinel")');
    await observer.reply(sentinel);
    expect(stdout(observer.outputs(sentinel))).toBe('sentinel\n');
    expect(observer.messages.filter((m) => m.parent_header.msg_id === leak.header.msg_id)).toEqual([]);
    expect(observer.messages.some((m) => m.header.msg_type === 'stream' && String(m.content['text']).includes('leak'))).toBe(false);
    observer.close();
  });
});
