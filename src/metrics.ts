/**
 * Prometheus metrics through prom-client, one Registry per gateway (never the
 * global default one, so two gateways in one process keep their own). Two
 * sources:
 *
 * - the lifecycle and relay events (src/events.ts), for what happens: starts
 *   and their latency, restarts, deaths, culls, adoptions, drops, sockets,
 *   auth failures. The channels are shared by everything in the process, so
 *   an event counts only when its kernel is this gateway's (as metering
 *   checks its registry);
 * - what is read when scraped, for what is: kernels by phase, pools, replay
 *   memory, and the relay's plain counters (RelayCounts, an increment per
 *   message on the hot path and nothing published).
 *
 * Node's own metrics (event-loop lag, heap, RSS, fds, GC) are the process's,
 * kept in one registry per process (made with its first gateway) and served
 * after the gateway's.
 *
 * Labels are bounded sets only: kernelspec, provisioner, protocol, channel,
 * direction, reason, outcome, cause, kind; never a kernel id or a user.
 */
import { timingSafeEqual } from 'node:crypto';
import { createServer as createHttpServer, type IncomingHttpHeaders, type Server } from 'node:http';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Logger } from 'pino';
import type { RelayCounts } from './bridge/kernel-link.js';
import type { ReplayBudget } from './bridge/replay.js';
import { ErrorCodes, KgateError, notFound } from './errors.js';
import {
  events,
  type AuthFailureEvent,
  type ClientCloseEvent,
  type ClientDropEvent,
  type ClientEvent,
  type KernelAdoptEvent,
  type KernelCullEvent,
  type KernelDeathEvent,
  type KernelReadyEvent,
  type KernelRestartEvent,
  type KernelStartFailedEvent,
  type LinkDropEvent,
} from './events.js';
import { tokenFromRequest, type AuthResult } from './gateway/auth.js';
import { errorBody, httpStatusOf } from './gateway/http-errors.js';
import { tokenDigest } from './gateway/token-file.js';
import type { KernelManager } from './kernels/manager.js';
import type { Meter, TenantUsage } from './metering.js';
import { hasScope, Scopes, type Principal } from './principal.js';

/** Kernel start latency, in seconds: a pooled hand-out, a local start, a pod scheduled and pulled. */
const START_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300];

/** Who holds --metrics-token: it may read /metrics and nothing else (no scope, no user). */
export const METRICS_SCRAPER: Principal = Object.freeze({ user: undefined, tenant: 'default', scopes: new Set<string>(), via: 'static-token' });

export interface MetricsSources {
  kernels: Pick<KernelManager, 'registry' | 'pools'>;
  relay: RelayCounts;
  replay: ReplayBudget;
  /** Usage metering, for the per-tenant usage counters (none: not exported). */
  meter?: Pick<Meter, 'usageByTenant'> | undefined;
  /** --metrics-token; undefined: none. */
  token?: string | undefined;
  /** The gateway's --base-url (starts and ends with "/"): /metrics is served under it. */
  baseUrl: string;
  log: Logger;
}

let processRegistry: Registry | undefined;

/** The process's own metrics (Node's default set, kgate_ prefixed), made once per process: its observers are never stopped. */
function processMetrics(): Registry {
  if (processRegistry === undefined) {
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry, prefix: 'kgate_' });
  }
  return processRegistry;
}

/** The numeric fields of RelayCounts. */
type Relay = { [K in keyof RelayCounts]: RelayCounts[K] extends number ? K : never }[keyof RelayCounts];
/** The relay's counters as [channel, direction, messages field, bytes field]. */
const RELAY_SERIES: ReadonlyArray<readonly [string, 'in' | 'out', Relay, Relay]> = [
  ['shell', 'in', 'shellInMessages', 'shellInBytes'],
  ['control', 'in', 'controlInMessages', 'controlInBytes'],
  ['stdin', 'in', 'stdinInMessages', 'stdinInBytes'],
  ['iopub', 'out', 'iopubOutMessages', 'iopubOutBytes'],
  ['shell', 'out', 'shellOutMessages', 'shellOutBytes'],
  ['control', 'out', 'controlOutMessages', 'controlOutBytes'],
  ['stdin', 'out', 'stdinOutMessages', 'stdinOutBytes'],
];

