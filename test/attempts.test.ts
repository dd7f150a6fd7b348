import { sql } from 'kysely'
import pg from 'pg'
import { beforeEach, describe, expect, it } from 'vitest'
import { CALL_ERRORS } from '../src/dispatch/call-state.ts'
import { endAttempts, endAttemptsAndClaim, recordDialsAccepted } from '../src/sql/attempts.ts'
import { insertCampaign } from '../src/sql/campaigns.ts'
import { claimDueCalls } from '../src/sql/claim.ts'
import { closedWindow } from './campaign-helpers.ts'
import { useTestDb } from './kit.ts'
import { callIn } from './seed.ts'
import { resetTables } from './stack.ts'

// src/sql/attempts.ts against PostgreSQL: several reports ended in one statement, each fenced on its own.

const t = useTestDb()

beforeEach(async () => {
  await resetTables(t)
})

const row = (id: string) => t.db.selectFrom('calls').selectAll().where('id', '=', id).executeTakeFirstOrThrow()
const completed = { next: 'COMPLETED' } as const
const report = (
  callId: string,
  attempt: number,
  end: Parameters<typeof endAttempts>[1][number]['end'] = completed,
) => ({
  callId,
  attempt,
  end,
  eventKind: 'WEBHOOK' as const,
  outcome: end.next === 'COMPLETED' ? ('COMPLETED' as const) : ('NO_ANSWER' as const),
  detail: { providerCallId: `sim_${callId.slice(0, 4)}` },
})

