/** The audit log's options (src/audit.ts writes it). */
import { z } from 'zod';
import { opt, slice, type ConfigOf } from './options.js';

const OPTIONS = {
  auditLog: opt(
    'audit-log',
    'string',
    'append the audit log (one JSON line per state-changing action) to this file, created with mode 0600 and reopened on SIGHUP (for logrotate); default: on stderr with the log, unless --log-level is silent',
    z.string().min(1).max(4096).optional(),
  ),
} as const;

export type AuditConfig = ConfigOf<typeof OPTIONS>;

export const AUDIT_OPTIONS = slice('Audit', OPTIONS);