export class GatewayMetrics {
  readonly registry = new Registry();
  readonly contentType = Registry.PROMETHEUS_CONTENT_TYPE;
  private readonly token: Buffer | undefined;
  private readonly path: string;
  /** Open sockets of this gateway's kernels, by kernel id: whose detach events count here. */
  private readonly sockets = new Map<string, number>();
  private readonly open = { json: 0, v1: 0 };
  private server: Server | undefined;
  /** Where --metrics-port listens, once it does. */
  address: { host: string; port: number } | undefined;

  private readonly startSeconds: Histogram<'provisioner' | 'outcome' | 'pooled'>;
  private readonly opened: Counter<'protocol'>;
  private readonly drops: Counter<'reason'>;
  private readonly restarts: Counter<'kernelspec' | 'cause'>;
  private readonly deaths: Counter<'kernelspec' | 'final'>;
  private readonly culls: Counter<'kernelspec'>;
  private readonly adoptions: Counter<'kernelspec' | 'how'>;
  private readonly authFailures: Counter<'kind' | 'transport'>;

  constructor(private readonly s: MetricsSources) {
    this.token = s.token === undefined ? undefined : tokenDigest(s.token);
    this.path = `${s.baseUrl}metrics`;
    const registers = [this.registry];
    const kernels = s.kernels;
    processMetrics();

    new Gauge({
      name: 'kgate_kernels',
      help: "This gateway's kernels (those it follows for another replica included; pooled ones not), by phase and kernelspec",
      labelNames: ['phase', 'kernelspec'] as const,
      registers,
      collect() {
        this.reset();
        const n = new Map<string, { phase: string; kernelspec: string; count: number }>();
        for (const k of kernels.registry.list()) {
          const key = `${k.phase}\0${k.name}`;
          const e = n.get(key);
          if (e) e.count++;
          else n.set(key, { phase: k.phase, kernelspec: k.name, count: 1 });
        }
        for (const e of n.values()) this.set({ phase: e.phase, kernelspec: e.kernelspec }, e.count);
      },
    });
    const open = this.open;
    new Gauge({
      name: 'kgate_websocket_connections',
      help: 'Open channels WebSockets, by protocol (json, or v1.kernel.websocket.jupyter.org)',
      labelNames: ['protocol'] as const,
      registers,
      collect() {
        this.set({ protocol: 'json' }, open.json);
        this.set({ protocol: 'v1' }, open.v1);
      },
    });
    this.opened = new Counter({ name: 'kgate_websocket_connections_opened_total', help: 'Channels WebSockets opened, by protocol', labelNames: ['protocol'] as const, registers });
    const relay = s.relay;
    // Counters read when scraped: reset, then the running total added.
    new Counter({
      name: 'kgate_relayed_messages_total',
      help: 'Kernel messages relayed, by channel and direction (in: client to kernel, as taken; out: kernel to clients, once however many clients get it)',
      labelNames: ['channel', 'direction'] as const,
      registers,
      collect() {
        this.reset();
        for (const [channel, direction, m] of RELAY_SERIES) this.inc({ channel, direction }, relay[m]);
      },
    });
    const meter = s.meter;
    if (meter) {
      // Tenants are a bounded label (they are the policy's), users are not: per user is /api/usage's.
      const usage = (name: string, help: string, pick: (u: TenantUsage) => number): void => {
        new Counter({
          name,
          help,
          labelNames: ['tenant'] as const,
          registers,
          collect() {
            this.reset();
            for (const [tenant, u] of meter.usageByTenant()) this.inc({ tenant }, pick(u));
          },
        });
      };
      usage('kgate_usage_kernel_seconds_total', 'Kernel-seconds charged by this gateway since it started, by tenant (usage metering)', (u) => u.kernelSeconds);
      usage('kgate_usage_core_seconds_total', 'Core-seconds of the CPU kernels reserved, charged by this gateway since it started, by tenant', (u) => u.coreSeconds);
      usage('kgate_usage_gib_seconds_total', 'GiB-seconds of the memory kernels reserved, charged by this gateway since it started, by tenant', (u) => u.gibSeconds);
      new Counter({
        name: 'kgate_usage_gpu_seconds_total',
        help: 'Seconds of each extended resource (a GPU, a MIG slice) kernels reserved, charged by this gateway since it started, by tenant and resource',
        labelNames: ['tenant', 'resource'] as const,
        registers,
        collect() {
          this.reset();
          for (const [tenant, u] of meter.usageByTenant()) for (const [resource, sec] of u.gpuSeconds) this.inc({ tenant, resource }, sec);
        },
      });
    }
    new Counter({
      name: 'kgate_relayed_bytes_total',
      help: 'Bytes of the kernel messages relayed (their header, parent, metadata, content and buffers), by channel and direction, as kgate_relayed_messages_total',
      labelNames: ['channel', 'direction'] as const,
      registers,
      collect() {
        this.reset();
        for (const [channel, direction, , b] of RELAY_SERIES) this.inc({ channel, direction }, relay[b]);
      },
    });
    this.drops = new Counter({
      name: 'kgate_dropped_messages_total',
      help: 'Messages not delivered or not taken, by reason: slow_client, rate_limited, bad_signature, malformed, no_client, input_queue_full, unsolicited_input',
      labelNames: ['reason'] as const,
      registers,
    });
    for (const reason of ['slow_client', 'rate_limited', 'bad_signature', 'malformed', 'no_client', 'input_queue_full', 'unsolicited_input']) this.drops.inc({ reason }, 0);
    this.startSeconds = new Histogram({
      name: 'kgate_kernel_start_seconds',
      help: 'From a start request to the kernel answering (or handed out from a warm pool: pooled="true"), by provisioner and outcome (ok, or the error code)',
      labelNames: ['provisioner', 'outcome', 'pooled'] as const,
      buckets: START_BUCKETS,
      registers,
    });
    new Gauge({
      name: 'kgate_pool_kernels',
      help: 'Kernels of the warm pools, by kernelspec and state (ready, starting)',
      labelNames: ['kernelspec', 'state'] as const,
      registers,
      collect() {
        this.reset();
        for (const [kernelspec, p] of Object.entries(kernels.pools.stats())) {
          this.set({ kernelspec, state: 'ready' }, p.ready);
          this.set({ kernelspec, state: 'starting' }, p.starting);
        }
      },
    });
    new Gauge({
      name: 'kgate_pool_target_kernels',
      help: 'The size each warm pool is kept at (--pool), by kernelspec',
      labelNames: ['kernelspec'] as const,
      registers,
      collect() {
        this.reset();
        for (const [kernelspec, p] of Object.entries(kernels.pools.stats())) this.set({ kernelspec }, p.target);
      },
    });
    this.culls = new Counter({ name: 'kgate_kernel_culls_total', help: 'Kernels shut down for being idle, by kernelspec', labelNames: ['kernelspec'] as const, registers });
    this.restarts = new Counter({
      name: 'kgate_kernel_restarts_total',
      help: 'Kernel restarts, by kernelspec and cause (request: asked for by a client; death: an automatic restart attempt)',
      labelNames: ['kernelspec', 'cause'] as const,
      registers,
    });
    this.deaths = new Counter({
      name: 'kgate_kernel_deaths_total',
      help: 'Kernel deaths (process exit or lost heartbeat), by kernelspec; final="true": the supervisor gave up and the kernel is dead',
      labelNames: ['kernelspec', 'final'] as const,
      registers,
    });
    this.adoptions = new Counter({
      name: 'kgate_kernel_adoptions_total',
      help: 'Running kernels this gateway took on, by kernelspec and how (adopted: after a gateway died; takeover: from a replica whose lease lapsed)',
      labelNames: ['kernelspec', 'how'] as const,
      registers,
    });
    this.authFailures = new Counter({
      name: 'kgate_auth_failures_total',
      help: 'Requests and WebSocket upgrades refused with 401, by kind (missing, bad_token, or a JWT check) and transport (http, websocket)',
      labelNames: ['kind', 'transport'] as const,
      registers,
    });
    const replay = s.replay;
    new Gauge({
      name: 'kgate_replay_kept_bytes',
      help: 'Bytes kept for disconnected sessions, across all kernels (bounded by --replay-total-bytes)',
      registers,
      collect() {
        this.set(replay.usedBytes);
      },
    });
    new Gauge({
      name: 'kgate_replay_limit_bytes',
      help: 'What all kernels may keep for disconnected sessions (--replay-total-bytes)',
      registers,
      collect() {
        this.set(replay.maxBytes);
      },
    });
    new Counter({
      name: 'kgate_replay_resumes_total',
      help: 'Reconnecting sessions that had something kept for them, by outcome (replayed: they got it; lost: past a bound, they were told output was lost)',
      labelNames: ['outcome'] as const,
      registers,
      collect() {
        this.reset();
        this.inc({ outcome: 'replayed' }, relay.replayResumed);
        this.inc({ outcome: 'lost' }, relay.replayLost);
      },
    });

    events.kernelReady.subscribe(this.onReady);
    events.kernelStartFailed.subscribe(this.onStartFailed);
    events.kernelRestart.subscribe(this.onRestart);
    events.kernelDeath.subscribe(this.onDeath);
    events.kernelCull.subscribe(this.onCull);
    events.kernelAdopt.subscribe(this.onAdopt);
    events.clientAttach.subscribe(this.onAttach);
    events.clientDetach.subscribe(this.onDetach);
    events.clientDrop.subscribe(this.onClientDrop);
    events.linkDrop.subscribe(this.onLinkDrop);
    events.authFailure.subscribe(this.onAuthFailure);
  }

