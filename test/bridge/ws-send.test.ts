/**
 * sendFrame: one buffer under 64 KiB, otherwise WebSocket fragments of one
 * message, with chunks of 16 KiB or more passed to ws without a copy. The fake
 * socket checks the calls; the real ws server and client check the bytes.
 */
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { decodeJsonFrame, encodeJsonFrame, type OutFrame } from '../../src/bridge/ws-json.js';
import { sendFrame } from '../../src/bridge/ws-send.js';
import { decodeV1Frame, encodeV1Frame, V1_PROTOCOL } from '../../src/bridge/ws-v1.js';
import type { MessageParts } from '../../src/bridge/wire.js';
import { jsonBinaryDecode, jsonBinaryEncodeChunks, jsonTextDecode, pseudoRandomBuffer, v1Decode, v1EncodeChunks } from './client-codec.js';

interface SendCall {
  data: Buffer;
  binary: boolean;
  fin: boolean;
}

function fakeSocket(): { ws: WebSocket; calls: SendCall[] } {
  const calls: SendCall[] = [];
  const ws = {
    send(data: Buffer, opts: { binary: boolean; fin: boolean }) {
      calls.push({ data, binary: opts.binary, fin: opts.fin });
    },
  } as unknown as WebSocket;
  return { ws, calls };
}

function frameOf(chunks: Buffer[], binary = true): OutFrame {
  let length = 0;
  for (const c of chunks) length += c.length;
  return { chunks, length, binary };
}

const KiB = 1024;

describe('sendFrame with a recording socket', () => {
  it('sends a single chunk as it is, as one final frame', () => {
    const { ws, calls } = fakeSocket();
    const only = Buffer.alloc(200 * KiB, 1);
    sendFrame(ws, frameOf([only]));
    expect(calls.length).toBe(1);
    expect(calls[0]!.data).toBe(only);
    expect(calls[0]).toMatchObject({ binary: true, fin: true });
  });

  it('copies a frame under 64 KiB into one buffer, as one final frame', () => {
    const { ws, calls } = fakeSocket();
    const chunks = [Buffer.from('abc'), Buffer.alloc(40 * KiB, 2), Buffer.alloc(0), Buffer.alloc(24 * KiB - 4, 3)];
    sendFrame(ws, frameOf(chunks, false));
    expect(calls.length).toBe(1);
    expect(calls[0]).toMatchObject({ binary: false, fin: true });
    expect(calls[0]!.data.equals(Buffer.concat(chunks))).toBe(true);
  });

  it('at 64 KiB and above sends fragments: big chunks uncopied, runs of small ones merged, only the last final', () => {
    const { ws, calls } = fakeSocket();
    const s1 = Buffer.from('table');
    const s2 = Buffer.from('{"header":{}}');
    const big1 = Buffer.alloc(16 * KiB, 0xaa); // exactly the threshold: its own fragment
    const s3 = Buffer.alloc(16 * KiB - 1, 0xbb);
    const s4 = Buffer.alloc(10, 0xcc);
    const big2 = Buffer.alloc(40 * KiB, 0xdd);
    const chunks = [s1, s2, big1, s3, s4, big2];
    sendFrame(ws, frameOf(chunks));
    expect(calls.length).toBe(4);
    expect(calls[0]!.data.equals(Buffer.concat([s1, s2]))).toBe(true);
    expect(calls[1]!.data).toBe(big1);
    expect(calls[2]!.data.equals(Buffer.concat([s3, s4]))).toBe(true);
    expect(calls[3]!.data).toBe(big2);
    expect(calls.map((c) => c.fin)).toEqual([false, false, false, true]);
    expect(calls.every((c) => c.binary)).toBe(true);
    expect(Buffer.concat(calls.map((c) => c.data)).equals(Buffer.concat(chunks))).toBe(true);
  });

  it('ends with the trailing small chunks, and marks text fragments as text', () => {
    const { ws, calls } = fakeSocket();
    const big = Buffer.alloc(70 * KiB, 0x61);
    const chunks = [Buffer.from('{"a":"'), big, Buffer.from('"'), Buffer.from('}')];
    sendFrame(ws, frameOf(chunks, false));
    expect(calls.length).toBe(3);
    expect(calls[1]!.data).toBe(big);
    expect(calls[2]!.data.toString()).toBe('"}');
    expect(calls.map((c) => [c.binary, c.fin])).toEqual([
      [false, false],
      [false, false],
      [false, true],
    ]);
  });

  it('sends one final frame when 64 KiB or more is all small chunks', () => {
    const { ws, calls } = fakeSocket();
    const chunks = Array.from({ length: 10 }, (_, k) => Buffer.alloc(8 * KiB, k));
    sendFrame(ws, frameOf(chunks));
    expect(calls.length).toBe(1);
    expect(calls[0]!.fin).toBe(true);
    expect(calls[0]!.data.equals(Buffer.concat(chunks))).toBe(true);
  });
});

