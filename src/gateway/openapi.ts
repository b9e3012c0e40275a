/**
 * The OpenAPI 3.1 description of kgate's API, built once at startup from the
 * zod schemas that validate requests and model responses (`schemas.ts`), so
 * there is no hand-kept copy to drift. Served at `<base>api/spec.yaml` (where
 * kernel_gateway serves its own) and `<base>api/spec.json`.
 *
 * Every route registered in the API scope must have an operation below: the
 * gateway refuses to start otherwise, as fastify refuses a duplicate route.
 */
import { STATUS_CODES } from 'node:http';
import type { FastifyInstance } from 'fastify';
import { stringify } from 'yaml';
import { z } from 'zod';
import { V1_PROTOCOL } from '../bridge/ws-v1.js';
import { VERSION } from '../version.js';
import type { GatewayContext } from './context.js';
import { HTTP_ERRORS, type HttpErrorDef } from './http-errors.js';
import * as s from './schemas.js';
import { usageReport, usageTime } from './routes/usage.js';
import { healthModel, notReadyModel } from './health.js';

type Json = Record<string, unknown>;
type Method = 'GET' | 'POST' | 'PATCH' | 'DELETE';

/** Request bodies, as clients may send them (zod's input side). */
const REQUEST_SCHEMAS = {
  StartKernelRequest: s.startKernelBody,
  CreateSessionRequest: s.createSessionBody,
  PatchSessionRequest: s.patchSessionBody,
} satisfies Record<string, z.ZodType>;

/** Response bodies, as kgate sends them (zod's output side). */
const RESPONSE_SCHEMAS = {
  Kernel: s.kernelModel,
  KernelList: z.array(s.kernelModel),
  Session: s.sessionModel,
  SessionList: z.array(s.sessionModel),
  KernelSpec: s.kernelspecModel,
  KernelSpecList: s.kernelspecList,
  ApiInfo: s.apiInfo,
  Status: s.statusModel,
  Usage: usageReport,
  Health: healthModel,
  NotReady: notReadyModel,
  Error: s.errorBody,
} satisfies Record<string, z.ZodType>;

type Component = keyof typeof RESPONSE_SCHEMAS;

/**
 * Error answers by status; every one has the `Error` body. What each status
 * means is the list of kgate's codes that answer with it (src/gateway/http-errors.ts),
 * plus fastify's own refusals that kgate answers in the same shape.
 */
const OWN_REFUSALS: Partial<Record<number, string>> = {
  413: '`KG_BAD_REQUEST`: a body larger than 1 MiB',
  // fastify's router bounds each path parameter (maxParamLength, set in app.ts).
  414: '`KG_BAD_REQUEST`: a path parameter longer than 256 characters',
};
const ERROR_STATUSES = [400, 401, 403, 404, 409, 413, 414, 431, 500, 503, 504] as const;
type ErrorStatus = (typeof ERROR_STATUSES)[number];

function errorDescription(status: ErrorStatus): string {
  const codes = (Object.entries(HTTP_ERRORS) as Array<[string, HttpErrorDef]>).filter(([, d]) => d.status === status).map(([code, d]) => `\`${code}\`: ${d.when}`);
  const own = OWN_REFUSALS[status];
  return [...codes, ...(own ? [own] : [])].join('; ');
}

interface Answer {
  description: string;
  /** A response component, or several that may each be the answer. */
  json?: Component | Component[];
  /** Other content types, as OpenAPI media type objects. */
  content?: Json;
  headers?: Record<string, { description: string; required?: true }>;
}

interface Operation {
  method: Method;
  /** The route as fastify knows it, below the base URL (`:name` parameters). */
  route: string;
  operationId: string;
  tag: string;
  summary: string;
  description?: string;
  params?: Record<string, string>;
  query?: Array<{ name: string; description: string; schema: z.ZodType }>;
  /** Not required: no body, `{}` and a JSON null are the same request (src/gateway/validate.ts). */
  body?: { schema: keyof typeof REQUEST_SCHEMAS; required: boolean };
  ok: Record<number, Answer>;
  errors: ErrorStatus[];
  /** Served by the WebSocket upgrade handler (`channels.ts`), not a fastify route. */
  upgrade?: true;
  /** Served without a credential and outside the CORS check (`security: []`): the probes. */
  public?: true;
}

