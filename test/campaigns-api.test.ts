import type { FastifyInstance } from 'fastify'
import { sql } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { closedWindow, localHHMM, NUMBERS, openWindow } from './campaign-helpers.ts'
import { createTestDb, type TestDb } from './db.ts'
import { apiOnly } from './helpers.ts'

// The campaigns and suppressions API without a dispatcher: validation, what a create decides from the database
// (suppression, calling window, campaign state), and the statements behind pause, cancel and PATCH.

let t: TestDb
let app: FastifyInstance

beforeAll(async () => {
  t = await createTestDb()
  app = await apiOnly(t, { MAX_CONCURRENT_CALLS: '30' })
})
afterAll(async () => {
  await app?.close()
  await t?.drop()
})

async function api(method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, payload?: object) {
  const res = await app.inject({ method, url, ...(payload ? { payload } : {}) })
  return { status: res.statusCode, body: res.json() }
}

async function campaign(body: object = {}): Promise<string> {
  const r = await api('POST', '/api/v1/campaigns', { name: 'c', ...body })
  expect(r.status).toBe(201)
  return r.body.data.id
}

const row = (id: string) => t.db.selectFrom('calls').selectAll().where('id', '=', id).executeTakeFirstOrThrow()

describe('POST /api/v1/campaigns', () => {
  it('creates a campaign with defaults and shows it with stats', async () => {
    const r = await api('POST', '/api/v1/campaigns', {
      name: 'spring',
      callingWindow: {
        timezone: 'recipient',
        fallbackTimezone: 'Asia/Riyadh',
        days: ['sun', 'mon'],
        start: '09:00',
        end: '20:00',
      },
      retryPolicy: { maxAttempts: 4, outcomes: { BUSY: { retry: true, delayMs: 60_000 } } },
    })
    expect(r.status).toBe(201)
    expect(r.body.data).toMatchObject({ name: 'spring', status: 'ACTIVE', priority: 50, maxConcurrentCalls: null })
    expect(r.body.data.callingWindow.days).toEqual(['mon', 'sun'])
    const got = await api('GET', `/api/v1/campaigns/${r.body.data.id}`)
    expect(got.body.data.stats).toMatchObject({ byStatus: {}, inProgress: 0, maxConcurrentCalls: 30, dueNow: 0 })
  })

  it.each([
    [{ priority: 101 }, 'body.priority'],
    [{ priority: -1 }, 'body.priority'],
    [{ maxConcurrentCalls: 31 }, 'maxConcurrentCalls'],
    [{ maxConcurrentCalls: 0 }, 'body.maxConcurrentCalls'],
    [{ callingWindow: { timezone: 'Europe/Atlantis', start: '09:00', end: '17:00' } }, 'callingWindow.timezone'],
    [{ callingWindow: { timezone: 'recipient', start: '09:00', end: '17:00' } }, 'callingWindow.fallbackTimezone'],
    [{ callingWindow: { timezone: 'UTC', start: '25:00', end: '17:00' } }, 'callingWindow.start'],
    [{ callingWindow: { timezone: 'UTC', start: '09:00', end: '9pm' } }, 'callingWindow.end'],
    [{ callingWindow: { timezone: 'UTC', start: '09:00', end: '09:00' } }, 'callingWindow.end'],
    [{ callingWindow: { timezone: 'UTC', days: [], start: '09:00', end: '17:00' } }, 'callingWindow.days'],
    [
      { callingWindow: { timezone: 'UTC', days: ['funday'], start: '09:00', end: '17:00' } },
      'body.callingWindow.days.0',
    ],
    [{ startsAt: '2030-01-02T00:00:00Z', endsAt: '2030-01-01T00:00:00Z' }, 'endsAt'],
    [{ endsAt: '2020-01-01T00:00:00Z' }, 'endsAt'],
    [
      { retryPolicy: { outcomes: { BUSY: { retry: true, delayMs: 5000, maxDelayMs: 1000 } } } },
      'retryPolicy.outcomes.BUSY.maxDelayMs',
    ],
    [{ retryPolicy: { outcomes: { RINGING: { retry: true } } } }, 'body.retryPolicy.outcomes'],
    [{ maxDialsPerPhonePerDay: 0 }, 'body.maxDialsPerPhonePerDay'],
    [{ surprise: 1 }, 'body'],
  ])('refuses %o with 400 VALIDATION_ERROR naming %s', async (bad, field) => {
    const before = await t.db
      .selectFrom('campaigns')
      .select(sql<number>`count(*)::int`.as('n'))
      .executeTakeFirstOrThrow()
    const r = await api('POST', '/api/v1/campaigns', { name: 'bad', ...bad })
    expect(r.status).toBe(400)
    expect(r.body.error.code).toBe('VALIDATION_ERROR')
    expect(JSON.stringify(r.body.error.details)).toContain(field)
    const after = await t.db
      .selectFrom('campaigns')
      .select(sql<number>`count(*)::int`.as('n'))
      .executeTakeFirstOrThrow()
    expect(after.n).toBe(before.n)
  })
})

