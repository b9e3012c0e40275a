/**
 * The composition root (createServer): builds kgate from its config and what a
 * test puts in place of kernelspecs, provisioners or the logger: the kernel
 * and session managers, the REST routes (fastify) and the channels WebSocket
 * (ws). The CLI and the tests build kgate only through it.
 */
import { randomBytes } from 'node:crypto';
import { STATUS_CODES, type ServerOptions } from 'node:http';
import type { Socket } from 'node:net';
import { resolve } from 'node:path';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyReply } from 'fastify';
import type { Logger } from 'pino';
import { ConfigError, type Config } from '../config.js';
import { ErrorCodes, KgateError, badRequest, invalidJson, notFound, truncate, unauthorized } from '../errors.js';
import { createLogger } from '../log.js';
import { errorBody, errorHeaders, httpStatusOf } from './http-errors.js';
import { RelayCounts } from '../bridge/kernel-link.js';
import { ReplayBudget } from '../bridge/replay.js';
import { BUILTIN_KERNELSPECS, jupyterKernelDirs, KernelSpecStore } from '../kernels/kernelspecs.js';
import { KernelCuller } from '../kernels/culler.js';
import { KernelManager } from '../kernels/manager.js';
import { PolicyFile } from '../kernels/policy.js';
import { SessionManager } from '../kernels/sessions.js';
import { KernelStateStore } from '../kernels/state.js';
import type { KernelStore } from '../kernels/store.js';
import { events } from '../events.js';
import { startMetering } from '../metering.js';
import { GatewayMetrics } from '../metrics.js';
import { localProvisionerFactory } from '../provisioner/local.js';
import { sandboxProvisionerFactory } from '../provisioner/sandbox.js';
import { containerProvisionerFactory } from '../provisioner/container.js';
import { kubernetesProvisionerFactory } from '../provisioner/kubernetes.js';
import { ProvisionerRegistry } from '../provisioner/registry.js';
import type { ProvisionerFactory } from '../provisioner/types.js';
import type { Principal } from '../principal.js';
import type { GatewayConfig } from './options.js';
import { authenticatorFor } from './auth.js';
import { ChannelsEndpoint, refuse } from './channels.js';
import { frameAncestorsPolicy, OriginPolicy } from './origin.js';
import type { GatewayContext } from './context.js';
import { specRoutes } from './openapi.js';
import { kernelRoutes } from './routes/kernels.js';
import { kernelspecRoutes } from './routes/kernelspecs.js';
import { sessionRoutes } from './routes/sessions.js';
import { statusRoutes } from './routes/status.js';
import { usageRoutes } from './routes/usage.js';
import { metricsRoutes } from './routes/metrics.js';
import { statusPageRoutes } from './status-page.js';
import { AuditLog } from '../audit.js';
import { Health, healthRoutes } from './health.js';
import { genReqId, installRequestLog } from './request-log.js';

export interface Gateway {
  app: FastifyInstance;
  ctx: GatewayContext;
  /** Its Prometheus metrics (GET /metrics; `address` once --metrics-port listens). */
  metrics: GatewayMetrics;
  /** The token in force ('' when auth is off). */
  token: string;
  /** Liveness and readiness (GET /healthz, GET /readyz). */
  health: Health;
  /** The audit log (--audit-log, or stderr). */
  audit: AuditLog;
  listen(): Promise<{ host: string; port: number }>;
  /**
   * The first step of a shutdown: readiness fails from now on, and this
   * resolves after `ms` (--shutdown-drain) while everything else is served.
   */
  drain(ms: number): Promise<void>;
  /** Refuses new connections and requests, then closes every socket and shuts every kernel down (docs/operations.md). */
  close(): Promise<void>;
  /**
   * Reads the token file, the JWKS file and the tenant policy again (SIGHUP).
   * A bad file rejects with its ConfigError and what was in force stays.
   */
  reload(): Promise<void>;
}

