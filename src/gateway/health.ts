/**
 * Liveness and readiness, for load balancers and Kubernetes probes.
 *
 * - `GET <base>healthz`: 200 `{"status":"ok"}` while the event loop answers.
 * - `GET <base>readyz`: 200 `{"status":"ok"}` while kgate listens, its state
 *   store (--state-dir) can be read and written, and it is not shutting down;
 *   otherwise 503 with kgate's Error body (code `KG_NOT_READY`, the message
 *   one of three fixed sentences) and `"status": "not ready"`.
 *
 * Both are served without a credential and outside the CORS check (a probe
 * sends no Origin; a page of another origin gets no CORS header, so its
 * browser keeps the answer from it), and say nothing else: no path, no count,
 * no version. When --base-url is not `/` they answer at `/healthz` and
 * `/readyz` too, where a probe configured without the prefix looks.
 *
 * A shutdown (docs/operations.md, "Health, logs and audit") first fails
 * readiness (`stopServing`), then, after the drain, refuses new requests
 * (`refuseNew`) with 503 while kernels are stopped; the probes still answer.
 */
import { constants } from 'node:fs';
import { access } from 'node:fs/promises';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { z } from 'zod';
import { ErrorCodes, KgateError } from '../errors.js';
import { errorBody } from './http-errors.js';
import { errorBody as errorBodySchema } from './schemas.js';

/** Why kgate is not ready: a small fixed set, so the answer reveals nothing else. */
export type NotReadyReason = 'not_listening' | 'shutting_down' | 'state_store';

const NOT_READY: Record<NotReadyReason, string> = {
  not_listening: 'not ready: not listening yet',
  shutting_down: 'not ready: shutting down',
  state_store: 'not ready: the state store cannot be read or written',
};

export const notReady = (why: NotReadyReason): KgateError => new KgateError(ErrorCodes.NOT_READY, NOT_READY[why]);

/** The answers, for the OpenAPI document (src/gateway/openapi.ts). */
export const healthModel = z.object({ status: z.literal('ok') }).describe('alive (healthz), or ready (readyz)');
export const notReadyModel = errorBodySchema.extend({ status: z.literal('not ready') }).describe('not ready: the Error body, and `status`');

/** How long one state store check is trusted: a flood of probes costs one `access()` a second. */
export const READY_CACHE_MS = 1000;

export interface HealthOptions {
  /** Whether the HTTP server listens. */
  listening: () => boolean;
  /** --state-dir, when there is one. */
  stateDir?: string | undefined;
  baseUrl: string;
  cacheMs?: number;
  log?: Logger;
}

export class Health {
  private stopping = false;
  private refusing = false;
  private checked: { at: number; result: Promise<NotReadyReason | undefined> } | undefined;
  /** The state store's last verdict, so a change is logged once, not per probe. */
  private storeOk = true;
  /** The route patterns of the probes, as fastify knows them (base URL included). */
  private readonly probes: ReadonlySet<string>;

  constructor(private readonly o: HealthOptions) {
    const base = o.baseUrl;
    this.probes = new Set([`${base}healthz`, `${base}readyz`, '/healthz', '/readyz']);
  }

  /** Readiness fails from now on (the first step of a shutdown). */
  stopServing(): void {
    this.stopping = true;
  }

  get shuttingDown(): boolean {
    return this.stopping;
  }

  /** Every request but a probe is refused with 503 from now on (after the drain). */
  refuseNew(): void {
    this.stopping = true;
    this.refusing = true;
  }

  /** A probe: exactly GET (or HEAD) of one of the probe routes, whatever the query. */
  isProbe(req: FastifyRequest): boolean {
    const route = req.routeOptions.url;
    return route !== undefined && (req.method === 'GET' || req.method === 'HEAD') && this.probes.has(route);
  }

  /** The REST hook's check, after the probes are let through: a 503 once new requests are refused. */
  refuseIfClosing(reply: FastifyReply): void {
    if (!this.refusing) return;
    // The client should not send its next request on this connection: it goes nowhere.
    void reply.header('Connection', 'close');
    throw notReady('shutting_down');
  }

  /** Undefined when ready, else why not. */
  async readiness(now = Date.now()): Promise<NotReadyReason | undefined> {
    if (this.stopping) return 'shutting_down';
    if (!this.o.listening()) return 'not_listening';
    if (this.o.stateDir === undefined) return undefined;
    if (this.checked === undefined || now - this.checked.at >= (this.o.cacheMs ?? READY_CACHE_MS)) {
      this.checked = { at: now, result: this.checkStore(this.o.stateDir) };
    }
    return this.checked.result;
  }

  /**
   * The state dir can be read and written: access(2) sees permissions, a
   * missing dir and a read-only mount, cheaply. A full disk is not seen (a
   * probe that wrote a file every second would cost more than it tells).
   */
  private async checkStore(dir: string): Promise<NotReadyReason | undefined> {
    let ok = true;
    try {
      await access(dir, constants.R_OK | constants.W_OK);
    } catch {
      ok = false;
    }
    if (ok !== this.storeOk) {
      this.storeOk = ok;
      if (ok) this.o.log?.info('the state dir can be read and written again: ready');
      else this.o.log?.warn('the state dir cannot be read or written: GET /readyz answers 503');
    }
    return ok ? undefined : 'state_store';
  }
}

/** GET /healthz and GET /readyz, in the scope they are registered in. */
export function healthRoutes(app: FastifyInstance, health: Health): void {
  app.get('/healthz', async (_req, reply) => reply.header('Cache-Control', 'no-store').send({ status: 'ok' }));
  app.get('/readyz', async (_req, reply) => {
    const why = await health.readiness();
    void reply.header('Cache-Control', 'no-store');
    if (why === undefined) return reply.send({ status: 'ok' });
    return reply.code(503).send({ status: 'not ready', ...errorBody(notReady(why)) });
  });
}