const LOCATION = { Location: { description: 'the new resource, under the base URL', required: true } } as const;
const kernelId = { id: 'the kernel id' };
const sessionId = { id: 'the session id' };

/** Every operation of the API. Errors that any route can answer (401, 403, 500) are added when the document is built. */
export const OPERATIONS: Operation[] = [
  { method: 'GET', route: '/api', operationId: 'getApi', tag: 'status', summary: "kgate's version", ok: { 200: { description: 'the version', json: 'ApiInfo' } }, errors: [] },
  {
    method: 'GET',
    route: '/api/status',
    operationId: 'getStatus',
    tag: 'status',
    summary: 'started, last activity, kernels and connections',
    ok: { 200: { description: 'the status', json: 'Status' } },
    errors: [],
  },
  {
    method: 'GET',
    route: '/api/usage',
    operationId: 'getUsage',
    tag: 'usage',
    summary: 'kernel-, core-, GiB- and GPU-seconds used, by tenant, user and kernelspec',
    description:
      "The caller's own kernels; a `kgate:tenant-admin` sees its tenant's, a `kgate:admin` (and the operator token) everyone's. A kernel is charged from when it is ready (or handed out from a warm pool) to its shutdown or final death, restarts included, for what it reserved. Intervals are clipped to [since, until); at most 31 days apart.",
    query: [
      { name: 'since', description: 'the start (default: 00:00 UTC of the day `until` falls in)', schema: usageTime },
      { name: 'until', description: 'the end (default: now)', schema: usageTime },
    ],
    ok: { 200: { description: 'the usage', json: 'Usage' } },
    errors: [400],
  },
  {
    method: 'GET',
    route: '/api/spec.json',
    operationId: 'getSpecJson',
    tag: 'status',
    summary: 'this description, as JSON',
    ok: { 200: { description: 'the OpenAPI document', content: { 'application/json': { schema: { type: 'object' } } } } },
    errors: [],
  },
  {
    method: 'GET',
    route: '/api/spec.yaml',
    operationId: 'getSpecYaml',
    tag: 'status',
    summary: 'this description, as YAML',
    // The schema is of the document the YAML holds, as a client that parses it reads it.
    ok: { 200: { description: 'the OpenAPI document', content: { 'application/yaml': { schema: { type: 'object' } } } } },
    errors: [],
  },
  {
    method: 'GET',
    route: '/api/kernelspecs',
    operationId: 'listKernelspecs',
    tag: 'kernelspecs',
    summary: 'every kernelspec, and the default',
    query: [
      {
        name: 'user',
        description: "jupyter_server's gateway client, with KERNEL_USERNAME set, asks for one kernelspec as `?user=alice/python3`: the answer is then that one spec",
        schema: z.string(),
      },
    ],
    ok: { 200: { description: 'the kernelspecs (or the one spec named after the last / of `user`)', json: ['KernelSpecList', 'KernelSpec'] } },
    errors: [404],
  },
  {
    method: 'GET',
    route: '/api/kernelspecs/:name',
    operationId: 'getKernelspec',
    tag: 'kernelspecs',
    summary: 'one kernelspec, with argv and resources',
    params: { name: 'the kernelspec name' },
    ok: { 200: { description: 'the kernelspec', json: 'KernelSpec' } },
    errors: [404],
  },
  {
    method: 'GET',
    route: '/kernelspecs/:name/:file',
    operationId: 'getKernelspecResource',
    tag: 'kernelspecs',
    summary: "a file listed in a kernelspec's resources (logos, kernel.js, kernel.css)",
    params: { name: 'the kernelspec name', file: 'the file name, as in resources' },
    ok: {
      200: {
        description: 'the file',
        content: { 'image/png': {}, 'image/svg+xml': {}, 'text/javascript': {}, 'text/css': {}, 'application/octet-stream': {} },
        headers: { 'Cache-Control': { description: 'max-age=3600' } },
      },
    },
    errors: [404],
  },
  {
    method: 'GET',
    route: '/api/kernels',
    operationId: 'listKernels',
    tag: 'kernels',
    summary: 'the running kernels',
    ok: { 200: { description: 'the kernels', json: 'KernelList' } },
    errors: [],
  },
  {
    method: 'POST',
    route: '/api/kernels',
    operationId: 'startKernel',
    tag: 'kernels',
    summary: 'start a kernel',
    description:
      'Answers once the kernel has replied to kernel_info_request. `env` keeps only KERNEL_* names (and --env-allow ones); values longer than 4096 characters or holding $, a backtick, a newline, CR or NUL are refused with 400.',
    body: { schema: 'StartKernelRequest', required: false },
    ok: { 201: { description: 'the new kernel', json: 'Kernel', headers: LOCATION } },
    errors: [400, 403, 404, 409, 413, 503, 504],
  },
  {
    method: 'GET',
    route: '/api/kernels/:id',
    operationId: 'getKernel',
    tag: 'kernels',
    summary: 'one kernel',
    params: kernelId,
    ok: { 200: { description: 'the kernel', json: 'Kernel' } },
    errors: [404],
  },
  {
    method: 'DELETE',
    route: '/api/kernels/:id',
    operationId: 'shutdownKernel',
    tag: 'kernels',
    summary: 'shut a kernel down',
    params: kernelId,
    ok: { 204: { description: 'shut down' } },
    errors: [404],
  },
  {
    method: 'POST',
    route: '/api/kernels/:id/interrupt',
    operationId: 'interruptKernel',
    tag: 'kernels',
    summary: 'interrupt a kernel',
    params: kernelId,
    ok: { 204: { description: 'interrupted' } },
    errors: [404, 409],
  },
  {
    method: 'POST',
    route: '/api/kernels/:id/restart',
    operationId: 'restartKernel',
    tag: 'kernels',
    summary: 'restart a kernel (a new process, the same id)',
    params: kernelId,
    ok: { 200: { description: 'the restarted kernel', json: 'Kernel' } },
    errors: [404, 409, 504],
  },
  {
    method: 'GET',
    route: '/api/kernels/:id/channels',
    operationId: 'connectKernelChannels',
    tag: 'kernels',
    summary: "the kernel's channels WebSocket",
    description: `A WebSocket upgrade (\`Connection: Upgrade\`, \`Upgrade: websocket\`). Messages are JSON text frames (with buffers: the binary form), or \`${V1_PROTOCOL}\` when the client offers it in Sec-WebSocket-Protocol. A second socket with the same session_id replaces the first. Refusals come before the upgrade, as plain HTTP with an Error body; a GET without the upgrade is a 404.`,
    params: kernelId,
    query: [{ name: 'session_id', description: "the client's session; identifies the connection (a random one when absent)", schema: s.sessionIdQuery }],
    ok: { 101: { description: 'Switching Protocols: the WebSocket is open', headers: { 'Sec-WebSocket-Protocol': { description: `${V1_PROTOCOL} when the client offered it` } } } },
    errors: [400, 404],
    upgrade: true,
  },
  {
    method: 'GET',
    route: '/api/sessions',
    operationId: 'listSessions',
    tag: 'sessions',
    summary: 'the sessions',
    ok: { 200: { description: 'the sessions', json: 'SessionList' } },
    errors: [],
  },
  {
    method: 'POST',
    route: '/api/sessions',
    operationId: 'createSession',
    tag: 'sessions',
    summary: 'create a session, starting its kernel (or get the session a path already has)',
    body: { schema: 'CreateSessionRequest', required: true },
    ok: { 201: { description: 'the session', json: 'Session', headers: LOCATION } },
    errors: [400, 403, 404, 409, 413, 503, 504],
  },
  {
    method: 'GET',
    route: '/api/sessions/:id',
    operationId: 'getSession',
    tag: 'sessions',
    summary: 'one session',
    params: sessionId,
    ok: { 200: { description: 'the session', json: 'Session' } },
    errors: [404],
  },
  {
    method: 'PATCH',
    route: '/api/sessions/:id',
    operationId: 'updateSession',
    tag: 'sessions',
    summary: 'rename or move a session, or change its kernel',
    params: sessionId,
    body: { schema: 'PatchSessionRequest', required: false },
    ok: { 200: { description: 'the session', json: 'Session' } },
    errors: [400, 403, 404, 409, 413, 503, 504],
  },
  {
    method: 'DELETE',
    route: '/api/sessions/:id',
    operationId: 'deleteSession',
    tag: 'sessions',
    summary: 'delete a session and shut its kernel down',
    params: sessionId,
    ok: { 204: { description: 'deleted' } },
    errors: [404],
  },
];

