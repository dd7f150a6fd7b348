import pino, { type DestinationStream, type Logger } from 'pino'
import pretty from 'pino-pretty'

// Secrets never reach the log: these paths are replaced wherever they appear, before any formatting. Request bodies
// are not logged, and no log line carries a phone number (test/logs.test.ts).
export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers["x-signature"]',
  'req.headers["idempotency-key"]',
  'headers.authorization',
  'headers["x-signature"]',
  '*.apiKey',
  '*.secret',
  '*.password',
  '*.databaseUrl',
  'config.apiKeys',
]

/**
 * JSON lines for machines; 'pretty' for a person at a terminal (pino-pretty in-process and synchronous, so the line
 * before a process.exit is not lost). Redaction happens in pino, so both formats are redacted alike.
 */
export function createLogger(
  level: string,
  name = 'orchestrator',
  destination?: DestinationStream,
  format: 'json' | 'pretty' = 'json',
): Logger {
  const options = { name, level, redact: { paths: REDACT_PATHS, censor: '[redacted]' } }
  if (format === 'pretty') {
    return pino(
      options,
      pretty({
        sync: true,
        translateTime: 'SYS:HH:MM:ss.l',
        ignore: 'pid,hostname',
        ...(destination ? { destination, colorize: false } : {}),
      }),
    )
  }
  return destination ? pino(options, destination) : pino(options)
}
