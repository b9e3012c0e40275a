import type { z } from 'zod';
import { badRequest } from '../errors.js';

/** Parses a body with its schema, or throws a 400 that says what is wrong and where. */
export function parseBody<T extends z.ZodType>(schema: T, body: unknown): z.output<T> {
  const r = schema.safeParse(body ?? {});
  if (r.success) return r.data;
  const first = r.error.issues[0]!;
  const where = first.path.length > 0 ? first.path.join('.') : 'body';
  throw badRequest(`${where}: ${first.message}`);
}
