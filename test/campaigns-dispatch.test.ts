import { sql } from 'kysely'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { callIdOf, closedWindow, localHHMM, maxOverlap, NUMBERS, openWindow } from './campaign-helpers.ts'
import { phone, waitFor } from './helpers.ts'
import { useTestDb } from './kit.ts'
import { resetTables, type Stack, startStack } from './stack.ts'

// Campaign rules as the claim applies them, with the service dialing the simulator over HTTP: windows by zone,
// caps, fair share, priorities, pause, cancel, suppression, per-outcome retries, the daily limit and scheduledAt.

const t = useTestDb()
let stack: Stack | undefined

beforeEach(async () => {
  await resetTables(t)
})
afterEach(async () => {
  await stack?.stop()
  stack = undefined
})

async function campaign(s: Stack, body: object = {}): Promise<string> {
  const r = await s.api('POST', '/api/v1/campaigns', { name: 'c', ...body })
  expect(r.statusCode).toBe(201)
  return r.body.data.id
}

async function queue(s: Stack, campaignId: string | undefined, to: string[], extra: object = {}): Promise<string[]> {
  const ids: string[] = []
  for (let i = 0; i < to.length; i += 1000) {
    const r = await s.api('POST', '/api/v1/calls/batch', {
      ...(campaignId ? { campaignId } : {}),
      calls: to.slice(i, i + 1000).map((n) => ({ to: n, scriptId: 's', ...extra })),
    })
    expect(r.statusCode).toBe(201)
    ids.push(...r.body.data.ids)
  }
  return ids
}

const accepted = (s: Stack) => s.sim.stats().dials.filter((d) => d.status !== 429)
const rowsOf = (campaignId: string) =>
  t.db.selectFrom('calls').selectAll().where('campaign_id', '=', campaignId).execute()

describe('calling windows', () => {
  it('dials only the numbers whose window is open now in their own zone', async () => {
    stack = await startStack(t, {}, { callDurationMs: 20 })
    const riyadhOpen = await campaign(stack, { callingWindow: openWindow('Asia/Riyadh') })
    const sydneyOpen = await campaign(stack, { callingWindow: openWindow('Australia/Sydney') })
    const mixed = [NUMBERS.riyadh(1), NUMBERS.sydney(1), NUMBERS.london(1), NUMBERS.newYork(1)]
    const [riyadh, sydney, london, newYork] = await queue(stack, riyadhOpen, mixed)
    const [sydney2, riyadh2] = await queue(stack, sydneyOpen, [NUMBERS.sydney(2), NUMBERS.riyadh(2)])
    await waitFor('the open calls to complete', async () => {
      const rows = await t.db.selectFrom('calls').select(['id', 'status']).where('status', '=', 'COMPLETED').execute()
      return rows.length === 2
    })
    await new Promise((r) => setTimeout(r, 500)) // several claims and sweeps later
    const status = new Map(
      (await t.db.selectFrom('calls').select(['id', 'status', 'next_attempt_at']).execute()).map((r) => [r.id, r]),
    )
    expect(status.get(riyadh as string)?.status).toBe('COMPLETED')
    expect(status.get(sydney2 as string)?.status).toBe('COMPLETED')
    for (const id of [sydney, london, newYork, riyadh2]) {
      const r = status.get(id as string)
      expect(r?.status).toBe('PENDING')
      expect(new Date(r?.next_attempt_at as Date).getTime()).toBeGreaterThan(Date.now() + 60_000)
    }
    expect(accepted(stack)).toHaveLength(2)
    const stats = await stack.api('GET', `/api/v1/campaigns/${riyadhOpen}`)
    expect(stats.body.data.stats).toMatchObject({ dueNow: 0, waiting: 3, byStatus: { COMPLETED: 1, PENDING: 3 } })
    expect(new Date(stats.body.data.stats.nextEligibleAt).getTime()).toBeGreaterThan(Date.now())
  })
})