  /** The kernel is this gateway's: in its registry, or waiting in one of its pools. */
  private owns(id: string): boolean {
    return this.s.kernels.registry.has(id) || this.s.kernels.pools.kernels().some((k) => k.id === id);
  }

  /**
   * Runs `count` if the kernel is this gateway's, now or once the current
   * step is done: a pooled kernel's hand-out is announced just before it
   * joins the registry.
   */
  private ifOurs(id: string, count: () => void): void {
    if (this.owns(id)) count();
    else queueMicrotask(() => this.owns(id) && count());
  }

  private readonly onReady = (e: KernelReadyEvent): void =>
    this.ifOurs(e.kernelId, () => this.startSeconds.observe({ provisioner: e.provisioner, outcome: 'ok', pooled: String(e.pooled) }, e.ms / 1000));
  private readonly onStartFailed = (e: KernelStartFailedEvent): void =>
    this.ifOurs(e.kernelId, () => this.startSeconds.observe({ provisioner: e.provisioner, outcome: e.code, pooled: 'false' }, e.ms / 1000));
  private readonly onRestart = (e: KernelRestartEvent): void => this.ifOurs(e.kernelId, () => this.restarts.inc({ kernelspec: e.kernelspec, cause: e.cause }));
  private readonly onDeath = (e: KernelDeathEvent): void => this.ifOurs(e.kernelId, () => this.deaths.inc({ kernelspec: e.kernelspec, final: String(e.final) }));
  private readonly onCull = (e: KernelCullEvent): void => this.ifOurs(e.kernelId, () => this.culls.inc({ kernelspec: e.kernelspec }));
  private readonly onAdopt = (e: KernelAdoptEvent): void => this.ifOurs(e.kernelId, () => this.adoptions.inc({ kernelspec: e.kernelspec, how: e.how }));