describe('endAttempts', () => {
  it('gives every report of a batch its own outcome, and each a history row', async () => {
    const live = await callIn(t, 'IN_PROGRESS')
    const retried = await callIn(t, 'IN_PROGRESS', { attempts: 1 })
    const newer = await callIn(t, 'IN_PROGRESS', { attempts: 2 })
    const done = await callIn(t, 'COMPLETED')
    const timedOut = await callIn(t, 'IN_PROGRESS')
    await sql`update calls set status = 'FAILED', ended_at = now(),
                last_error = ${JSON.stringify({ code: CALL_ERRORS.timeout, message: 'x' })}::jsonb
               where id = ${timedOut}::uuid`.execute(t.db)
    const unknown = '7b0c2f7e-0000-4000-8000-000000000000'
    const error = { code: 'NO_ANSWER', message: 'no answer' }

    const results = await endAttempts(t.db, [
      report(live, 1),
      report(retried, 1, { next: 'PENDING', delayMs: 60_000, spendsAttempt: true, throttled: false, error }),
      report(newer, 1),
      report(done, 1),
      report(timedOut, 1),
      report(unknown, 1),
    ])
    expect(results).toEqual([
      { outcome: 'applied', status: 'COMPLETED', freedSlot: true },
      { outcome: 'applied', status: 'PENDING', freedSlot: true, dueInMs: expect.closeTo(60_000, -3) },
      { outcome: 'stale', status: 'IN_PROGRESS', freedSlot: false },
      { outcome: 'duplicate', status: 'COMPLETED', freedSlot: false },
      { outcome: 'late', status: 'COMPLETED', freedSlot: false },
      { outcome: 'unknown_call', status: undefined, freedSlot: false },
    ])
    expect(await row(live)).toMatchObject({ status: 'COMPLETED', last_error: null })
    const r = await row(retried)
    expect(r).toMatchObject({ status: 'PENDING', attempts: 1, last_error: error, ended_at: null })
    expect((r.next_attempt_at as Date).getTime()).toBeGreaterThan(Date.now() + 50_000)
    expect(await row(newer)).toMatchObject({ status: 'IN_PROGRESS', attempts: 2 })
    expect(await row(timedOut)).toMatchObject({ status: 'COMPLETED', last_error: null })

    const { rows } = await sql<{ call_id: string; outcome: string; provider: string }>`
      select call_id, detail ->> 'outcome' as outcome, detail ->> 'providerCallId' as provider
        from call_events where kind = 'WEBHOOK' order by id`.execute(t.db)
    expect(rows.map((e) => [e.call_id, e.outcome])).toEqual([
      [live, 'applied'],
      [retried, 'applied'],
      [newer, 'stale'],
      [done, 'duplicate'],
      [timedOut, 'late'],
    ])
    expect(rows[0]?.provider).toBe(`sim_${live.slice(0, 4)}`)
  })

  it("says when a campaign's retry is due: its rule's delay, moved to the window's next opening", async () => {
    const busy = { next: 'PENDING', delayMs: 60_000, spendsAttempt: true, throttled: false } as const
    const error = { code: 'BUSY', message: 'busy' }
    const rule = { retryPolicy: { outcomes: { BUSY: { retry: true, delayMs: 300 } } } }
    const open = await insertCampaign(t.db, { name: 'open', ...rule })
    const closed = await insertCampaign(t.db, {
      name: 'closed',
      ...rule,
      callingWindow: { ...closedWindow('UTC', 'UTC'), days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'] },
    })
    const inOpen = await callIn(t, 'IN_PROGRESS')
    const inClosed = await callIn(t, 'IN_PROGRESS')
    await sql`update calls set campaign_id = ${open.id}::uuid where id = ${inOpen}::uuid`.execute(t.db)
    await sql`update calls set campaign_id = ${closed.id}::uuid where id = ${inClosed}::uuid`.execute(t.db)
    const [a, b] = await endAttempts(t.db, [
      { ...report(inOpen, 1, { ...busy, error }), outcome: 'BUSY' },
      { ...report(inClosed, 1, { ...busy, error }), outcome: 'BUSY' },
    ])
    // the dispatcher's wake-up (src/dispatch/recorder.ts) is set from this, not from the environment's 60 s
    expect(a).toMatchObject({ status: 'PENDING', dueInMs: expect.closeTo(300, -2) })
    expect(b?.status).toBe('PENDING')
    const opensAt = new Date((await row(inClosed)).next_attempt_at).getTime()
    expect(b?.dueInMs).toBeGreaterThan(118 * 60_000) // closedWindow opens in two hours
    expect(Math.abs(Date.now() + (b?.dueInMs ?? 0) - opensAt)).toBeLessThan(60_000)
  })

  it('settles the latest attempt once from a late report, whatever state an unknown or failed dial left it in', async () => {
    const retrying = await callIn(t, 'PENDING', { attempts: 1 }) // a dial error the provider contradicts
    const failed = await callIn(t, 'FAILED', { attempts: 1 })
    const stillRetrying = await callIn(t, 'PENDING', { attempts: 1 })
    const older = await callIn(t, 'PENDING', { attempts: 2 })
    const error = { code: 'NO_ANSWER', message: 'no answer' }
    const noAnswer = { next: 'PENDING', delayMs: 1000, spendsAttempt: true, throttled: false, error } as const

    expect(
      await endAttempts(t.db, [
        report(retrying, 1),
        report(failed, 1),
        report(stillRetrying, 1, noAnswer),
        report(older, 1),
      ]),
    ).toEqual([
      { outcome: 'late', status: 'COMPLETED', freedSlot: false },
      { outcome: 'late', status: 'COMPLETED', freedSlot: false },
      { outcome: 'late', status: 'PENDING', freedSlot: false },
      { outcome: 'stale', status: 'PENDING', freedSlot: false },
    ])
    expect(await row(retrying)).toMatchObject({ status: 'COMPLETED', last_outcome: 'COMPLETED', reported_attempt: 1 })
    // a late failure only records itself: the retry stays as scheduled
    expect(await row(stillRetrying)).toMatchObject({ status: 'PENDING', last_outcome: 'NO_ANSWER', last_error: error })
    // the same report again, or a contradicting one, is a duplicate
    expect(await endAttempts(t.db, [report(failed, 1, noAnswer), report(stillRetrying, 1)])).toEqual([
      { outcome: 'duplicate', status: 'COMPLETED', freedSlot: false },
      { outcome: 'duplicate', status: 'PENDING', freedSlot: false },
    ])
  })

  it('locks rows in id order, so it cannot deadlock with a batch of accepted dials that names them in another order', async () => {
    const ids: string[] = []
    for (let i = 0; i < 40; i++) ids.push(await callIn(t, 'IN_PROGRESS'))
    ids.sort()
    const middle = ids[20] as string
    // A third transaction holds the middle row, so both batches stop halfway with their first rows locked. Locking
    // in their own (opposite) orders, each would then wait for the other: deadlock (40P01) after deadlock_timeout.
    const holder = new pg.Client({ connectionString: t.url })
    await holder.connect()
    try {
      await holder.query('begin')
      await holder.query('select id from calls where id = $1 for update', [middle])
      const accepted = recordDialsAccepted(
        t.db,
        ids.map((callId) => ({ callId, attempt: 1, providerCallId: `p_${callId}` })),
      )
      const ended = endAttempts(
        t.db,
        [...ids].reverse().map((callId) => report(callId, 1)),
      )
      await new Promise((r) => setTimeout(r, 200))
      await holder.query('commit')
      const [, results] = await Promise.all([accepted, ended])
      expect(results.every((r) => r.outcome === 'applied')).toBe(true)
    } finally {
      await holder.end()
    }
    const { rows } = await sql<{ n: number }>`
      select count(*)::int as n from calls where status = 'COMPLETED' and provider_call_id like 'p_%'`.execute(t.db)
    expect(rows[0]?.n).toBe(ids.length)
  })
})

describe('endAttemptsAndClaim', () => {
  it('claims into the slots the ends freed, in the same transaction, and returns the claimed calls as a claim does', async () => {
    const live = await callIn(t, 'IN_PROGRESS')
    const waiting = await callIn(t, 'PENDING')
    // cap 1 and one call in progress: only a claim that sees the end as done finds a free slot
    expect(await claimDueCalls(t.db, 1, 5)).toEqual([])

    const { results, claimed, refilled } = await endAttemptsAndClaim(t.db, [report(live, 1)], 1, 5)
    expect(results).toEqual([{ outcome: 'applied', status: 'COMPLETED', freedSlot: true }])
    expect(claimed.map((c) => c.id)).toEqual([waiting])
    // the claimed call as it is stored, with the same types a claim returns (timestamps as Date)
    expect(claimed[0]).toEqual(await row(waiting))
    expect(claimed[0]).toMatchObject({ status: 'IN_PROGRESS', attempts: 1 })
    expect(refilled).toBe(true) // it asked for 5 and took 1: nothing more is due

    // one transaction: the end's history row and the claim's were written by the same transaction id (xmin)
    const { rows } = await sql<{ kind: string; xid: string }>`
      select kind, xmin::text as xid from call_events
       where (call_id = ${live}::uuid and kind = 'WEBHOOK') or (call_id = ${waiting}::uuid and kind = 'CLAIMED')
       order by kind`.execute(t.db)
    expect(rows.map((r) => r.kind)).toEqual(['CLAIMED', 'WEBHOOK'])
    expect(rows[0]?.xid).toBe(rows[1]?.xid)
  })

  it('claims nothing when no slot was freed, and says the slots were not refilled when it took all it asked for', async () => {
    const done = await callIn(t, 'COMPLETED')
    const waiting = await callIn(t, 'PENDING')
    const nothingFreed = await endAttemptsAndClaim(t.db, [report(done, 1)], 10, 5)
    expect(nothingFreed.results[0]).toMatchObject({ outcome: 'duplicate', freedSlot: false })
    expect(nothingFreed.claimed).toEqual([])
    expect((await row(waiting)).status).toBe('PENDING')

    const live = await callIn(t, 'IN_PROGRESS')
    await callIn(t, 'PENDING')
    const full = await endAttemptsAndClaim(t.db, [report(live, 1)], 10, 1)
    expect(full.claimed).toHaveLength(1)
    expect(full.refilled).toBe(false) // it took the one call it asked for: more may be due
  })
})
