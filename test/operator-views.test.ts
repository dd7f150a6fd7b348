import { sql } from 'kysely'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { type CallStatus, STATUSES } from '../src/dispatch/call-state.ts'
import { maskPhone } from '../src/phone.ts'
import { readDispatchSettings, saveDispatchSettings } from '../src/sql/settings.ts'
import { phone } from './helpers.ts'
import { useTestDb } from './kit.ts'
import { callIn as seed } from './seed.ts'
import { resetTables, type Stack, startStack } from './stack.ts'

// Migration 0003: the views and functions an operator uses from psql, and the cap the service records for them.

const t = useTestDb()
let stack: Stack | undefined

beforeEach(async () => {
  await resetTables(t)
  await sql`delete from dispatch_settings`.execute(t.db)
})
afterEach(async () => {
  await stack?.stop()
  stack = undefined
})

const callIn = (status: CallStatus, o: Parameters<typeof seed>[2] = {}) => seed(t, status, o)

const row = async <T>(query: ReturnType<typeof sql<T>>) => (await query.execute(t.db)).rows[0] as T
const callRow = (id: string) => t.db.selectFrom('calls').selectAll().where('id', '=', id).executeTakeFirstOrThrow()
const kinds = async (id: string) =>
  (await t.db.selectFrom('call_events').select('kind').where('call_id', '=', id).orderBy('id').execute()).map(
    (e) => e.kind,
  )

describe('dispatch_settings', () => {
  it('keeps one row with the cap the last dispatcher started with', async () => {
    expect(await readDispatchSettings(t.db)).toBeUndefined()
    await saveDispatchSettings(t.db, { maxConcurrentCalls: 30 })
    await saveDispatchSettings(t.db, { maxConcurrentCalls: 300 })
    expect(await readDispatchSettings(t.db)).toEqual({ maxConcurrentCalls: 300 })
    const { n } = await row(sql<{ n: number }>`select count(*)::int as n from dispatch_settings`)
    expect(n).toBe(1)
  })

  it('is written by the service at start-up', async () => {
    stack = await startStack(t, { MAX_CONCURRENT_CALLS: '7' })
    expect(await readDispatchSettings(t.db)).toEqual({ maxConcurrentCalls: 7 })
  })
})

describe('call_overview', () => {
  it('counts calls by status and compares the slots in use with the cap', async () => {
    await saveDispatchSettings(t.db, { maxConcurrentCalls: 5 })
    await callIn('PENDING', { ageSec: 120 })
    await callIn('PENDING', { ageSec: 10 })
    await callIn('IN_PROGRESS', { ageSec: 30 })
    await callIn('IN_PROGRESS', { ageSec: 5 })
    await callIn('COMPLETED')
    await callIn('FAILED')
    await callIn('EXPIRED')
    await callIn('CANCELED')
    await callIn('CANCELED')
    const o = await row(sql<Record<string, unknown>>`select * from call_overview`)
    expect(o).toMatchObject({
      pending: 2,
      due_now: 2,
      in_progress: 2,
      max_concurrent_calls: 5,
      free_slots: 3,
      completed: 1,
      failed: 1,
      expired: 1,
      canceled: 2,
      total: 9,
    })
    const ages = await row(sql<{ oldest: number; longest: number; due: number }>`
      select extract(epoch from oldest_pending_age)::int as oldest, extract(epoch from longest_in_progress)::int as longest,
             extract(epoch from oldest_due_wait)::int as due
        from call_overview`)
    expect(ages.oldest).toBeGreaterThanOrEqual(120)
    expect(ages.oldest).toBeLessThan(130)
    expect(ages.longest).toBeGreaterThanOrEqual(30)
    expect(ages.longest).toBeLessThan(40)
    expect(ages.due).toBeGreaterThanOrEqual(120) // next_attempt_at defaults to creation
  })

  it('has a count column for every status of call-state.ts', async () => {
    const o = await row(sql<Record<string, unknown>>`select * from call_overview`)
    for (const s of STATUSES) expect(o).toHaveProperty([s.toLowerCase()])
  })

  it('answers one row with zeros and nulls on an empty table and no recorded cap', async () => {
    const o = await row(sql<Record<string, unknown>>`select * from call_overview`)
    expect(o).toMatchObject({ pending: 0, in_progress: 0, total: 0, max_concurrent_calls: null, free_slots: null })
    expect(o.oldest_pending_age).toBeNull()
  })
})

