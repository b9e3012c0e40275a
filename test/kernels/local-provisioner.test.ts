/**
 * The local provisioner's port race: the gateway's ports are probed free,
 * then bound by the kernel, and another process can take one in between. A
 * fresh start whose kernel exits with "address already in use" starts again
 * with new ports, inside the provisioner's launch; past PORT_RACE_ATTEMPTS it
 * is a start failure that leaves nothing behind. The "kernel" is a shell
 * script (a few ms to spawn) that fails the first N times.
 */
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ErrorCodes, KgateError } from '../../src/errors.js';
import { LocalProvisioner } from '../../src/provisioner/local.js';
import { FreePorts } from '../../src/provisioner/ports.js';
import { KernelExited, type ConnectionInfo, type LaunchContext, type LaunchRequest } from '../../src/provisioner/types.js';

/** Fails with ZeroMQ's bind error on its first `fails` runs (counted in a file beside the connection file), then stays up. */
function racingKernel(fails: number): string[] {
  const script = `n=$(cat "$1.count" 2>/dev/null || echo 0); echo $((n+1)) > "$1.count"; if [ "$n" -lt ${fails} ]; then echo "zmq.error.ZMQError: Address already in use (addr='tcp://127.0.0.1:1')" >&2; exit 1; fi; exec sleep 30`;
  return ['/bin/sh', '-c', script, 'kernel', '{connection_file}'];
}

function setup(fails: number): { p: LocalProvisioner; req: LaunchRequest; ctx: LaunchContext; connects: ConnectionInfo[]; runtimeDir: string } {
  const runtimeDir = mkdtempSync(join(tmpdir(), 'kgate-port-race-'));
  const p = new LocalProvisioner({ runtimeDir, ip: '127.0.0.1', scrubEnv: () => false });
  const connects: ConnectionInfo[] = [];
  const req: LaunchRequest = {
    kernelId: `race-${fails}`,
    spec: { name: 'racing', resourceDir: runtimeDir, spec: { argv: racingKernel(fails), display_name: 'racing', language: 'sh' } },
    key: 'k'.repeat(64),
    env: {},
    cwd: runtimeDir,
    principal: { user: undefined, tenant: 'default' },
    config: {},
    resources: {},
    ports: new FreePorts(),
  };
  const ctx: LaunchContext = {
    signal: new AbortController().signal,
    onProgress: () => undefined,
    // The gateway's readiness check, shortened: the kernel exits (KernelExited) or is taken as up after 100 ms.
    connect: async (conn) => {
      connects.push(conn);
      const up = new Promise<void>((r) => setTimeout(r, 100));
      await Promise.race([up, p.exited().then((code) => Promise.reject(new KernelExited(code)))]);
    },
  };
  return { p, req, ctx, connects, runtimeDir };
}

describe('local provisioner: the port race', () => {
  it('a kernel that finds its port taken is started again with new ports, within the launch', async () => {
    const { p, req, ctx, connects } = setup(2);
    const conn = await p.launch(req, ctx);
    try {
      expect(connects).toHaveLength(3);
      expect(new Set(connects.map((c) => c.shell_port)).size).toBe(3);
      expect(conn).toEqual(connects[2]);
      expect(conn.key).toBe(req.key);
      expect(await p.poll()).toBeUndefined();
    } finally {
      await p.kill();
      await p.wait(2000);
      await p.cleanup(false);
    }
  });

  it('past three attempts it is KG_KERNEL_START_FAILED with the stderr, and no connection file is left', async () => {
    const { p, req, ctx, connects, runtimeDir } = setup(99);
    let caught: unknown;
    try {
      await p.launch(req, ctx);
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(KgateError);
    expect((caught as KgateError).code).toBe(ErrorCodes.KERNEL_START_FAILED);
    expect((caught as KgateError).message).toMatch(/Address already in use/);
    expect(connects).toHaveLength(3);
    expect(existsSync(join(runtimeDir, `kernel-${req.kernelId}.json`))).toBe(false);
  });

  it('a restart keeps its address: a port race there is not retried', async () => {
    const { p, req, ctx, connects } = setup(1);
    const reuse: ConnectionInfo = { ...(await req.ports.take('127.0.0.1')), key: req.key, signature_scheme: 'hmac-sha256', kernel_name: 'racing' };
    await expect(p.launch({ ...req, reuse }, ctx)).rejects.toMatchObject({ code: ErrorCodes.KERNEL_START_FAILED });
    expect(connects).toEqual([reuse]);
  });
});
