/**
 * One schema per request body, validated at the boundary. Unknown members are
 * kept out of the way (not rejected): clients send more than we read.
 * Below them, the response models: with the request schemas they are the one
 * source of the OpenAPI description (`openapi.ts`), and tsc checks that the
 * models the code builds fit them.
 */
import { z } from 'zod';
import type { ExecutionState } from '../bridge/kernel-link.js';
import { ErrorCodes, type ErrorCode } from '../errors.js';
import { KERNEL_NAME, type KernelSpecModel } from '../kernels/kernelspecs.js';
import type { KernelModel } from '../kernels/manager.js';
import { ALL_PHASES, type KernelPhase } from '../kernels/phases.js';
import type { SessionModel } from '../kernels/sessions.js';

const kernelName = z.string().regex(KERNEL_NAME, 'a kernel name is 1 to 128 characters of A-Z, a-z, 0-9, ".", "_" and "-"');

/**
 * Text that reaches a kernel's environment (a path becomes JPY_SESSION_NAME)
 * or a log: bounded, and free of control characters (NUL, newline, escape…),
 * which an environment cannot hold and a log must not be split by.
 */
const text = (max: number) =>
  z
    .string()
    .max(max)
    // The C0 and C1 controls and DEL (Unicode's Cc), spelled as ranges so every schema consumer reads the pattern.
    // eslint-disable-next-line no-control-regex -- matching control characters is the point
    .regex(/^[^\u0000-\u001f\u007f-\u009f]*$/, 'must not hold control characters (NUL, newline, tab, escape, …)');
const pathText = text(4096);

export const startKernelBody = z.looseObject({
  name: kernelName.optional(),
  env: z.record(z.string(), z.unknown()).optional(),
  path: pathText.optional(),
});

const kernelRef = z.looseObject({
  id: z.string().max(128).optional(),
  name: kernelName.optional(),
  /** The environment of a kernel the session starts, as `env` in POST /api/kernels. */
  env: z.record(z.string(), z.unknown()).optional(),
});

export const createSessionBody = z
  .looseObject({
    path: pathText.optional(),
    name: text(4096).optional(),
    type: text(64).optional(),
    kernel: kernelRef.nullish(),
    /** Notebook 5 clients send `notebook.path` instead of `path`. */
    notebook: z.looseObject({ path: pathText.optional() }).optional(),
  })
  .describe('path (or notebook.path) is required; kernel names a kernelspec to start, or the id of a running kernel')
  // The route checks that one of the two paths is there (a 400 otherwise); the description says so to clients.
  .meta({ anyOf: [{ required: ['path'] }, { required: ['notebook'], properties: { notebook: { required: ['path'] } } }] });

export const patchSessionBody = z.looseObject({
  path: pathText.optional(),
  name: text(4096).optional(),
  type: text(64).optional(),
  kernel: kernelRef.nullish(),
});

export const sessionIdQuery = z
  .string()
  .min(1)
  .max(256)
  .regex(/^[\x21-\x7e]+$/, 'session_id must be printable ASCII without spaces');

// ---- Response models ----

const jupyterDate = z
  .string()
  .regex(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/)
  .describe("UTC time as %Y-%m-%dT%H:%M:%S.%fZ (microseconds), as jupyter_server's gateway client parses it");
const count = z.number().int().min(0);

export const executionState = z.enum(['starting', 'idle', 'busy', 'restarting', 'dead', 'unknown']);

export const kernelModel = z
  .object({
    id: z.string().describe('the kernel id (a UUID)'),
    name: z.string().describe('its kernelspec'),
    last_activity: jupyterDate,
    execution_state: executionState,
    connections: count.describe('open channels WebSockets'),
    kgate: z
      .object({
        owner: z.string().nullable().describe('the user it is for; null: no one (the operator token without KERNEL_USERNAME)'),
        tenant: z.string(),
        provisioner: z.string().describe('what launched it: local, or a remote provisioner'),
        phase: z.enum(ALL_PHASES as [KernelPhase, ...KernelPhase[]]).describe("kgate's lifecycle phase"),
        started: jupyterDate.describe('when this gateway took it on (its start, or its adoption)'),
        resources: z
          .object({ cpu: z.number().optional(), memory: z.number().optional().describe('bytes'), extended: z.record(z.string(), z.number()).optional() })
          .describe('what it reserved'),
        progress: z.enum(['scheduling', 'pulling', 'starting', 'connecting']).optional().describe("the launch's last phase, while starting or restarting"),
        last_death: z
          .object({ reason: z.enum(['out_of_memory', 'died']), message: z.string(), at: jupyterDate })
          .optional()
          .describe('how the kernel last died, once it has: out_of_memory when its memory limit killed it'),
      })
      .describe("kgate's own member, which clients that do not know it ignore; never the kernel's key, env or connection"),
  })
  .describe("A kernel, as jupyter_server models it, with kgate's own member");

export const sessionModel = z
  .object({
    id: z.string(),
    path: z.string(),
    name: z.string(),
    type: z.string(),
    kernel: kernelModel,
    notebook: z.object({ path: z.string(), name: z.string() }).describe('the same path and name, for notebook 5 era clients'),
  })
  .describe('A path (a notebook, a console) bound to a kernel');

export const kernelspecModel = z
  .object({
    name: z.string(),
    spec: z.object({
      argv: z.array(z.string()),
      display_name: z.string(),
      language: z.string(),
      interrupt_mode: z.enum(['signal', 'message']),
      metadata: z.record(z.string(), z.unknown()),
    }),
    resources: z.record(z.string(), z.string()).describe('logo and kernel.js/css URLs under the base URL'),
  })
  .describe('A kernelspec; its env is never served');

export const kernelspecList = z.object({ default: z.string(), kernelspecs: z.record(z.string(), kernelspecModel) });

export const apiInfo = z.object({ version: z.string(), gateway: z.literal('kgate') });

export const statusModel = z.object({
  started: jupyterDate,
  last_activity: jupyterDate,
  kernels: count,
  connections: count,
  pools: z.record(z.string(), z.object({ target: count, ready: count, starting: count })).describe('warm pools (--pool), per kernelspec'),
});

export const errorCode = z.enum(Object.values(ErrorCodes) as [ErrorCode, ...ErrorCode[]]);

export const errorBody = z
  .object({
    reason: z.string().describe('the HTTP reason phrase'),
    message: z.string(),
    code: errorCode.describe('stable; see docs/api.md'),
  })
  .describe('Every REST error, in the shape Jupyter clients parse');

/** Compiles only when A is assignable to B. */
type Fits<A extends B, B> = A;
/** The models the code builds fit the schemas above (tsc fails when one drifts). */
export type ModelsFitSchemas = [
  Fits<KernelModel, z.output<typeof kernelModel>>,
  Fits<SessionModel, z.output<typeof sessionModel>>,
  Fits<KernelSpecModel, z.output<typeof kernelspecModel>>,
  Fits<ExecutionState, z.output<typeof executionState>>,
  Fits<z.output<typeof executionState>, ExecutionState>,
  Fits<z.output<typeof errorCode>, ErrorCode>,
];
