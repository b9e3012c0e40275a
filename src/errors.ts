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

export class KgateError extends Error {
  readonly code: string;
  readonly status: number;
  readonly reason: string;

  constructor(code: string, status: number, reason: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'KgateError';
    this.code = code;
    this.status = status;
    this.reason = reason;
  }

  toBody(): ErrorBody {
    return { reason: this.reason, message: this.message, code: this.code };
  }
}

/**
 * The catalogue of codes. `test/errors.test.ts` checks that every code used is
 * documented in the README's error table.
 */
export const ErrorCodes = {
  BAD_REQUEST: 'KG_BAD_REQUEST',
  INVALID_JSON: 'KG_INVALID_JSON',
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
  KERNEL_DEAD: 'KG_KERNEL_DEAD',
  KERNEL_BUSY_RESTARTING: 'KG_KERNEL_RESTARTING',
  KERNEL_LIMIT: 'KG_KERNEL_LIMIT',
  USER_KERNEL_LIMIT: 'KG_USER_KERNEL_LIMIT',
  INTERNAL: 'KG_INTERNAL',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

export const badRequest = (message: string): KgateError =>
  new KgateError(ErrorCodes.BAD_REQUEST, 400, 'Bad Request', message);
export const invalidJson = (message: string): KgateError =>
  new KgateError(ErrorCodes.INVALID_JSON, 400, 'Bad Request', message);
export const unauthorized = (): KgateError =>
  new KgateError(ErrorCodes.UNAUTHORIZED, 401, 'Unauthorized', 'a valid token is required (Authorization: token X, or ?token=X)');
export const forbiddenOrigin = (origin: string): KgateError =>
  new KgateError(ErrorCodes.FORBIDDEN, 403, 'Forbidden', `origin ${JSON.stringify(truncate(origin))} is not allowed (see --allow-origin)`);
export const notFound = (message: string): KgateError =>
  new KgateError(ErrorCodes.NOT_FOUND, 404, 'Not Found', message);
export const kernelNotFound = (id: string): KgateError =>
  new KgateError(ErrorCodes.KERNEL_NOT_FOUND, 404, 'Not Found', `no kernel with id ${JSON.stringify(truncate(id))}`);
export const kernelspecNotFound = (name: string): KgateError =>
  new KgateError(ErrorCodes.KERNELSPEC_NOT_FOUND, 404, 'Not Found', `no kernelspec named ${JSON.stringify(truncate(name))}`);
export const sessionNotFound = (id: string): KgateError =>
  new KgateError(ErrorCodes.SESSION_NOT_FOUND, 404, 'Not Found', `no session with id ${JSON.stringify(truncate(id))}`);
export const methodNotAllowed = (method: string, url: string): KgateError =>
  new KgateError(ErrorCodes.METHOD_NOT_ALLOWED, 405, 'Method Not Allowed', `${method} is not allowed on ${truncate(url)}`);
export const kernelStartFailed = (message: string, cause?: unknown): KgateError =>
  new KgateError(ErrorCodes.KERNEL_START_FAILED, 500, 'Internal Server Error', message, { cause });
export const kernelStartTimeout = (message: string): KgateError =>
  new KgateError(ErrorCodes.KERNEL_START_TIMEOUT, 504, 'Gateway Timeout', message);
/** The kernel was shut down (DELETE, or the gateway stopping) before its start (or restart) completed. */
export const kernelStartCancelled = (id: string, during = 'start'): KgateError =>
  new KgateError(ErrorCodes.KERNEL_START_CANCELLED, 409, 'Conflict', `kernel ${truncate(id)} was shut down before its ${during} completed`);
export const kernelDead = (id: string): KgateError =>
  new KgateError(ErrorCodes.KERNEL_DEAD, 409, 'Conflict', `kernel ${id} is dead`);
export const kernelRestarting = (id: string): KgateError =>
  new KgateError(ErrorCodes.KERNEL_BUSY_RESTARTING, 409, 'Conflict', `kernel ${id} is already restarting or shutting down`);
export const kernelLimit = (max: number): KgateError =>
  new KgateError(ErrorCodes.KERNEL_LIMIT, 403, 'Forbidden', `the gateway runs its maximum of ${max} kernels; shut one down first`);
export const userKernelLimit = (user: string, max: number): KgateError =>
  new KgateError(ErrorCodes.USER_KERNEL_LIMIT, 403, 'Forbidden', `user ${JSON.stringify(truncate(user))} runs the maximum of ${max} kernels per user; shut one down first`);
export const internalError = (message: string, cause?: unknown): KgateError =>
  new KgateError(ErrorCodes.INTERNAL, 500, 'Internal Server Error', message, { cause });

/** Client input is echoed in messages only in part, so a 10 KB name does not come back whole. */
export function truncate(s: string, max = 64): string {
  return s.length > max ? `${s.slice(0, max)}…` : s;
}
