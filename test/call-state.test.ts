import { sql } from 'kysely'
import { describe, expect, it } from 'vitest'
import {
  decideAttemptEnd,
  EVENT_KINDS,
  retryDelayMs,
  STATUSES,
  THROTTLE_CEILING_MS,
  THROTTLE_FLOOR_MS,
  throttleDelayMs,
} from '../src/dispatch/call-state.ts'
import { createTestDb } from './db.ts'

const policy = { maxAttempts: 3, retryBaseDelayMs: 30_000, retryMaxDelayMs: 600_000, throttleMaxMs: 900_000 }

describe('retryDelayMs', () => {
  it.each([
    [1, 30_000],
    [2, 60_000],
    [3, 120_000],
    [5, 480_000],
    [6, 600_000],
    [20, 600_000],
  ])('after attempt %i waits between half and all of %i ms', (attempt, nominal) => {
    expect(retryDelayMs(policy, attempt, () => 0)).toBe(nominal / 2)
    expect(retryDelayMs(policy, attempt, () => 1)).toBe(nominal)
    const d = retryDelayMs(policy, attempt)
    expect(d).toBeGreaterThanOrEqual(nominal / 2)
    expect(d).toBeLessThanOrEqual(nominal)
  })
})

describe('decideAttemptEnd', () => {
  const error = { code: 'X', message: 'x' }
  const throttled = (retryAfterMs: number | undefined, throttles = 0, throttledForMs = 0) =>
    ({ kind: 'throttled', retryAfterMs, error, throttles, throttledForMs }) as const

  it('completes on a completed outcome', () => {
    expect(decideAttemptEnd(policy, 1, { kind: 'completed' })).toEqual({ next: 'COMPLETED' })
  })

  it('retries a failed attempt while attempts remain, then fails', () => {
    expect(decideAttemptEnd(policy, 1, { kind: 'failed', error }, () => 1)).toEqual({
      next: 'PENDING',
      delayMs: 30_000,
      spendsAttempt: true,
      throttled: false,
      error,
    })
    expect(decideAttemptEnd(policy, 2, { kind: 'failed', error })).toMatchObject({ next: 'PENDING' })
    expect(decideAttemptEnd(policy, 3, { kind: 'failed', error })).toEqual({ next: 'FAILED', error })
  })

  it('fails a rejected call at once, whatever attempts remain', () => {
    expect(decideAttemptEnd(policy, 1, { kind: 'rejected', error })).toEqual({ next: 'FAILED', error })
  })

  it('puts a throttled call back without spending the attempt, after Retry-After when given', () => {
    expect(decideAttemptEnd(policy, 3, throttled(5000), () => 1)).toEqual({
      next: 'PENDING',
      delayMs: 5000,
      spendsAttempt: false,
      throttled: true,
      error,
    })
  })

  it('never re-dials a throttled call sooner than the floor, and waits longer after each consecutive 429', () => {
    // Retry-After: 0 (or a date in the past) re-dialed one call 230 times in 2 s before the floor
    expect(decideAttemptEnd(policy, 1, throttled(0), () => 0)).toMatchObject({ delayMs: THROTTLE_FLOOR_MS })
    const delays = [0, 1, 2, 3, 4, 5, 6, 7, 8].map((n) => throttleDelayMs(n, 0, () => 1))
    expect(delays).toEqual([1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000, 60_000])
    expect(throttleDelayMs(20, 0, () => 0)).toBe(THROTTLE_CEILING_MS / 2)
  })

  it('spends attempts on 429s once a call has been throttled for throttleMaxMs', () => {
    expect(decideAttemptEnd(policy, 1, throttled(0, 50, policy.throttleMaxMs - 1))).toMatchObject({
      spendsAttempt: false,
    })
    expect(decideAttemptEnd(policy, 1, throttled(0, 50, policy.throttleMaxMs))).toMatchObject({
      next: 'PENDING',
      spendsAttempt: true,
    })
    expect(decideAttemptEnd(policy, 3, throttled(0, 50, policy.throttleMaxMs))).toEqual({ next: 'FAILED', error })
  })

  it('puts a call back without spending an attempt when the provider refuses our credentials', () => {
    expect(decideAttemptEnd(policy, 3, { kind: 'unauthorized', error, pauseMs: 4000 })).toEqual({
      next: 'PENDING',
      delayMs: 4000,
      spendsAttempt: false,
      throttled: false,
      error,
    })
  })
})

describe('the calls table', () => {
  it('allows exactly the statuses of call-state.ts in its CHECK constraint', async () => {
    const t = await createTestDb()
    try {
      const { rows } = await sql<{ def: string }>`
        select pg_get_constraintdef(oid) as def from pg_constraint
         where conrelid = 'calls'::regclass and contype = 'c' and pg_get_constraintdef(oid) like '%(status = ANY%'
      `.execute(t.db)
      const listed = [...(rows[0]?.def ?? '').matchAll(/'([A-Z_]+)'::text/g)].map((m) => m[1])
      expect(new Set(listed)).toEqual(new Set(STATUSES))
    } finally {
      await t.drop()
    }
  })
  it('knows exactly the history kinds of call-state.ts in call_event_kinds', async () => {
    const t = await createTestDb()
    try {
      const { rows } = await sql<{ kind: string }>`select kind from call_event_kinds`.execute(t.db)
      expect(new Set(rows.map((r) => r.kind))).toEqual(new Set(EVENT_KINDS))
      await expect(
        sql`insert into call_events (call_id, attempt, kind) values (gen_random_uuid(), 0, 'NOT_A_KIND')`.execute(t.db),
      ).rejects.toThrow(/call_events_kind_known|foreign key/)
    } finally {
      await t.drop()
    }
  })
})
