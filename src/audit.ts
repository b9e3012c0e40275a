/**
 * The audit log: one JSON line per state-changing action, with who, what,
 * which kernel, when, and the outcome.
 *
 * - What clients ask for (start, interrupt, restart, shutdown, and the
 *   session operations that start or shut kernels down) is written from the
 *   REST layer, once the answer is known: one hook keyed on route pattern and
 *   method, so no route handler changes. The outcome is `ok` or the error
 *   code answered (`KG_…`), whatever refused it, a 401 included.
 * - What the control plane does by itself (a cull, an automatic restart, a
 *   death, an adoption or takeover, handing a kernel to another gateway) is
 *   written from src/events.ts's lifecycle channels, for this gateway's
 *   kernels only (the channels are process-wide).
 * - A gateway shutdown writes one line per kernel it stops or lets go, and a
 *   reload (SIGHUP) one line.
 *
 *   {"type":"audit","when":"2026-12-01T23:00:00.000Z","what":"shutdown","cause":"client",
 *    "who":{"user":"alice","tenant":"acme","via":"jwt"},"kernel":{"id":"…","kernelspec":"python3"},
 *    "outcome":"ok","request":"…"}
 *
 * Lines go to `--audit-log FILE` (appended, created 0600, reopened on SIGHUP
 * for logrotate), or by default to the log's own stream on stderr, whatever
 * --log-level says (except `silent`, which silences stderr altogether).
 * Never a credential, a key, a URL or an error message (which may quote a
 * kernel's stderr): only ids, names, codes and counts.
 */
import { pino, type DestinationStream, type Logger } from 'pino';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { ErrorCodes } from './errors.js';
import { ConfigError } from './options.js';
import { events, type KernelAdoptEvent, type KernelCullEvent, type KernelDeathEvent, type KernelEvent, type KernelReleaseEvent, type KernelRestartEvent } from './events.js';
import { principalFields } from './gateway/request-log.js';

export type AuditAction =
  | 'start'
  | 'interrupt'
  | 'restart'
  | 'shutdown'
  | 'auto_restart'
  | 'death'
  | 'adopt'
  | 'takeover'
  | 'step_down'
  | 'release'
  | 'session_create'
  | 'session_update'
  | 'session_delete'
  | 'reload';

export interface AuditWho {
  user: string | null;
  tenant: string | null;
  /** How the caller authenticated (operator-token, static-token, jwt, auth-off, none), or which part of kgate acted (culler, supervisor, gateway, sighup). */
  via: string;
}

export interface AuditKernel {
  id: string;
  kernelspec: string | null;
  /** Whose kernel it is, when the line is not written for its owner's own request. */
  owner?: { user: string | null; tenant: string };
}

export interface AuditEntry {
  type: 'audit';
  when: string;
  what: AuditAction;
  who: AuditWho;
  kernel?: AuditKernel | undefined;
  session?: string | undefined;
  /** `ok`, or the error code (`KG_…`) the action ended with. */
  outcome: string;
  /** The request's id (X-Request-Id), for a client's action. */
  request?: string | undefined;
  /** Why a shutdown happened: the client, a cull, the gateway stopping. */
  cause?: 'client' | 'cull' | 'gateway_shutdown' | undefined;
  /** Automatic restart attempt (1 is the first in a row). */
  attempt?: number | undefined;
  /** A death after which no restart follows. */
  final?: boolean | undefined;
}

export type AuditRecord = Omit<AuditEntry, 'type' | 'when'>;

/** What a gateway shutdown stops or lets go, and how each ended (its phase after). */
export interface AuditedKernel {
  readonly id: string;
  readonly name: string;
  readonly owner: string | undefined;
  readonly tenant: string;
  readonly phase: string;
  readonly pooled: boolean;
  readonly follower: boolean;
}

export interface AuditOptions {
  /** --audit-log; none: the log's stream (stderr), unless the log is silent. */
  file?: string | undefined;
  log: Logger;
  /** Whether a kernel is this gateway's (lifecycle events are published process-wide). */
  owns: (kernelId: string) => boolean;
}

/** The client-asked actions, by method and route pattern below the base URL. */
const ROUTE_ACTIONS: Readonly<Record<string, { what: AuditAction; cause?: 'client' }>> = {
  'POST /api/kernels': { what: 'start' },
  'DELETE /api/kernels/:id': { what: 'shutdown', cause: 'client' },
  'POST /api/kernels/:id/interrupt': { what: 'interrupt' },
  'POST /api/kernels/:id/restart': { what: 'restart' },
  'POST /api/sessions': { what: 'session_create' },
  'PATCH /api/sessions/:id': { what: 'session_update' },
  'DELETE /api/sessions/:id': { what: 'session_delete' },
};

