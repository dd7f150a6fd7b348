import { sql } from 'kysely'
import { describe, expect, it } from 'vitest'
import { EVENT_KINDS, endAttempt, retryDelayMs, STATUSES } from '../src/dispatch/call-state.ts'
import { createTestDb } from './db.ts'

const policy = { maxAttempts: 3, retryBaseDelayMs: 30_000, retryMaxDelayMs: 600_000 }

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

describe('endAttempt', () => {
  const error = { code: 'X', message: 'x' }

  it('completes on a completed outcome', () => {
    expect(endAttempt(policy, 1, { kind: 'completed' })).toEqual({ next: 'COMPLETED' })
  })

  it('retries a failed attempt while attempts remain, then fails', () => {
    expect(endAttempt(policy, 1, { kind: 'failed', error }, () => 1)).toEqual({
      next: 'PENDING',
      delayMs: 30_000,
      spendsAttempt: true,
      error,
    })
    expect(endAttempt(policy, 2, { kind: 'failed', error })).toMatchObject({ next: 'PENDING' })
    expect(endAttempt(policy, 3, { kind: 'failed', error })).toEqual({ next: 'FAILED', error })
  })

  it('fails a rejected call at once, whatever attempts remain', () => {
    expect(endAttempt(policy, 1, { kind: 'rejected', error })).toEqual({ next: 'FAILED', error })
  })

  it('puts a throttled call back without spending the attempt, after Retry-After when given', () => {
    expect(endAttempt(policy, 3, { kind: 'throttled', retryAfterMs: 2000, error })).toEqual({
      next: 'PENDING',
      delayMs: 2000,
      spendsAttempt: false,
      error,
    })
    expect(endAttempt(policy, 1, { kind: 'throttled', retryAfterMs: undefined, error }, () => 0)).toMatchObject({
      delayMs: 15_000,
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
