/**
 * One schema per request body, validated at the boundary. Unknown members are
 * kept out of the way (not rejected): clients send more than we read.
 */
import { z } from 'zod';
import { KERNEL_NAME } from '../kernels/kernelspecs.js';

const kernelName = z.string().regex(KERNEL_NAME, 'a kernel name is 1 to 128 characters of A-Z, a-z, 0-9, ".", "_" and "-"');

export const startKernelBody = z.looseObject({
  name: kernelName.optional(),
  env: z.record(z.string(), z.unknown()).optional(),
  path: z.string().max(4096).optional(),
});

const kernelRef = z.looseObject({
  id: z.string().max(128).optional(),
  name: kernelName.optional(),
});

export const createSessionBody = z.looseObject({
  path: z.string().max(4096).optional(),
  name: z.string().max(4096).optional(),
  type: z.string().max(64).optional(),
  kernel: kernelRef.nullish(),
  /** Notebook 5 clients send `notebook.path` instead of `path`. */
  notebook: z.looseObject({ path: z.string().max(4096).optional() }).optional(),
});

export const patchSessionBody = z.looseObject({
  path: z.string().max(4096).optional(),
  name: z.string().max(4096).optional(),
  type: z.string().max(64).optional(),
  kernel: kernelRef.nullish(),
});

export const sessionIdQuery = z.string().min(1).max(256).regex(/^[\x21-\x7e]+$/, 'session_id must be printable ASCII without spaces');
