/**
 * Warm pools that are handed out and refilled, idle culling with
 * jupyter_server's meaning, and kernel limits that concurrent requests cannot
 * race, all with real ipykernels.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { until } from '../helpers/wait.js';
import { KernelClient, startGateway, stdout, type TestGateway } from '../helpers/gateway.js';

/** Seconds the kernel process has been running, read by the kernel from /proc. */
const AGE_CODE =
  "import os\nst = int(open('/proc/self/stat').read().rsplit(')', 1)[1].split()[19])\nprint(float(open('/proc/uptime').read().split()[0]) - st / os.sysconf('SC_CLK_TCK'))";

async function run(t: TestGateway, id: string, code: string): Promise<string> {
  const c = await KernelClient.connect(t, id);
  try {
    const m = c.execute(code);
    await c.reply(m);
    return stdout(c.outputs(m));
  } finally {
    c.close();
  }
}

async function listed(t: TestGateway): Promise<string[]> {
  return ((await (await t.api('api/kernels')).json()) as Array<{ id: string }>).map((k) => k.id);
}

describe('limits', () => {
  let t: TestGateway;
  /** Kernel launches the gateway attempted, counted at its provisioners. */
  let launches = 0;
  beforeAll(async () => {
    t = await startGateway(['--max-kernels', '10', '--max-kernels-per-user', '3']);
    const o = (t.gw.ctx.kernels as unknown as { o: { provisionerFor: (spec: unknown) => { launch: (...a: unknown[]) => Promise<unknown> } } }).o;
    const provisionerFor = o.provisionerFor;
    o.provisionerFor = (spec) => {
      const p = provisionerFor(spec);
      const launch = p.launch.bind(p);
      p.launch = (...a) => {
        launches++;
        return launch(...a);
      };
      return p;
    };
  });
  afterEach(async () => {
    await Promise.all((await listed(t)).map((id) => t.api(`api/kernels/${id}`, { method: 'DELETE' })));
  });
  afterAll(async () => {
    await t.close();
  });

  it('100 concurrent starts against --max-kernels 10 start exactly 10; the rest are refused at once', async () => {
    const answered: Array<{ status: number; body: { id?: string; code?: string } }> = [];
    launches = 0;
    await Promise.all(
      Array.from({ length: 100 }, async () => {
        const r = await t.api('api/kernels', { method: 'POST', json: { name: 'python3' } });
        answered.push({ status: r.status, body: (await r.json()) as { id?: string; code?: string } });
      }),
    );
    const ok = answered.filter((a) => a.status === 201);
    const refused = answered.filter((a) => a.status === 403);
    expect(ok).toHaveLength(10);
    expect(refused).toHaveLength(90);
    expect(new Set(refused.map((a) => a.body.code))).toEqual(new Set(['KG_KERNEL_LIMIT']));
    // Refused before any start attempt: exactly 10 kernel processes were ever launched.
    expect(launches).toBe(10);
    expect((await listed(t)).sort()).toEqual(ok.map((a) => a.body.id!).sort());
    // A slot frees when a kernel is shut down.
    expect((await t.api(`api/kernels/${ok[0]!.body.id}`, { method: 'DELETE' })).status).toBe(204);
    const again = await t.api('api/kernels', { method: 'POST', json: { name: 'python3' } });
    expect(again.status).toBe(201);
  });

  it('--max-kernels-per-user counts KERNEL_USERNAME; other users are not held back', async () => {
    const start = (user: string): Promise<Response> => t.api('api/kernels', { method: 'POST', json: { name: 'python3', env: { KERNEL_USERNAME: user } } });
    const alice = await Promise.all(Array.from({ length: 5 }, () => start('alice')));
    expect(alice.map((r) => r.status).sort()).toEqual([201, 201, 201, 403, 403]);
    const refusedBody = (await alice.find((r) => r.status === 403)!.json()) as { code: string; message: string };
    expect(refusedBody.code).toBe('KG_USER_KERNEL_LIMIT');
    expect(refusedBody.message).toContain('alice');
    expect((await start('bob')).status).toBe(201);
  });
});