describe('calls in a campaign', () => {
  it('stores the recipient zones and starts a call outside its window at the next opening', async () => {
    const open = await campaign({ callingWindow: openWindow('Asia/Riyadh') })
    const closed = await campaign({ callingWindow: closedWindow('Australia/Sydney') })
    const a = await api('POST', '/api/v1/calls', { to: NUMBERS.riyadh(1), scriptId: 's', campaignId: open })
    const b = await api('POST', '/api/v1/calls', { to: NUMBERS.sydney(1), scriptId: 's', campaignId: closed })
    expect(a.status).toBe(201)
    expect(b.status).toBe(201)
    expect(a.body.data.campaignId).toBe(open)
    const ra = await row(a.body.data.id)
    const rb = await row(b.body.data.id)
    expect(ra.time_zones).toEqual(['Asia/Riyadh'])
    expect(rb.time_zones).toEqual(['Australia/Sydney'])
    expect(new Date(ra.next_attempt_at).getTime()).toBeLessThanOrEqual(Date.now() + 1000)
    // closedWindow opens in two hours' time (to the minute)
    const wait = new Date(rb.next_attempt_at).getTime() - Date.now()
    expect(wait).toBeGreaterThan(118 * 60_000)
    expect(wait).toBeLessThan(121 * 60_000)
    expect(localHHMM('Australia/Sydney', wait / 60_000)).toBe(closedWindow('Australia/Sydney').start)
  })

  it('uses the fallback zone for a number whose zone is unknown to the mapping and a fixed zone when given', async () => {
    const fixed = await campaign({ callingWindow: closedWindow('Asia/Riyadh', 'Asia/Riyadh') })
    const r = await api('POST', '/api/v1/calls', { to: NUMBERS.newYork(5), scriptId: 's', campaignId: fixed })
    expect(r.status).toBe(201)
    const wait = new Date((await row(r.body.data.id)).next_attempt_at).getTime() - Date.now()
    expect(wait).toBeGreaterThan(118 * 60_000)
  })

  it('refuses a number whose zones share no open time with 422 NO_CALLING_WINDOW, and skips it in a batch', async () => {
    // Guam 09:00-17:00 is 23:00-07:00 UTC, Newfoundland's 12:30-20:30 UTC: never open in both
    const id = await campaign({
      callingWindow: { timezone: 'recipient', fallbackTimezone: 'UTC', start: '09:00', end: '17:00' },
    })
    const r = await api('POST', '/api/v1/calls', { to: NUMBERS.tollFree, scriptId: 's', campaignId: id })
    expect(r.status).toBe(422)
    expect(r.body.error.code).toBe('NO_CALLING_WINDOW')
    expect(r.body.error.details.timeZones).toContain('Pacific/Guam')
    const b = await api('POST', '/api/v1/calls/batch', {
      campaignId: id,
      calls: [
        { to: NUMBERS.riyadh(2), scriptId: 's' },
        { to: NUMBERS.tollFree, scriptId: 's' },
      ],
    })
    expect(b.status).toBe(201)
    expect(b.body.data.count).toBe(1)
    expect(b.body.data.ids[1]).toBe(null)
    expect(b.body.data.skipped).toEqual([{ index: 1, code: 'NO_CALLING_WINDOW' }])
  })

  it('accepts a multi-zone number when the window leaves common time, and waits while any zone is closed', async () => {
    // 23 hours long, closed for the hour around now in Guam: open in some of the 42 zones now, not in all
    const id = await campaign({
      callingWindow: {
        timezone: 'recipient',
        fallbackTimezone: 'UTC',
        start: localHHMM('Pacific/Guam', 30),
        end: localHHMM('Pacific/Guam', -30),
      },
    })
    const r = await api('POST', '/api/v1/calls', { to: NUMBERS.tollFree, scriptId: 's', campaignId: id })
    expect(r.status).toBe(201)
    const c = await row(r.body.data.id)
    expect(c.time_zones).toHaveLength(42)
    expect(new Date(c.next_attempt_at).getTime()).toBeGreaterThan(Date.now() + 25 * 60_000)
  })

  it('answers 404 for an unknown campaign and 409 for a canceled one', async () => {
    const unknown = await api('POST', '/api/v1/calls', {
      to: NUMBERS.riyadh(3),
      scriptId: 's',
      campaignId: '00000000-0000-4000-8000-000000000000',
    })
    expect(unknown.status).toBe(404)
    expect(unknown.body.error.code).toBe('CAMPAIGN_NOT_FOUND')
    const id = await campaign()
    expect((await api('POST', `/api/v1/campaigns/${id}/cancel`)).status).toBe(200)
    const r = await api('POST', '/api/v1/calls/batch', {
      campaignId: id,
      calls: [{ to: NUMBERS.riyadh(3), scriptId: 's' }],
    })
    expect(r.status).toBe(409)
    expect(r.body.error.code).toBe('CAMPAIGN_CANCELED')
    expect((await api('PATCH', `/api/v1/campaigns/${id}`, { priority: 1 })).status).toBe(409)
    expect((await api('POST', `/api/v1/campaigns/${id}/resume`)).status).toBe(409)
  })

  it('refuses a batch whose items name another campaign than the batch', async () => {
    const a = await campaign()
    const b = await campaign()
    const r = await api('POST', '/api/v1/calls/batch', {
      campaignId: a,
      calls: [{ to: NUMBERS.riyadh(4), scriptId: 's', campaignId: b }],
    })
    expect(r.status).toBe(400)
  })

  it('holds a scheduledAt call until then, and refuses scheduledAt after expiresAt', async () => {
    const at = new Date(Date.now() + 3_600_000).toISOString()
    const r = await api('POST', '/api/v1/calls', { to: NUMBERS.riyadh(6), scriptId: 's', scheduledAt: at })
    expect(r.status).toBe(201)
    expect(r.body.data.scheduledAt).toBe(at)
    expect(r.body.data.nextAttemptAt).toBe(at)
    const bad = await api('POST', '/api/v1/calls', {
      to: NUMBERS.riyadh(6),
      scriptId: 's',
      scheduledAt: at,
      expiresAt: new Date(Date.now() + 60_000).toISOString(),
    })
    expect(bad.status).toBe(400)
    expect(bad.body.error.code).toBe('INVALID_SCHEDULED_AT')
  })

  it('lists calls by campaignId', async () => {
    const id = await campaign()
    await api('POST', '/api/v1/calls/batch', {
      campaignId: id,
      calls: [0, 1, 2].map((i) => ({ to: NUMBERS.london(i), scriptId: 's' })),
    })
    const r = await api('GET', `/api/v1/calls?campaignId=${id}`)
    expect(r.body.pagination.total).toBe(3)
    expect(r.body.data.every((c: { campaignId: string }) => c.campaignId === id)).toBe(true)
  })

  it('moves PENDING calls to the new window when PATCH changes it', async () => {
    const id = await campaign({ callingWindow: closedWindow('Asia/Riyadh') })
    const r = await api('POST', '/api/v1/calls', { to: NUMBERS.riyadh(7), scriptId: 's', campaignId: id })
    expect(new Date((await row(r.body.data.id)).next_attempt_at).getTime()).toBeGreaterThan(Date.now() + 3_600_000)
    const p = await api('PATCH', `/api/v1/campaigns/${id}`, { callingWindow: openWindow('Asia/Riyadh') })
    expect(p.status).toBe(200)
    expect(new Date((await row(r.body.data.id)).next_attempt_at).getTime()).toBeLessThanOrEqual(Date.now() + 1000)
  })
})

