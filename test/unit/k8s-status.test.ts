/**
 * Reading a kernel pod's status (src/provisioner/k8s-status.ts): the launch
 * phases, the address once it runs, the failures that do not pass by waiting
 * in the cluster's own words (and the HTTP status they become), how it ended,
 * and the API server's refusals (a quota's among them).
 */
import { ApiException, type V1Pod } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { ErrorCodes } from '../../src/errors.js';
import { httpStatusOf } from '../../src/gateway/http-errors.js';
import { apiStatus, createRefusal, phaseOfEvent, readPod } from '../../src/provisioner/k8s-status.js';

const IMAGE = 'registry.example/kgate-kernel:1';

function pod(status: V1Pod['status'], nodeName?: string): V1Pod {
  return { metadata: { name: 'kgate-kernel-x', uid: 'u1' }, spec: { containers: [{ name: 'kernel' }], ...(nodeName ? { nodeName } : {}) }, status };
}
const scheduled = { type: 'PodScheduled', status: 'True' };

describe('readPod', () => {
  it('reads the launch phases', () => {
    expect(readPod(pod({ phase: 'Pending' }), { image: IMAGE })).toEqual({ kind: 'waiting', phase: 'scheduling' });
    expect(
      readPod(pod({ phase: 'Pending', conditions: [scheduled], containerStatuses: [{ name: 'kernel', state: { waiting: { reason: 'ContainerCreating' } } } as never] }, 'node-a'), {
        image: IMAGE,
      }),
    ).toEqual({ kind: 'waiting', phase: 'starting', detail: 'node-a' });
    const running = pod({ phase: 'Running', podIP: '10.88.0.7', conditions: [scheduled], containerStatuses: [{ name: 'kernel', state: { running: {} } } as never] }, 'node-a');
    expect(readPod(running, { image: IMAGE })).toEqual({ kind: 'running', ip: '10.88.0.7' });
    // Running without its IP yet: still starting.
    expect(readPod({ ...running, status: { ...running.status!, podIP: undefined } }, { image: IMAGE })).toMatchObject({ kind: 'waiting', phase: 'starting' });
  });

  it("fails an unschedulable pod at once with the scheduler's message, as a 503", () => {
    const msg = '0/3 nodes are available: 3 Insufficient nvidia.com/mig-3g.20gb. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.';
    const v = readPod(pod({ phase: 'Pending', conditions: [{ type: 'PodScheduled', status: 'False', reason: 'Unschedulable', message: msg }] }), { image: IMAGE });
    expect(v.kind).toBe('failed');
    if (v.kind !== 'failed') return;
    expect(v.error.code).toBe(ErrorCodes.KERNEL_UNSCHEDULABLE);
    expect(v.error.message).toContain('0/3 nodes are available: 3 Insufficient nvidia.com/mig-3g.20gb.');
    expect(httpStatusOf(v.error)).toBe(503);
  });

  it.each(['ErrImagePull', 'ImagePullBackOff', 'InvalidImageName'])('fails a pod whose image cannot be pulled (%s), naming the image', (reason) => {
    const v = readPod(
      pod({ phase: 'Pending', conditions: [scheduled], containerStatuses: [{ name: 'kernel', state: { waiting: { reason, message: 'manifest unknown' } } } as never] }, 'node-a'),
      { image: IMAGE },
    );
    expect(v.kind).toBe('failed');
    if (v.kind !== 'failed') return;
    expect(v.error.code).toBe(ErrorCodes.KERNEL_IMAGE_UNAVAILABLE);
    expect(v.error.message).toContain(IMAGE);
    expect(v.error.message).toContain(reason);
  });

  it('says an OOM-killed kernel was killed for memory, with its limit', () => {
    const v = readPod(pod({ phase: 'Failed', containerStatuses: [{ name: 'kernel', state: { terminated: { exitCode: 137, reason: 'OOMKilled' } } } as never] }, 'node-a'), {
      image: IMAGE,
      memoryLimit: 256 * 2 ** 20,
    });
    expect(v).toEqual({
      kind: 'ended',
      exit: { code: 137, reason: 'out_of_memory', detail: 'the kernel was killed: it reached its memory limit of 256Mi' },
      message: 'the kernel was killed: it reached its memory limit of 256Mi',
    });
  });

  it('reads any other end with its exit code, and a pod that failed without one', () => {
    const v = readPod(pod({ phase: 'Succeeded', containerStatuses: [{ name: 'kernel', state: { terminated: { exitCode: 0, reason: 'Completed' } } } as never] }), { image: IMAGE });
    expect(v).toMatchObject({ kind: 'ended', exit: { code: 0, reason: 'exited' } });
    const evicted = readPod(pod({ phase: 'Failed', reason: 'Evicted', message: 'The node was low on resource: memory.' }), { image: IMAGE });
    expect(evicted).toMatchObject({ kind: 'ended', exit: { code: -1, reason: 'exited' } });
    if (evicted.kind === 'ended') expect(evicted.message).toContain('Evicted');
  });

  it('reads the Pulling event as the pulling phase', () => {
    expect(phaseOfEvent({ reason: 'Pulling', involvedObject: {}, metadata: {} })).toBe('pulling');
    expect(phaseOfEvent({ reason: 'Started', involvedObject: {}, metadata: {} })).toBe('starting');
    expect(phaseOfEvent({ reason: 'Scheduled', involvedObject: {}, metadata: {} })).toBeUndefined();
  });
});

describe('API refusals', () => {
  const status = (code: number, reason: string, message: string): string => JSON.stringify({ kind: 'Status', apiVersion: 'v1', status: 'Failure', reason, message, code });

  it("makes the API server's quota refusal the tenant's quota, in its words", () => {
    const msg = 'pods "kgate-kernel-x" is forbidden: exceeded quota: kgate-tenant, requested: pods=1, used: pods=2, limited: pods=2';
    const e = createRefusal(new ApiException(403, 'Forbidden', status(403, 'Forbidden', msg), {}), 'pod');
    expect(e?.code).toBe(ErrorCodes.TENANT_QUOTA);
    expect(e?.message).toContain(msg);
  });

  it('makes any other refusal a start failure that says it, and leaves errors that are not the API server alone', () => {
    const e = createRefusal(new ApiException(403, 'Forbidden', status(403, 'Forbidden', 'pods is forbidden: User "kgate" cannot create resource "pods"'), {}), 'pod');
    expect(e?.code).toBe(ErrorCodes.KERNEL_START_FAILED);
    expect(e?.message).toContain('cannot create resource');
    expect(createRefusal(new Error('ECONNREFUSED'), 'pod')).toBeUndefined();
    expect(apiStatus(new ApiException(404, 'Not Found', { reason: 'NotFound', message: 'gone' }, {}))).toEqual({ code: 404, reason: 'NotFound', message: 'gone' });
  });
});