describe('sendFrame over a real ws server and client', () => {
  let wss: WebSocketServer;
  let port: number;

  beforeAll(async () => {
    wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false, maxPayload: 64 * 1024 * 1024 });
    await new Promise<void>((resolve) => wss.once('listening', resolve));
    port = (wss.address() as AddressInfo).port;
  });

  afterAll(async () => {
    for (const c of wss.clients) c.terminate();
    await new Promise<void>((resolve) => wss.close(() => resolve()));
  });

  /** Opens a client; resolves with both ends once connected. */
  async function connect(): Promise<{ server: WebSocket; client: WebSocket }> {
    const serverSide = new Promise<WebSocket>((resolve) => wss.once('connection', resolve));
    const client = new WebSocket(`ws://127.0.0.1:${port}`, [V1_PROTOCOL]);
    await new Promise<void>((resolve, reject) => {
      client.once('open', () => resolve());
      client.once('error', reject);
    });
    return { server: await serverSide, client };
  }

  function nextMessage(ws: WebSocket): Promise<{ data: Buffer; isBinary: boolean }> {
    return new Promise((resolve) => ws.once('message', (data, isBinary) => resolve({ data: data as Buffer, isBinary })));
  }

  /** Records the calls sendFrame makes on a real socket, and still sends them. */
  function spy(ws: WebSocket): SendCall[] {
    const calls: SendCall[] = [];
    const send = ws.send.bind(ws) as (d: Buffer, o: { binary: boolean; fin: boolean }) => void;
    (ws as unknown as { send: (d: Buffer, o: { binary: boolean; fin: boolean }) => void }).send = (d, o) => {
      calls.push({ data: d, binary: o.binary, fin: o.fin });
      send(d, o);
    };
    return calls;
  }

  async function close(client: WebSocket): Promise<void> {
    const closed = new Promise<void>((resolve) => client.once('close', () => resolve()));
    client.close(1000);
    await closed;
  }

  const MiB = 1024 * 1024;
  const kernelParts = (buffers: Buffer[]): MessageParts => ({
    header: Buffer.from('{"msg_id":"k","msg_type":"comm_msg","session":"s","username":"u","date":"2024-01-01T00:00:00.000000Z","version":"5.3"}'),
    parent: Buffer.from('{"msg_id":"p"}'),
    metadata: Buffer.from('{}'),
    content: Buffer.from('{"data":{"text":"héllo 🌍"}}'),
    buffers,
  });

  it('a v1 frame with three 1 MiB buffers arrives as one binary message, byte-exact, in fragments of uncopied buffers', async () => {
    const { server, client } = await connect();
    const buffers = [pseudoRandomBuffer(MiB, 1), pseudoRandomBuffer(MiB, 2), Buffer.alloc(0), pseudoRandomBuffer(MiB + 7, 3)];
    const m = kernelParts(buffers);
    const frame = encodeV1Frame('iopub', m);
    const calls = spy(server);
    const received = nextMessage(client);
    sendFrame(server, frame);
    const { data, isBinary } = await received;

    expect(calls.filter((c) => !c.fin).length).toBeGreaterThanOrEqual(3);
    for (const big of [buffers[0], buffers[1], buffers[3]]) expect(calls.some((c) => c.data === big)).toBe(true);
    expect(isBinary).toBe(true);
    expect(data.length).toBe(frame.length);
    expect(data.equals(Buffer.concat(frame.chunks))).toBe(true);
    const d = v1Decode(data);
    expect(d.channel).toBe('iopub');
    for (const k of ['header', 'parent', 'metadata', 'content'] as const) expect(d[k].equals(m[k])).toBe(true);
    expect(d.buffers.length).toBe(4);
    d.buffers.forEach((x, k) => expect(x.equals(buffers[k]!)).toBe(true));
    await close(client);
  });

  it('a JSON-protocol binary-form frame with 1 MiB buffers arrives as one message, byte-exact', async () => {
    const { server, client } = await connect();
    const buffers = [pseudoRandomBuffer(MiB, 4), pseudoRandomBuffer(17 * 1024, 5)];
    const frame = encodeJsonFrame('iopub', kernelParts(buffers));
    const received = nextMessage(client);
    sendFrame(server, frame);
    const { data, isBinary } = await received;
    expect(isBinary).toBe(true);
    expect(data.equals(Buffer.concat(frame.chunks))).toBe(true);
    const d = jsonBinaryDecode(data);
    expect(d.msg).toMatchObject({ channel: 'iopub', msg_id: 'k', header: { msg_type: 'comm_msg' }, content: { data: { text: 'héllo 🌍' } } });
    d.buffers.forEach((x, k) => expect(x.equals(buffers[k]!)).toBe(true));
    await close(client);
  });

  it('a 1 MiB JSON text frame with unicode arrives as one valid text message', async () => {
    const { server, client } = await connect();
    const text = 'é🌍中'.repeat(150_000);
    const content = Buffer.from(JSON.stringify({ name: 'stdout', text }));
    const frame = encodeJsonFrame('iopub', { ...kernelParts([]), content });
    expect(frame.length).toBeGreaterThan(MiB);
    const calls = spy(server);
    const received = nextMessage(client);
    sendFrame(server, frame);
    const { data, isBinary } = await received;
    expect(calls.length).toBeGreaterThan(1);
    expect(calls.some((c) => c.data === content)).toBe(true);
    expect(isBinary).toBe(false);
    expect((jsonTextDecode(data).content as { text: string }).text).toBe(text);
    await close(client);
  });

  it('client → gateway: fragmented v1 and JSON binary frames with 1 MiB buffers are joined by ws and accepted by the decoders', async () => {
    const { server, client } = await connect();
    const buffers = [pseudoRandomBuffer(MiB, 6), Buffer.alloc(0), pseudoRandomBuffer(MiB, 7)];
    const p = {
      header: Buffer.from('{"msg_id":"c","msg_type":"comm_msg"}'),
      parent: Buffer.from('{}'),
      metadata: Buffer.from('{}'),
      content: Buffer.from('{"data":"ü"}'),
      buffers,
    };

    const v1Chunks = v1EncodeChunks('shell', p);
    const calls = spy(client);
    let received = nextMessage(server);
    sendFrame(client, frameOf(v1Chunks));
    let got = await received;
    expect(calls.filter((c) => !c.fin).length).toBeGreaterThanOrEqual(2);
    const m1 = decodeV1Frame(got.data, got.isBinary);
    expect(m1.channel).toBe('shell');
    for (const k of ['header', 'parent', 'metadata', 'content'] as const) expect(m1[k].equals(p[k])).toBe(true);
    m1.buffers.forEach((x, k) => expect(x.equals(buffers[k]!)).toBe(true));
    expect(m1.buffers.length).toBe(3);

    const json = Buffer.from('{"header":{"msg_id":"c","msg_type":"comm_msg"},"parent_header":{},"metadata":{},"content":{"data":"ü"},"channel":"control"}');
    received = nextMessage(server);
    sendFrame(client, frameOf(jsonBinaryEncodeChunks(json, buffers)));
    got = await received;
    const m2 = decodeJsonFrame(got.data, got.isBinary);
    expect(m2.channel).toBe('control');
    expect(String(m2.content)).toBe('{"data":"ü"}');
    m2.buffers.forEach((x, k) => expect(x.equals(buffers[k]!)).toBe(true));
    expect(m2.buffers.length).toBe(3);
    await close(client);
  });

  it('consecutive fragmented messages do not interleave', async () => {
    const { server, client } = await connect();
    const frames = [1, 2, 3].map((seed) => encodeV1Frame('iopub', kernelParts([pseudoRandomBuffer(200 * 1024, seed), pseudoRandomBuffer(100 * 1024, seed + 10)])));
    const got: Buffer[] = [];
    const all = new Promise<void>((resolve) =>
      client.on('message', (data) => {
        got.push(data as Buffer);
        if (got.length === frames.length) resolve();
      }),
    );
    for (const f of frames) sendFrame(server, f);
    await all;
    got.forEach((data, k) => expect(data.equals(Buffer.concat(frames[k]!.chunks))).toBe(true));
    await close(client);
  });
});