/** Gateway secrets that a kernel's environment never inherits. */
const scrubEnv = (name: string): boolean => name.startsWith('KG_');

function parseJson(_req: unknown, body: string, done: (err: Error | null, value?: unknown) => void): void {
  if (body === '' || body.trim() === '') {
    done(null, undefined);
    return;
  }
  try {
    done(null, JSON.parse(body));
  } catch (e) {
    done(invalidJson(`the request body is not valid JSON: ${e instanceof Error ? e.message : String(e)}`));
  }
}

/** The time and count bounds of one HTTP connection, in milliseconds, from the config's seconds. */
export interface HttpLimits {
  requestTimeoutMs: number;
  headersTimeoutMs: number;
  keepAliveTimeoutMs: number;
  /** 0: no limit. */
  maxRequestsPerSocket: number;
}

export function httpLimits(config: Pick<GatewayConfig, 'requestTimeout' | 'headersTimeout' | 'keepAliveTimeout' | 'maxRequestsPerSocket'>): HttpLimits {
  return {
    requestTimeoutMs: Math.round(config.requestTimeout * 1000),
    headersTimeoutMs: Math.round(config.headersTimeout * 1000),
    keepAliveTimeoutMs: Math.round(config.keepAliveTimeout * 1000),
    maxRequestsPerSocket: config.maxRequestsPerSocket,
  };
}

/**
 * Fastify's server options for these bounds. node's requestTimeout and
 * headersTimeout cover receiving a request (headers, then the whole body), not
 * answering it: a kernel start that waits minutes for its kernel while the
 * client sends nothing is not cut off. For the same reason there is no socket
 * inactivity timeout (fastify's connectionTimeout stays 0); an idle keep-alive
 * connection is closed after keepAliveTimeout. node checks the two request
 * timeouts only every connectionsCheckingInterval (30 s by default), so the
 * check runs at a quarter of the shorter one (at most once a second; the check
 * walks only connections with a request still coming in).
 */
export function httpServerOptions(limits: HttpLimits): {
  requestTimeout: number;
  keepAliveTimeout: number;
  maxRequestsPerSocket: number;
  connectionTimeout: number;
  http: ServerOptions;
} {
  const checkEvery = Math.max(50, Math.min(1000, Math.floor(Math.min(limits.headersTimeoutMs, limits.requestTimeoutMs) / 4)));
  return {
    requestTimeout: limits.requestTimeoutMs,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    maxRequestsPerSocket: limits.maxRequestsPerSocket,
    connectionTimeout: 0,
    http: {
      requestTimeout: limits.requestTimeoutMs,
      headersTimeout: limits.headersTimeoutMs,
      keepAliveTimeout: limits.keepAliveTimeoutMs,
      connectionsCheckingInterval: checkEvery,
    },
  };
}

interface ClientError extends Error {
  code?: string;
}

/**
 * node's 'clientError': a request that is not HTTP, too slow (the timeouts
 * above) or whose headers are too large, and resets. The answer is kgate's JSON
 * and the socket is then destroyed. Fastify's own handler logs the whole error,
 * whose rawPacket holds the bytes received, an Authorization header among
 * them; only the code is logged here.
 */