describe("PATCH of a call's number", () => {
  it('refuses a new number that a create would refuse: NO_CALLING_WINDOW, PHONE_SUPPRESSED', async () => {
    // Guam 09:00-17:00 and Newfoundland 09:00-17:00 never overlap: the toll-free number has no common time
    const id = await campaign({
      callingWindow: { timezone: 'recipient', fallbackTimezone: 'UTC', start: '09:00', end: '17:00' },
    })
    const r = await api('POST', '/api/v1/calls', { to: NUMBERS.riyadh(40), scriptId: 's', campaignId: id })
    expect(r.status).toBe(201)
    const noWindow = await api('PATCH', `/api/v1/calls/${r.body.data.id}`, { to: NUMBERS.tollFree })
    expect(noWindow.status).toBe(422)
    expect(noWindow.body.error.code).toBe('NO_CALLING_WINDOW')
    expect(noWindow.body.error.details.timeZones).toContain('Pacific/Guam')
    expect((await api('POST', '/api/v1/suppressions', { phone: NUMBERS.riyadh(41) })).status).toBe(200)
    const suppressed = await api('PATCH', `/api/v1/calls/${r.body.data.id}`, { to: NUMBERS.riyadh(41) })
    expect(suppressed.status).toBe(422)
    expect(suppressed.body.error.code).toBe('PHONE_SUPPRESSED')
    expect(await row(r.body.data.id)).toMatchObject({
      to_phone: NUMBERS.riyadh(40),
      time_zones: ['Asia/Riyadh'],
      status: 'PENDING',
    })
  })

  it("stores the new number's zones and moves the call to the window's next opening in them", async () => {
    // read in each recipient's zone: open now in Riyadh (UTC+3), closed in Sydney (UTC+10/+11)
    const id = await campaign({ callingWindow: openWindow('Asia/Riyadh') })
    const r = await api('POST', '/api/v1/calls', { to: NUMBERS.sydney(40), scriptId: 's', campaignId: id })
    expect(r.status).toBe(201)
    expect(new Date((await row(r.body.data.id)).next_attempt_at).getTime()).toBeGreaterThan(Date.now() + 3_600_000)
    const toRiyadh = await api('PATCH', `/api/v1/calls/${r.body.data.id}`, { to: NUMBERS.riyadh(42) })
    expect(toRiyadh.status).toBe(200)
    const moved = await row(r.body.data.id)
    expect(moved.time_zones).toEqual(['Asia/Riyadh'])
    expect(new Date(moved.next_attempt_at).getTime()).toBeLessThanOrEqual(Date.now() + 1000)
    const back = await api('PATCH', `/api/v1/calls/${r.body.data.id}`, { to: NUMBERS.sydney(41) })
    expect(back.status).toBe(200)
    const waiting = await row(r.body.data.id)
    expect(waiting.time_zones).toEqual(['Australia/Sydney'])
    expect(new Date(waiting.next_attempt_at).getTime()).toBeGreaterThan(Date.now() + 3_600_000)
  })
})