describe('caps, priorities and fair share', () => {
  it("keeps a campaign's cap while other calls use the rest of the global cap", async () => {
    stack = await startStack(t, { MAX_CONCURRENT_CALLS: '5' }, { callDurationMs: 60 })
    const capped = await campaign(stack, { maxConcurrentCalls: 2 })
    const inCampaign = await queue(
      stack,
      capped,
      Array.from({ length: 30 }, (_, i) => NUMBERS.riyadh(100 + i)),
    )
    await queue(
      stack,
      undefined,
      Array.from({ length: 30 }, (_, i) => phone(200 + i)),
    )
    await stack.waitAllFinal()
    const dials = stack.sim.stats().dials
    expect(maxOverlap(dials, new Set(inCampaign))).toBe(2)
    expect(stack.sim.stats().maxActive).toBe(5)
  })

  it('dials a higher-priority campaign first', async () => {
    stack = await startStack(t, { MAX_CONCURRENT_CALLS: '3' }, { callDurationMs: 30 })
    const startsAt = new Date(Date.now() + 1500).toISOString() // both become active at once
    const low = await campaign(stack, { priority: 10, startsAt })
    const high = await campaign(stack, { priority: 90, startsAt })
    const lowIds = new Set(
      await queue(
        stack,
        low,
        Array.from({ length: 20 }, (_, i) => NUMBERS.riyadh(300 + i)),
      ),
    )
    const highIds = new Set(
      await queue(
        stack,
        high,
        Array.from({ length: 20 }, (_, i) => NUMBERS.london(300 + i)),
      ),
    )
    await stack.waitAllFinal()
    expect(accepted(stack)).toHaveLength(40)
    // A claim takes calls of both only when the high one has fewer due calls than free slots; so no low call was
    // claimed before the last high call.
    const { rows } = await sql<{ campaign_id: string; first: Date; last: Date }>`
      select c.campaign_id, min(e.created_at) as first, max(e.created_at) as last
        from call_events e join calls c on c.id = e.call_id where e.kind = 'CLAIMED' group by 1`.execute(t.db)
    const by = new Map(rows.map((r) => [r.campaign_id, r]))
    expect(new Date(by.get(high)?.last as Date).getTime()).toBeLessThanOrEqual(
      new Date(by.get(low)?.first as Date).getTime(),
    )
    expect(lowIds.size + highIds.size).toBe(40)
  })

  it('shares the slots between campaigns of equal priority: a small late one is not starved', async () => {
    stack = await startStack(t, { MAX_CONCURRENT_CALLS: '6' }, { callDurationMs: 80 })
    const a = await campaign(stack)
    const b = await campaign(stack)
    const aIds = new Set(
      await queue(
        stack,
        a,
        Array.from({ length: 400 }, (_, i) => NUMBERS.riyadh(1000 + i)),
      ),
    )
    await waitFor('A to be dialing', () => accepted(stack as Stack).length >= 20)
    const bStart = performance.timeOrigin + performance.now()
    const bIds = new Set(
      await queue(
        stack,
        b,
        Array.from({ length: 40 }, (_, i) => NUMBERS.london(1000 + i)),
      ),
    )
    await waitFor('B to finish', async () => (await rowsOf(b)).every((r) => r.status === 'COMPLETED'), 30_000)
    const during = accepted(stack).filter((d) => d.receivedAt >= bStart)
    const lastB = Math.max(...during.map((d, i) => (bIds.has(callIdOf(d)) ? i : -1)))
    const window = during.slice(0, lastB + 1)
    const share = window.filter((d) => bIds.has(callIdOf(d))).length / window.length
    expect(window.filter((d) => aIds.has(callIdOf(d))).length).toBeGreaterThan(0)
    expect(share).toBeGreaterThan(0.4)
    expect(share).toBeLessThan(0.6)
    await stack.api('POST', `/api/v1/campaigns/${a}/cancel`)
  })
})

describe('pause, resume and cancel', () => {
  it('starts no dial of a paused campaign once pause has returned, and finishes after resume', async () => {
    stack = await startStack(t, { MAX_CONCURRENT_CALLS: '5' }, { callDurationMs: 40 })
    const id = await campaign(stack)
    const ids = await queue(
      stack,
      id,
      Array.from({ length: 150 }, (_, i) => NUMBERS.riyadh(2000 + i)),
    )
    await waitFor('a burst to be dialing', () => accepted(stack as Stack).length >= 20)
    const paused = await stack.api('POST', `/api/v1/campaigns/${id}/pause`)
    expect(paused.body.data.status).toBe('PAUSED')
    const { rows: at } = await sql<{ now: Date }>`select now() as now`.execute(t.db)
    await new Promise((r) => setTimeout(r, 600))
    const { rows } = await sql<{ n: number }>`
      select count(*)::int as n from call_events e join calls c on c.id = e.call_id
       where c.campaign_id = ${id}::uuid and e.kind = 'CLAIMED' and e.created_at >= ${at[0]?.now}::timestamptz`.execute(
      t.db,
    )
    expect(rows[0]?.n).toBe(0)
    const pending = (await rowsOf(id)).filter((r) => r.status === 'PENDING').length
    expect(pending).toBeGreaterThan(0)
    await stack.api('POST', `/api/v1/campaigns/${id}/resume`)
    const all = await stack.waitAllFinal()
    expect(all.filter((c) => ids.includes(c.id)).every((c) => c.status === 'COMPLETED')).toBe(true)
  })

  it('ends CANCELED an attempt in progress at cancel that would have been retried', async () => {
    stack = await startStack(t, {}, { callDurationMs: 400, outcomes: { BUSY: 1 } })
    const id = await campaign(stack)
    const [callId] = await queue(stack, id, [NUMBERS.riyadh(3000)])
    await waitFor('the call to be dialed', () => accepted(stack as Stack).length === 1)
    await stack.api('POST', `/api/v1/campaigns/${id}/cancel`)
    await stack.waitAllFinal()
    const row = await t.db
      .selectFrom('calls')
      .selectAll()
      .where('id', '=', callId as string)
      .executeTakeFirstOrThrow()
    expect(row.status).toBe('CANCELED')
    expect(row.last_outcome).toBe('BUSY')
    expect(accepted(stack)).toHaveLength(1)
  })
})

