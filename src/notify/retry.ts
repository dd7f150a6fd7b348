// When to try a client webhook delivery again. Pure.
//
// The schedule of the issue (about 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, then hourly) as multiples of the base
// delay, so WEBHOOK_RETRY_BASE_DELAY_MS scales all of it (tests use a few hundred milliseconds), capped at
// WEBHOOK_RETRY_MAX_DELAY_MS. Jitter of +-20% spreads deliveries that failed together (a receiver coming back
// up) without moving any step onto its neighbour.

const STEPS = [1, 6, 24, 120, 360, 720] as const
const RETRY_AFTER_MAX_MS = 3_600_000

export interface RetrySchedule {
  baseDelayMs: number
  maxDelayMs: number
}

/** Delay after failed attempt `attempt` (1-based). `retryAfterMs` (429/503 Retry-After) wins when longer. */
export function retryDelayMs(
  s: RetrySchedule,
  attempt: number,
  retryAfterMs?: number,
  random: () => number = Math.random,
): number {
  const step = STEPS[Math.min(Math.max(attempt, 1), STEPS.length) - 1] as number
  const nominal = attempt > STEPS.length ? s.maxDelayMs : Math.min(s.maxDelayMs, s.baseDelayMs * step)
  const jittered = Math.round(nominal * (0.8 + 0.4 * random()))
  // Retry-After is honoured past WEBHOOK_RETRY_MAX_DELAY_MS (the receiver knows best), up to an hour.
  return retryAfterMs === undefined ? jittered : Math.max(jittered, Math.min(retryAfterMs, RETRY_AFTER_MAX_MS))
}

/** Retry-After as seconds or an HTTP date, in ms from `now`; undefined when absent or unreadable. */
export function parseRetryAfter(value: string | string[] | undefined, now = Date.now()): number | undefined {
  const v = Array.isArray(value) ? value[0] : value
  if (!v) return undefined
  if (/^\d+$/.test(v.trim())) return Number(v.trim()) * 1000
  const at = Date.parse(v)
  return Number.isNaN(at) ? undefined : Math.max(0, at - now)
}
