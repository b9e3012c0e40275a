import { pino, type Logger } from 'pino';

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

/**
 * Structured JSON logs on stderr, so stdout stays free for the listening line
 * that scripts read. Anything shaped like a secret is redacted.
 */
export function createLogger(level: LogLevel, destination: number = 2): Logger {
  return pino(
    {
      level,
      base: { name: 'kgate' },
      redact: { paths: ['key', '*.key', 'token', '*.token', 'authorization', '*.authorization', 'headers.authorization'], censor: '[redacted]' },
    },
    pino.destination({ dest: destination, sync: false }),
  );
}