describe('suppression', () => {
  it('never dials a phone once its suppression has returned, and cancels a call that raced it (SUPPRESSED)', async () => {
    stack = await startStack(t, { MAX_CONCURRENT_CALLS: '4' }, { callDurationMs: 60 })
    const target = NUMBERS.london(4000)
    const id = await campaign(stack)
    await queue(stack, id, [
      ...Array.from({ length: 10 }, () => target),
      ...Array.from({ length: 60 }, (_, i) => NUMBERS.riyadh(4000 + i)),
    ])
    await waitFor('the phone to be dialed once', () => accepted(stack as Stack).some((d) => d.to === target))
    const s = await stack.api('POST', '/api/v1/suppressions', { phone: target })
    expect(s.statusCode).toBe(200)
    const { rows: at } = await sql<{ now: Date }>`select now() as now`.execute(t.db)
    // a create that raced the suppression: queued after it, as if its admission check ran first
    const { rows: raced } = await sql<{ id: string }>`
      insert into calls (to_phone, script_id, expires_at, campaign_id)
      values (${target}, 's', now() + interval '1 hour', ${id}::uuid) returning id`.execute(t.db)
    await stack.waitAllFinal()
    const { rows: claimedAfter } = await sql<{ n: number }>`
      select count(*)::int as n from call_events e join calls c on c.id = e.call_id
       where c.to_phone = ${target} and e.kind = 'CLAIMED' and e.created_at >= ${at[0]?.now}::timestamptz`.execute(t.db)
    expect(claimedAfter[0]?.n).toBe(0)
    const racedRow = await t.db
      .selectFrom('calls')
      .selectAll()
      .where('id', '=', raced[0]?.id as string)
      .executeTakeFirstOrThrow()
    expect(racedRow.status).toBe('CANCELED')
    expect(racedRow.last_error?.code).toBe('SUPPRESSED')
    const targetRows = (await rowsOf(id)).filter((r) => r.to_phone === target)
    expect(targetRows.filter((r) => r.status === 'CANCELED').length).toBeGreaterThan(0)
    expect(targetRows.every((r) => r.status === 'COMPLETED' || r.last_error?.code === 'SUPPRESSED')).toBe(true)
  })
})

describe('retry rules per outcome', () => {
  it('retries each outcome after its own delay, measured at the simulator', async () => {
    // the environment's delay is a minute, so only a wake-up at the rule's time dials these retries when they are due
    stack = await startStack(
      t,
      { MAX_RETRY_ATTEMPTS: '5', RETRY_BASE_DELAY_MS: '60000', RETRY_MAX_DELAY_MS: '60000' },
      { callDurationMs: 30, outcomes: { BUSY: 1 } },
    )
    const id = await campaign(stack, {
      retryPolicy: {
        maxAttempts: 3,
        outcomes: {
          BUSY: { retry: true, delayMs: 300, backoffMultiplier: 2 },
          NO_ANSWER: { retry: true, delayMs: 1200 },
          VOICEMAIL: { retry: false },
        },
      },
    })
    const [busy] = await queue(stack, id, [NUMBERS.riyadh(5000)])
    await stack.waitAllFinal()
    stack.sim.configure({ outcomes: { NO_ANSWER: 1 } })
    const [noAnswer] = await queue(stack, id, [NUMBERS.riyadh(5001)])
    await stack.waitAllFinal()
    stack.sim.configure({ outcomes: { VOICEMAIL: 1 } })
    const [voicemail] = await queue(stack, id, [NUMBERS.riyadh(5002)])
    await stack.waitAllFinal()
    const dials = accepted(stack)
    const gaps = (callId: string) => {
      const mine = dials.filter((d) => callIdOf(d) === callId)
      return mine.slice(1).map((d, i) => d.receivedAt - (mine[i]?.finalSentAt as number))
    }
    const busyGaps = gaps(busy as string)
    expect(busyGaps).toHaveLength(2) // maxAttempts 3
    expect(busyGaps[0]).toBeGreaterThanOrEqual(300 - 20)
    expect(busyGaps[0]).toBeLessThan(600)
    expect(busyGaps[1]).toBeGreaterThanOrEqual(600 - 20) // 300 * 2
    expect(busyGaps[1]).toBeLessThan(1100)
    const naGaps = gaps(noAnswer as string)
    expect(naGaps).toHaveLength(2)
    for (const g of naGaps) {
      expect(g).toBeGreaterThanOrEqual(1200 - 20)
      expect(g).toBeLessThan(1800)
    }
    expect(gaps(voicemail as string)).toHaveLength(0)
    const rows = new Map((await rowsOf(id)).map((r) => [r.id, r]))
    expect(rows.get(busy as string)).toMatchObject({ status: 'FAILED', attempts: 3, last_outcome: 'BUSY' })
    expect(rows.get(voicemail as string)).toMatchObject({ status: 'FAILED', attempts: 1, last_outcome: 'VOICEMAIL' })
  })
})