/**
 * The probes (src/gateway/health.ts): the only operations served without a
 * credential, kept apart from OPERATIONS, every one of which needs one.
 */
export const PUBLIC_OPERATIONS: Operation[] = [
  {
    method: 'GET',
    route: '/healthz',
    operationId: 'getHealth',
    tag: 'health',
    summary: 'liveness: the event loop answers',
    description: 'No credential. Also at `/healthz` when the base URL is not `/`.',
    ok: { 200: { description: 'alive', json: 'Health' } },
    errors: [],
    public: true,
  },
  {
    method: 'GET',
    route: '/readyz',
    operationId: 'getReadiness',
    tag: 'health',
    summary: 'readiness: listening, the state store readable and writable, not shutting down',
    description: 'No credential; the state store check is cached for a second. Also at `/readyz` when the base URL is not `/`.',
    ok: { 200: { description: 'ready', json: 'Health' }, 503: { description: 'not ready (`KG_NOT_READY`; the message says which of three reasons)', json: 'NotReady' } },
    errors: [],
    public: true,
  },
];

const ref = (name: string): Json => ({ $ref: `#/components/schemas/${name}` });

/** zod's JSON Schema (draft 2020-12, which OpenAPI 3.1 uses) of every schema in `entries`, cross-referenced as components. */
function componentSchemas(entries: Record<string, z.ZodType>, io: 'input' | 'output'): Record<string, Json> {
  const registry = z.registry<{ id: string }>();
  for (const [id, schema] of Object.entries(entries)) registry.add(schema, { id });
  const { schemas } = z.toJSONSchema(registry, { target: 'draft-2020-12', io, uri: (id) => `#/components/schemas/${id}` });
  const out: Record<string, Json> = {};
  for (const [id, schema] of Object.entries(schemas)) {
    const { $schema: _schema, $id: _id, ...rest } = schema as Json;
    out[id] = rest;
  }
  return out;
}

