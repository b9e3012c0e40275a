/**
 * Every error kgate raises carries a stable `code`. Layers below the gateway
 * throw these domain errors; only the gateway maps them onto HTTP statuses and
 * WebSocket close codes, so a provisioner never has to know what HTTP is.
 */

/** WebSocket close codes kgate uses on purpose (1000/1001 only for intentional closes). */
export const WsClose = {
  /** Intentional: the kernel was shut down, or the connection was replaced by a newer one. */
  Normal: 1000,
  /** Intentional: the gateway is shutting down. */
  GoingAway: 1001,
  /** The client sent a frame kgate cannot decode (bad JSON, bad offsets table, unknown channel). */
  InvalidFrame: 1007,
  /** The client broke a rule of the protocol that is not about one frame's bytes (too many fragments). */
  PolicyViolation: 1008,
  /** The kernel died and could not be restarted, or an internal fault. */
  InternalError: 1011,
  /** The kernel is not accepting input fast enough; the client should retry later. */
  TryAgainLater: 1013,
  /** The client did not read its messages and its send buffer passed the bound. */
  SlowClient: 4008,
} as const;

export interface ErrorBody {
  reason: string;
  message: string;
  code: string;
}

/**
 * The catalogue of codes. Each one's HTTP status, and the sentence that
 * documents it, live in one gateway-side table (src/gateway/http-errors.ts),
 * from which docs/api.md's error table and the OpenAPI document are made.
 */
export const ErrorCodes = {
  BAD_REQUEST: 'KG_BAD_REQUEST',
  INVALID_JSON: 'KG_INVALID_JSON',
  REQUEST_TIMEOUT: 'KG_REQUEST_TIMEOUT',
  HEADERS_TOO_LARGE: 'KG_HEADERS_TOO_LARGE',
  UNAUTHORIZED: 'KG_UNAUTHORIZED',
  FORBIDDEN: 'KG_FORBIDDEN',
  NOT_FOUND: 'KG_NOT_FOUND',
  KERNEL_NOT_FOUND: 'KG_KERNEL_NOT_FOUND',
  KERNELSPEC_NOT_FOUND: 'KG_KERNELSPEC_NOT_FOUND',
  SESSION_NOT_FOUND: 'KG_SESSION_NOT_FOUND',
  METHOD_NOT_ALLOWED: 'KG_METHOD_NOT_ALLOWED',
  KERNEL_START_FAILED: 'KG_KERNEL_START_FAILED',
  KERNEL_START_TIMEOUT: 'KG_KERNEL_START_TIMEOUT',
  KERNEL_START_CANCELLED: 'KG_KERNEL_START_CANCELLED',
  KERNEL_UNSCHEDULABLE: 'KG_KERNEL_UNSCHEDULABLE',
  KERNEL_IMAGE_UNAVAILABLE: 'KG_KERNEL_IMAGE_UNAVAILABLE',
  KERNEL_LAUNCH_RETRYABLE: 'KG_KERNEL_LAUNCH_RETRYABLE',
  TENANT_QUOTA: 'KG_TENANT_QUOTA',
  KERNELSPEC_NOT_ALLOWED: 'KG_KERNELSPEC_NOT_ALLOWED',
  KERNEL_DEAD: 'KG_KERNEL_DEAD',
  KERNEL_BUSY_RESTARTING: 'KG_KERNEL_RESTARTING',
  KERNEL_LIMIT: 'KG_KERNEL_LIMIT',
  USER_KERNEL_LIMIT: 'KG_USER_KERNEL_LIMIT',
  NOT_READY: 'KG_NOT_READY',
  INTERNAL: 'KG_INTERNAL',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

/**
 * Every error kgate raises on purpose. It carries a stable code, a message
 * for the client and a cause for the log; what HTTP status or close code it
 * becomes is the gateway's business, never the raiser's.
 */
export class KgateError extends Error {
  readonly code: ErrorCode;
  /** Seconds after which the same request may succeed (an unschedulable or retryable launch). */
  readonly retryAfterSec: number | undefined;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; retryAfterSec?: number | undefined }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'KgateError';
    this.code = code;
    this.retryAfterSec = options?.retryAfterSec;
  }
}