describe('calls_in_progress', () => {
  it('lists the calls holding a slot, oldest first, with the phone masked to its last 4 digits', async () => {
    const older = await callIn('IN_PROGRESS', { to: '+966501234567', ageSec: 90, attempts: 2 })
    const newer = await callIn('IN_PROGRESS', { to: '+14155550123', ageSec: 3 })
    await callIn('PENDING')
    await callIn('COMPLETED')
    await sql`update calls set provider_call_id = 'prov-1' where id = ${older}::uuid`.execute(t.db)
    const { rows } = await sql<Record<string, unknown>>`
      select call_id, phone, attempt, extract(epoch from age)::int as age_sec, provider_call_id, started_at
        from calls_in_progress`.execute(t.db)
    expect(rows.map((r) => r.call_id)).toEqual([older, newer])
    expect(rows[0]).toMatchObject({ phone: '+********4567', attempt: 2, provider_call_id: 'prov-1' })
    expect(rows[1]).toMatchObject({ phone: '+*******0123', attempt: 1, provider_call_id: null })
    expect(rows[0]!.age_sec).toBeGreaterThanOrEqual(90)
    expect(rows[0]!.started_at).toBeInstanceOf(Date)
  })

  it('masks phones exactly as the logs do (mask_phone = maskPhone)', async () => {
    for (const p of ['+966501234567', '+14155550123', '+4930123456', '+1234', '+12']) {
      const { masked } = await row(sql<{ masked: string }>`select mask_phone(${p}) as masked`)
      expect(masked).toBe(maskPhone(p))
    }
  })
})

describe('call_timeline', () => {
  it("returns one call's events in order, with the call's status now", async () => {
    const id = await callIn('PENDING')
    await callIn('PENDING') // another call's events stay out
    await sql`
      insert into call_events (call_id, attempt, kind, status, detail) values
        (${id}::uuid, 1, 'CLAIMED', 'IN_PROGRESS', '{}'),
        (${id}::uuid, 1, 'DIAL_ACCEPTED', null, '{"providerCallId": "p1"}'),
        (${id}::uuid, 1, 'WEBHOOK', 'COMPLETED', '{"outcome": "applied", "next": "COMPLETED"}'),
        (${id}::uuid, 1, 'WEBHOOK', 'COMPLETED', '{"outcome": "duplicate", "next": "COMPLETED"}')
    `.execute(t.db)
    const { rows } = await sql<Record<string, unknown>>`
      select * from call_timeline where call_id = ${id}::uuid`.execute(t.db)
    expect(rows.map((r) => [r.kind, r.status, r.outcome])).toEqual([
      ['CREATED', 'PENDING', null],
      ['CLAIMED', 'IN_PROGRESS', null],
      ['DIAL_ACCEPTED', null, null],
      ['WEBHOOK', 'COMPLETED', 'applied'],
      ['WEBHOOK', 'COMPLETED', 'duplicate'],
    ])
    expect(rows.every((r) => r.call_status === 'PENDING' && /^\+\*+\d{4}$/.test(r.phone as string))).toBe(true)
  })

  it('reads a call through the call_events_by_call index', async () => {
    const id = await callIn('PENDING')
    const { rows } = await sql<{ 'QUERY PLAN': string }>`
      explain select * from call_timeline where call_id = ${id}::uuid`.execute(t.db)
    expect(rows.map((r) => r['QUERY PLAN']).join('\n')).toMatch(/call_events_by_call/)
  })
})

