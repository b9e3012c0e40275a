/**
 * The composition root: a test builds kgate through createServer with a fake
 * provisioner put in by name (no private field patched), and requests reach
 * it through fastify's inject(), with no socket and no kernel process.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { kernelUnschedulable } from '../../src/errors.js';
import type { Gateway } from '../../src/gateway/app.js';
import type { KernelSpec, LaunchRequest, Provisioner, ProvisionerDeps, ProvisionerFactory } from '../../src/provisioner/types.js';
import { buildGateway, TOKEN } from '../helpers/gateway.js';

const SCHEDULER_SAYS = '0/3 nodes are available: 3 Insufficient nvidia.com/mig-3g.20gb.';

interface Seen {
  created: Array<{ spec: KernelSpec; deps: ProvisionerDeps }>;
  launched: LaunchRequest[];
}

/** A provisioner whose every launch is refused by the (pretend) scheduler; it never starts anything. */
function unschedulable(name: string, seen: Seen): ProvisionerFactory {
  return {
    name,
    create(spec, deps): Provisioner {
      seen.created.push({ spec, deps });
      return {
        name,
        capabilities: { interrupt: 'message', restart: 'relaunch' },
        launch: (req) => {
          seen.launched.push(req);
          return Promise.reject(kernelUnschedulable(`pod pending: ${SCHEDULER_SAYS}`, 20));
        },
        poll: () => Promise.resolve(-1),
        exited: () => Promise.resolve(-1),
        wait: () => Promise.resolve(true),
        sendSignal: () => Promise.resolve(),
        terminate: () => Promise.resolve(),
        kill: () => Promise.resolve(),
        cleanup: () => Promise.resolve(),
        diagnostics: () => '',
        getInfo: () => ({ provisioner: name }),
        loadInfo: () => Promise.resolve(),
      };
    },
  };
}

let specDir: string;

beforeAll(() => {
  // A kernelspec that asks for the fake by name, with provisioner config of its own.
  specDir = mkdtempSync(join(tmpdir(), 'kgate-unit-specs-'));
  mkdirSync(join(specDir, 'gpu-fake'));
  const kernel = {
    argv: ['/nonexistent/kernel'],
    display_name: 'GPU (fake)',
    language: 'python',
    metadata: { kernel_provisioner: { provisioner_name: 'fake-k8s', config: { namespace: 'team-a' } } },
  };
  writeFileSync(join(specDir, 'gpu-fake', 'kernel.json'), JSON.stringify(kernel));
});

afterAll(() => rmSync(specDir, { recursive: true, force: true }));

let gw: Gateway | undefined;
afterEach(async () => {
  await gw?.close();
  gw = undefined;
});

const auth = { authorization: `token ${TOKEN}` };

describe('createServer with a fake provisioner', () => {
  it('starts a kernel through a provisioner given by name: an unschedulable start is a 503 with Retry-After', async () => {
    const seen: Seen = { created: [], launched: [] };
    gw = await buildGateway([], { provisioners: [unschedulable('fake-k8s', seen)], kernelspecDirs: [specDir] });

    const r = await gw.app.inject({ method: 'POST', url: '/api/kernels', headers: auth, payload: { name: 'gpu-fake' } });

    expect(r.statusCode).toBe(503);
    expect(r.headers['retry-after']).toBe('20');
    expect(r.headers['content-type']).toMatch(/^application\/json/);
    expect(r.json()).toEqual({ reason: 'Service Unavailable', message: expect.stringContaining(SCHEDULER_SAYS), code: 'KG_KERNEL_UNSCHEDULABLE' });
    // The start went through the fake, which got the spec's provisioner config.
    expect(seen.created).toHaveLength(1);
    expect(seen.created[0]!.spec.name).toBe('gpu-fake');
    expect(seen.created[0]!.deps.config).toEqual({ namespace: 'team-a' });
    expect(seen.launched).toHaveLength(1);
    expect(seen.launched[0]!.kernelId).toMatch(/^[0-9a-f-]{36}$/);
    // Nothing is left behind.
    const list = await gw.app.inject({ method: 'GET', url: '/api/kernels', headers: auth });
    expect(list.json()).toEqual([]);
  });

  it('a provisioner named local replaces the local one, for every kernelspec that names none', async () => {
    const seen: Seen = { created: [], launched: [] };
    gw = await buildGateway([], { provisioners: [unschedulable('local', seen)] });

    const r = await gw.app.inject({ method: 'POST', url: '/api/kernels', headers: auth, payload: { name: 'kgate-bench' } });

    expect(r.statusCode).toBe(503);
    expect(seen.launched.map((l) => l.spec.name)).toEqual(['kgate-bench']);
  });
});
