/**
 * `--token-file PATH`: static tokens for services (a notebook server, a
 * scheduler), each stored as the SHA-256 digest of the token, never the token,
 * with the principal its holder is. YAML, validated at start and on reload
 * (SIGHUP), with one message per mistake:
 *
 * ```yaml
 * tokens:
 *   - sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
 *     user: notebook-server
 *     tenant: acme            # default: "default"
 *     scopes: [kgate:impersonate]
 * ```
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';
import { z } from 'zod';
import { ConfigError } from '../options.js';
import { DEFAULT_TENANT, Scopes, type Principal } from '../principal.js';

/**
 * Users and tenants, from a token file or a JWT's claims: non-empty, at most
 * 128 characters of A-Z a-z 0-9 . _ @ + -, so that they are safe in logs,
 * store keys, metrics labels and a kernel's KERNEL_USERNAME.
 */
export const NAME_PATTERN = /^[A-Za-z0-9._@+-]{1,128}$/;
export const NAME_RULE = 'a non-empty string of at most 128 characters from A-Z a-z 0-9 . _ @ + -';

/** A scope: no whitespace, at most 128 characters; a `kgate:` one must be one kgate knows (a typo would grant nothing, silently). */
export const SCOPE_PATTERN = /^\S{1,128}$/;
const KNOWN_SCOPES = new Set<string>(Object.values(Scopes));
/** Why `s` is not an acceptable scope, or undefined when it is. */
export function scopeProblem(s: string): string | undefined {
  if (!SCOPE_PATTERN.test(s)) return 'a scope is 1 to 128 characters without whitespace';
  if (s.startsWith('kgate:') && !KNOWN_SCOPES.has(s)) return `${JSON.stringify(s)} is not a kgate scope (known: ${[...KNOWN_SCOPES].join(', ')})`;
  return undefined;
}

export const MAX_SCOPES = 64;

const entrySchema = z.strictObject({
  sha256: z
    .string({ error: 'must be the 64 hex digits of the SHA-256 digest of the token, as a string (quote it if YAML reads it as a number)' })
    .regex(/^[0-9a-fA-F]{64}$/, 'must be the 64 hex digits of the SHA-256 digest of the token (printf %s "$TOKEN" | sha256sum)')
    .transform((s) => s.toLowerCase()),
  user: z.string().regex(NAME_PATTERN, `must be ${NAME_RULE}`),
  tenant: z.string().regex(NAME_PATTERN, `must be ${NAME_RULE}`).default(DEFAULT_TENANT),
  scopes: z
    .array(z.string().superRefine((s, ctx) => void (scopeProblem(s) && ctx.addIssue({ code: 'custom', message: scopeProblem(s)! }))))
    .max(MAX_SCOPES)
    .default([]),
});

const fileSchema = z.strictObject({ tokens: z.array(entrySchema).max(10_000) }).superRefine((f, ctx) => {
  const seen = new Map<string, number>();
  f.tokens.forEach((t, i) => {
    const first = seen.get(t.sha256);
    if (first !== undefined) ctx.addIssue({ code: 'custom', path: ['tokens', i, 'sha256'], message: `the same digest as tokens[${first}]` });
    else seen.set(t.sha256, i);
  });
});

interface Entry {
  digest: Buffer;
  principal: Principal;
}

/** The digest a token file stores for a token. */
export const tokenDigest = (token: string): Buffer => createHash('sha256').update(token, 'utf8').digest();

/** The tokens of one token file, as read at one moment (a reload makes a new one). */
export class TokenFile {
  private constructor(
    readonly path: string,
    private readonly entries: readonly Entry[],
  ) {}

  get size(): number {
    return this.entries.length;
  }

  /** Reads and validates the file; a ConfigError names the file and every mistake in it. */
  static load(path: string): TokenFile {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (e) {
      throw new ConfigError(`--token-file: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
    }
    return TokenFile.parse(text, path);
  }

  static parse(text: string, path = '(token file)'): TokenFile {
    let doc: unknown;
    try {
      doc = parse(text, { maxAliasCount: 100 });
    } catch (e) {
      throw new ConfigError(`--token-file: ${path} is not valid YAML: ${(e instanceof Error ? e.message : String(e)).split('\n')[0]}`);
    }
    const r = fileSchema.safeParse(doc);
    if (!r.success) {
      const issues = r.error.issues.map((i) => `${i.path.length > 0 ? i.path.join('.') : '(top level)'}: ${i.message}`);
      throw new ConfigError(`--token-file: ${path} is not a valid token file (a "tokens:" list of {sha256, user, tenant, scopes}):\n  ${issues.join('\n  ')}`);
    }
    const entries = r.data.tokens.map((t) => ({
      digest: Buffer.from(t.sha256, 'hex'),
      principal: { user: t.user, tenant: t.tenant, scopes: new Set(t.scopes), via: 'static-token' } satisfies Principal,
    }));
    return new TokenFile(path, entries);
  }

  /**
   * The principal of the entry whose digest is `digest`'s. Every entry is
   * compared, in constant time, with no early exit: how long it takes says
   * nothing about which entry (or how much of one) matched.
   */
  match(digest: Buffer): Principal | undefined {
    let found: Principal | undefined;
    for (const e of this.entries) if (timingSafeEqual(e.digest, digest) && found === undefined) found = e.principal;
    return found;
  }
}
