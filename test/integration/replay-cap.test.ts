/**
 * Replay is bounded for the whole gateway, not only per session: several
 * kernels, each with sockets that closed before their kernel's output came,
 * keep at most --replay-total-bytes in all (and --replay-kernel-bytes per
 * kernel); past it the oldest sessions of any kernel are given up first. The
 * reconnect of a session given up is told its output was lost; one kept gets
 * its replay. kgate runs as its own process so its RSS is its alone.
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gatewayClient, KernelClient, makeRequest, type GatewayClient, type Msg } from '../helpers/gateway.js';
import { memoryOf, startKgate, type Running } from '../helpers/kgate-process.js';

const TOKEN = 'replay-cap-token';
const MiB = 1024 * 1024;
const KERNELS = 8;
const SESSIONS_PER_KERNEL = 2;
const ROUNDS = 3;
/** What each kernel prints once its sessions are gone: 24 MiB, in 64 KiB messages (192 MiB in all). */
const STREAMS = 384;
const STREAM = 64 * 1024;
const TOTAL_BOUND = 32 * MiB;

let k: Running;
let t: GatewayClient;
const kernels: string[] = [];

beforeAll(async () => {
  k = await startKgate([
    '--port',
    '0',
    '--auth-token',
    TOKEN,
    '--replay-bytes',
    String(128 * MiB),
    '--replay-kernel-bytes',
    String(128 * MiB),
    '--replay-total-bytes',
    String(TOTAL_BOUND),
    // Enough for the sessions that reconnect and leave again at the end (each parks anew).
    '--replay-sessions',
    '16',
    // A replay is written at once: the socket's own bound must hold one kernel's 24 MiB.
    '--max-client-buffer',
    String(64 * MiB),
    '--replay-seconds',
    '120',
    '--runtime-dir',
    mkdtempSync(join(tmpdir(), 'kgate-rt-')),
  ]);
  t = gatewayClient(k.url, TOKEN);
});
afterAll(async () => {
  await Promise.all(kernels.map((id) => t.api(`api/kernels/${id}`, { method: 'DELETE' }).catch(() => undefined)));
  k.child.kill('SIGTERM');
  await k.exited;
});

/**
 * A client of a kernel that stays connected and runs the floods: it reads every
 * frame but parses only the reply, so the test's own process keeps up.
 */
class Driver {
  private constructor(private readonly ws: WebSocket) {}

  static async open(kernelId: string): Promise<Driver> {
    const ws = new WebSocket(`${t.wsUrl}api/kernels/${kernelId}/channels?session_id=${randomUUID()}&token=${TOKEN}`);
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    return new Driver(ws);
  }

  /** Runs `code`; resolves with its msg_id and the stream messages it produced once the reply and the idle status are in. */
  run(code: string): Promise<{ id: string; streams: number }> {
    const msg = makeRequest('execute_request', { code, silent: false, store_history: false, user_expressions: {}, allow_stdin: false, stop_on_error: true }, randomUUID());
    const id = msg.header.msg_id;
    return new Promise((resolve, reject) => {
      let streams = 0;
      let replied = false;
      let idle = false;
      const timer = setTimeout(() => reject(new Error(`no reply to ${code}`)), 30_000);
      const onMessage = (d: Buffer): void => {
        const head = d.toString('utf8', 0, Math.min(d.length, 600));
        if (!d.includes(id)) return;
        if (head.includes('"msg_type":"stream"')) streams++;
        else if (head.includes('"msg_type":"execute_reply"')) replied = true;
        else if (head.includes('"msg_type":"status"') && /"execution_state": ?"idle"/.test(d.toString('utf8'))) idle = true;
        if (replied && idle) {
          clearTimeout(timer);
          this.ws.off('message', onMessage);
          resolve({ id, streams });
        }
      };
      this.ws.on('message', onMessage);
      this.ws.send(JSON.stringify({ ...msg, buffers: [] }));
    });
  }

  close(): void {
    this.ws.close();
  }
}

const isNotice = (m: Msg): boolean => m.header.msg_type === 'stream' && String(m.content['text']).startsWith('[kgate] Output sent while this client was disconnected was lost');
const streams = (msgs: Msg[], parent: string): number => msgs.filter((m) => m.header.msg_type === 'stream' && m.parent_header.msg_id === parent && !isNotice(m)).length;