export const badRequest = (message: string): KgateError => new KgateError(ErrorCodes.BAD_REQUEST, message);
export const invalidJson = (message: string): KgateError => new KgateError(ErrorCodes.INVALID_JSON, message);
export const unauthorized = (): KgateError => new KgateError(ErrorCodes.UNAUTHORIZED, 'a valid token is required (Authorization: token X, or ?token=X)');
export const forbiddenOrigin = (origin: string): KgateError =>
  new KgateError(ErrorCodes.FORBIDDEN, `origin ${JSON.stringify(truncate(origin))} is not allowed (see --allow-origin)`);
export const notFound = (message: string): KgateError => new KgateError(ErrorCodes.NOT_FOUND, message);
export const kernelNotFound = (id: string): KgateError => new KgateError(ErrorCodes.KERNEL_NOT_FOUND, `no kernel with id ${JSON.stringify(truncate(id))}`);
export const kernelspecNotFound = (name: string): KgateError => new KgateError(ErrorCodes.KERNELSPEC_NOT_FOUND, `no kernelspec named ${JSON.stringify(truncate(name))}`);
export const sessionNotFound = (id: string): KgateError => new KgateError(ErrorCodes.SESSION_NOT_FOUND, `no session with id ${JSON.stringify(truncate(id))}`);
export const methodNotAllowed = (method: string, url: string): KgateError => new KgateError(ErrorCodes.METHOD_NOT_ALLOWED, `${method} is not allowed on ${truncate(url)}`);
export const kernelStartFailed = (message: string, cause?: unknown): KgateError => new KgateError(ErrorCodes.KERNEL_START_FAILED, message, { cause });
export const kernelStartTimeout = (message: string): KgateError => new KgateError(ErrorCodes.KERNEL_START_TIMEOUT, message);
export const kernelStartCancelled = (id: string, during: 'start' | 'restart' = 'start'): KgateError =>
  new KgateError(ErrorCodes.KERNEL_START_CANCELLED, `kernel ${truncate(id)} was shut down before its ${during} completed`);
export const kernelUnschedulable = (message: string, retryAfterSec = 30): KgateError => new KgateError(ErrorCodes.KERNEL_UNSCHEDULABLE, message, { retryAfterSec });
export const kernelImageUnavailable = (message: string, cause?: unknown): KgateError => new KgateError(ErrorCodes.KERNEL_IMAGE_UNAVAILABLE, message, { cause });
export const kernelLaunchRetryable = (message: string, retryAfterSec = 5, cause?: unknown): KgateError =>
  new KgateError(ErrorCodes.KERNEL_LAUNCH_RETRYABLE, message, { cause, retryAfterSec });
export const tenantQuota = (message: string): KgateError => new KgateError(ErrorCodes.TENANT_QUOTA, message);
export const kernelDead = (id: string): KgateError => new KgateError(ErrorCodes.KERNEL_DEAD, `kernel ${id} is dead`);
export const kernelRestarting = (id: string): KgateError => new KgateError(ErrorCodes.KERNEL_BUSY_RESTARTING, `kernel ${id} is already restarting or shutting down`);
export const kernelLimit = (max: number): KgateError => new KgateError(ErrorCodes.KERNEL_LIMIT, `the gateway runs its maximum of ${max} kernels; shut one down first`);
export const userKernelLimit = (user: string, max: number, where = '--max-kernels-per-user'): KgateError =>
  new KgateError(ErrorCodes.USER_KERNEL_LIMIT, `user ${JSON.stringify(truncate(user))} runs the maximum of ${max} kernels per user (${where}); shut one down first`);
export const kernelspecNotAllowed = (tenant: string, name: string, allowed: readonly string[] = []): KgateError =>
  new KgateError(
    ErrorCodes.KERNELSPEC_NOT_ALLOWED,
    `tenant ${JSON.stringify(truncate(tenant))} may not start kernelspec ${JSON.stringify(truncate(name))} (the policy allows ${allowed.length > 0 ? allowed.map((a) => truncate(a)).join(', ') : 'none'})`,
  );
export const internalError = (message: string, cause?: unknown): KgateError => new KgateError(ErrorCodes.INTERNAL, message, { cause });

/** Client input is echoed in messages only in part, so a 10 KB name does not come back whole. */
export function truncate(s: string, max = 64): string {
  return s.length > max ? `${s.slice(0, max)}…` : s;
}
