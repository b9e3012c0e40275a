/**
 * No kernel lost when the gateway dies: kgate records each kernel in
 * --state-dir; after `kill -9` of kgate, a new kgate on the same state dir
 * adopts every kernel still alive (same id, same process, same state), cleans
 * up the dead ones, and clients that reconnect with their session_id carry on.
 * kgate runs as a real process here, killed for real.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { gatewayClient, KernelClient, stdout, type GatewayClient } from '../helpers/gateway.js';
import { startKgate, type Running } from '../helpers/kgate-process.js';
import { processesMatching } from '../helpers/procs.js';

const TOKEN = 'adoption-token';
const running: Running[] = [];
const dir = mkdtempSync(join(tmpdir(), 'kgate-adopt-'));
const stateDir = join(dir, 'state');
const runtimeDir = join(dir, 'runtime');

afterAll(async () => {
  for (const k of running) k.child.kill('SIGKILL');
  for (const pid of processesMatching(runtimeDir)) process.kill(pid, 'SIGKILL');
});

async function kgate(extra: string[] = []): Promise<Running & { t: GatewayClient }> {
  const k = await startKgate(['--port', '0', '--auth-token', TOKEN, '--state-dir', stateDir, '--runtime-dir', runtimeDir, ...extra]);
  running.push(k);
  return { ...k, t: gatewayClient(k.url, TOKEN) };
}

const pidsOf = (id: string): number[] => processesMatching(`kernel-${id}.json`);

async function ids(t: GatewayClient): Promise<string[]> {
  return ((await (await t.api('api/kernels')).json()) as Array<{ id: string }>).map((k) => k.id).sort();
}

describe('adoption after kill -9', () => {
  it('adopts the live kernels with their state and sessions, and cleans up the dead one', async () => {
    const first = await kgate();
    const kernels = await Promise.all([first.t.startKernel(), first.t.startKernel(), first.t.startKernel()]);
    const [a, b, dead] = kernels as [string, string, string];
    // The records hold the kernel's key: readable by kgate's user only.
    for (const f of readdirSync(stateDir)) expect(statSync(join(stateDir, f)).mode & 0o077).toBe(0);
    const session = randomUUID();
    const c = await KernelClient.connect(first.t, a, { session });
    await c.reply(c.execute('x = 42'));
    const pidA = pidsOf(a);
    expect(pidA).toHaveLength(1);

    first.child.kill('SIGKILL');
    await first.exited;
    await c.waitClosed();
    // The kernels outlive the gateway; one of them then dies while no gateway runs.
    expect(pidsOf(a)).toEqual(pidA);
    for (const pid of pidsOf(dead)) process.kill(pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 300));

    const second = await kgate();
    expect(await ids(second.t)).toEqual([a, b].sort());
    expect(pidsOf(a)).toEqual(pidA);
    expect(existsSync(join(stateDir, `${dead}.json`))).toBe(false);
    expect((await second.t.api(`api/kernels/${dead}`)).status).toBe(404);

    // The client reconnects with its session_id and carries on: same process, same namespace.
    const back = await KernelClient.connect(second.t, a, { session });
    const m = back.execute('import os; print(x, os.getpid())');
    await back.reply(m);
    expect(stdout(back.outputs(m)).trim()).toBe(`42 ${pidA[0]}`);

    // The adopted kernel is fully managed: interrupt, restart, shutdown.
    expect((await second.t.api(`api/kernels/${a}/interrupt`, { method: 'POST' })).status).toBe(204);
    expect((await second.t.api(`api/kernels/${b}/restart`, { method: 'POST' })).status).toBe(200);
    const again = back.execute('print(x)');
    await back.reply(again);
    expect(stdout(back.outputs(again)).trim()).toBe('42');
    back.close();
    for (const id of [a, b]) expect((await second.t.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
    expect(pidsOf(a)).toEqual([]);
    expect(readdirSync(stateDir).filter((f) => f.endsWith('.json'))).toEqual([]);
    second.child.kill('SIGTERM');
    await second.exited;
  });

  it('with --keep-kernels a clean stop leaves the kernels for the next gateway; without it, they stop', async () => {
    const first = await kgate(['--keep-kernels', 'true']);
    const id = await first.t.startKernel();
    const pid = pidsOf(id);
    first.child.kill('SIGTERM');
    expect(await first.exited).toBe(0);
    expect(pidsOf(id)).toEqual(pid);

    const second = await kgate();
    expect(await ids(second.t)).toEqual([id]);
    second.child.kill('SIGTERM');
    await second.exited;
    expect(pidsOf(id)).toEqual([]);
    expect(readdirSync(stateDir).filter((f) => f.endsWith('.json'))).toEqual([]);
  });
});
