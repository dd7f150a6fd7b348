// Which database errors are worth waiting out. A statement that failed for one of these reasons did not run (or
// rolled back), and the database or the network may be back in a moment: the caller repeats it. Anything else
// (a constraint, a type error) would fail the same way again.

const TRANSIENT_SQLSTATES = new Set([
  '40001', // serialization_failure
  '40P01', // deadlock_detected
  '53300', // too_many_connections
  '57P01', // admin_shutdown (PostgreSQL stopping or restarting)
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now (starting up)
  '57014', // query_canceled: statement_timeout, or our stall guard
])

const TRANSIENT_NODE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENOTFOUND'])

const TRANSIENT_MESSAGES = [
  'Connection terminated',
  'timeout exceeded when trying to connect',
  'Client has encountered a connection error',
  'Connection stalled',
  'terminating connection',
]

export function isTransientDbError(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown } | null
  if (!e) return false
  const code = typeof e.code === 'string' ? e.code : ''
  if (code.startsWith('08') || TRANSIENT_SQLSTATES.has(code) || TRANSIENT_NODE_CODES.has(code)) return true
  const message = typeof e.message === 'string' ? e.message : ''
  return TRANSIENT_MESSAGES.some((m) => message.includes(m))
}
