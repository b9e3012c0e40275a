/**
 * What a local kernel can reach, seen from inside real ipykernels: each runs
 * with a private HOME (and XDG, Jupyter and IPython dirs inside it, mode 0700,
 * under the runtime dir), so a kernelspec one kernel installs "for the user",
 * or an IPython startup file it writes, reaches neither kgate's kernelspec
 * search path nor the next kernel. The private home lasts across restarts and
 * is removed at shutdown.
 */
import { existsSync, mkdirSync, mkdtempSync, realpathSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gatewayClient, KernelClient, stdout, type GatewayClient } from '../helpers/gateway.js';
import { startKgate, type Running } from '../helpers/kgate-process.js';
import { processesMatching } from '../helpers/procs.js';

const TOKEN = 'reach-token';
const dir = realpathSync(mkdtempSync(join(tmpdir(), 'kgate-reach-')));
/** kgate's own HOME and IPython dir: what kernels used to share with it and with each other. */
const home = join(dir, 'kgate-home');
const ipythonDir = join(dir, 'kgate-ipython');
const runtimeDir = join(dir, 'runtime');
let k: Running;
let t: GatewayClient;

beforeAll(async () => {
  mkdirSync(home);
  mkdirSync(ipythonDir);
  k = await startKgate(['--port', '0', '--auth-token', TOKEN, '--runtime-dir', runtimeDir, '--root-dir', dir], {
    HOME: home,
    IPYTHONDIR: ipythonDir,
    XDG_DATA_HOME: '',
    XDG_CONFIG_HOME: '',
    JUPYTER_DATA_DIR: '',
    JUPYTER_CONFIG_DIR: '',
    JUPYTER_RUNTIME_DIR: '',
    JUPYTER_PATH: join(dir, 'shared-jupyter-path'),
  });
  t = gatewayClient(k.url, TOKEN);
});

afterAll(async () => {
  k?.child.kill('SIGKILL');
  await k?.exited;
  for (const pid of processesMatching(runtimeDir)) process.kill(pid, 'SIGKILL');
});

async function run(c: KernelClient, code: string): Promise<string> {
  const m = c.execute(code);
  const r = await c.reply(m);
  expect(r.content['status'], JSON.stringify(r.content)).toBe('ok');
  return stdout(c.outputs(m)).trim();
}

interface Seen {
  home: string;
  mode: number;
  dataDir: string;
  env: Record<string, string | null>;
}

const LOOK = `import os, json, stat, jupyter_core.paths as jp
names = ['XDG_DATA_HOME', 'XDG_CONFIG_HOME', 'XDG_CACHE_HOME', 'JUPYTER_DATA_DIR', 'JUPYTER_CONFIG_DIR', 'JUPYTER_RUNTIME_DIR', 'IPYTHONDIR', 'JUPYTER_PATH']
print(json.dumps({'home': os.environ['HOME'], 'mode': stat.S_IMODE(os.stat(os.environ['HOME']).st_mode), 'dataDir': jp.jupyter_data_dir(), 'env': {n: os.environ.get(n) for n in names}}))`;

async function look(c: KernelClient): Promise<Seen> {
  return JSON.parse(await run(c, LOOK)) as Seen;
}

describe('a local kernel has a private home', () => {
  it('cannot plant a kernelspec or a startup file for kgate or the next kernel; its home lasts across restarts and goes at shutdown', async () => {
    const a = await t.startKernel();
    const b = await t.startKernel();
    const ca = await KernelClient.connect(t, a);
    const cb = await KernelClient.connect(t, b);
    const seenA = await look(ca);
    const seenB = await look(cb);
    expect(seenA.home).not.toBe(home);
    expect(seenA.home).not.toBe(seenB.home);
    expect(seenA.home.startsWith(`${runtimeDir}/`)).toBe(true);
    expect(seenA.mode).toBe(0o700);
    expect(seenA.dataDir.startsWith(`${seenA.home}/`)).toBe(true);
    expect(seenA.dataDir.startsWith(home)).toBe(false);
    for (const [name, value] of Object.entries(seenA.env)) {
      if (name === 'JUPYTER_PATH') expect(value, name).toBeNull();
      else expect(value?.startsWith(`${seenA.home}/`), `${name}=${value}`).toBe(true);
    }

    // What `jupyter kernelspec install --user` writes, and an IPython startup file.
    await run(
      ca,
      `import os, json, jupyter_core.paths as jp
from IPython.paths import get_ipython_dir
d = os.path.join(jp.jupyter_data_dir(), 'kernels', 'planted')
os.makedirs(d, exist_ok=True)
json.dump({'argv': ['/bin/sh', '-c', 'echo planted'], 'display_name': 'planted', 'language': 'sh'}, open(os.path.join(d, 'kernel.json'), 'w'))
s = os.path.join(get_ipython_dir(), 'profile_default', 'startup')
os.makedirs(s, exist_ok=True)
open(os.path.join(s, '00-planted.py'), 'w').write('planted = True\\n')
open(os.path.join(os.environ['HOME'], 'marker'), 'w').write('kept')
print('ok')`,
    );
    // Past the kernelspec cache of kgate (2 s), so a planted spec would show.
    await new Promise((r) => setTimeout(r, 2200));
    const specs = (await (await t.api('api/kernelspecs')).json()) as { kernelspecs: Record<string, unknown> };
    expect(Object.keys(specs.kernelspecs)).not.toContain('planted');
    expect((await t.api('api/kernels', { method: 'POST', json: { name: 'planted' } })).status).toBe(404);

    const c = await t.startKernel();
    const cc = await KernelClient.connect(t, c);
    expect(await run(cc, "print('planted' in globals())")).toBe('False');

    // The same home after a restart, with what the kernel left there.
    expect((await t.api(`api/kernels/${a}/restart`, { method: 'POST' })).status).toBe(200);
    expect((await look(ca)).home).toBe(seenA.home);
    expect(await run(ca, "print(open(os.path.join(os.environ['HOME'], 'marker')).read())")).toBe('kept');

    for (const cl of [ca, cb, cc]) cl.close();
    const homes = [seenA.home, seenB.home];
    for (const id of [a, b, c]) expect((await t.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
    for (const h of homes) expect(existsSync(h), h).toBe(false);
  }, 60_000);
});