function inlineSchema(schema: z.ZodType): Json {
  const { $schema: _schema, ...rest } = z.toJSONSchema(schema, { target: 'draft-2020-12', io: 'input' }) as Json;
  return rest;
}

const errorResponseName = (status: ErrorStatus): string => (STATUS_CODES[status] ?? String(status)).replace(/[^A-Za-z]/g, '');

/** The OpenAPI path of a fastify route: `/api/kernels/:id` → `/api/kernels/{id}`. */
export const openApiPath = (route: string): string => route.replace(/:(\w+)/g, '{$1}');

function operationObject(op: Operation, authEnabled: boolean): Json {
  const parameters: Json[] = [];
  for (const [name, description] of Object.entries(op.params ?? {})) parameters.push({ name, in: 'path', required: true, description, schema: { type: 'string' } });
  for (const q of op.query ?? []) parameters.push({ name: q.name, in: 'query', required: false, description: q.description, schema: inlineSchema(q.schema) });
  if (op.upgrade) {
    parameters.push(
      { name: 'Upgrade', in: 'header', required: true, schema: { const: 'websocket' } },
      { name: 'Sec-WebSocket-Protocol', in: 'header', required: false, description: `\`${V1_PROTOCOL}\` selects the v1 binary protocol`, schema: { type: 'string' } },
    );
  }
  const responses: Json = {};
  for (const [status, a] of Object.entries(op.ok)) {
    const r: Json = { description: a.description };
    if (a.headers) r['headers'] = Object.fromEntries(Object.entries(a.headers).map(([h, d]) => [h, { ...d, schema: { type: 'string' } }]));
    if (a.json !== undefined) r['content'] = { 'application/json': { schema: Array.isArray(a.json) ? { anyOf: a.json.map(ref) } : ref(a.json) } };
    else if (a.content) r['content'] = a.content;
    responses[status] = r;
  }
  const errors = new Set<ErrorStatus>(op.errors);
  // A malformed path segment (bad percent-encoding) or an overlong one is refused before routing.
  if (op.params) errors.add(400).add(414);
  // node refuses a request whose headers (its URL among them) pass 16 KiB before any route sees it.
  errors.add(431);
  if (authEnabled && !op.public) errors.add(401);
  // A browser page's Origin that --allow-origin does not allow is refused on every route but the probes, before the token is looked at.
  if (!op.public) errors.add(403);
  if (!op.upgrade) errors.add(500);
  for (const status of [...errors].sort((a, b) => a - b)) responses[status] = { $ref: `#/components/responses/${errorResponseName(status)}` };
  const o: Json = { operationId: op.operationId, tags: [op.tag], summary: op.summary };
  if (op.public) o['security'] = [];
  if (op.description) o['description'] = op.description;
  if (parameters.length > 0) o['parameters'] = parameters;
  if (op.body) {
    const schema = op.body.required ? ref(op.body.schema) : { anyOf: [ref(op.body.schema), { type: 'null' }] };
    o['requestBody'] = { required: op.body.required, content: { 'application/json': { schema } } };
  }
  o['responses'] = responses;
  return o;
}

