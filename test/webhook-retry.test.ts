import { describe, expect, it } from 'vitest'
import { parseRetryAfter, retryDelayMs } from '../src/notify/retry.ts'

const prod = { baseDelayMs: 5000, maxDelayMs: 3_600_000 }
const mid = () => 0.5 // no jitter

describe('client webhook retry schedule', () => {
  it('is about 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, then hourly', () => {
    const steps = [1, 2, 3, 4, 5, 6, 7, 20].map((a) => retryDelayMs(prod, a, undefined, mid) / 1000)
    expect(steps).toEqual([5, 30, 120, 600, 1800, 3600, 3600, 3600])
  })

  it('jitters by at most 20% and scales with the base delay', () => {
    expect(retryDelayMs(prod, 1, undefined, () => 0)).toBe(4000)
    expect(retryDelayMs(prod, 1, undefined, () => 1)).toBe(6000)
    expect(retryDelayMs({ baseDelayMs: 100, maxDelayMs: 400 }, 2, undefined, mid)).toBe(400)
  })

  it('waits at least what Retry-After asks, up to an hour', () => {
    expect(retryDelayMs(prod, 1, 20_000, mid)).toBe(20_000)
    expect(retryDelayMs(prod, 3, 20_000, mid)).toBe(120_000)
    expect(retryDelayMs(prod, 1, 10 * 3_600_000, mid)).toBe(3_600_000)
  })

  it('reads Retry-After as seconds or as an HTTP date', () => {
    expect(parseRetryAfter('7')).toBe(7000)
    expect(parseRetryAfter(new Date(Date.UTC(2030, 0, 1, 0, 0, 30)).toUTCString(), Date.UTC(2030, 0, 1))).toBe(30_000)
    expect(parseRetryAfter('soon')).toBeUndefined()
    expect(parseRetryAfter(undefined)).toBeUndefined()
  })
})