describe('cancel', () => {
  it('cancels 10,000 PENDING calls of the campaign in one statement and leaves other calls alone', async () => {
    const id = await campaign()
    const other = await api('POST', '/api/v1/calls', { to: NUMBERS.riyadh(9), scriptId: 's' })
    for (let b = 0; b < 10; b++) {
      const r = await api('POST', '/api/v1/calls/batch', {
        campaignId: id,
        calls: Array.from({ length: 1000 }, (_, i) => ({ to: NUMBERS.riyadh(100_000 + b * 1000 + i), scriptId: 's' })),
      })
      expect(r.body.data.count).toBe(1000)
    }
    const started = performance.now()
    const r = await api('POST', `/api/v1/campaigns/${id}/cancel`)
    const ms = performance.now() - started
    expect(r.status).toBe(200)
    expect(r.body.data.status).toBe('CANCELED')
    const { rows } = await sql<{ status: string; code: string | null; n: number }>`
      select status, last_error ->> 'code' as code, count(*)::int as n from calls where campaign_id = ${id}::uuid
       group by 1, 2`.execute(t.db)
    expect(rows).toEqual([{ status: 'CANCELED', code: 'CAMPAIGN_CANCELED', n: 10_000 }])
    expect((await row(other.body.data.id)).status).toBe('PENDING')
    const stats = await api('GET', `/api/v1/campaigns/${id}`)
    expect(stats.body.data.stats.byStatus).toEqual({ CANCELED: 10_000 })
    console.log(`cancel of 10,000 pending calls: ${ms.toFixed(0)} ms (noisy: shared CPU)`)
  })
})

