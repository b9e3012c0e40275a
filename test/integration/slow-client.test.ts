/**
 * A client that stops reading while a kernel floods output: kgate's memory
 * stays bounded (past --max-client-buffer unread bytes, that client's output
 * is dropped), the client is told how much it missed once it reads again,
 * and another client of the same kernel gets every byte meanwhile.
 * kgate runs as its own process so its peak RSS (VmHWM) is its alone.
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Socket } from 'node:net';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeRequest } from '../helpers/gateway.js';
import { memoryOf, startKgate, type Running } from '../helpers/kgate-process.js';

const TOKEN = 'slow-client-token';
const MiB = 1024 * 1024;
const CHUNKS = 4096;
const CHUNK = 64 * 1024;
/**
 * What the cell prints: 256 MiB, in messages of 64 KiB flushed one by one, paced
 * (~0.5 ms apart) so that the reading client keeps up even on a loaded machine:
 * this test is about the client that does not read.
 */
const TOTAL = CHUNKS * CHUNK;

let k: Running;
beforeAll(async () => {
  k = await startKgate(['--port', '0', '--auth-token', TOKEN, '--max-client-buffer', String(8 * MiB), '--runtime-dir', mkdtempSync(join(tmpdir(), 'kgate-rt-'))]);
});
afterAll(async () => {
  k.child.kill('SIGTERM');
  await k.exited;
});

function open(kernelId: string, session = randomUUID()): Promise<WebSocket> {
  const ws = new WebSocket(`${k.url.replace('http', 'ws')}api/kernels/${kernelId}/channels?session_id=${session}&token=${TOKEN}`);
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

describe('a client that stops reading', () => {
  it('misses output past the bound and is told so; kgate stays small; the reading client gets everything', async () => {
    const headers = { Authorization: `token ${TOKEN}` };
    const r = await fetch(`${k.url}api/kernels`, { method: 'POST', headers, body: '{"name":"python3"}' });
    expect(r.status).toBe(201);
    const { id } = (await r.json()) as { id: string };

    const stalled = await open(id);
    // Stop reading at the TCP level: the kernel's output piles up in kgate's send buffer.
    (stalled as unknown as { _socket: Socket })._socket.pause();
    const stalledSaw: string[] = [];
    stalled.on('message', (d: Buffer) => stalledSaw.push(d.toString('utf8')));

    const reader = await open(id);
    const session = randomUUID();
    const msg = makeRequest(
      'execute_request',
      {
        code: `import sys\nc = 'x' * ${CHUNK}\nimport time\nfor _ in range(${CHUNKS}):\n    sys.stdout.write(c); sys.stdout.flush(); time.sleep(0.0005)`,
        silent: false,
        store_history: false,
        user_expressions: {},
        allow_stdin: false,
        stop_on_error: true,
      },
      session,
    );
    let received = 0;
    let readerStreams = 0;
    const done = new Promise<void>((resolve, reject) => {
      // iopub and shell are separate sockets: the idle status may come before the reply.
      let replied = false;
      let idle = false;
      reader.once('close', (code: number) => reject(new Error(`the reading client was closed with ${code}`)));
      reader.on('message', (data: Buffer) => {
        const m = JSON.parse(data.toString('utf8')) as {
          header: { msg_type: string };
          parent_header: { msg_id?: string };
          content: { text?: string; execution_state?: string; status?: string };
        };
        if (m.parent_header.msg_id !== msg.header.msg_id) return;
        if (m.header.msg_type === 'stream') {
          received += m.content.text!.length;
          readerStreams++;
        }
        if (m.header.msg_type === 'execute_reply') {
          if (m.content.status !== 'ok') reject(new Error(`execute failed: ${JSON.stringify(m.content)}`));
          replied = true;
        }
        if (m.header.msg_type === 'status' && m.content.execution_state === 'idle') idle = true;
        if (replied && idle) resolve();
      });
    });
    const before = memoryOf(k.child.pid!);
    reader.send(JSON.stringify(msg));
    await done;
    const after = memoryOf(k.child.pid!);

    // The reading client saw every byte the cell printed.
    expect(received).toBe(TOTAL);
    // kgate's peak memory grew by far less than what flowed (256 MiB): the stalled
    // client holds at most its 8 MiB bound; the rest is messages in flight and
    // garbage V8 has not collected yet (tens of MiB, with or without a stalled
    // client). Holding the stalled client's share would add over 200 MiB.
    expect(after.peak - before.rss).toBeLessThan(96 * MiB);

    // Reading again, the stalled client drains what was queued, then is told what it missed,
    // on the cell that produced it; it stayed connected and still saw the kernel go idle.
    (stalled as unknown as { _socket: Socket })._socket.resume();
    const deadline = Date.now() + 20_000;
    const notice = (): string | undefined => stalledSaw.find((t) => t.includes('[kgate]'));
    while (!notice() && Date.now() < deadline) await new Promise((res) => setTimeout(res, 50));
    const n = JSON.parse(notice()!) as { header: { msg_type: string }; parent_header: { msg_id: string }; content: { name: string; text: string } };
    expect(n.header.msg_type).toBe('stream');
    expect(n.content.name).toBe('stderr');
    expect(n.parent_header.msg_id).toBe(msg.header.msg_id);
    const missed = Number(/(\d+) output messages? w/.exec(n.content.text)?.[1]);
    expect(missed).toBeGreaterThan(0);
    const streamed = stalledSaw.filter((t) => t.includes('"msg_type":"stream"') && !t.includes('[kgate]')).length;
    expect(streamed + missed).toBe(readerStreams);
    expect(stalledSaw.some((t) => /"execution_state": ?"idle"/.test(t))).toBe(true);
    expect(stalled.readyState).toBe(WebSocket.OPEN);
    stalled.close();

    // The kernel and the gateway carry on: a new client connects and executes.
    const again = await open(id);
    const m2 = makeRequest('kernel_info_request', {}, randomUUID());
    const reply = new Promise<string>((resolve) => again.on('message', (d: Buffer) => d.includes('kernel_info_reply') && resolve('ok')));
    again.send(JSON.stringify(m2));
    expect(await reply).toBe('ok');
    again.close();
    reader.close();
    expect((await fetch(`${k.url}api/kernels/${id}`, { method: 'DELETE', headers })).status).toBe(204);
  });
});