describe('replay bounded for the whole gateway', () => {
  it('keeps at most --replay-total-bytes: the oldest sessions of any kernel go first, with the notice; the latest replay in full', async () => {
    for (let i = 0; i < KERNELS; i++) kernels.push(await t.startKernel('kgate-bench'));
    const drivers = await Promise.all(kernels.map((id) => Driver.open(id)));
    for (const d of drivers) await d.run('warm-up');
    // The same floods with no session parked first: what the flow itself costs kgate
    // (its sockets' buffers, and garbage V8 collects only once external memory has grown
    // 64 MiB since its last full collection). The growth that follows is what replay keeps.
    const rssStart = memoryOf(k.child.pid!).rss;
    for (let i = 0; i < KERNELS; i++) expect((await drivers[i]!.run(`flood ${STREAMS} ${STREAM}`)).streams).toBe(STREAMS);
    await new Promise((r) => setTimeout(r, 500));
    const rssBefore = memoryOf(k.child.pid!).rss;

    // Round by round, kernel by kernel: sessions connect and leave, then their kernel prints 24 MiB they miss.
    const parked: Array<{ kernel: number; session: string; flood: string }> = [];
    let missed = 0;
    for (let round = 0; round < ROUNDS; round++) {
      for (let i = 0; i < KERNELS; i++) {
        const keys = Array.from({ length: SESSIONS_PER_KERNEL }, () => randomUUID());
        for (const session of keys) {
          const c = await KernelClient.connect(t, kernels[i]!, { session });
          await c.reply(c.request('kernel_info_request', {}));
          c.close();
          await c.waitClosed();
        }
        const flood = await drivers[i]!.run(`flood ${STREAMS} ${STREAM}`);
        expect(flood.streams).toBe(STREAMS);
        for (const session of keys) parked.push({ kernel: i, session, flood: flood.id });
        missed += STREAMS * STREAM;
      }
    }
    await new Promise((r) => setTimeout(r, 500));
    const growth = memoryOf(k.child.pid!).rss - rssBefore;
    console.log(
      `replay: ${parked.length} sessions of ${KERNELS} kernels missed ${(missed / MiB).toFixed(0)} MiB; kgate RSS +${(growth / MiB).toFixed(1)} MiB ` +
        `(bound ${TOTAL_BOUND / MiB} MiB) after the same floods with no session parked cost +${((rssBefore - rssStart) / MiB).toFixed(1)} MiB`,
    );
    // Kept without a gateway-wide bound: 576 MiB (each kernel's sessions share its 72 MiB). With it:
    // the bound, plus (both vary with when V8 collects) what the floods alone cost kgate and
    // garbage V8 collects once external memory has grown 64 MiB since its last full collection.
    expect(memoryOf(k.child.pid!).rss - rssStart).toBeLessThan(TOTAL_BOUND + 64 * MiB + 64 * MiB);

    // Every session reconnects, oldest first: each is told its output was lost, or gets all of it.
    const kept: typeof parked = [];
    for (const p of parked) {
      const back = await KernelClient.connect(t, kernels[p.kernel]!, { session: p.session });
      await back.next((m) => isNotice(m) || (m.header.msg_type === 'status' && m.parent_header.msg_id === p.flood && m.content['execution_state'] === 'idle'), 10_000);
      await back.reply(back.request('kernel_info_request', {}));
      const notice = back.messages.find(isNotice);
      if (notice) {
        // Told on the cell that printed what it missed.
        expect(notice.parent_header.msg_id).toBe(p.flood);
        expect(String(notice.content['text'])).toContain('--replay-total-bytes');
        expect(streams(back.messages, p.flood)).toBe(0);
      } else {
        expect(streams(back.messages, p.flood)).toBe(STREAMS);
        kept.push(p);
      }
      back.close();
    }
    console.log(`replay: ${kept.length} of ${parked.length} sessions kept: ${kept.map((p) => `kernel ${p.kernel}`).join(', ')}`);
    // The latest kernel's latest sessions are what 32 MiB holds; every older session was given up.
    expect(kept).toEqual(parked.slice(-SESSIONS_PER_KERNEL));
    for (const d of drivers) d.close();
  });
});
