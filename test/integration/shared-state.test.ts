/**
 * Two kgate processes on one --state-dir (different ports) serve the same
 * kernels, with no sticky routing: a client on one sees the iopub of code run
 * through the other; either can interrupt, restart or shut a kernel down; and
 * when the gateway that started a kernel is killed, the other takes it over.
 * The model for replicas behind a load balancer.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { until } from '../helpers/wait.js';
import { gatewayClient, interruptUntilReplied, KernelClient, stdout, type GatewayClient } from '../helpers/gateway.js';
import { startKgate, type Running } from '../helpers/kgate-process.js';
import { processesMatching } from '../helpers/procs.js';

const TOKEN = 'shared-token';
const dir = mkdtempSync(join(tmpdir(), 'kgate-shared-'));
const running: Running[] = [];

afterAll(async () => {
  for (const k of running) k.child.kill('SIGKILL');
  for (const pid of processesMatching(dir)) process.kill(pid, 'SIGKILL');
});

async function kgate(): Promise<Running & { t: GatewayClient }> {
  const k = await startKgate(['--port', '0', '--auth-token', TOKEN, '--state-dir', join(dir, 'state'), '--runtime-dir', join(dir, 'runtime')]);
  running.push(k);
  return { ...k, t: gatewayClient(k.url, TOKEN) };
}

const pidsOf = (id: string): number[] => processesMatching(`kernel-${id}.json`);

describe('two gateway processes on one state dir', () => {
  it('serve the same kernel: shared iopub, interrupt, restart and shutdown from either, takeover when one dies', async () => {
    const a = await kgate();
    const b = await kgate();
    const r = await a.t.api('api/kernels', { method: 'POST', body: '{"name":"python3"}' });
    expect(r.status).toBe(201);
    const { id } = (await r.json()) as { id: string };

    // B lists and serves the kernel A started.
    const listed = (await (await b.t.api('api/kernels')).json()) as Array<{ id: string }>;
    expect(listed.map((k) => k.id)).toEqual([id]);
    const onA = await KernelClient.connect(a.t, id);
    const onB = await KernelClient.connect(b.t, id, { protocol: 'v1' });

    // Code run through A: its output reaches the client on B too, and the reply only A's client.
    const viaA = onA.execute('x = 6 * 7\nprint("from a", x)');
    await onA.reply(viaA);
    await onB.next((m) => m.parent_header.msg_id === viaA && m.header.msg_type === 'stream');
    expect(stdout(onB.outputs(viaA))).toBe('from a 42\n');
    expect(onB.messages.some((m) => m.parent_header.msg_id === viaA && m.header.msg_type === 'execute_reply')).toBe(false);
    // And the other way round.
    const viaB = onB.execute('print("from b", x)');
    await onB.reply(viaB);
    await onA.next((m) => m.parent_header.msg_id === viaB && m.header.msg_type === 'stream');
    expect(stdout(onA.outputs(viaB))).toBe('from b 42\n');

    // Interrupt through B a loop started through A.
    const loop = onA.execute("print('looping', flush=True)\nwhile True: pass");
    await onA.next((m) => m.parent_header.msg_id === loop && m.header.msg_type === 'stream');
    const interrupted = await interruptUntilReplied(onA, loop, () => b.t.api(`api/kernels/${id}/interrupt`, { method: 'POST' }));
    expect(interrupted.content['ename']).toBe('KeyboardInterrupt');

    // Restart through B: a new process, a fresh namespace, both sockets keep working.
    const before = pidsOf(id);
    const rs = await b.t.api(`api/kernels/${id}/restart`, { method: 'POST' });
    expect(rs.status).toBe(200);
    expect(pidsOf(id)).not.toEqual(before);
    const fresh = onB.execute("print('x' in globals())");
    await onB.reply(fresh);
    expect(stdout(onB.outputs(fresh))).toBe('False\n');
    const stillA = onA.execute('print("a still here")');
    await onA.reply(stillA);
    expect(stdout(onA.outputs(stillA))).toBe('a still here\n');

    // A (which started the kernel) dies: B takes the kernel over and restarts it when it crashes.
    a.child.kill('SIGKILL');
    await a.exited;
    await new Promise((res) => setTimeout(res, 2500));
    for (const pid of pidsOf(id)) process.kill(pid, 'SIGKILL');
    await onB.next((m) => m.header.msg_type === 'status' && m.content['execution_state'] === 'restarting', 20_000);
    await until(
      async () => {
        const probe = onB.execute('print("back")');
        try {
          await onB.reply(probe, 3000);
          return stdout(onB.outputs(probe)) === 'back\n';
        } catch {
          return false;
        }
      },
      'the kernel back after the crash, restarted by B',
      30_000,
      100,
    );

    // Shut down through B: gone everywhere, no process left.
    expect((await b.t.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
    expect((await b.t.api(`api/kernels/${id}`)).status).toBe(404);
    await until(() => pidsOf(id).length === 0, 'the kernel process to end', 30_000, 100);
    onB.close();
    b.child.kill('SIGTERM');
    await b.exited;
  });
});