describe('retry_call(id)', () => {
  it.each(['FAILED', 'EXPIRED', 'CANCELED'] as const)(
    'puts a %s call back to PENDING, due now, keeping its attempt count, and records who asked',
    async (status) => {
      const id = await callIn(status, { attempts: 3 })
      const { retried } = await row(sql<{ retried: boolean }>`select retry_call(${id}::uuid) as retried`)
      expect(retried).toBe(true)
      const c = await callRow(id)
      expect(c).toMatchObject({ status: 'PENDING', attempts: 3, ended_at: null })
      expect(c.next_attempt_at.getTime()).toBeLessThanOrEqual(Date.now() + 1000)
      const event = await t.db
        .selectFrom('call_events')
        .selectAll()
        .where('call_id', '=', id)
        .where('kind', '=', 'RETRY_REQUESTED')
        .executeTakeFirstOrThrow()
      expect(event).toMatchObject({ attempt: 3, status: 'PENDING', detail: { from: status, by: 'postgres' } })
    },
  )

  it('moves an expiry that has passed to 24 hours from now, and keeps one in the future', async () => {
    const past = await callIn('EXPIRED', { expiresInSec: -60 })
    const future = await callIn('FAILED', { expiresInSec: 7200 })
    const before = (await callRow(future)).expires_at.getTime()
    await sql`select retry_call(${past}::uuid), retry_call(${future}::uuid)`.execute(t.db)
    const ttl = (await callRow(past)).expires_at.getTime() - Date.now()
    expect(ttl).toBeGreaterThan(24 * 3600_000 - 60_000)
    expect(ttl).toBeLessThan(24 * 3600_000 + 60_000)
    expect((await callRow(future)).expires_at.getTime()).toBe(before)
  })

  it.each(['PENDING', 'IN_PROGRESS', 'COMPLETED'] as const)(
    'refuses a %s call, changing nothing and writing no event',
    async (status) => {
      const id = await callIn(status)
      const before = await callRow(id)
      const { retried } = await row(sql<{ retried: boolean }>`select retry_call(${id}::uuid) as retried`)
      expect(retried).toBe(false)
      expect(await callRow(id)).toEqual(before)
      expect(await kinds(id)).toEqual(['CREATED'])
    },
  )

  it('answers false for an unknown id', async () => {
    const { retried } = await row(
      sql<{ retried: boolean }>`select retry_call('7b0c2f7e-0000-4000-8000-000000000000') as retried`,
    )
    expect(retried).toBe(false)
  })

  it('gets a call dialed again as a new attempt, which the provider does not take for a duplicate', async () => {
    stack = await startStack(t, { MAX_RETRY_ATTEMPTS: '1' }, { callDurationMs: 10, outcomes: { BUSY: 1 } })
    const [id] = await stack.createCalls(1, () => phone())
    await stack.waitAllFinal()
    expect(await callRow(id!)).toMatchObject({ status: 'FAILED', attempts: 1 })

    stack.sim.configure({ outcomes: { COMPLETED: 1 } })
    await sql`select retry_call(${id!}::uuid)`.execute(t.db)
    await stack.waitAllFinal()
    expect(await callRow(id!)).toMatchObject({ status: 'COMPLETED', attempts: 2, last_error: null })
    expect(stack.sim.stats().dials.map((d) => [d.idempotencyKey, d.status])).toEqual([
      [`${id}:1`, 202],
      [`${id}:2`, 202],
    ])
    expect(stack.sim.stats().duplicates).toBe(0)
    expect(await kinds(id!)).toEqual([
      'CREATED',
      'CLAIMED',
      'DIAL_ACCEPTED',
      'WEBHOOK',
      'RETRY_REQUESTED',
      'CLAIMED',
      'DIAL_ACCEPTED',
      'WEBHOOK',
    ])
  })
})

describe('cancel_pending_calls()', () => {
  it('cancels every PENDING call with an event each, and nothing else', async () => {
    const pending = [await callIn('PENDING'), await callIn('PENDING'), await callIn('PENDING', { attempts: 1 })]
    const live = await callIn('IN_PROGRESS')
    const done = await callIn('COMPLETED')
    const { n } = await row(sql<{ n: number }>`select cancel_pending_calls() as n`)
    expect(n).toBe(3)
    for (const id of pending) {
      const c = await callRow(id)
      expect(c.status).toBe('CANCELED')
      expect(c.ended_at).not.toBeNull()
      expect(await kinds(id)).toEqual(['CREATED', 'CANCELED'])
    }
    expect((await callRow(live)).status).toBe('IN_PROGRESS')
    expect((await callRow(done)).status).toBe('COMPLETED')
    expect((await row(sql<{ n: number }>`select cancel_pending_calls() as n`)).n).toBe(0)
  })

  it('leaves a call that a claim holds to the claim', async () => {
    const id = await callIn('PENDING')
    const claim = t.db.transaction().execute(async (trx) => {
      await sql`select id from calls where id = ${id}::uuid for update`.execute(trx)
      const cancel = sql<{ n: number }>`select cancel_pending_calls() as n`.execute(t.db)
      await new Promise((r) => setTimeout(r, 150)) // the cancel now waits for our row lock
      await sql`update calls set status = 'IN_PROGRESS', attempts = 1, started_at = now() where id = ${id}::uuid`.execute(
        trx,
      )
      return { cancel }
    })
    const { rows } = await (await claim).cancel
    expect(rows[0]?.n).toBe(0)
    expect((await callRow(id)).status).toBe('IN_PROGRESS')
  })
})

describe('documentation in the database', () => {
  it('has a COMMENT ON every view, the settings table and both functions', async () => {
    const { rows } = await sql<{ name: string; comment: string | null }>`
      select c.relname as name, obj_description(c.oid, 'pg_class') as comment
        from pg_class c
       where c.relname in ('call_overview', 'calls_in_progress', 'call_timeline', 'dispatch_settings')
      union all
      select p.proname, obj_description(p.oid, 'pg_proc')
        from pg_proc p where p.proname in ('retry_call', 'cancel_pending_calls', 'mask_phone')`.execute(t.db)
    expect(rows.map((r) => r.name).sort()).toEqual([
      'call_overview',
      'call_timeline',
      'calls_in_progress',
      'cancel_pending_calls',
      'dispatch_settings',
      'mask_phone',
      'retry_call',
    ])
    for (const r of rows) expect(r.comment?.length ?? 0, r.name).toBeGreaterThan(30)
  })
})