  private readonly onAttach = (e: ClientEvent): void => {
    if (!this.s.kernels.registry.has(e.kernelId)) return;
    this.sockets.set(e.kernelId, (this.sockets.get(e.kernelId) ?? 0) + 1);
    this.open[e.protocol]++;
    this.opened.inc({ protocol: e.protocol });
  };

  /** A socket of a kernel counted at its attach (the kernel may be gone from the registry by now). */
  private readonly onDetach = (e: ClientCloseEvent): void => {
    const n = this.sockets.get(e.kernelId);
    if (n === undefined) return;
    if (n <= 1) this.sockets.delete(e.kernelId);
    else this.sockets.set(e.kernelId, n - 1);
    this.open[e.protocol]--;
  };

  private readonly onClientDrop = (e: ClientDropEvent): void => {
    if (this.sockets.has(e.kernelId) || this.s.kernels.registry.has(e.kernelId)) this.drops.inc({ reason: e.reason }, e.count);
  };
  private readonly onLinkDrop = (e: LinkDropEvent): void => {
    if (this.owns(e.kernelId)) this.drops.inc({ reason: e.reason }, e.count);
  };
  // Not tied to a kernel: every gateway in the process hears it, which only a test runs.
  private readonly onAuthFailure = (e: AuthFailureEvent): void => this.authFailures.inc({ kind: e.kind, transport: e.transport });

