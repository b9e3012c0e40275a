/** Admission: decided and reserved synchronously, keyed on the user the principal gives, never on a client's KERNEL_USERNAME. */
import { describe, expect, it } from 'vitest';
import { ErrorCodes } from '../../src/errors.js';
import { KernelLimits } from '../../src/kernels/admission.js';
import { DEFAULT_TENANT, type Principal } from '../../src/principal.js';
import { fakeManager } from '../helpers/fake-provisioner.js';

const user = (name: string): Principal => ({ user: name, tenant: DEFAULT_TENANT, scopes: new Set(), via: 'static-token' });

describe('fake provisioner: admission', () => {
  it('KernelLimits counts reservations in flight, in all and per user, and a release gives the slot back once', () => {
    const limits = new KernelLimits({ maxKernels: 3, maxKernelsPerUser: 2 });
    const running: never[] = [];
    const req = (u: string) => ({ principal: user(u), user: u, kernelspec: 'fake', resources: {} });
    const a1 = limits.admit(req('alice'), running);
    limits.admit(req('alice'), running);
    expect(() => limits.admit(req('alice'), running)).toThrow(expect.objectContaining({ code: ErrorCodes.USER_KERNEL_LIMIT }));
    limits.admit(req('bob'), running);
    expect(() => limits.admit(req('carol'), running)).toThrow(expect.objectContaining({ code: ErrorCodes.KERNEL_LIMIT }));
    a1();
    a1();
    limits.admit(req('carol'), running);
    expect(() => limits.admit(req('dave'), running)).toThrow(expect.objectContaining({ code: ErrorCodes.KERNEL_LIMIT }));
  });

  it('a user without the impersonate scope cannot get past --max-kernels-per-user by naming another KERNEL_USERNAME', async () => {
    const t = fakeManager({}, { maxKernelsPerUser: 1 });
    try {
      const k = await t.manager.start({ name: 'fake', principal: user('alice') });
      expect(k.owner).toBe('alice');
      await expect(t.manager.start({ name: 'fake', principal: user('alice'), env: { KERNEL_USERNAME: 'mallory' } })).rejects.toMatchObject({ code: ErrorCodes.USER_KERNEL_LIMIT });
      // And alice's kernel is not bob's to see: not found, as if it did not exist.
      await expect(t.manager.find(k.id, user('bob'))).rejects.toMatchObject({ code: ErrorCodes.KERNEL_NOT_FOUND });
      expect((await t.manager.listShared(user('bob'))).map((x) => x.id)).toEqual([]);
      expect((await t.manager.listShared(user('alice'))).map((x) => x.id)).toEqual([k.id]);
    } finally {
      await t.close();
    }
  });

  it("the kernel's KERNEL_USERNAME is the authenticated user; a caller that may impersonate (the operator token) names it", async () => {
    const t = fakeManager();
    try {
      const mine = await t.manager.start({ name: 'fake', principal: user('alice'), env: { KERNEL_USERNAME: 'mallory' } });
      expect(mine.owner).toBe('alice');
      expect(t.made[0]!.requests[0]!.env['KERNEL_USERNAME']).toBe('alice');
      const forBob = await t.manager.start({ name: 'fake', env: { KERNEL_USERNAME: 'bob' } });
      expect(forBob.owner).toBe('bob');
      expect(t.made[1]!.requests[0]!.env['KERNEL_USERNAME']).toBe('bob');
    } finally {
      await t.close();
    }
  });
});
