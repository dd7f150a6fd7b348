// Token buckets, one per client and class of request: a bucket holds up to `burst` tokens, refills at `perSec`
// tokens a second, and each request takes one. A client that keeps under `perSec` never waits, whatever its
// bursts up to `burst`; a flood is cut to `perSec`. In memory, so per instance.

export type RateClass = 'read' | 'write'
export interface RateLimit {
  perSec: number
  burst: number
}
export type Taken = { ok: true; remaining: number } | { ok: false; retryAfterMs: number }

/** Buckets that would be full again by now are forgotten once a minute, so memory follows the active clients. */
const SWEEP_EVERY_MS = 60_000

export function createRateLimiter(limits: Record<RateClass, RateLimit>, now: () => number = () => Date.now()) {
  const buckets = new Map<string, { tokens: number; at: number }>()
  let sweptAt = now()

  function sweep(t: number) {
    for (const [key, b] of buckets) {
      const { perSec, burst } = limits[key.startsWith('r') ? 'read' : 'write']
      if (b.tokens + ((t - b.at) * perSec) / 1000 >= burst) buckets.delete(key)
    }
    sweptAt = t
  }

  return {
    limits,
    take(cls: RateClass, client: string): Taken {
      const t = now()
      if (t - sweptAt >= SWEEP_EVERY_MS) sweep(t)
      const { perSec, burst } = limits[cls]
      const key = `${cls === 'read' ? 'r' : 'w'}:${client}`
      const b = buckets.get(key)
      const tokens = b ? Math.min(burst, b.tokens + (Math.max(0, t - b.at) * perSec) / 1000) : burst
      if (tokens < 1) {
        // A refused request takes nothing: a client that waits Retry-After gets in.
        if (b) {
          b.tokens = tokens
          b.at = t
        }
        return { ok: false, retryAfterMs: Math.ceil(((1 - tokens) * 1000) / perSec) }
      }
      if (b) {
        b.tokens = tokens - 1
        b.at = t
      } else buckets.set(key, { tokens: tokens - 1, at: t })
      return { ok: true, remaining: Math.floor(tokens - 1) }
    },
    get size() {
      return buckets.size
    },
  }
}