  /** The Prometheus text exposition: this gateway's metrics, then the process's. */
  async text(): Promise<string> {
    return `${await this.registry.metrics()}\n${await processMetrics().metrics()}`;
  }

  /** Who may read /metrics on the main port: the holder of --metrics-token, the operator, an admin. */
  mayScrape(p: Principal): boolean {
    return p === METRICS_SCRAPER || hasScope(p, Scopes.ADMIN);
  }

  /**
   * For the main port's auth hook: a request for /metrics that carries
   * --metrics-token is the scraper; anything else (another route, another
   * token) is left to the authenticator. Compared in constant time over digests.
   */
  scrapeAuth(url: string, headers: IncomingHttpHeaders): AuthResult | undefined {
    if (this.token === undefined) return undefined;
    const q = url.indexOf('?');
    if ((q < 0 ? url : url.slice(0, q)) !== this.path) return undefined;
    const given = tokenFromRequest(headers, url);
    if (given === undefined || !timingSafeEqual(tokenDigest(given), this.token)) return undefined;
    return { principal: METRICS_SCRAPER };
  }

  /** Serves GET /metrics without auth on a port of its own (--metrics-port); resolves with where it listens. */
  async listen(ip: string, port: number): Promise<{ host: string; port: number }> {
    const server = createHttpServer((req, res) => {
      const path = (req.url ?? '/').split('?', 1)[0];
      const fail = (e: KgateError): void => {
        res.writeHead(httpStatusOf(e), { 'Content-Type': 'application/json' }).end(JSON.stringify(errorBody(e)));
      };
      if (path !== '/metrics') return fail(notFound('this port serves GET /metrics only'));
      if (req.method !== 'GET' && req.method !== 'HEAD') return fail(new KgateError(ErrorCodes.METHOD_NOT_ALLOWED, 'this port serves GET /metrics only'));
      this.text().then(
        (body) => res.writeHead(200, { 'Content-Type': this.contentType }).end(req.method === 'HEAD' ? undefined : body),
        (err: unknown) => {
          this.s.log.error({ err }, 'could not collect the metrics');
          fail(new KgateError(ErrorCodes.INTERNAL, 'could not collect the metrics; see the gateway log'));
        },
      );
    });
    server.requestTimeout = 10_000;
    server.headersTimeout = 5_000;
    server.keepAliveTimeout = 5_000;
    server.on('error', (err) => this.s.log.error({ err }, 'the metrics port reported an error; still serving'));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, ip, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.server = server;
    const addr = server.address();
    this.address = { host: ip, port: typeof addr === 'object' && addr ? addr.port : port };
    return this.address;
  }

  async close(): Promise<void> {
    events.kernelReady.unsubscribe(this.onReady);
    events.kernelStartFailed.unsubscribe(this.onStartFailed);
    events.kernelRestart.unsubscribe(this.onRestart);
    events.kernelDeath.unsubscribe(this.onDeath);
    events.kernelCull.unsubscribe(this.onCull);
    events.kernelAdopt.unsubscribe(this.onAdopt);
    events.clientAttach.unsubscribe(this.onAttach);
    events.clientDetach.unsubscribe(this.onDetach);
    events.clientDrop.unsubscribe(this.onClientDrop);
    events.linkDrop.unsubscribe(this.onLinkDrop);
    events.authFailure.unsubscribe(this.onAuthFailure);
    const server = this.server;
    this.server = undefined;
    if (server) {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  }
}
