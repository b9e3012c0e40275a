/**
 * Kernel lifecycle with real ipykernel processes: interrupt, restart, a kernel
 * killed with SIGKILL (clients told, kernel back), a kernel that keeps dying,
 * and kernels that cannot start.
 */
import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isProcessAlive } from '../../src/provisioner/process-alive.js';
import { until } from '../helpers/wait.js';
import { interruptUntilReplied, KernelClient, startGateway, stdout, type TestGateway } from '../helpers/gateway.js';
import { processesMatching } from '../helpers/procs.js';

function pidOf(t: TestGateway, kernelId: string): number {
  const pid = t.gw.ctx.kernels.get(kernelId).provisioner.getInfo()['pid'];
  if (typeof pid !== 'number') throw new Error('no pid');
  return pid;
}

/** Kernelspecs that cannot start, in a directory of their own. */
function brokenSpecs(): string {
  const dir = mkdtempSync(join(tmpdir(), 'kgate-specs-'));
  const spec = (name: string, argv: string[]): void => {
    mkdirSync(join(dir, name));
    writeFileSync(join(dir, name, 'kernel.json'), JSON.stringify({ argv, display_name: name, language: 'python' }));
  };
  spec('no-such-binary', ['/nonexistent/kernel-binary', '-f', '{connection_file}']);
  spec('exits-at-once', ['/usr/bin/python3', '-c', 'import sys; sys.stderr.write("kernel says boom\\n"); sys.exit(3)']);
  spec('never-answers', ['/usr/bin/python3', '-c', 'import time; time.sleep(600)', '{connection_file}']);
  return dir;
}

let t: TestGateway;

beforeAll(async () => {
  t = await startGateway(['--kernelspec-dir', brokenSpecs(), '--restart-limit', '1', '--launch-timeout', '20', '--heartbeat-interval', '0.5', '--heartbeat-timeout', '3']);
});

afterAll(async () => {
  await t?.close();
});

