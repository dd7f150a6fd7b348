import pino, { type DestinationStream, type Logger } from 'pino'

// Secrets never reach the log: these paths are replaced wherever they appear. Phone numbers are masked where they
// are logged (phone.ts maskPhone); request bodies are not logged at all.
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

export function createLogger(level: string, name = 'orchestrator', destination?: DestinationStream): Logger {
  const options = { name, level, redact: { paths: REDACT_PATHS, censor: '[redacted]' } }
  return destination ? pino(options, destination) : pino(options)
}
