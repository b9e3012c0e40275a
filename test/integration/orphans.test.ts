/**
 * Without --state-dir nothing can adopt a kernel, so kernels end with the
 * gateway: `kill -9` of kgate leaves no kernel process behind (a parent-death
 * signal on Linux, and JPY_PARENT_PID for ipykernel's own parent poller).
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { gatewayClient, KernelClient, stdout } from '../helpers/gateway.js';
import { startKgate, type Running } from '../helpers/kgate-process.js';
import { processesMatching } from '../helpers/procs.js';
import { until } from '../helpers/wait.js';

const TOKEN = 'orphans-token';
const dir = mkdtempSync(join(tmpdir(), 'kgate-orphans-'));
const running: Running[] = [];

afterAll(() => {
  for (const k of running) k.child.kill('SIGKILL');
  for (const pid of processesMatching(dir)) process.kill(pid, 'SIGKILL');
});

describe('kill -9 of kgate without --state-dir', () => {
  it('ends every kernel with the gateway (python3 and kgate-bench)', async () => {
    const k = await startKgate(['--port', '0', '--auth-token', TOKEN, '--runtime-dir', join(dir, 'runtime')]);
    running.push(k);
    const t = gatewayClient(k.url, TOKEN);
    const ids = [await t.startKernel('python3'), await t.startKernel('kgate-bench')];
    for (const id of ids) expect(processesMatching(`kernel-${id}.json`)).toHaveLength(1);
    // The kernel knows its parent as jupyter_client tells it.
    const c = await KernelClient.connect(t, ids[0]!);
    const m = c.execute("import os; print(os.environ.get('JPY_PARENT_PID') == str(os.getppid()))");
    await c.reply(m);
    expect(stdout(c.outputs(m)).trim()).toBe('True');
    c.close();

    k.child.kill('SIGKILL');
    await k.exited;
    await until(() => ids.every((id) => processesMatching(`kernel-${id}.json`).length === 0), 'both kernel processes to end', 10_000, 100);
  }, 60_000);
});