describe('a change of window', () => {
  it("keeps a PENDING retry's delay: it rings at its due time or at the new window's opening, whichever is later", async () => {
    stack = await startStack(t, {}, { callDurationMs: 30, outcomes: { BUSY: 1 } })
    const id = await campaign(stack, {
      callingWindow: openWindow('Asia/Riyadh'),
      retryPolicy: { outcomes: { BUSY: { retry: true, delayMs: 600_000 } } },
    })
    const [callId] = await queue(stack, id, [NUMBERS.riyadh(6000)])
    const row = () =>
      t.db
        .selectFrom('calls')
        .selectAll()
        .where('id', '=', callId as string)
        .executeTakeFirstOrThrow()
    const retry = await waitFor('the BUSY retry', async () => {
      const r = await row()
      return r.status === 'PENDING' && r.attempts === 1 && r
    })
    const dueAt = new Date(retry.next_attempt_at).getTime()
    expect(dueAt).toBeGreaterThan(Date.now() + 500_000) // the rule's 10 minutes, inside the open window

    // another window, open now and when the retry is due: the retry keeps its time
    const open = await stack.api('PATCH', `/api/v1/campaigns/${id}`, {
      callingWindow: openWindow('Asia/Riyadh', 'Asia/Riyadh'),
    })
    expect(open.statusCode).toBe(200)
    const kept = await row()
    expect(kept).toMatchObject({ status: 'PENDING', attempts: 1 })
    expect(new Date(kept.next_attempt_at).getTime()).toBe(dueAt)

    // a window that opens after the retry is due: the opening, two hours away
    const later = await stack.api('PATCH', `/api/v1/campaigns/${id}`, { callingWindow: closedWindow('Asia/Riyadh') })
    expect(later.statusCode).toBe(200)
    const moved = new Date((await row()).next_attempt_at).getTime()
    expect(moved).toBeGreaterThan(Date.now() + 118 * 60_000)
    expect(localHHMM('Asia/Riyadh', (moved - Date.now()) / 60_000)).toBe(closedWindow('Asia/Riyadh').start)
    expect(accepted(stack)).toHaveLength(1)
  })
})

describe('daily limit and scheduledAt', () => {
  it('dials a phone at most maxDialsPerPhonePerDay times in 24 hours; further calls wait', async () => {
    stack = await startStack(t, {}, { callDurationMs: 20 })
    const id = await campaign(stack, { maxDialsPerPhonePerDay: 2 })
    const target = NUMBERS.riyadh(6000)
    await queue(stack, id, [target, target, target])
    await waitFor(
      'two calls to complete',
      async () => (await rowsOf(id)).filter((r) => r.status === 'COMPLETED').length === 2,
    )
    await new Promise((r) => setTimeout(r, 500))
    const rows = await rowsOf(id)
    const waiting = rows.filter((r) => r.status === 'PENDING')
    expect(waiting).toHaveLength(1)
    const wait = new Date(waiting[0]?.next_attempt_at as Date).getTime() - Date.now()
    expect(wait).toBeGreaterThan(23.9 * 3_600_000)
    expect(accepted(stack)).toHaveLength(2)
  })

  it('does not dial a call before its scheduledAt', async () => {
    stack = await startStack(t, {}, { callDurationMs: 20 })
    const at = new Date(Date.now() + 1500)
    const [id] = await queue(stack, undefined, [phone(7000)], { scheduledAt: at.toISOString() })
    await stack.waitAllFinal()
    const dial = accepted(stack).find((d) => callIdOf(d) === id)
    expect(dial?.receivedAt).toBeGreaterThanOrEqual(at.getTime())
  })
})
