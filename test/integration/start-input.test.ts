/**
 * Input faults on starts: a `path` (or a session's name or type) with NUL or
 * other control characters is a 400, a failed start leaves no connection file
 * (it holds the kernel's key) in the runtime dir, and KERNEL_WORKING_DIR is
 * confined to --root-dir.
 */
import { mkdirSync, mkdtempSync, readdirSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KernelClient, startGateway, stdout, type TestGateway } from '../helpers/gateway.js';

const dir = realpathSync(mkdtempSync(join(tmpdir(), 'kgate-start-input-')));
const root = join(dir, 'root');
const stateDir = join(dir, 'state');
const specsDir = join(dir, 'specs');
const runtimes = { plain: join(dir, 'rt-plain'), state: join(dir, 'rt-state') };
const gateways: Record<'plain' | 'state', TestGateway> = {} as never;

beforeAll(async () => {
  mkdirSync(join(root, 'sub', 'deeper'), { recursive: true });
  writeFileSync(join(root, 'a-file'), 'not a directory');
  symlinkSync('/etc', join(root, 'escape'));
  symlinkSync(join(root, 'sub'), join(root, 'inside-link'));
  const spec = (name: string, argv: string[]): void => {
    mkdirSync(join(specsDir, name), { recursive: true });
    writeFileSync(join(specsDir, name, 'kernel.json'), JSON.stringify({ argv, display_name: name, language: 'python' }));
  };
  spec('no-such-binary', ['/nonexistent/kernel-binary', '-f', '{connection_file}']);
  spec('not-executable', [join(root, 'a-file'), '{connection_file}']);
  const common = ['--kernelspec-dir', specsDir, '--root-dir', root];
  // Without a state dir kernels run under a parent-death wrapper; with one they do not: both paths are checked.
  gateways.plain = await startGateway([...common, '--runtime-dir', runtimes.plain]);
  gateways.state = await startGateway([...common, '--runtime-dir', runtimes.state, '--state-dir', stateDir]);
});

afterAll(async () => {
  await Promise.all(Object.values(gateways).map((g) => g?.close()));
});

const files = (d: string): string[] => {
  try {
    return readdirSync(d).sort();
  } catch {
    return [];
  }
};

describe('path, name and type are checked at the boundary', () => {
  it('a path with NUL is a 400, and no file is left in the runtime dir', async () => {
    const t = gateways.plain;
    const before = files(runtimes.plain);
    const r = await t.api('api/kernels', { method: 'POST', json: { name: 'python3', path: 'nb\u0000.ipynb' } });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { code: string }).code).toBe('KG_BAD_REQUEST');
    expect(files(runtimes.plain)).toEqual(before);
    expect((await (await t.api('api/kernels')).json()) as unknown[]).toEqual([]);
  });

  it.each([
    ['path', { path: 'a\u0000b.ipynb', type: 'notebook', name: 'x' }],
    ['path', { path: 'a\nb.ipynb', type: 'notebook', name: 'x' }],
    ['name', { path: 'ok.ipynb', type: 'notebook', name: 'x\u0007' }],
    ['type', { path: 'ok.ipynb', type: 'note\u0000book', name: 'x' }],
    ['notebook.path', { notebook: { path: 'a\u001bb' }, type: 'notebook' }],
    ['path', { path: 'a'.repeat(5000), type: 'notebook' }],
  ])('a session whose %s holds a control character (or is too long) is a 400', async (_what, body) => {
    const t = gateways.plain;
    const r = await t.api('api/sessions', { method: 'POST', json: { ...body, kernel: { name: 'python3' } } });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { code: string }).code).toBe('KG_BAD_REQUEST');
    expect((await (await t.api('api/sessions')).json()) as unknown[]).toEqual([]);
  });

  it('a PATCH with a control character in the path is a 400', async () => {
    const t = gateways.plain;
    const r = await t.api('api/sessions', { method: 'POST', json: { path: 'patched.ipynb', type: 'notebook', name: 'p', kernel: { name: 'kgate-bench' } } });
    expect(r.status).toBe(201);
    const s = (await r.json()) as { id: string };
    expect((await t.api(`api/sessions/${s.id}`, { method: 'PATCH', json: { path: 'x\u0000y' } })).status).toBe(400);
    expect((await t.api(`api/sessions/${s.id}`, { method: 'DELETE' })).status).toBe(204);
  });
});

describe('a start that fails leaves no key file', () => {
  it.each([
    ['plain', 'no-such-binary'],
    ['plain', 'not-executable'],
    ['state', 'no-such-binary'],
    ['state', 'not-executable'],
  ] as const)('%s gateway, kernelspec %s: KG_KERNEL_START_FAILED and the runtime dir as before', async (which, name) => {
    const t = gateways[which];
    const before = files(runtimes[which]);
    const r = await t.api('api/kernels', { method: 'POST', json: { name } });
    expect(r.status).toBe(500);
    expect(((await r.json()) as { code: string }).code).toBe('KG_KERNEL_START_FAILED');
    expect(files(runtimes[which])).toEqual(before);
    expect(files(stateDir).filter((f) => f.endsWith('.json'))).toEqual([]);
  });
});

describe('KERNEL_WORKING_DIR is confined to --root-dir', () => {
  it.each([
    ['/root', '/root'],
    ['the state dir', stateDir],
    ['a symlink inside the root to /etc', join(root, 'escape')],
    ['a name under the symlink', join(root, 'escape', 'ssl')],
    ['..', '..'],
    ['a relative name that climbs out', 'sub/../../state'],
    ['the parent of the root', dir],
    ['a file', join(root, 'a-file')],
    ['a directory that does not exist', join(root, 'nope')],
  ])('%s is a 400 that names the rule, not the value', async (_what, value) => {
    const t = gateways.plain;
    const r = await t.api('api/kernels', { method: 'POST', json: { name: 'kgate-bench', env: { KERNEL_WORKING_DIR: value } } });
    expect(r.status).toBe(400);
    const body = (await r.json()) as { code: string; message: string };
    expect(body.code).toBe('KG_BAD_REQUEST');
    expect(body.message).toMatch(/KERNEL_WORKING_DIR/);
    expect(body.message).toMatch(/root/);
    expect(body.message).not.toContain(value);
    expect((await (await t.api('api/kernels')).json()) as unknown[]).toEqual([]);
  });

  it.each([
    ['an absolute subdirectory', join(root, 'sub', 'deeper'), join(root, 'sub', 'deeper')],
    ['a relative one, under the root', 'sub', join(root, 'sub')],
    ['a symlink that stays inside', join(root, 'inside-link'), join(root, 'sub')],
    ['the root itself', root, root],
  ])('%s is the kernel\u2019s working directory', async (_what, value, expected) => {
    const t = gateways.plain;
    const id = await t.startKernel('python3', { KERNEL_WORKING_DIR: value });
    const c = await KernelClient.connect(t, id);
    const m = c.execute('import os; print(os.getcwd())');
    await c.reply(m);
    expect(stdout(c.outputs(m)).trim()).toBe(expected);
    c.close();
    expect((await t.api(`api/kernels/${id}`, { method: 'DELETE' })).status).toBe(204);
  });
});
