/**
 * Adoption of a kernel that is busy in native code when kgate is killed: the
 * kernel holds the GIL in `ctypes.PyDLL(None).sleep(N)` (its heartbeat thread
 * still answers), kgate is killed with -9, and a new kgate on the same state
 * dir listens at once, lists the kernel, keeps the same process, tells the
 * client that reconnects with its session_id that output may have been lost,
 * and relays the client's code once the kernel answers again.
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { gatewayClient, KernelClient, stdout, type GatewayClient } from '../helpers/gateway.js';
import { startKgate, type Running } from '../helpers/kgate-process.js';
import { processesMatching } from '../helpers/procs.js';
import { until } from '../helpers/wait.js';

const TOKEN = 'adopt-busy-token';
const running: Running[] = [];
const dir = mkdtempSync(join(tmpdir(), 'kgate-adopt-busy-'));
const stateDir = join(dir, 'state');
const runtimeDir = join(dir, 'runtime');
/** Longer than the 10 s an adoption used to wait for kernel_info before killing the kernel. */
const BUSY_S = 14;

afterAll(async () => {
  for (const k of running) k.child.kill('SIGKILL');
  for (const pid of processesMatching(runtimeDir)) process.kill(pid, 'SIGKILL');
});

async function kgate(): Promise<Running & { t: GatewayClient }> {
  // A heartbeat timeout well under the busy time: the kernel lives because its heartbeat answers, not because of a long timeout.
  const k = await startKgate(['--port', '0', '--auth-token', TOKEN, '--state-dir', stateDir, '--runtime-dir', runtimeDir, '--heartbeat-interval', '1', '--heartbeat-timeout', '5']);
  running.push(k);
  return { ...k, t: gatewayClient(k.url, TOKEN) };
}

const pidsOf = (id: string): number[] => processesMatching(`kernel-${id}.json`);

describe('adoption of a kernel busy in native code', () => {
  it('keeps the busy kernel, lists it at once, tells the reconnecting client about the gap, and runs its code afterwards', async () => {
    const first = await kgate();
    const id = await first.t.startKernel();
    const session = randomUUID();
    const c = await KernelClient.connect(first.t, id, { session });
    await c.reply(c.execute('import ctypes, os'));
    const pid = pidsOf(id);
    expect(pid).toHaveLength(1);
    // The attached session is recorded with the kernel (on kgate's sync timer, not per message).
    await until(() => readFileSync(join(stateDir, `${id}.json`), 'utf8').includes(session), 'the session in the state record', 10_000, 100);
    // Nothing comes out while it sleeps (even iopub's thread needs the GIL), so give the cell a moment to begin.
    c.execute(`ctypes.PyDLL(None).sleep(${BUSY_S})`);
    const busySince = Date.now();
    await new Promise((r) => setTimeout(r, 1000));

    first.child.kill('SIGKILL');
    await first.exited;
    await c.waitClosed();

    const second = await kgate();
    const listed = (await (await second.t.api('api/kernels')).json()) as Array<{ id: string }>;
    // Listed while the kernel is still asleep: the new gateway did not wait for it.
    expect(Date.now() - busySince).toBeLessThan(BUSY_S * 1000);
    expect(listed.map((k) => k.id)).toEqual([id]);

    const back = await KernelClient.connect(second.t, id, { session });
    const notice = await back.next((m) => m.header.msg_type === 'stream' && m.content['name'] === 'stderr', 10_000);
    expect(String(notice.content['text'])).toMatch(/kgate restarted/);
    // Sent while the kernel is still busy: held by kgate until the kernel answers.
    const after = back.execute('print("after", os.getpid())');
    await back.reply(after, (BUSY_S + 20) * 1000);
    expect(stdout(back.outputs(after)).trim()).toBe(`after ${pid[0]}`);
    // The same process all along: it was adopted, not killed and started again.
    expect(Date.now() - busySince).toBeGreaterThanOrEqual(BUSY_S * 1000 - 1000);
    expect(pidsOf(id)).toEqual(pid);

    back.close();
    expect((await second.t.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
    second.child.kill('SIGTERM');
    await second.exited;
    expect(pidsOf(id)).toEqual([]);
  }, 60_000);
});
