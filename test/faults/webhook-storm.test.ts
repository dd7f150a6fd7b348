import { sql } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { phone, waitFor } from '../helpers.ts'
import { useTestDb } from '../kit.ts'
import { type Stack, startStack } from '../stack.ts'

// Each final webhook delivered five times at once, with contradicting reports mixed in and in random order: every
// attempt must be applied exactly once, and the call must keep the first outcome applied.

const t = useTestDb()
let stack: Stack

beforeAll(async () => {
  // Calls that never end by themselves: the test delivers their webhooks. Retries wait a minute, so a call whose
  // FAILED report won is still PENDING when the test looks, however long the storm took.
  stack = await startStack(
    t,
    { MAX_CONCURRENT_CALLS: '20', RETRY_BASE_DELAY_MS: '60000', RETRY_MAX_DELAY_MS: '60000' },
    { callDurationMs: 600_000 },
  )
})
afterAll(async () => {
  await stack.stop()
})

describe('a webhook storm', () => {
  it('applies each attempt exactly once', async () => {
    const ids = await stack.createCalls(20, (i) => phone(7000 + i))
    await waitFor('every call dialed', async () => {
      const { rows } = await sql<{ n: number }>`
        select count(*)::int as n from calls where status = 'IN_PROGRESS' and provider_call_id is not null`.execute(
        t.db,
      )
      return rows[0]?.n === ids.length
    })
    const providerIds = new Map(
      (await t.db.selectFrom('calls').select(['id', 'provider_call_id']).execute()).map((c) => [
        c.id,
        c.provider_call_id,
      ]),
    )
    const deliveries = ids.flatMap((id) => {
      const url = `/api/v1/callbacks/call-status?call=${id}&attempt=1`
      const callId = providerIds.get(id)
      const hooks = [
        ...Array.from({ length: 5 }, () => ({ url, payload: { callId, status: 'COMPLETED', durationSec: 7 } })),
        { url, payload: { callId, status: 'FAILED', error: 'late contradiction' } },
        { url, payload: { callId, status: 'RINGING' } },
      ]
      return hooks
    })
    deliveries.sort(() => Math.random() - 0.5)
    const answers = await Promise.all(deliveries.map((d) => stack.svc.app.inject({ method: 'POST', ...d })))
    expect(answers.every((a) => a.statusCode === 200)).toBe(true)

    const { rows } = await sql<{ call_id: string; applied: number }>`
      select call_id, (count(*) filter (where detail ->> 'outcome' = 'applied'))::int as applied
        from call_events where kind = 'WEBHOOK' group by call_id`.execute(t.db)
    expect(rows).toHaveLength(ids.length)
    for (const r of rows) expect(r.applied).toBe(1)

    // whichever final report won, the call took exactly that one outcome and released its slot
    const calls = await t.db.selectFrom('calls').select(['id', 'status', 'attempts']).execute()
    for (const c of calls) {
      const winner = await sql<{ status: string }>`
        select status from call_events
         where call_id = ${c.id}::uuid and kind = 'WEBHOOK' and detail ->> 'outcome' = 'applied'`.execute(t.db)
      const expected = winner.rows[0]?.status === 'COMPLETED' ? 'COMPLETED' : 'PENDING' // FAILED schedules a retry
      expect(c.status).toBe(expected)
      expect(c.attempts).toBe(1)
    }
  })
})