describe('suppressions', () => {
  it('refuses a call to a suppressed number with 422 PHONE_SUPPRESSED and skips it in a batch', async () => {
    const phone = NUMBERS.london(50)
    const s = await api('POST', '/api/v1/suppressions', { phone: phone.replace('+44', '+44 '), reason: 'asked' })
    expect(s.status).toBe(200)
    expect((await api('POST', '/api/v1/suppressions', { phone })).status).toBe(200) // repeating is not an error
    const r = await api('POST', '/api/v1/calls', { to: phone, scriptId: 's' })
    expect(r.status).toBe(422)
    expect(r.body.error.code).toBe('PHONE_SUPPRESSED')
    const b = await api('POST', '/api/v1/calls/batch', {
      calls: [
        { to: phone, scriptId: 's' },
        { to: NUMBERS.london(51), scriptId: 's' },
      ],
    })
    expect(b.status).toBe(201)
    expect(b.body.data).toMatchObject({ count: 1, skipped: [{ index: 0, code: 'PHONE_SUPPRESSED' }] })
    expect(b.body.data.ids[0]).toBe(null)
    expect(b.body.data.ids[1]).toMatch(/^[0-9a-f-]{36}$/)
    const list = await api('GET', `/api/v1/suppressions?phone=${encodeURIComponent(phone)}`)
    expect(list.body.data).toHaveLength(1)
    expect(list.body.data[0]).toMatchObject({ phone, reason: null, campaignId: null })
  })

  it('scopes an entry with campaignId to that campaign', async () => {
    const id = await campaign()
    const phone = NUMBERS.london(60)
    await api('POST', '/api/v1/suppressions', { phone, campaignId: id })
    expect((await api('POST', '/api/v1/calls', { to: phone, scriptId: 's', campaignId: id })).status).toBe(422)
    expect((await api('POST', '/api/v1/calls', { to: phone, scriptId: 's' })).status).toBe(201)
  })

  it('cancels the PENDING calls of a phone when it is suppressed, and forgets an expired entry', async () => {
    const phone = NUMBERS.london(70)
    const c = await api('POST', '/api/v1/calls', { to: phone, scriptId: 's' })
    const s = await api('POST', '/api/v1/suppressions/batch', {
      suppressions: [{ phone }, { phone: NUMBERS.london(71) }],
    })
    expect(s.body.data).toEqual({ count: 2, canceledCalls: 1 })
    const r = await row(c.body.data.id)
    expect(r.status).toBe('CANCELED')
    expect(r.last_error?.code).toBe('SUPPRESSED')
    expect((await api('DELETE', `/api/v1/suppressions/${encodeURIComponent(phone)}`)).status).toBe(200)
    expect((await api('DELETE', `/api/v1/suppressions/${encodeURIComponent(phone)}`)).status).toBe(404)
    await api('POST', '/api/v1/suppressions', { phone, expiresAt: new Date(Date.now() + 200).toISOString() })
    await new Promise((r) => setTimeout(r, 300))
    expect((await api('POST', '/api/v1/calls', { to: phone, scriptId: 's' })).status).toBe(201)
  })

  it.each([
    ['/api/v1/suppressions', { phone: '12345' }, 'INVALID_PHONE'],
    [
      '/api/v1/suppressions',
      { phone: NUMBERS.london(80), campaignId: '00000000-0000-4000-8000-000000000000' },
      'CAMPAIGN_NOT_FOUND',
    ],
    ['/api/v1/suppressions/batch', { suppressions: [] }, 'VALIDATION_ERROR'],
    ['/api/v1/suppressions/batch', { suppressions: [{ phone: 'x' }] }, 'VALIDATION_ERROR'],
  ])('refuses POST %s %o with %s', async (url, body, code) => {
    const r = await api('POST', url, body)
    expect(r.status).toBeGreaterThanOrEqual(400)
    expect(r.status).toBeLessThan(500)
    expect(r.body.error.code).toBe(code)
  })
})
