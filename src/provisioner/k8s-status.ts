/**
 * A kernel pod's status, read into what a launch and a supervisor need: the
 * launch phase it is in, the address once it runs, a failure that will not
 * pass by waiting (with the cluster's own words), or how it ended. Pure: it
 * reads a V1Pod as the API server answered it.
 */
import type { CoreV1Event, V1ContainerStatus, V1Pod } from '@kubernetes/client-node';
import { kernelImageUnavailable, kernelStartFailed, kernelUnschedulable, tenantQuota, type KgateError } from '../errors.js';
import { formatMemory } from '../kernels/quantity.js';
import { CONTAINER_NAME } from './k8s-objects.js';
import type { KernelExit, LaunchPhase } from './types.js';

export type PodView =
  /** Still on its way: scheduling, pulling the image, starting the container. */
  | { kind: 'waiting'; phase: Extract<LaunchPhase, 'scheduling' | 'pulling' | 'starting'>; detail?: string }
  /** The kernel's container runs and the pod has its IP. */
  | { kind: 'running'; ip: string }
  /** It will not start by waiting: unschedulable, its image cannot be had, its container cannot be made. */
  | { kind: 'failed'; error: KgateError }
  /** The kernel's container (or the pod) ended. */
  | { kind: 'ended'; exit: KernelExit; message: string };

/** The kubelet's reasons for an image it cannot get: none of them passes by waiting for the launch timeout. */
const IMAGE_REASONS = new Set(['ErrImagePull', 'ImagePullBackOff', 'InvalidImageName', 'ErrImageNeverPull', 'RegistryUnavailable']);
/** Reasons a container cannot be made that no retry fixes (a bad security context, a bad command). */
const CREATE_REASONS = new Set(['CreateContainerConfigError', 'CreateContainerError', 'RunContainerError', 'StartError']);

function kernelStatus(pod: V1Pod): V1ContainerStatus | undefined {
  return pod.status?.containerStatuses?.find((c) => c.name === CONTAINER_NAME);
}

function clip(s: string | undefined, max = 600): string {
  const t = (s ?? '').trim();
  return t.length > max ? `${t.slice(0, max)}…` : t;
}

/** How an ended container ended: the OOM killer's end is said as such, with the limit it hit. */
export function exitOf(terminated: { exitCode: number; reason?: string | undefined; message?: string | undefined }, memoryLimit?: number): { exit: KernelExit; message: string } {
  if (terminated.reason === 'OOMKilled') {
    const limit = memoryLimit ? ` of ${formatMemory(memoryLimit)}` : '';
    const detail = `the kernel was killed: it reached its memory limit${limit}`;
    return { exit: { code: terminated.exitCode, reason: 'out_of_memory', detail }, message: detail };
  }
  // The message is the end of its output (terminationMessagePolicy FallbackToLogsOnError): where a traceback ends.
  const tail = (terminated.message ?? '').trim();
  const why = [terminated.reason, tail.length > 600 ? `…${tail.slice(-600)}` : tail].filter(Boolean).join(': ');
  return { exit: { code: terminated.exitCode, reason: 'exited' }, message: `the kernel's container exited with code ${terminated.exitCode}${why ? ` (${why})` : ''}` };
}

/**
 * Where the pod is. `image` names the image in a pull failure; `memoryLimit`
 * (bytes) is said in an out-of-memory end.
 */
export function readPod(pod: V1Pod, o: { image: string; memoryLimit?: number | undefined }): PodView {
  const cs = kernelStatus(pod);
  const terminated = cs?.state?.terminated;
  if (terminated) return { kind: 'ended', ...exitOf(terminated, o.memoryLimit) };
  const phase = pod.status?.phase;
  if (phase === 'Failed' || phase === 'Succeeded') {
    // Ended without its container's end recorded (evicted, the node lost).
    const why = [pod.status?.reason, clip(pod.status?.message, 300)].filter(Boolean).join(': ');
    return { kind: 'ended', exit: { code: -1, reason: 'exited' }, message: `the kernel's pod ${phase === 'Failed' ? 'failed' : 'ended'}${why ? ` (${why})` : ''}` };
  }
  const scheduled = pod.status?.conditions?.find((c) => c.type === 'PodScheduled');
  if (scheduled?.status === 'False' && scheduled.reason === 'Unschedulable') {
    return { kind: 'failed', error: kernelUnschedulable(`the kernel's pod cannot be scheduled: ${clip(scheduled.message) || 'no node fits it'}`) };
  }
  const waiting = cs?.state?.waiting;
  if (waiting?.reason && IMAGE_REASONS.has(waiting.reason)) {
    return {
      kind: 'failed',
      error: kernelImageUnavailable(`the kernel image ${o.image} cannot be pulled (${waiting.reason})${waiting.message ? `: ${clip(waiting.message)}` : ''}`),
    };
  }
  if (waiting?.reason && CREATE_REASONS.has(waiting.reason)) {
    return { kind: 'failed', error: kernelStartFailed(`the kernel's container cannot be started (${waiting.reason})${waiting.message ? `: ${clip(waiting.message)}` : ''}`) };
  }
  if (cs?.state?.running && phase === 'Running' && pod.status?.podIP) return { kind: 'running', ip: pod.status.podIP };
  if (!pod.spec?.nodeName || scheduled?.status !== 'True') return { kind: 'waiting', phase: 'scheduling' };
  if (waiting?.reason === 'Pulling' || waiting?.reason === 'PullingImage') return { kind: 'waiting', phase: 'pulling', detail: o.image };
  return { kind: 'waiting', phase: 'starting', ...(pod.spec.nodeName ? { detail: pod.spec.nodeName } : {}) };
}

/**
 * A kubelet event about the pod, read for the phase it tells of: the
 * kubelet says "Pulling" only in an event (the container's state stays
 * ContainerCreating meanwhile).
 */
export function phaseOfEvent(e: CoreV1Event): Extract<LaunchPhase, 'pulling' | 'starting'> | undefined {
  if (e.reason === 'Pulling') return 'pulling';
  if (e.reason === 'Pulled' || e.reason === 'Created' || e.reason === 'Started') return 'starting';
  return undefined;
}

/** What the API server said when it refused a request, from client-node's ApiException (its body is the Status as text or object). */
export function apiStatus(e: unknown): { code: number; reason: string; message: string } | undefined {
  if (e === null || typeof e !== 'object' || typeof (e as { code?: unknown }).code !== 'number') return undefined;
  const { code, body } = e as { code: number; body?: unknown };
  let status: { reason?: unknown; message?: unknown } | undefined;
  if (typeof body === 'string') {
    try {
      status = JSON.parse(body) as typeof status;
    } catch {
      status = { message: body };
    }
  } else if (body !== null && typeof body === 'object') {
    status = body as typeof status;
  }
  return { code, reason: typeof status?.reason === 'string' ? status.reason : '', message: typeof status?.message === 'string' ? clip(status.message, 1000) : '' };
}

/** A refused create, as a domain error: the API server's quota refusal is the tenant's quota, in its own words. */
export function createRefusal(e: unknown, what: string): KgateError | undefined {
  const s = apiStatus(e);
  if (!s) return undefined;
  if (s.code === 403 && /exceeded quota/i.test(s.message)) return tenantQuota(`the tenant's namespace quota refuses the kernel: ${s.message}`);
  return kernelStartFailed(`the API server refused to create the kernel's ${what} (${s.code}${s.reason ? ` ${s.reason}` : ''})${s.message ? `: ${s.message}` : ''}`, e);
}
