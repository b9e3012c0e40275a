/**
 * The SessionManager with principals, on fake kernels: who sees which
 * session, what a caller who may not see one gets (the 404 of an id that does
 * not exist), that reusing a path never hands out someone else's session,
 * whom a session made by an impersonating front server belongs to, and, on a
 * state dir, that sessions are files another manager (a replica, or the next
 * gateway) reads, gone with their kernels.
 */
import { mkdtempSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ErrorCodes, KgateError } from '../../src/errors.js';
import { FileSessionStore } from '../../src/kernels/session-store.js';
import { SessionManager, type Session } from '../../src/kernels/sessions.js';
import { KernelStateStore } from '../../src/kernels/state.js';
import { Scopes, type Principal } from '../../src/principal.js';
import { FakeCluster, fakeManager, type FakeManager } from '../helpers/fake-provisioner.js';
import { until } from '../helpers/wait.js';

const who = (user: string | undefined, tenant: string, ...scopes: string[]): Principal => ({ user, tenant, scopes: new Set(scopes), via: 'jwt' });
const alice = who('alice', 'acme');
const bob = who('bob', 'acme');
const carol = who('carol', 'globex');
const acmeAdmin = who('ada', 'acme', Scopes.TENANT_ADMIN);
const admin = who('root', 'ops', Scopes.ADMIN);
const frontServer = who('jhub', 'acme', Scopes.IMPERSONATE);

const open: FakeManager[] = [];
afterEach(async () => {
  await Promise.allSettled(open.splice(0).map((m) => m.close()));
});

function managed(options: Parameters<typeof fakeManager>[1] = {}, cluster?: FakeCluster): FakeManager {
  const m = fakeManager({}, options, cluster);
  open.push(m);
  return m;
}

/** The error a call rejects with, as the route would answer it. */
async function failure(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await p;
  } catch (e) {
    if (e instanceof KgateError) return { code: e.code, message: e.message };
    throw e;
  }
  throw new Error('expected a rejection');
}

const ids = (list: Session[]): string[] => list.map((s) => s.id).sort();
const make = (
  sessions: SessionManager,
  principal: Principal,
  path: string,
  kernel: { id?: string; name?: string; env?: Record<string, unknown> } = { name: 'fake' },
): Promise<Session> => sessions.create({ path, name: path, type: 'notebook', kernel, principal });