describe('interrupt and restart', () => {
  it('interrupts `while True: pass` and the kernel carries on', async () => {
    const id = await t.startKernel();
    const c = await KernelClient.connect(t, id);
    // Interrupt once the loop visibly runs, as a user does: a SIGINT that lands while
    // ipykernel itself is still setting the cell up is lost inside ipykernel.
    const loop = c.execute("print('looping', flush=True)\nwhile True: pass");
    await c.next((m) => m.parent_header.msg_id === loop && m.header.msg_type === 'stream');
    const reply = await interruptUntilReplied(c, loop, () => t.api(`api/kernels/${id}/interrupt`, { method: 'POST' }));
    expect(reply.content['status']).toBe('error');
    expect(reply.content['ename']).toBe('KeyboardInterrupt');
    // ipykernel aborts requests that arrive just after an error (stop_on_error) for a
    // moment; a request answered 'aborted' is sent again, as a user would run the cell again.
    let after = '';
    for (let i = 0; i < 20; i++) {
      after = c.execute('print("alive")');
      if ((await c.reply(after)).content['status'] !== 'aborted') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(stdout(c.outputs(after))).toBe('alive\n');
    c.close();
  });

  it('interrupts with interrupt_request when the kernelspec asks for interrupt_mode message', async () => {
    // kgate's bench kernel (interrupt_mode: message) stops a flood on interrupt_request.
    // ipykernel is not used here: with interrupt_mode message, its control thread and
    // the running cell share the saved SIGINT handler, and an interrupt can be lost.
    const id = await t.startKernel('kgate-bench');
    const c = await KernelClient.connect(t, id, { protocol: 'v1' });
    const flood = c.execute('flood 20000000 100');
    await c.next((m) => m.parent_header.msg_id === flood && m.header.msg_type === 'stream');
    expect((await t.api(`api/kernels/${id}/interrupt`, { method: 'POST' })).status).toBe(204);
    const reply = await c.reply(flood);
    expect(reply.content['ename']).toBe('KeyboardInterrupt');
    // Far fewer than the 2·10^7 asked for went out: the flood was stopped, not finished.
    expect(c.outputs(flood).filter((m) => m.header.msg_type === 'stream').length).toBeLessThan(20_000_000);
    c.close();
    await t.api(`api/kernels/${id}`, { method: 'DELETE' });
  });

  it('holds what a client sends during a restart and delivers it once the kernel is back', async () => {
    const id = await t.startKernel();
    const c = await KernelClient.connect(t, id);
    await c.reply(c.execute('1'));
    const restarting = t.api(`api/kernels/${id}/restart`, { method: 'POST' });
    await until(() => t.gw.ctx.kernels.get(id).phase === 'restarting', 'the kernel to be restarting', 20_000);
    const during = c.execute('print("sent while restarting")');
    expect((await restarting).status).toBe(200);
    await c.reply(during);
    expect(stdout(c.outputs(during))).toBe('sent while restarting\n');
    c.close();
  });

  it('restarts: state is gone, the same socket keeps working', async () => {
    const id = await t.startKernel();
    const c = await KernelClient.connect(t, id);
    await c.reply(c.execute('x = 41'));
    const before = pidOf(t, id);
    const r = await t.api(`api/kernels/${id}/restart`, { method: 'POST' });
    expect(r.status).toBe(200);
    expect(((await r.json()) as { id: string }).id).toBe(id);
    expect(pidOf(t, id)).not.toBe(before);
    expect(isProcessAlive(before)).toBe(false);
    // No error here: after an error ipykernel aborts requests for a moment (stop_on_error).
    const probe = c.execute("print('x' in globals())");
    await c.reply(probe);
    expect(stdout(c.outputs(probe))).toBe('False\n');
    const again = c.execute('print(1 + 1)');
    await c.reply(again);
    expect(stdout(c.outputs(again))).toBe('2\n');
    c.close();
  });
});

describe('a kernel that dies', () => {
  it('is announced as restarting and comes back after SIGKILL; a second death past the limit is dead', async () => {
    const id = await t.startKernel();
    const c = await KernelClient.connect(t, id, { protocol: 'v1' });
    await c.reply(c.execute('1'));
    const first = pidOf(t, id);
    process.kill(first, 'SIGKILL');
    const restarting = await c.next((m) => m.header.msg_type === 'status' && m.content['execution_state'] === 'restarting');
    expect(restarting.channel).toBe('iopub');
    await until(() => t.gw.ctx.kernels.has(id) && t.gw.ctx.kernels.get(id).phase === 'running', 'the kernel to run again', 20_000);
    expect(pidOf(t, id)).not.toBe(first);
    const probe = c.execute('print("back")');
    await c.reply(probe);
    expect(stdout(c.outputs(probe))).toBe('back\n');

    // --restart-limit 1: the next death within the stable window gives up.
    process.kill(pidOf(t, id), 'SIGKILL');
    await c.next((m) => m.header.msg_type === 'status' && m.content['execution_state'] === 'dead');
    const closed = await c.waitClosed();
    expect(closed.code).toBe(1011);
    const r = await t.api(`api/kernels/${id}`);
    expect(r.status).toBe(404);
  });
});

describe('a kernel that hangs', () => {
  it('is found by its silent heartbeat, killed and restarted', async () => {
    const id = await t.startKernel();
    const c = await KernelClient.connect(t, id);
    await c.reply(c.execute('1'));
    const hung = pidOf(t, id);
    process.kill(hung, 'SIGSTOP');
    await c.next((m) => m.header.msg_type === 'status' && m.content['execution_state'] === 'restarting', 15_000);
    await until(() => t.gw.ctx.kernels.get(id).phase === 'running', 'the kernel to run again', 20_000);
    expect(isProcessAlive(hung)).toBe(false);
    const probe = c.execute('print("unstuck")');
    await c.reply(probe);
    expect(stdout(c.outputs(probe))).toBe('unstuck\n');
    c.close();
  });
});

describe('kernels that cannot start', () => {
  it('a missing binary is a 500 with a reason', async () => {
    const r = await t.api('api/kernels', { method: 'POST', json: { name: 'no-such-binary' } });
    expect(r.status).toBe(500);
    const body = (await r.json()) as { code: string; message: string; reason: string };
    expect(body.code).toBe('KG_KERNEL_START_FAILED');
    expect(body.message).toContain('/nonexistent/kernel-binary');
  });

  it('a kernel that exits at once is a 500 quoting its stderr, and is not listed', async () => {
    const r = await t.api('api/kernels', { method: 'POST', json: { name: 'exits-at-once' } });
    expect(r.status).toBe(500);
    const body = (await r.json()) as { code: string; message: string };
    expect(body.code).toBe('KG_KERNEL_START_FAILED');
    expect(body.message).toContain('kernel says boom');
    const list = (await (await t.api('api/kernels')).json()) as Array<{ name: string }>;
    expect(list.some((k) => k.name === 'exits-at-once')).toBe(false);
  });

  it('a kernel that never answers times out with 504 (KERNEL_LAUNCH_TIMEOUT honoured) and is killed', async () => {
    const started = Date.now();
    const r = await t.api('api/kernels', { method: 'POST', json: { name: 'never-answers', env: { KERNEL_LAUNCH_TIMEOUT: '2' } } });
    expect(r.status).toBe(504);
    expect(((await r.json()) as { code: string }).code).toBe('KG_KERNEL_START_TIMEOUT');
    expect(Date.now() - started).toBeLessThan(15_000);
    const list = (await (await t.api('api/kernels')).json()) as Array<{ name: string }>;
    expect(list.some((k) => k.name === 'never-answers')).toBe(false);
    // The process that never answered is gone too.
    await until(() => processesMatching('time.sleep(600)').length === 0, 'the hung kernel to be killed', 5000);
  });
});
