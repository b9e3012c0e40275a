/**
 * The one table that turns kgate's error codes into HTTP: each code's status
 * and the sentence that documents it. The gateway's error handler and the
 * WebSocket upgrade's refusals answer from it; docs/api.md's error table
 * (`npm run docs`) and the OpenAPI document's error list are made from it, so
 * a code cannot be raised without being documented.
 */
import { STATUS_CODES } from 'node:http';
import { ErrorCodes, type ErrorBody, type ErrorCode, type KgateError } from '../errors.js';

export interface HttpErrorDef {
  status: number;
  /** When a client gets it, for the docs (Markdown). */
  when: string;
}

export const HTTP_ERRORS: Record<ErrorCode, HttpErrorDef> = {
  [ErrorCodes.BAD_REQUEST]: { status: 400, when: 'a body, query, path or header that fails validation (the message says which member), or a request that is not valid HTTP' },
  [ErrorCodes.INVALID_JSON]: { status: 400, when: 'a body that is not JSON' },
  [ErrorCodes.REQUEST_TIMEOUT]: { status: 408, when: 'the request was not received within `--headers-timeout` / `--request-timeout`; the connection is closed' },
  [ErrorCodes.HEADERS_TOO_LARGE]: { status: 431, when: "the request's headers are larger than node's limit (16 KiB)" },
  [ErrorCodes.UNAUTHORIZED]: { status: 401, when: 'no token, or a wrong one' },
  [ErrorCodes.FORBIDDEN]: {
    status: 403,
    when: "a browser page's `Origin` is not allowed (REST, and the channels WebSocket without a valid token; see `--allow-origin`)",
  },
  [ErrorCodes.NOT_FOUND]: { status: 404, when: 'no such route or kernelspec resource' },
  [ErrorCodes.KERNEL_NOT_FOUND]: { status: 404, when: 'no kernel with that id' },
  [ErrorCodes.KERNELSPEC_NOT_FOUND]: { status: 404, when: 'no kernelspec with that name' },
  [ErrorCodes.SESSION_NOT_FOUND]: { status: 404, when: 'no session with that id' },
  [ErrorCodes.METHOD_NOT_ALLOWED]: { status: 405, when: 'a method other than GET on the channels WebSocket route' },
  [ErrorCodes.KERNEL_BUSY_RESTARTING]: { status: 409, when: 'interrupt or restart while the kernel restarts or shuts down' },
  [ErrorCodes.KERNEL_LIMIT]: { status: 403, when: '`--max-kernels` kernels run (or are starting) already; refused at once, before any start' },
  [ErrorCodes.USER_KERNEL_LIMIT]: {
    status: 403,
    when: "the user (the authenticated one, or the `KERNEL_USERNAME` a caller that may impersonate names) runs `--max-kernels-per-user` kernels already, or its tenant's `max_kernels_per_user` in `--policy`",
  },
  [ErrorCodes.TENANT_QUOTA]: {
    status: 403,
    when: "the start would take the caller's tenant past its `--policy` quota (kernels, a resource total, or what one kernel may ask for); the message names the limit and its value",
  },
  [ErrorCodes.KERNELSPEC_NOT_ALLOWED]: { status: 403, when: "the tenant's `--policy` entry does not list the kernelspec under `kernelspecs`" },
  [ErrorCodes.KERNEL_START_CANCELLED]: {
    status: 409,
    when: 'the kernel was shut down (DELETE, deleting its session, or kgate stopping) before its start or restart completed; nothing of it is left (process, state record, connection file)',
  },
  [ErrorCodes.KERNEL_DEAD]: { status: 409, when: 'the kernel died and could not be restarted' },
  [ErrorCodes.KERNEL_START_FAILED]: { status: 500, when: 'the kernel process could not run or exited while starting (the message ends with its stderr)' },
  [ErrorCodes.KERNEL_IMAGE_UNAVAILABLE]: { status: 500, when: "the kernel's image cannot be pulled or does not exist (the message names the image)" },
  [ErrorCodes.KERNEL_UNSCHEDULABLE]: {
    status: 503,
    when: "the kernel cannot be placed now (no node has what it asks for); the message is the scheduler's own, and `Retry-After` says when to ask again",
  },
  [ErrorCodes.KERNEL_LAUNCH_RETRYABLE]: { status: 503, when: 'the launch failed for a passing reason (the message says which); `Retry-After` says when to try again' },
  [ErrorCodes.KERNEL_START_TIMEOUT]: { status: 504, when: 'no `kernel_info_reply` within the launch timeout' },
  [ErrorCodes.NOT_READY]: {
    status: 503,
    when: '`GET /readyz` while kgate is not ready (shutting down, not listening yet, or its state dir cannot be read or written); once a shutdown has drained, every other request and WebSocket upgrade too',
  },
  [ErrorCodes.INTERNAL]: { status: 500, when: 'a bug; the log has the details' },
};

export function httpStatusOf(e: KgateError): number {
  return HTTP_ERRORS[e.code].status;
}

export function reasonPhrase(status: number): string {
  return STATUS_CODES[status] ?? 'Error';
}

/** The JSON body Jupyter clients parse (`ResponseError`): `{reason, message, code}`. */
export function errorBody(e: KgateError): ErrorBody {
  return { reason: reasonPhrase(httpStatusOf(e)), message: e.message, code: e.code };
}

/** Headers an error answer carries besides its body (`Retry-After`). */
export function errorHeaders(e: KgateError): Record<string, string> {
  return e.retryAfterSec === undefined ? {} : { 'Retry-After': String(Math.max(1, Math.ceil(e.retryAfterSec))) };
}

/** docs/api.md's error table (scripts/gen-docs.ts). */
export function errorTable(): string {
  const rows = (Object.entries(HTTP_ERRORS) as Array<[ErrorCode, HttpErrorDef]>).map(([code, d]) => `| \`${code}\` | ${d.status} | ${d.when} |`);
  return ['| code | status | when |', '| --- | --- | --- |', ...rows].join('\n');
}