describe('warm pool', () => {
  let t: TestGateway;
  const pools = async (): Promise<{ ready: number; starting: number }> =>
    ((await (await t.api('api/status')).json()) as { pools: Record<string, { ready: number; starting: number }> }).pools['python3']!;

  beforeAll(async () => {
    t = await startGateway(['--pool', 'python3=2', '--max-kernels', '3']);
    await until(async () => (await pools()).ready === 2, 'the pool to fill', 30_000, 100);
  });
  afterAll(async () => {
    await t.close();
  });

  it('pooled kernels are listed nowhere and count against no limit', async () => {
    expect(await listed(t)).toEqual([]);
  });

  it('hands out a kernel that was running before the request, then refills', async () => {
    const t0 = Date.now();
    const id = await t.startKernel('python3', { KERNEL_USERNAME: 'carol', KERNEL_LAUNCH_TIMEOUT: '30' });
    const age = Number(await run(t, id, AGE_CODE));
    expect(age).toBeGreaterThan((Date.now() - t0) / 1000);
    expect(await listed(t)).toEqual([id]);
    await until(async () => (await pools()).ready === 2, 'the pool to refill', 30_000, 100);
  });

  it('starts cold a request whose env the pooled kernel lacks, and the kernel has it', async () => {
    const t0 = Date.now();
    const id = await t.startKernel('python3', { KERNEL_FOO: 'bar' });
    const out = await run(t, id, `${AGE_CODE}\nprint(os.environ.get('KERNEL_FOO'))`);
    const [age, foo] = out.trim().split('\n');
    expect(Number(age)).toBeLessThan((Date.now() - t0) / 1000);
    expect(foo).toBe('bar');
    expect((await pools()).ready).toBe(2);
  });
});

describe('idle culling', () => {
  let t: TestGateway;
  beforeAll(async () => {
    t = await startGateway(['--cull-idle-timeout', '1.5', '--cull-interval', '0.25']);
  });
  afterAll(async () => {
    await t.close();
  });

  it('culls an idle kernel without clients, but not one with a client (--cull-connected off) nor a busy one (--cull-busy off)', async () => {
    // Each client connects as soon as its kernel is up: on a loaded machine the slowest of three starts can
    // take longer than the idle timeout, which would cull a kernel before its client came.
    const withClient = async (): Promise<[string, KernelClient]> => {
      const id = await t.startKernel();
      return [id, await KernelClient.connect(t, id)];
    };
    const [idle, [connected, c], [busy, b]] = await Promise.all([t.startKernel(), withClient(), withClient()]);
    const sleeping = b.execute('import time; time.sleep(5)');
    await until(async () => !(await listed(t)).includes(idle), 'the idle kernel to be culled', 10_000, 100);
    // Well past the timeout, the connected and the busy kernel are still there.
    await new Promise((r) => setTimeout(r, 1500));
    expect((await listed(t)).sort()).toEqual([connected, busy].sort());
    await b.reply(sleeping);
    // Idle again with a client: still kept, as --cull-connected is off.
    await new Promise((r) => setTimeout(r, 2000));
    expect(await listed(t)).toContain(busy);
    c.close();
    b.close();
    // Without clients, both go once idle for the timeout; a closing client told why is covered below.
    await until(async () => (await listed(t)).length === 0, 'both kernels to be culled once their clients left', 15_000, 100);
  });
});

describe('culling connected kernels', () => {
  let t: TestGateway;
  beforeAll(async () => {
    t = await startGateway(['--cull-idle-timeout', '1.5', '--cull-interval', '0.25', '--cull-connected', 'true']);
  });
  afterAll(async () => {
    await t.close();
  });

  it('activity either way keeps a kernel; once idle, its clients are closed with the reason', async () => {
    const id = await t.startKernel();
    const c = await KernelClient.connect(t, id);
    // Executing every 0.5 s for 3 s (twice the timeout) keeps it alive.
    for (let i = 0; i < 6; i++) {
      await c.reply(c.execute('1'));
      await new Promise((r) => setTimeout(r, 500));
    }
    expect(await listed(t)).toContain(id);
    const closed = await c.waitClosed(10_000);
    expect(closed.code).toBe(1000);
    expect(closed.reason).toMatch(/culled after \d+ s idle/);
    expect(await listed(t)).not.toContain(id);
  });
});
