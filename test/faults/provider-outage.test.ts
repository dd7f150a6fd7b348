import { sql } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { phone, waitFor } from '../helpers.ts'
import { useTestDb } from '../kit.ts'
import { dialsPerCall, type Stack, startStack } from '../stack.ts'

// The provider answers 503 to every dial for a while, then recovers: calls retry with backoff, none exceeds
// MAX_RETRY_ATTEMPTS, and every call ends COMPLETED or FAILED with a reason.

const t = useTestDb()
let stack: Stack

beforeAll(async () => {
  stack = await startStack(
    t,
    { MAX_CONCURRENT_CALLS: '5', MAX_RETRY_ATTEMPTS: '3', RETRY_BASE_DELAY_MS: '1000', RETRY_MAX_DELAY_MS: '4000' },
    { callDurationMs: 30 },
  )
})
afterAll(async () => {
  await stack.stop()
})

describe('a provider outage', () => {
  it('retries with backoff and settles every call once the provider is back', async () => {
    stack.sim.configure({ fault: { kind: 'error', status: 503 } })
    const ids = await stack.createCalls(30, (i) => phone(8000 + i))
    await waitFor('a round of failed dials', async () => {
      const { rows } = await sql<{ n: number }>`
        select count(distinct call_id)::int as n from call_events where kind = 'DIAL_FAILED'`.execute(t.db)
      return (rows[0]?.n ?? 0) >= 10
    })
    await new Promise((r) => setTimeout(r, 3000)) // the outage goes on; calls keep failing and backing off
    stack.sim.configure({ fault: { kind: 'none' } })
    const calls = await stack.waitAllFinal(40_000)

    expect(calls).toHaveLength(ids.length)
    const dials = dialsPerCall(stack.sim)
    for (const c of calls) {
      expect(['COMPLETED', 'FAILED']).toContain(c.status)
      expect(c.attempts).toBeLessThanOrEqual(3)
      expect(dials.get(c.id)?.length ?? 0).toBe(c.attempts)
      if (c.status === 'FAILED') expect(c.last_error).toMatchObject({ code: 'DIAL_ERROR' })
    }
    // backoff: no call was dialed again sooner than half the first nominal delay after a failure
    for (const [, keys] of dials) {
      const times = stack.sim
        .stats()
        .dials.filter((d) => keys.includes(d.idempotencyKey))
        .map((d) => d.receivedAt)
        .sort((a, b) => a - b)
      for (let i = 1; i < times.length; i++) expect(times[i]! - times[i - 1]!).toBeGreaterThanOrEqual(450)
    }
    expect(stack.sim.stats().maxActive).toBeLessThanOrEqual(5)
  }, 60_000)
})
