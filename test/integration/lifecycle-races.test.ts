/**
 * Lifecycle races with real kernels: a DELETE (or a SIGTERM of kgate) while a
 * kernel is still starting cancels the start and leaves nothing behind; a
 * replacement that dies during an automatic restart is one failed attempt of
 * --restart-limit, not the end of the kernel.
 */
import { existsSync, mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { gatewayClient, KernelClient, startGateway, stdout, type GatewayClient, type TestGateway } from '../helpers/gateway.js';
import { startKgate, type Running } from '../helpers/kgate-process.js';
import { processesMatching } from '../helpers/procs.js';
import { until } from '../helpers/wait.js';

const TOKEN = 'races-token';
const dir = mkdtempSync(join(tmpdir(), 'kgate-races-'));
const running: Running[] = [];
const gateways: TestGateway[] = [];

afterAll(async () => {
  for (const g of gateways) await g.close();
  for (const k of running) k.child.kill('SIGKILL');
  for (const pid of processesMatching(dir)) process.kill(pid, 'SIGKILL');
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function listed(t: GatewayClient): Promise<Array<{ id: string; execution_state: string }>> {
  return (await (await t.api('api/kernels')).json()) as Array<{ id: string; execution_state: string }>;
}

/** POSTs a start and answers the id of the kernel as soon as the list shows it (while it starts). */
async function startAndFind(t: GatewayClient, name: string, known: Set<string>): Promise<{ id: string; post: Promise<Response> }> {
  const post = t.api('api/kernels', { method: 'POST', json: { name } });
  let id: string | undefined;
  await until(
    async () => {
      id = (await listed(t)).find((k) => !known.has(k.id))?.id;
      return id !== undefined;
    },
    'the starting kernel to be listed',
    20_000,
    5,
  );
  known.add(id!);
  return { id: id!, post };
}

/** Nothing of `id` anywhere: no process naming it, no state record, no connection file, no private home. */
function leftovers(id: string, stateDir: string, runtimeDir: string): string[] {
  const left: string[] = [];
  if (processesMatching(id).length > 0) left.push(`process ${processesMatching(id).join(',')}`);
  if (existsSync(join(stateDir, `${id}.json`))) left.push('state record');
  if (existsSync(runtimeDir)) for (const f of readdirSync(runtimeDir)) if (f.includes(id)) left.push(`runtime file ${f}`);
  return left;
}

describe('a shutdown while the kernel starts', () => {
  it('cancels the start: every POST is 201 or 409 KG_KERNEL_START_CANCELLED, and no process, record or file is left', async () => {
    const stateDir = join(dir, 'state');
    const runtimeDir = join(dir, 'runtime');
    const k = await startKgate(['--port', '0', '--auth-token', TOKEN, '--state-dir', stateDir, '--runtime-dir', runtimeDir]);
    running.push(k);
    const t = gatewayClient(k.url, TOKEN);
    const known = new Set<string>();
    // Delays after the kernel is first listed: from before its process exists, through
    // its nudge, to after it answered. ipykernel starts in a second or so, the bench kernel faster.
    const rounds: Array<[string, number]> = [
      ['python3', 0],
      ['python3', 40],
      ['python3', 150],
      ['python3', 400],
      ['python3', 800],
      ['python3', 1500],
      ['kgate-bench', 0],
      ['kgate-bench', 5],
      ['kgate-bench', 20],
      ['kgate-bench', 50],
      ['kgate-bench', 100],
      ['kgate-bench', 250],
    ];
    const answers: string[] = [];
    for (const [name, delay] of rounds) {
      const { id, post } = await startAndFind(t, name, known);
      await sleep(delay);
      const del = await t.api(`api/kernels/${id}`, { method: 'DELETE' });
      expect(del.status, `DELETE of ${name} after ${delay} ms`).toBe(204);
      const r = await post;
      const body = (await r.json()) as { code?: string };
      answers.push(`${name}@${delay}: ${r.status} ${body.code ?? ''}`);
      expect(r.status === 201 || (r.status === 409 && body.code === 'KG_KERNEL_START_CANCELLED'), answers.at(-1)).toBe(true);
      expect(leftovers(id, stateDir, runtimeDir), `${name} after ${delay} ms`).toEqual([]);
    }
    // Some starts were caught while starting (else the test proves nothing).
    expect(answers.filter((a) => a.includes('409')).length, answers.join('\n')).toBeGreaterThan(2);
    expect(await listed(t)).toEqual([]);
    for (const id of known) expect(leftovers(id, stateDir, runtimeDir)).toEqual([]);

    // SIGTERM of kgate while a kernel starts: the start is cancelled too.
    const { id } = await startAndFind(t, 'python3', known);
    await sleep(100);
    k.child.kill('SIGTERM');
    expect(await k.exited).toBe(0);
    expect(leftovers(id, stateDir, runtimeDir)).toEqual([]);
    expect(readdirSync(stateDir).filter((f) => f.endsWith('.json'))).toEqual([]);
  }, 90_000);
});

/** The pid of the kernel's process other than `not`, found by its connection file in the command line. */
function kernelPid(id: string, not: number[] = []): number | undefined {
  return processesMatching(`kernel-${id}.json`).find((p) => !not.includes(p));
}

/** Kills the kernel, then its replacement 300 ms after it appears. */
async function killTwice(c: KernelClient, id: string): Promise<number[]> {
  await c.reply(c.execute('1'));
  const first = kernelPid(id)!;
  process.kill(first, 'SIGKILL');
  let second: number | undefined;
  await until(() => (second = kernelPid(id, [first])) !== undefined, 'the replacement process', 20_000, 5);
  await sleep(300);
  process.kill(second!, 'SIGKILL');
  return [first, second!];
}

describe('a replacement that dies during an automatic restart', () => {
  it('is one failed attempt: the kernel comes back and runs code', async () => {
    const t = await startGateway(['--runtime-dir', join(dir, 'rt-restart')]);
    gateways.push(t);
    const id = await t.startKernel();
    const c = await KernelClient.connect(t, id);
    const killed = await killTwice(c, id);
    // Sent while the kernel is down: held until it is back.
    const probe = c.execute('import os; print("back", os.getpid())');
    const outcome = await Promise.race([c.reply(probe, 45_000).then(() => 'replied'), c.waitClosed(45_000).then((cl) => `closed ${cl.code} ${cl.reason}`)]);
    expect(outcome).toBe('replied');
    const [word, pid] = stdout(c.outputs(probe)).trim().split(' ');
    expect(word).toBe('back');
    expect(killed).not.toContain(Number(pid));
    expect(((await (await t.api(`api/kernels/${id}`)).json()) as { execution_state: string }).execution_state).not.toBe('dead');
    c.close();
    expect((await t.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
  }, 60_000);

  it('with --restart-limit 1 the same gives up: dead status, socket closed 1011, kernel gone', async () => {
    const t = await startGateway(['--runtime-dir', join(dir, 'rt-limit'), '--restart-limit', '1']);
    gateways.push(t);
    const id = await t.startKernel();
    const c = await KernelClient.connect(t, id);
    await killTwice(c, id);
    await c.next((m) => m.header.msg_type === 'status' && m.content['execution_state'] === 'dead', 30_000);
    expect((await c.waitClosed(10_000)).code).toBe(1011);
    expect((await t.api(`api/kernels/${id}`)).status).toBe(404);
    await until(() => processesMatching(`kernel-${id}.json`).length === 0, 'no kernel process left', 10_000);
  }, 60_000);
});