const GATEWAY: AuditWho = { user: null, tenant: null, via: 'gateway' };
const SUPERVISOR: AuditWho = { user: null, tenant: null, via: 'supervisor' };
const CULLER: AuditWho = { user: null, tenant: null, via: 'culler' };

/** Ids from a client (a path parameter) are bounded before they are written. */
const clip = (s: string): string => (s.length > 64 ? s.slice(0, 64) : s);

function eventKernel(e: KernelEvent): AuditKernel {
  return { id: e.kernelId, kernelspec: e.kernelspec, owner: { user: e.owner?.user ?? null, tenant: e.owner?.tenant ?? '' } };
}

/** What the route hooks learn about one request before it is answered. */
interface Pending {
  what: AuditAction;
  cause?: 'client' | undefined;
  kernelId?: string | undefined;
  kernelspec?: string | undefined;
  session?: string | undefined;
}

const pendingOf = new WeakMap<FastifyRequest, Pending>();

export class AuditLog {
  private readonly dest: DestinationStream | undefined;
  private readonly file: ReturnType<typeof pino.destination> | undefined;
  private closed = false;

  constructor(private readonly o: AuditOptions) {
    if (o.file !== undefined) {
      // Synchronous: opened at once, so a path that cannot be written stops the start, and
      // each line is written before the action is answered (and before an exit).
      try {
        this.file = pino.destination({ dest: o.file, append: true, mode: 0o600, mkdir: false, sync: true });
      } catch (e) {
        throw new ConfigError(`--audit-log: cannot open ${o.file} for appending (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
      }
      this.dest = this.file;
    } else if (o.log.level !== 'silent') {
      // The log's own stream: the lines cannot interleave with log lines mid-line, and no level filters them.
      this.dest = (o.log as unknown as Record<symbol, DestinationStream | undefined>)[pino.symbols.streamSym] ?? process.stderr;
    }
    events.kernelCull.subscribe(this.onCull);
    events.kernelRestart.subscribe(this.onRestart);
    events.kernelDeath.subscribe(this.onDeath);
    events.kernelAdopt.subscribe(this.onAdopt);
    events.kernelRelease.subscribe(this.onRelease);
  }

  /** Writes one line now. */
  record(r: AuditRecord): void {
    if (this.closed || this.dest === undefined) return;
    const entry: AuditEntry = { type: 'audit', when: new Date().toISOString(), ...r };
    try {
      this.dest.write(`${JSON.stringify(entry)}\n`);
    } catch (err) {
      // A full disk must not stop the action being audited.
      this.o.log.error({ err }, 'could not write the audit log');
    }
  }

  /** Reopens --audit-log at its path (SIGHUP, after logrotate moved it). */
  reopen(): void {
    this.file?.reopen();
  }

  /**
   * The REST side: every client-asked action, written once the answer is
   * being sent (onSend sees the status and body), so a client that hangs up
   * before reading it does not hide the action. Register on the root app.
   */
  routes(
    app: FastifyInstance,
    o: { baseUrl: string; kernelspecOf: (id: string) => string | undefined; sessionKernel: (req: FastifyRequest, id: string) => Promise<string | undefined> },
  ): void {
    const prefix = o.baseUrl.slice(0, -1);
    const actionOf = (req: FastifyRequest): Pending | undefined => {
      const route = req.routeOptions.url;
      if (route === undefined || !route.startsWith(prefix)) return undefined;
      const a = ROUTE_ACTIONS[`${req.method} ${route.slice(prefix.length)}`];
      if (!a) return undefined;
      const id = (req.params as { id?: unknown } | undefined)?.id;
      const p: Pending = { ...a };
      if (typeof id === 'string') {
        if (route.includes('/api/kernels/')) p.kernelId = clip(id);
        else p.session = clip(id);
      }
      return p;
    };
    // Authenticated by now: what the request acts on, before the action removes it.
    app.addHook('preHandler', async (req) => {
      const p = actionOf(req);
      if (!p) return;
      pendingOf.set(req, p);
      if (p.kernelId !== undefined) p.kernelspec = o.kernelspecOf(p.kernelId);
      else if (p.what === 'session_delete' && p.session !== undefined) {
        p.kernelId = await o.sessionKernel(req, p.session).catch(() => undefined);
        if (p.kernelId !== undefined) p.kernelspec = o.kernelspecOf(p.kernelId);
      }
    });
    app.addHook('onSend', (req, reply, payload, done) => {
      // A request refused before its handler (a 401 in the auth hook) has no preHandler step.
      const p = pendingOf.get(req) ?? actionOf(req);
      if (p) {
        pendingOf.delete(req);
        this.fromAnswer(req, reply.statusCode, payload, p);
      }
      done(null, payload);
    });
  }

  private fromAnswer(req: FastifyRequest, status: number, payload: unknown, p: Pending): void {
    let body: Record<string, unknown> | undefined;
    if (typeof payload === 'string' && payload.length > 0 && payload.length < 65_536) {
      try {
        body = JSON.parse(payload) as Record<string, unknown>;
      } catch {
        body = undefined;
      }
    }
    const ok = status < 400;
    let outcome = 'ok';
    if (!ok) outcome = typeof body?.['code'] === 'string' && /^KG_[A-Z_]{1,40}$/.test(body['code']) ? body['code'] : `HTTP_${status}`;
    let kernelId = p.kernelId;
    let kernelspec = p.kernelspec;
    let session = p.session;
    if (ok && body) {
      // A kernel's model (start, restart), or a session's with its kernel's.
      const k = (p.what.startsWith('session') ? body['kernel'] : body) as Record<string, unknown> | undefined;
      if (typeof k?.['id'] === 'string') kernelId = clip(k['id']);
      if (typeof k?.['name'] === 'string') kernelspec = clip(k['name']);
      if (p.what.startsWith('session') && typeof body['id'] === 'string') session = clip(body['id']);
    }
    this.record({
      what: p.what,
      ...(p.cause ? { cause: p.cause } : {}),
      who: principalFields(req.principal),
      ...(kernelId !== undefined ? { kernel: { id: kernelId, kernelspec: kernelspec ?? null } } : {}),
      ...(session !== undefined ? { session } : {}),
      outcome,
      request: req.id,
    });
  }

  /**
   * The gateway is about to stop (or, with --keep-kernels, let go of) these
   * kernels; `done` writes one line for each, with how it ended.
   */
  gatewayStopping(kernels: readonly AuditedKernel[], how: 'shutdown' | 'release'): { done(): void } {
    const mine = kernels.filter((k) => !k.pooled && !k.follower);
    return {
      done: () => {
        for (const k of mine) {
          const ended = how === 'shutdown' ? k.phase === 'gone' || k.phase === 'dead' : true;
          this.record({
            what: how,
            ...(how === 'shutdown' ? { cause: 'gateway_shutdown' as const } : {}),
            who: GATEWAY,
            kernel: { id: k.id, kernelspec: k.name, owner: { user: k.owner ?? null, tenant: k.tenant } },
            outcome: ended ? 'ok' : ErrorCodes.INTERNAL,
          });
        }
      },
    };
  }

  /** A reload (SIGHUP) and how it went: `ok`, or `config_error` (what was in force stays). */
  reloaded(outcome: 'ok' | 'config_error'): void {
    this.record({ what: 'reload', who: { user: null, tenant: null, via: 'sighup' }, outcome });
  }

  /** Stops listening to events and closes the file (what was written is flushed). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    events.kernelCull.unsubscribe(this.onCull);
    events.kernelRestart.unsubscribe(this.onRestart);
    events.kernelDeath.unsubscribe(this.onDeath);
    events.kernelAdopt.unsubscribe(this.onAdopt);
    events.kernelRelease.unsubscribe(this.onRelease);
    this.file?.end();
  }

  private readonly onCull = (e: KernelCullEvent): void => {
    if (this.o.owns(e.kernelId)) this.record({ what: 'shutdown', cause: 'cull', who: CULLER, kernel: eventKernel(e), outcome: 'ok' });
  };
  private readonly onRestart = (e: KernelRestartEvent): void => {
    // A restart a client asked for is the REST side's line.
    if (e.cause === 'death' && this.o.owns(e.kernelId)) this.record({ what: 'auto_restart', who: SUPERVISOR, kernel: eventKernel(e), attempt: e.attempt, outcome: 'ok' });
  };
  private readonly onDeath = (e: KernelDeathEvent): void => {
    if (!this.o.owns(e.kernelId)) return;
    this.record({ what: 'death', who: SUPERVISOR, kernel: eventKernel(e), final: e.final, outcome: e.final ? ErrorCodes.KERNEL_DEAD : 'ok' });
  };
  private readonly onAdopt = (e: KernelAdoptEvent): void => {
    if (this.o.owns(e.kernelId)) this.record({ what: e.how === 'takeover' ? 'takeover' : 'adopt', who: GATEWAY, kernel: eventKernel(e), outcome: 'ok' });
  };
  private readonly onRelease = (e: KernelReleaseEvent): void => {
    // Let go at a gateway shutdown: gatewayStopping's line. Another gateway took the lease: this one's.
    if (e.how === 'stepped_down' && this.o.owns(e.kernelId)) this.record({ what: 'step_down', who: GATEWAY, kernel: eventKernel(e), outcome: 'ok' });
  };
}