export function clientErrorHandler(log: Logger | undefined, csp: string | undefined): (err: ClientError, socket: Socket) => void {
  return (err, socket) => {
    const code = err.code ?? 'unknown';
    if (socket.destroyed || code === 'ECONNRESET') {
      socket.destroy();
      return;
    }
    let e: KgateError;
    if (code === 'ERR_HTTP_REQUEST_TIMEOUT') {
      e = new KgateError(ErrorCodes.REQUEST_TIMEOUT, 'the request was not received in time (see --request-timeout and --headers-timeout)');
    } else if (code === 'HPE_HEADER_OVERFLOW') {
      e = new KgateError(ErrorCodes.HEADERS_TOO_LARGE, 'the request headers are too large');
    } else {
      e = badRequest(`the request is not valid HTTP (${truncate(code, 40)})`);
    }
    log?.debug({ code, status: httpStatusOf(e) }, 'refused a connection: malformed or too slow request');
    // Never write into a response already under way on this socket (the peer would read garbage).
    const inFlight = (socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage;
    if (inFlight?.headersSent) socket.destroy();
    else refuse(socket, e, csp);
  };
}

/**
 * What a caller of createServer puts in place of kgate's own parts: a test its
 * fakes (a provisioner that starts nothing, its own kernelspecs, a logger it
 * reads), without reaching into private fields.
 */
export interface ServerOverrides {
  /** The logger (default: JSON lines on stderr at --log-level). */
  log?: Logger;
  /**
   * Provisioner factories besides the built-in ones, each under its `name` (a
   * kernelspec picks one by `metadata.kernel_provisioner.provisioner_name`);
   * one named `local` replaces the local provisioner, which every kernelspec
   * that names none uses.
   */
  provisioners?: readonly ProvisionerFactory[];
  /** Kernelspec directories searched first, before --kernelspec-dir. */
  kernelspecDirs?: readonly string[];
}

/**
 * The composition root: builds kgate from its config (the CLI's, or a test's)
 * and the overrides. Nothing listens until `listen()`; `app.inject()` serves
 * requests without a socket.
 */
export async function createServer(config: Config, overrides: ServerOverrides = {}): Promise<Gateway> {
  const log = overrides.log ?? createLogger(config.logLevel);
  const token = config.authToken ?? randomBytes(24).toString('hex');
  // Reads the token file, JWT secret and JWKS file first: a bad one stops the start before anything runs.
  const auth = authenticatorFor(config, token, log);
  // Opened first too (an --audit-log that cannot be written stops the start), and subscribed before adoption.
  const audit = new AuditLog({ file: config.auditLog, log, owns: (id) => kernels.has(id) });
  const specDirs = [...(overrides.kernelspecDirs ?? []), ...config.kernelspecDir, ...jupyterKernelDirs(), BUILTIN_KERNELSPECS];
  const specs = new KernelSpecStore(specDirs, config.defaultKernelName, (dir, reason) => log.warn({ dir, reason }, 'skipped an unreadable kernelspec'));
  await specs.refresh(true);
  // An override with a built-in's name replaces it (the registry keeps the last factory of a name).
  // What a sandboxed kernel never sees, even inside a directory bound into it: kgate's own state and secrets.
  const hide = [config.stateDir, config.runtimeDir, config.tokenFile, config.jwtSecretFile, config.jwksFile, config.authTokenFile, config.policy, config.auditLog].filter(
    (p): p is string => p !== undefined,
  );
  // Read here (a bad file stops the start): admission and the kubernetes provisioner's tenant quotas read the same one.
  const policy = config.policy !== undefined ? new PolicyFile(config.policy) : undefined;
  const provisioners = new ProvisionerRegistry(
    [
      localProvisionerFactory({ runtimeDir: config.runtimeDir, ip: '127.0.0.1', scrubEnv }),
      sandboxProvisionerFactory({ hide: hide.map((p) => resolve(p)), egress: config.sandboxEgress, egressNet: config.egressNet }),
      containerProvisionerFactory({ egressNet: config.egressNet }),
      kubernetesProvisionerFactory({
        kubeconfig: config.kubeconfig,
        namespace: config.k8sNamespace,
        createNamespaces: config.k8sCreateNamespaces,
        defaultImage: config.k8sKernelImage,
        policy,
      }),
      ...(overrides.provisioners ?? []),
    ],
    config.defaultProvisioner,
    log,
  );
  if (!provisioners.has(config.defaultProvisioner))
    throw new ConfigError(`--default-provisioner: this gateway has no provisioner ${JSON.stringify(config.defaultProvisioner)} (it has ${provisioners.names().join(', ')})`);
  // The Kubernetes store loads @kubernetes/client-node, which only a gateway that uses it should pay for.
  const state: KernelStore | undefined =
    config.stateStore === 'kubernetes'
      ? (await import('../kernels/k8s-store.js')).kubernetesStore({ kubeconfig: config.kubeconfig, namespace: config.stateNamespace })
      : config.stateDir
        ? new KernelStateStore(config.stateDir)
        : undefined;
  await state?.init();
  // What every kernel's link relays and keeps for replay, one of each per gateway (metrics read them).
  const relayCounts = new RelayCounts();
  const replayBudget = new ReplayBudget(config.replayTotalBytes);
  const kernels = new KernelManager({
    specs,
    provisionerFor: (spec) => provisioners.create(spec),
    launchTimeoutMs: config.launchTimeout * 1000,
    shutdownWaitMs: config.shutdownWait * 1000,
    restartLimit: config.restartLimit,
    heartbeat: { intervalMs: config.heartbeatInterval * 1000, timeoutMs: config.heartbeatTimeout * 1000 },
    link: {
      verifySignatures: config.verifySignatures,
      maxQueued: config.maxQueued,
      maxKernelInputBytes: config.maxKernelInput,
      maxClientInputBytes: config.maxClientInput,
      iopubHighWaterMark: config.iopubHwm,
      counts: relayCounts,
      replay: {
        maxBytes: config.replayBytes,
        maxMs: config.replaySeconds * 1000,
        maxSessions: config.replaySessions,
        maxKernelBytes: config.replayKernelBytes,
        budget: replayBudget,
      },
      iopubRateLimit:
        config.iopubMsgRateLimit > 0 || config.iopubDataRateLimit > 0
          ? { msgsPerSec: config.iopubMsgRateLimit, bytesPerSec: config.iopubDataRateLimit, windowSec: config.rateLimitWindow }
          : undefined,
    },
    envPolicy: { allow: new Set(config.envAllow) },
    rootDir: config.rootDir,
    maxKernels: config.maxKernels,
    maxKernelsPerUser: config.maxKernelsPerUser,
    policy,
    store: state,
    log,
  });
  // Subscribed before adoption, so the adopted kernels are charged from their last checkpoint.
  const meter = await startMetering({ stateDir: config.stateDir, intervalSeconds: config.meteringInterval, registry: kernels.registry, records: state, log });
  // Subscribed before adoption too, so adoptions are counted.
  const metrics = new GatewayMetrics({ kernels, relay: relayCounts, replay: replayBudget, meter, token: config.metricsToken, baseUrl: config.baseUrl, log });
  await kernels.adopt();
  kernels.pools.configure(config.pool);
  const culler =
    config.cullIdleTimeout > 0
      ? new KernelCuller(
          kernels,
          { idleTimeoutMs: config.cullIdleTimeout * 1000, intervalMs: config.cullInterval * 1000, cullConnected: config.cullConnected, cullBusy: config.cullBusy },
          log,
        )
      : undefined;
  // With --state-store kubernetes the sessions are in the cluster too, so every replica serves them.
  const sessionStore =
    config.stateStore === 'kubernetes' ? await (await import('../kernels/k8s-session-store.js')).kubernetesSessionStore(state, { kubeconfig: config.kubeconfig, log }) : undefined;
  const sessions = new SessionManager(kernels, { stateDir: config.stateDir, kernelRecords: state, store: sessionStore });
  const ctx: GatewayContext = { kernels, sessions, specs, auth, baseUrl: config.baseUrl, startedAt: new Date(), log };

  const csp = frameAncestorsPolicy(config.frameAncestors);
  const app = Fastify({
    ...httpServerOptions(httpLimits(config)),
    clientErrorHandler: clientErrorHandler(log, csp),
    loggerInstance: log as FastifyBaseLogger,
    // The client's X-Request-Id when well-formed, else a new id (src/gateway/request-log.ts).
    genReqId,
    requestIdHeader: false,
    // No log line per request: cheap, and a ?token= in a URL never reaches the log.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 1024 * 1024,
    // A kernelspec name may be 128 characters (KERNEL_NAME); ids are far shorter.
    routerOptions: { maxParamLength: 256 },
    return503OnClosing: true,
    // Routing refusals (a malformed or overlong path segment) quote the whole path in
    // fastify's own message; answer them in kgate's JSON without echoing the input.
    frameworkErrors: (err, _req, reply: FastifyReply) => {
      const status = err.statusCode ?? 400;
      // No hook runs for these, so the frame-ancestors header is set here too.
      void reply
        .code(status)
        .header('Content-Security-Policy', csp)
        .send({ reason: STATUS_CODES[status] ?? 'Bad Request', message: `the request path is malformed or too long (${err.code})`, code: ErrorCodes.BAD_REQUEST });
    },
  });
  app.decorateRequest('principal', null as unknown as Principal);
  app.removeAllContentTypeParsers();
  // Jupyter clients do not all send a JSON content type; every body is read as JSON.
  app.addContentTypeParser('*', { parseAs: 'string' }, parseJson);

  const health = new Health({ listening: () => app.server.listening, stateDir: config.stateDir, baseUrl: ctx.baseUrl, log });
  // Before the auth hook, so a refused request is logged, audited and answered with its X-Request-Id too.
  installRequestLog(app, { quiet: (req) => health.isProbe(req) });
  audit.routes(app, {
    baseUrl: ctx.baseUrl,
    kernelspecOf: (id) => (kernels.has(id) ? kernels.get(id).name : undefined),
    sessionKernel: async (req, id) => (await sessions.get(id, req.principal)).kernelId,
  });

  const origins = new OriginPolicy(config.allowOrigin, config.demoPort ? [config.demoPort] : []);
  app.addHook('onRequest', async (req, reply) => {
    reply.header('Content-Security-Policy', csp);
    // The probes need no credential and no CORS check; once a shutdown has drained, nothing else is served.
    if (health.isProbe(req)) return;
    health.refuseIfClosing(reply);
    // CORS first: a preflight carries no token, and is answered here.
    if (origins.applyCors(req, reply)) return reply;
    // --metrics-token is good for /metrics alone; every other request is the authenticator's.
    const r = metrics.scrapeAuth(req.url, req.headers) ?? (await auth.authenticate(req.headers, req.url));
    if (r.failure !== undefined) {
      if (events.authFailure.hasSubscribers) events.authFailure.publish({ kind: r.failure, transport: 'http' });
      // Which check failed is for the operator only; the path without its query (which may hold ?token=).
      req.log.debug({ kind: r.failure, method: req.method, path: req.url.split('?', 1)[0]!.slice(0, 200) }, 'refused: not authenticated');
      throw unauthorized();
    }
    req.principal = r.principal;
  });

  app.setErrorHandler((err: FastifyError | KgateError, req, reply) => {
    if (err instanceof KgateError) {
      const status = httpStatusOf(err);
      if (status >= 500) req.log.error({ err, url: req.routeOptions.url }, 'request failed');
      return reply.code(status).headers(errorHeaders(err)).send(errorBody(err));
    }
    const status = err.statusCode ?? 500;
    if (status < 500) {
      // fastify's own refusals (body too large, URL too long): JSON with a reason, and
      // the message cut short because fastify's can quote the whole request URL.
      return reply.code(status).send({ reason: STATUS_CODES[status] ?? 'Bad Request', message: truncate(err.message, 200), code: ErrorCodes.BAD_REQUEST });
    }
    req.log.error({ err, url: req.routeOptions.url }, 'unexpected error');
    return reply.code(500).send({ reason: 'Internal Server Error', message: 'internal error; see the gateway log', code: ErrorCodes.INTERNAL });
  });
  app.setNotFoundHandler((req, reply) => {
    const e = notFound(`no route ${req.method} ${req.url.split('?')[0]!.slice(0, 80)}`);
    return reply.code(404).send(errorBody(e));
  });

  // Every route under --base-url (the channels WebSocket matches it in channels.ts);
  // requests outside it get the JSON 404 above.
  void app.register(
    async (api) => {
      specRoutes(api, ctx);
      statusRoutes(api, ctx);
      kernelspecRoutes(api, ctx);
      kernelRoutes(api, ctx);
      sessionRoutes(api, ctx);
      usageRoutes(api, meter);
      healthRoutes(api, health);
    },
    { prefix: ctx.baseUrl.slice(0, -1) },
  );
  // Outside the API scope above: Prometheus text, not part of the Jupyter API's OpenAPI description.
  void app.register(async (m) => metricsRoutes(m, metrics), { prefix: ctx.baseUrl.slice(0, -1) });
  // An HTML page behind the same auth, reading the API above; outside its OpenAPI description too.
  void app.register(async (p) => statusPageRoutes(p, { frameAncestors: csp }), { prefix: ctx.baseUrl.slice(0, -1) });
  // The probes at the root too, where one configured without the prefix looks.
  if (ctx.baseUrl !== '/') void app.register(async (r) => healthRoutes(r, health));

  const channels = new ChannelsEndpoint(ctx, {
    maxMessageSize: config.maxMessageSize,
    maxClientBuffer: config.maxClientBuffer,
    pingIntervalMs: 30_000,
    deflate: config.wsDeflate,
    origins,
    checkOriginWithToken: config.checkOriginWithToken,
    csp,
  });
  channels.attach(app.server);
  await app.ready();

  let closing: Promise<void> | undefined;
  return {
    app,
    ctx,
    metrics,
    token,
    health,
    audit,
    async listen() {
      await app.listen({ host: config.ip, port: config.port });
      if (config.metricsPort !== undefined) {
        const m = await metrics.listen(config.metricsIp, config.metricsPort);
        log.info({ host: m.host, port: m.port }, `metrics served without auth on http://${m.host}:${m.port}/metrics`);
      }
      // After listening (a listen error is listen()'s to report): an accept() that fails is
      // an 'error' event on the server, which with no listener would end the process
      // (libuv absorbs EMFILE itself; other accept errors reach node).
      app.server.on('error', (err) => log.error({ err }, 'the HTTP server reported an error; still serving'));
      const addr = app.server.address();
      const port = typeof addr === 'object' && addr ? addr.port : config.port;
      return { host: config.ip, port };
    },
    async reload() {
      // Reopened first (logrotate moved it), so this reload's line is the new file's.
      audit.reopen();
      const results = await Promise.allSettled([auth.reload(), kernels.reloadPolicy()]);
      const failed = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
      audit.reloaded(failed.length === 0 ? 'ok' : 'config_error');
      if (failed.length === 1) throw failed[0];
      if (failed.length > 1) throw new AggregateError(failed, failed.map((e) => (e instanceof Error ? e.message : String(e))).join('; '));
    },
    async drain(ms) {
      health.stopServing();
      if (ms > 0) await new Promise((resolve) => setTimeout(resolve, ms));
    },
    close() {
      closing ??= (async () => {
        // Not ready (if the drain did not say so already); no new connection, request or upgrade; then the rest.
        health.refuseNew();
        app.server.close();
        channels.close();
        culler?.stop();
        const keep = config.keepKernels && state !== undefined;
        const stopping = audit.gatewayStopping(kernels.list(), keep ? 'release' : 'shutdown');
        if (keep) await kernels.releaseAll();
        else await kernels.shutdownAll();
        stopping.done();
        audit.close();
        await meter.close();
        await metrics.close();
        await app.close();
      })();
      return closing;
    },
  };
}

/** @deprecated createServer(config, { log }); kept for callers of the old name. */
export function createGateway(config: Config, log: Logger): Promise<Gateway> {
  return createServer(config, { log });
}
