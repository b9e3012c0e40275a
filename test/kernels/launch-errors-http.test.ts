/**
 * A typed launch error reaches the HTTP caller through the composition root
 * (createServer with a fake provisioner in its overrides): an unschedulable
 * start is a 503 with Retry-After, its stable code and the scheduler's reason.
 */
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { ErrorCodes, kernelUnschedulable } from '../../src/errors.js';
import { createServer } from '../../src/gateway/app.js';
import { createLogger } from '../../src/log.js';
import { fakeKernelspecDir, fakeProvisionerFactory } from '../helpers/fake-provisioner.js';

describe('fake provisioner: launch errors over HTTP', () => {
  it('POST /api/kernels on an unschedulable kernelspec: 503, Retry-After, KG_KERNEL_UNSCHEDULABLE and the reason', async () => {
    const reason = '0/3 nodes are available: 3 Insufficient nvidia.com/mig-3g.20gb.';
    const fake = fakeProvisionerFactory({ script: [kernelUnschedulable(reason, 45)] });
    const gw = await createServer(loadConfig(['--port', '0', '--auth-token', 'tok'], {}), {
      log: createLogger('silent'),
      provisioners: [fake],
      kernelspecDirs: [fakeKernelspecDir()],
    });
    try {
      const r = await gw.app.inject({ method: 'POST', url: '/api/kernels', headers: { authorization: 'token tok' }, payload: { name: 'fake' } });
      expect(r.statusCode).toBe(503);
      expect(r.headers['retry-after']).toBe('45');
      const body = r.json<{ code: string; message: string }>();
      expect(body.code).toBe(ErrorCodes.KERNEL_UNSCHEDULABLE);
      expect(body.message).toContain(reason);
      expect(fake.made).toHaveLength(1);
      const listed = await gw.app.inject({ method: 'GET', url: '/api/kernels', headers: { authorization: 'token tok' } });
      expect(listed.json()).toEqual([]);
    } finally {
      await gw.close();
    }
  });
});
