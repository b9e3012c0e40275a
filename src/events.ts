/**
 * kgate's lifecycle and relay events, on named `node:diagnostics_channel`
 * channels (as undici's `lib/core/diagnostics.js`). Metrics, metering, the
 * audit log and the status page subscribe; nothing is built or published
 * while no one does, so the hot path pays one `hasSubscribers` read.
 *
 *   import { events, publish } from './events.js';
 *   if (events.kernelReady.hasSubscribers) publish(events.kernelReady, { ... });
 *
 * Messages never carry a kernel's key, a token or message content.
 */
import diagnostics from 'node:diagnostics_channel';
import type { ResourceRequest } from './provisioner/types.js';

/** A diagnostics channel whose messages are of one type (node's own typing leaves them `unknown`). */
export interface EventChannel<T> {
  readonly name: string | symbol;
  readonly hasSubscribers: boolean;
  publish(message: T): void;
  subscribe(listener: (message: T, name: string | symbol) => void): void;
  unsubscribe(listener: (message: T, name: string | symbol) => void): boolean;
}

const channel = <T>(name: string): EventChannel<T> => diagnostics.channel(name) as unknown as EventChannel<T>;

/** Who a kernel belongs to, as the events name it. */
export interface EventPrincipal {
  user: string | undefined;
  tenant: string;
}

export interface KernelEvent {
  kernelId: string;
  kernelspec: string;
  provisioner: string;
  owner?: EventPrincipal | undefined;
}

export interface KernelStartEvent extends KernelEvent {
  /** Handed out from a warm pool rather than launched. */
  pooled: boolean;
}
/**
 * The kernel is up and belongs to its owner: launched and answering, or handed
 * out from a warm pool (`pooled`; a kernel waiting in a pool has no ready
 * event). Metering charges from here.
 */
export interface KernelReadyEvent extends KernelEvent {
  pooled: boolean;
  /** From the start request to the kernel's first answer. */
  ms: number;
  /** What is reserved for it while it lives (restarts included). */
  resources: ResourceRequest;
}
export interface KernelStartFailedEvent extends KernelEvent {
  code: string;
  ms: number;
}
export interface KernelProgressEvent extends KernelEvent {
  phase: 'scheduling' | 'pulling' | 'starting' | 'connecting';
  detail?: string | undefined;
}
export interface KernelRestartEvent extends KernelEvent {
  /** Asked for by a client, or after a death. */
  cause: 'request' | 'death';
  attempt: number;
}
export interface KernelDeathEvent extends KernelEvent {
  reason: string;
  /** The supervisor gave up (no restart follows). */
  final: boolean;
}
export interface KernelShutdownEvent extends KernelEvent {
  reason: string;
  /** How long the kernel lived, for metering. */
  ms: number;
}
export interface KernelCullEvent extends KernelEvent {
  idleMs: number;
}
/** This gateway supervises a kernel that was already running (it publishes no ready event for it). */
export interface KernelAdoptEvent extends KernelEvent {
  /** Adopted after a gateway died, or taken over from a replica whose lease lapsed. */
  how: 'adopted' | 'takeover';
  /** What its record says is reserved for it (empty when the record does not say). */
  resources: ResourceRequest;
}
/**
 * This gateway stops supervising a kernel that goes on running, or was shut
 * down through another gateway: let go (`--keep-kernels`, or its record is
 * gone), or its lease was taken by another gateway (`stepped_down`). No
 * shutdown event follows here.
 */
export interface KernelReleaseEvent extends KernelEvent {
  how: 'released' | 'stepped_down';
  reason: string;
}
export interface ClientEvent {
  kernelId: string;
  protocol: 'json' | 'v1';
}
export interface ClientCloseEvent extends ClientEvent {
  code: number;
}
export interface ClientDropEvent extends ClientEvent {
  /** Why messages were not delivered or not taken. */
  reason: 'slow_client' | 'input_queue_full' | 'malformed' | 'unsolicited_input';
  count: number;
}
export interface LinkDropEvent {
  kernelId: string;
  reason: 'bad_signature' | 'malformed' | 'no_client' | 'rate_limited';
  count: number;
}

/** A request or WebSocket upgrade refused with 401; `kind` is the authenticator's (src/gateway/auth.ts AUTH_FAILURES). */
export interface AuthFailureEvent {
  kind: string;
  transport: 'http' | 'websocket';
}

/** Every channel, by name; one object, looked up once (diagnostics_channel keeps them by name too). */
export const events = {
  kernelStart: channel<KernelStartEvent>('kgate:kernel:start'),
  kernelProgress: channel<KernelProgressEvent>('kgate:kernel:progress'),
  kernelReady: channel<KernelReadyEvent>('kgate:kernel:ready'),
  kernelStartFailed: channel<KernelStartFailedEvent>('kgate:kernel:start-failed'),
  kernelRestart: channel<KernelRestartEvent>('kgate:kernel:restart'),
  kernelDeath: channel<KernelDeathEvent>('kgate:kernel:death'),
  kernelShutdown: channel<KernelShutdownEvent>('kgate:kernel:shutdown'),
  kernelCull: channel<KernelCullEvent>('kgate:kernel:cull'),
  kernelAdopt: channel<KernelAdoptEvent>('kgate:kernel:adopt'),
  kernelRelease: channel<KernelReleaseEvent>('kgate:kernel:release'),
  clientAttach: channel<ClientEvent>('kgate:client:attach'),
  clientDetach: channel<ClientCloseEvent>('kgate:client:detach'),
  clientDrop: channel<ClientDropEvent>('kgate:client:drop'),
  linkDrop: channel<LinkDropEvent>('kgate:link:drop'),
  authFailure: channel<AuthFailureEvent>('kgate:auth:failure'),
};

/** Publishes when someone listens; callers on a hot path check `hasSubscribers` before building the message. */
export function publish<T>(ch: EventChannel<T>, message: T): void {
  if (ch.hasSubscribers) ch.publish(message);
}