describe('sessions with principals (fake provisioner)', () => {
  it('lists only what each caller may see, and answers every other one as an unknown id', async () => {
    const { manager } = managed();
    const sessions = new SessionManager(manager);
    const a = await make(sessions, alice, 'a.ipynb');
    const b = await make(sessions, bob, 'b.ipynb');
    const c = await make(sessions, carol, 'c.ipynb');
    expect([a.owner, a.tenant, b.owner, c.tenant]).toEqual(['alice', 'acme', 'bob', 'globex']);

    expect(ids(await sessions.list(alice))).toEqual([a.id]);
    expect(ids(await sessions.list(bob))).toEqual([b.id]);
    expect(ids(await sessions.list(carol))).toEqual([c.id]);
    expect(ids(await sessions.list(acmeAdmin))).toEqual(ids([a, b]));
    expect(ids(await sessions.list(admin))).toEqual(ids([a, b, c]));
    expect((await sessions.get(a.id, acmeAdmin)).id).toBe(a.id);
    expect((await sessions.get(c.id, admin)).id).toBe(c.id);

    // Bob on Alice's session, Carol and the tenant admin of acme on Bob's and Carol's: the answer for an id that does not exist.
    const unknown = '00000000-0000-4000-8000-000000000000';
    const notFound = await failure(sessions.get(unknown, bob));
    expect(notFound.code).toBe(ErrorCodes.SESSION_NOT_FOUND);
    for (const [s, p] of [
      [a, bob],
      [b, carol],
      [c, acmeAdmin],
    ] as const) {
      for (const op of [() => sessions.get(s.id, p), () => sessions.update(s.id, { name: 'taken', principal: p }), () => sessions.delete(s.id, p)]) {
        const e = await failure(op());
        expect(e).toEqual({ code: notFound.code, message: notFound.message.replace(unknown, s.id) });
      }
    }
    // None of it changed anything: the sessions and their kernels are as they were.
    expect((await sessions.get(a.id, alice)).name).toBe('a.ipynb');
    for (const s of [a, b, c]) expect(manager.get(s.kernelId).phase).toBe('running');

    // Moving one's session onto a kernel one may not see: that kernel is not found; the session keeps its own.
    const moved = await failure(sessions.update(b.id, { kernel: { id: a.kernelId }, principal: bob }));
    expect(moved.code).toBe(ErrorCodes.KERNEL_NOT_FOUND);
    expect((await sessions.get(b.id, bob)).kernelId).toBe(b.kernelId);
    // Nor may a session be made on it.
    expect((await failure(make(sessions, bob, 'x.ipynb', { id: a.kernelId }))).code).toBe(ErrorCodes.KERNEL_NOT_FOUND);
    // On one's own kernel, yes.
    const again = await make(sessions, alice, 'console-1', { id: a.kernelId });
    expect([again.kernelId, again.owner]).toEqual([a.kernelId, 'alice']);

    // Alice deletes hers: its kernel is shut down, as her.
    await sessions.delete(a.id, alice);
    await until(() => !manager.has(a.kernelId), 'the kernel to go', 2000, 10);
    expect((await failure(sessions.get(a.id, alice))).code).toBe(ErrorCodes.SESSION_NOT_FOUND);
    // The other session on that kernel goes with it.
    await until(async () => (await sessions.list(alice)).length === 0, "Alice's other session to go", 2000, 10);
    expect(ids(await sessions.list(admin))).toEqual(ids([b, c]));
  });

  it('a path that already has a session gives it back only to one who may see it', async () => {
    const { manager } = managed();
    const sessions = new SessionManager(manager);
    const a = await make(sessions, alice, 'shared.ipynb');
    expect((await make(sessions, alice, 'shared.ipynb')).id).toBe(a.id);

    const b = await make(sessions, bob, 'shared.ipynb');
    expect(b.id).not.toBe(a.id);
    expect(b.kernelId).not.toBe(a.kernelId);
    expect(b.owner).toBe('bob');
    const c = await make(sessions, carol, 'shared.ipynb');
    expect([c.owner, c.tenant]).toEqual(['carol', 'globex']);
    expect(new Set([a.kernelId, b.kernelId, c.kernelId]).size).toBe(3);
    // Each still gets its own back.
    expect((await make(sessions, bob, 'shared.ipynb')).id).toBe(b.id);
    expect((await make(sessions, carol, 'shared.ipynb')).id).toBe(c.id);
    // The tenant admin of acme may see both of acme's: it gets one of them, never Carol's.
    expect([a.id, b.id]).toContain((await make(sessions, acmeAdmin, 'shared.ipynb')).id);
    expect(manager.list()).toHaveLength(3);
  });

  it("an impersonating front server's session is the named user's, as its kernel is; anyone else's KERNEL_USERNAME is not identity", async () => {
    const { manager, made } = managed();
    const sessions = new SessionManager(manager);
    const forBob = await make(sessions, frontServer, 'bob.ipynb', { name: 'fake', env: { KERNEL_USERNAME: 'bob' } });
    expect([forBob.owner, forBob.tenant]).toEqual(['bob', 'acme']);
    expect([manager.get(forBob.kernelId).owner, manager.get(forBob.kernelId).tenant]).toEqual(['bob', 'acme']);
    expect(made.at(-1)!.requests[0]!.env['KERNEL_USERNAME']).toBe('bob');
    expect(ids(await sessions.list(bob))).toEqual([forBob.id]);
    expect(await sessions.list(alice)).toEqual([]);
    // The front server sees what it started for Bob (its client reads it back), as it sees all of its tenant's.
    expect((await sessions.get(forBob.id, frontServer)).id).toBe(forBob.id);

    // Alice names Bob: the kernel and the session are hers, and her kernel is told so.
    const spoofed = await make(sessions, alice, 'spoof.ipynb', { name: 'fake', env: { KERNEL_USERNAME: 'bob' } });
    expect(spoofed.owner).toBe('alice');
    expect(manager.get(spoofed.kernelId).owner).toBe('alice');
    expect(made.at(-1)!.requests[0]!.env['KERNEL_USERNAME']).toBe('alice');
    expect(ids(await sessions.list(bob))).toEqual([forBob.id]);
    expect((await failure(sessions.get(spoofed.id, bob))).code).toBe(ErrorCodes.SESSION_NOT_FOUND);
  });

  it('on a state dir: one file per session (0600, no key), read by another manager on the dir, removed with its kernel', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kgate-sessions-'));
    const cluster = new FakeCluster();
    const recordsA = new KernelStateStore(dir, 300);
    const recordsB = new KernelStateStore(dir, 300);
    const a = managed({ store: recordsA }, cluster);
    const b = managed({ store: recordsB }, cluster);
    const onA = new SessionManager(a.manager, { stateDir: dir, kernelRecords: recordsA });
    const onB = new SessionManager(b.manager, { stateDir: dir, kernelRecords: recordsB });

    const s = await make(onA, alice, 'a.ipynb');
    const t = await make(onA, bob, 'b.ipynb');
    const files = readdirSync(join(dir, 'sessions')).sort();
    expect(files).toEqual([`${s.id}.json`, `${t.id}.json`].sort());
    expect(statSync(join(dir, 'sessions')).mode & 0o077).toBe(0);
    const key = a.manager.get(s.kernelId).conn!.key;
    for (const f of files) {
      expect(statSync(join(dir, 'sessions', f)).mode & 0o777).toBe(0o600);
      const text = readFileSync(join(dir, 'sessions', f), 'utf8');
      expect(text).not.toContain(key);
      expect(text).not.toMatch(/key|token/i);
    }

    // The other manager lists them, with their owners (it follows their kernels).
    expect(ids(await onB.list(alice))).toEqual([s.id]);
    expect(ids(await onB.list(acmeAdmin))).toEqual(ids([s, t]));
    expect(onB.model(await onB.get(t.id, bob)).kernel.id).toBe(t.kernelId);
    expect((await failure(onB.get(s.id, bob))).code).toBe(ErrorCodes.SESSION_NOT_FOUND);
    // An edit on one is read on the other; a delete on the other is gone on the first.
    await onA.update(s.id, { name: 'renamed', principal: alice });
    expect((await onB.get(s.id, alice)).name).toBe('renamed');
    await onB.delete(t.id, bob);
    expect(ids(await onA.list(admin))).toEqual([s.id]);
    await until(() => !a.manager.has(t.kernelId), "Bob's kernel to be shut down through B", 3000, 10);

    // A manager that starts on the dir later (the next gateway) reads the session as it was.
    const later = new SessionManager(a.manager, { stateDir: dir, kernelRecords: recordsA });
    expect(await later.get(s.id, alice)).toEqual({ ...s, name: 'renamed' });

    // The kernel is shut down (not through the session): its session file goes with it.
    await a.manager.shutdown(s.kernelId);
    await until(() => readdirSync(join(dir, 'sessions')).length === 0, 'the session file to be removed', 3000, 10);
    expect(await onB.list(admin)).toEqual([]);
  });

  it('a session file whose kernel is gone from the state dir is not listed, and is removed', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kgate-sessions-'));
    const records = new KernelStateStore(dir);
    const { manager } = managed({ store: records });
    const sessions = new SessionManager(manager, { stateDir: dir, kernelRecords: records });
    const s = await make(sessions, alice, 'a.ipynb');
    // What a gateway that died between the two removals leaves: a session of a kernel no one has.
    const store = new FileSessionStore(dir);
    await store.save({ version: 1, id: 'orphan-1', path: 'o.ipynb', name: '', type: 'notebook', kernelId: '11111111-1111-4111-8111-111111111111', owner: 'alice', tenant: 'acme' });
    expect(ids(await sessions.list(alice))).toEqual([s.id]);
    expect(await store.load('orphan-1')).toBeUndefined();
    // Ids that cannot name a file are not found, never read.
    for (const id of ['../a', 'a/b', '', 'x'.repeat(65)]) expect((await failure(sessions.get(id, admin))).code).toBe(ErrorCodes.SESSION_NOT_FOUND);
  });
});