/** The OpenAPI document of this gateway (its base URL, whether auth is on). */
export function buildOpenApi(ctx: Pick<GatewayContext, 'baseUrl' | 'auth'>): Json {
  const paths: Record<string, Json> = {};
  for (const op of [...OPERATIONS, ...PUBLIC_OPERATIONS]) (paths[openApiPath(op.route)] ??= {})[op.method.toLowerCase()] = operationObject(op, ctx.auth.enabled);
  const responses: Json = {};
  for (const status of ERROR_STATUSES) {
    responses[errorResponseName(status)] = {
      description: `${STATUS_CODES[status]}: ${errorDescription(status)}`,
      content: { 'application/json': { schema: ref('Error') } },
    };
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'kgate',
      version: VERSION,
      summary: 'A headless Jupyter kernel gateway: the Jupyter kernels REST and WebSocket API',
      license: { name: 'BSD-3-Clause', identifier: 'BSD-3-Clause' },
    },
    servers: [{ url: ctx.baseUrl === '/' ? '/' : ctx.baseUrl.slice(0, -1), description: 'this gateway, under its --base-url' }],
    tags: [
      { name: 'status', description: 'the service' },
      { name: 'usage', description: 'what kernels used (metering)' },
      { name: 'kernelspecs', description: 'the kernels that can be started' },
      { name: 'kernels', description: 'running kernels and their channels' },
      { name: 'sessions', description: "jupyter_server's session API" },
      { name: 'health', description: 'probes for load balancers and Kubernetes, without a credential' },
    ],
    security: ctx.auth.enabled ? [{ token: [] }, { bearer: [] }, { tokenQuery: [] }] : [],
    paths,
    components: {
      schemas: { ...componentSchemas(REQUEST_SCHEMAS, 'input'), ...componentSchemas(RESPONSE_SCHEMAS, 'output') },
      responses,
      securitySchemes: {
        token: {
          type: 'apiKey',
          in: 'header',
          name: 'Authorization',
          description: "`Authorization: token X`, jupyter_server's gateway client's scheme; X is the operator token, a --token-file token or a JWT",
        },
        bearer: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT', description: '`Authorization: Bearer X`: a JWT, or a static token (operator or --token-file)' },
        tokenQuery: { type: 'apiKey', in: 'query', name: 'token', description: '`?token=X` (any of the above), on every route including the WebSocket; never logged' },
      },
    },
  };
}

/**
 * Serves the description, and checks when the app is ready that every route
 * of this scope has an operation and every operation a route. Register it
 * first in the API scope, so it sees every route after it.
 */
export function specRoutes(app: FastifyInstance, ctx: GatewayContext): void {
  const doc = buildOpenApi(ctx);
  const json = JSON.stringify(doc);
  const yaml = stringify(doc, { aliasDuplicateObjects: false, lineWidth: 0 });
  const routes = new Set<string>();
  app.addHook('onRoute', (r) => {
    for (const m of [r.method].flat()) if (m !== 'HEAD') routes.add(`${m} ${r.routePath}`);
  });
  app.addHook('onReady', async () => {
    const described = new Set([...OPERATIONS, ...PUBLIC_OPERATIONS].filter((op) => !op.upgrade).map((op) => `${op.method} ${op.route}`));
    const undescribed = [...routes].filter((r) => !described.has(r));
    const unserved = [...described].filter((r) => !routes.has(r));
    if (undescribed.length > 0 || unserved.length > 0) {
      throw new Error(
        `the OpenAPI operations (src/gateway/openapi.ts) and the routes differ: undescribed ${undescribed.join(', ') || 'none'}; unserved ${unserved.join(', ') || 'none'}`,
      );
    }
  });
  app.get('/api/spec.json', async (_req, reply) => reply.type('application/json; charset=utf-8').send(json));
  app.get('/api/spec.yaml', async (_req, reply) => reply.type('application/yaml; charset=utf-8').send(yaml));
}
