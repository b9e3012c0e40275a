/**
 * The sandbox provisioner's refusals, before any kernel code runs: a
 * kernelspec config that is not valid, a working directory that would show
 * kgate's own files, a working directory that is `/`. Each is a clear
 * KG_KERNEL_START_FAILED, and a launch refused after its cgroup and directory
 * were made leaves neither behind. Real bwrap and cgroups; the kernels never
 * start.
 */
import { mkdirSync, mkdtempSync, readdirSync, realpathSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ErrorCodes } from '../../src/errors.js';
import { FreePorts } from '../../src/provisioner/ports.js';
import { SandboxProvisioner, sandboxSpecConfig } from '../../src/provisioner/sandbox.js';
import type { LaunchContext, LaunchRequest } from '../../src/provisioner/types.js';
import { kernelCgroupDirs } from '../helpers/provisioner-specs.js';

const dir = realpathSync(mkdtempSync(join(tmpdir(), 'kgate-sbu-')));
const baseDir = join(dir, 'sb');
const hidden = join(dir, 'work', 'state');
mkdirSync(hidden, { recursive: true });

function request(id: string, config: Record<string, unknown>, cwd: string): LaunchRequest {
  return {
    kernelId: id,
    spec: { name: 'refused', resourceDir: dir, spec: { argv: ['/usr/bin/true'], display_name: 'refused', language: 'sh' } },
    key: 'k'.repeat(64),
    env: {},
    cwd,
    principal: { user: undefined, tenant: 'default' },
    config,
    resources: { memory: 128 * 1024 * 1024 },
    ports: new FreePorts(),
  };
}

const ctx: LaunchContext = {
  signal: new AbortController().signal,
  onProgress: () => undefined,
  connect: () => Promise.reject(new Error('never reached')),
};

describe('sandbox provisioner: refusals', () => {
  it('a kernelspec config that is not valid is named, key by key', () => {
    let caught: unknown;
    try {
      sandboxSpecConfig('bad', { working_dir: 'everything', pids: 3, ro_paths: ['relative/path'], cgroup_parent: '../escape' }, { pids: 256 });
    } catch (e) {
      caught = e;
    }
    expect(caught).toMatchObject({ code: ErrorCodes.KERNEL_START_FAILED });
    const msg = (caught as Error).message;
    for (const key of ['working_dir', 'pids', 'ro_paths', 'cgroup_parent']) expect(msg).toContain(`config.${key}`);
    expect(sandboxSpecConfig('good', {}, { pids: 256 })).toEqual({ egress: false, workingDir: 'none', pids: 256, roPaths: [], cgroupParent: undefined });
  });

  it('a working directory inside a hidden path, or /, is refused, and the refused launch leaves no cgroup or directory', async () => {
    const p = new SandboxProvisioner({ baseDir, hide: [hidden] });
    for (const [id, cwd, why] of [
      ['refused-inside-hidden', join(hidden, 'sub'), /holds kgate's/],
      ['refused-root', '/', /will not bind \//],
    ] as const) {
      if (cwd !== '/') mkdirSync(cwd, { recursive: true });
      await expect(p.launch(request(id, { working_dir: 'read-only' }, cwd), ctx)).rejects.toMatchObject({
        code: ErrorCodes.KERNEL_START_FAILED,
        message: expect.stringMatching(why),
      });
      expect(kernelCgroupDirs(id)).toEqual([]);
      expect(readdirSync(baseDir)).toEqual([]);
    }
  });
});
