import type { FastifyInstance } from 'fastify'
import { sql } from 'kysely'
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { apiOnly, phone } from './helpers.ts'
import { useTestDb } from './kit.ts'

const t = useTestDb()
let app: FastifyInstance

beforeAll(async () => {
  app = await apiOnly(t)
})
afterAll(async () => {
  await app.close()
})
beforeEach(async () => {
  await sql`truncate calls cascade`.execute(t.db)
})

const create = (payload: unknown, headers: Record<string, string> = {}) =>
  app.inject({ method: 'POST', url: '/api/v1/calls', payload: payload as object, headers })
const rowCount = async () =>
  Number((await sql<{ n: string }>`select count(*) as n from calls`.execute(t.db)).rows[0]?.n)

describe('POST /api/v1/calls', () => {
  it('creates a PENDING call with the number in E.164 and records its history', async () => {
    const res = await create({ to: '+966 50 123 4567', scriptId: 'welcome.v2', metadata: { name: 'Sara' } })
    expect(res.statusCode).toBe(201)
    const { success, data } = res.json()
    expect(success).toBe(true)
    expect(data).toMatchObject({
      payload: { to: '+966501234567', scriptId: 'welcome.v2', metadata: { name: 'Sara' } },
      status: 'PENDING',
      attempts: 0,
      lastError: null,
      startedAt: null,
      endedAt: null,
    })
    const row = await t.db.selectFrom('calls').selectAll().where('id', '=', data.id).executeTakeFirstOrThrow()
    expect(row.to_phone).toBe('+966501234567')
    // default expiry: 24 h after creation
    const ttl = new Date(data.expiresAt).getTime() - new Date(data.createdAt).getTime()
    expect(ttl).toBeGreaterThan(24 * 3600_000 - 5000)
    expect(ttl).toBeLessThan(24 * 3600_000 + 5000)
    const events = await t.db.selectFrom('call_events').selectAll().where('call_id', '=', data.id).execute()
    expect(events.map((e) => e.kind)).toEqual(['CREATED'])
  })

  it('keeps an explicit future expiresAt', async () => {
    const expiresAt = new Date(Date.now() + 3600_000).toISOString()
    const res = await create({ to: phone(), scriptId: 's', expiresAt })
    expect(res.statusCode).toBe(201)
    expect(res.json().data.expiresAt).toBe(expiresAt)
  })

  it.each([
    ['an invalid phone number', { to: '+1 555', scriptId: 's' }, 'INVALID_PHONE'],
    ['a number without a country code', { to: '0501234567', scriptId: 's' }, 'INVALID_PHONE'],
    ['letters as a phone number', { to: 'call me maybe', scriptId: 's' }, 'INVALID_PHONE'],
    ['a scriptId with a space', { to: '+966501234567', scriptId: 'bad id' }, 'VALIDATION_ERROR'],
    ['an empty scriptId', { to: '+966501234567', scriptId: '' }, 'VALIDATION_ERROR'],
    ['a 101-character scriptId', { to: '+966501234567', scriptId: 'a'.repeat(101) }, 'VALIDATION_ERROR'],
    ['a missing scriptId', { to: '+966501234567' }, 'VALIDATION_ERROR'],
    ['a missing phone', { scriptId: 's' }, 'VALIDATION_ERROR'],
    ['metadata that is an array', { to: '+966501234567', scriptId: 's', metadata: [1, 2] }, 'VALIDATION_ERROR'],
    ['metadata that is a string', { to: '+966501234567', scriptId: 's', metadata: 'x' }, 'VALIDATION_ERROR'],
    [
      'metadata over 16 KiB',
      { to: '+966501234567', scriptId: 's', metadata: { blob: 'x'.repeat(17 * 1024) } },
      'METADATA_TOO_LARGE',
    ],
    ['an unknown field', { to: '+966501234567', scriptId: 's', priority: 5 }, 'VALIDATION_ERROR'],
    [
      'expiresAt in the past',
      { to: '+966501234567', scriptId: 's', expiresAt: '2020-01-01T00:00:00Z' },
      'INVALID_EXPIRES_AT',
    ],
    ['expiresAt that is not a date', { to: '+966501234567', scriptId: 's', expiresAt: 'tomorrow' }, 'VALIDATION_ERROR'],
    ['a number where a string belongs', { to: 966501234567, scriptId: 's' }, 'VALIDATION_ERROR'],
  ])('refuses %s with 400 and writes nothing', async (_name, payload, code) => {
    const res = await create(payload)
    expect(res.statusCode).toBe(400)
    expect(res.json()).toMatchObject({ success: false, error: { code } })
    expect(await rowCount()).toBe(0)
  })

  it('names the offending field in a validation error', async () => {
    const res = await create({ to: '+966501234567', scriptId: 's', colour: 'red' })
    expect(res.json().error.details).toEqual(expect.arrayContaining([expect.objectContaining({ property: 'colour' })]))
  })

  it('answers malformed JSON with 400 INVALID_JSON', async () => {
    const res = await app.inject({
      method: 'POST',
      url: '/api/v1/calls',
      payload: '{"to": "+966501234567", ',
      headers: { 'content-type': 'application/json' },
    })
    expect(res.statusCode).toBe(400)
    expect(res.json().error.code).toBe('INVALID_JSON')
  })

  it('answers a non-JSON content type with 415', async () => {
    const res = await app.inject({
      method: 'POST',
      url: '/api/v1/calls',
      payload: 'to=+966501234567',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    })
    expect(res.statusCode).toBe(415)
    expect(res.json().error.code).toBe('UNSUPPORTED_MEDIA_TYPE')
  })

  it('answers a body over 64 KiB with 413', async () => {
    const res = await create({ to: '+966501234567', scriptId: 's', metadata: { blob: 'x'.repeat(70 * 1024) } })
    expect(res.statusCode).toBe(413)
    expect(res.json().error.code).toBe('PAYLOAD_TOO_LARGE')
    expect(await rowCount()).toBe(0)
  })

  describe('with an Idempotency-Key', () => {
    const body = { to: '+966501234567', scriptId: 'promo', metadata: { a: 1, b: [1, 2] } }

    it('returns the first call (200) when the same request is retried', async () => {
      const first = await create(body, { 'idempotency-key': 'order-42' })
      const again = await create({ ...body, metadata: { b: [1, 2], a: 1 } }, { 'idempotency-key': 'order-42' })
      expect(first.statusCode).toBe(201)
      expect(again.statusCode).toBe(200)
      expect(again.json().data.id).toBe(first.json().data.id)
      expect(await rowCount()).toBe(1)
    })

    it('refuses the same key with a different body (422)', async () => {
      await create(body, { 'idempotency-key': 'order-43' })
      const other = await create({ ...body, scriptId: 'other' }, { 'idempotency-key': 'order-43' })
      expect(other.statusCode).toBe(422)
      expect(other.json().error.code).toBe('IDEMPOTENCY_KEY_REUSED')
      expect(await rowCount()).toBe(1)
    })

    it('creates exactly one call when ten identical requests race', async () => {
      const results = await Promise.all(Array.from({ length: 10 }, () => create(body, { 'idempotency-key': 'race-1' })))
      expect(results.map((r) => r.statusCode).sort()).toEqual([200, 200, 200, 200, 200, 200, 200, 200, 200, 201])
      expect(new Set(results.map((r) => r.json().data.id)).size).toBe(1)
      expect(await rowCount()).toBe(1)
    })

    it('answers each of many concurrent creates, keyed or not, as if it had come alone', async () => {
      // Creates that arrive together share one statement: none may take another's answer.
      const plain = Array.from({ length: 20 }, (_, i) => create({ to: phone(5000 + i), scriptId: 'mix' }))
      const same = Array.from({ length: 10 }, () => create(body, { 'idempotency-key': 'mix-1' }))
      const bodies = Array.from({ length: 10 }, (_, i) => ({ ...body, scriptId: i % 2 === 0 ? 'even' : 'odd' }))
      const mixed = bodies.map((b) => create(b, { 'idempotency-key': 'mix-2' }))
      const [p, s, m] = await Promise.all([Promise.all(plain), Promise.all(same), Promise.all(mixed)])
      expect(p.map((r) => r.statusCode)).toEqual(Array(20).fill(201))
      expect(new Set(p.map((r) => r.json().data.id)).size).toBe(20)
      expect(p.map((r) => r.json().data.payload.to)).toEqual(plain.map((_, i) => phone(5000 + i)))
      expect(s.map((r) => r.statusCode).sort()).toEqual([200, 200, 200, 200, 200, 200, 200, 200, 200, 201])
      expect(new Set(s.map((r) => r.json().data.id)).size).toBe(1)
      const winner = m.find((r) => r.statusCode === 201)?.json().data
      expect(m.filter((r) => r.statusCode === 201)).toHaveLength(1)
      m.forEach((r, i) => {
        if (r.statusCode === 201) return
        expect(r.statusCode).toBe(bodies[i]?.scriptId === winner.payload.scriptId ? 200 : 422)
      })
      expect(await rowCount()).toBe(22)
    })

    it('treats the same body under two keys as two calls', async () => {
      await create(body, { 'idempotency-key': 'k-a' })
      await create(body, { 'idempotency-key': 'k-b' })
      expect(await rowCount()).toBe(2)
    })
  })
})

describe('POST /api/v1/calls/batch', () => {
  it('queues every call in one request and returns their ids in order', async () => {
    const calls = Array.from({ length: 250 }, (_, i) => ({ to: phone(1000 + i), scriptId: 'batch', metadata: { i } }))
    const res = await app.inject({ method: 'POST', url: '/api/v1/calls/batch', payload: { calls } })
    expect(res.statusCode).toBe(201)
    const { count, ids } = res.json().data
    expect(count).toBe(250)
    expect(ids).toHaveLength(250)
    const rows = await t.db.selectFrom('calls').select(['id', 'metadata']).execute()
    const byId = new Map(rows.map((r) => [r.id, r.metadata]))
    ids.forEach((id: string, i: number) => {
      expect(byId.get(id)).toEqual({ i })
    })
    const events = await sql<{ n: string }>`select count(*) as n from call_events where kind = 'CREATED'`.execute(t.db)
    expect(Number(events.rows[0]?.n)).toBe(250)
  })

  it('refuses the whole batch when one call is invalid, naming it', async () => {
    const calls = [
      { to: phone(), scriptId: 'ok' },
      { to: '+1 555', scriptId: 'ok' },
    ]
    const res = await app.inject({ method: 'POST', url: '/api/v1/calls/batch', payload: { calls } })
    expect(res.statusCode).toBe(400)
    expect(res.json().error.details).toEqual([expect.objectContaining({ index: 1, code: 'INVALID_PHONE' })])
    expect(await rowCount()).toBe(0)
  })

  it('refuses more than 1000 calls and an empty batch', async () => {
    const many = Array.from({ length: 1001 }, () => ({ to: '+966501234567', scriptId: 's' }))
    expect(
      (await app.inject({ method: 'POST', url: '/api/v1/calls/batch', payload: { calls: many } })).statusCode,
    ).toBe(400)
    expect((await app.inject({ method: 'POST', url: '/api/v1/calls/batch', payload: { calls: [] } })).statusCode).toBe(
      400,
    )
    expect(await rowCount()).toBe(0)
  })
})

describe('GET /api/v1/calls/:id', () => {
  it('returns the call', async () => {
    const id = (await create({ to: phone(), scriptId: 's' })).json().data.id
    const res = await app.inject({ method: 'GET', url: `/api/v1/calls/${id}` })
    expect(res.statusCode).toBe(200)
    expect(res.json().data.id).toBe(id)
  })

  it('answers an unknown id with 404 CALL_NOT_FOUND', async () => {
    const res = await app.inject({ method: 'GET', url: '/api/v1/calls/7b0c2f7e-0000-4000-8000-000000000000' })
    expect(res.statusCode).toBe(404)
    expect(res.json().error.code).toBe('CALL_NOT_FOUND')
  })

  it('answers a malformed id with 400, not 500', async () => {
    const res = await app.inject({ method: 'GET', url: '/api/v1/calls/not-a-uuid' })
    expect(res.statusCode).toBe(400)
    expect(res.json().error.code).toBe('VALIDATION_ERROR')
  })

  it("lists the call's history", async () => {
    const id = (await create({ to: phone(), scriptId: 's' })).json().data.id
    await app.inject({ method: 'POST', url: `/api/v1/calls/${id}/cancel` })
    const res = await app.inject({ method: 'GET', url: `/api/v1/calls/${id}/events` })
    expect(res.json().data.map((e: { kind: string }) => e.kind)).toEqual(['CREATED', 'CANCELED'])
  })
})

describe('PATCH /api/v1/calls/:id', () => {
  it('changes a PENDING call and normalizes the new number', async () => {
    const id = (await create({ to: phone(), scriptId: 's', metadata: { a: 1 } })).json().data.id
    const res = await app.inject({
      method: 'PATCH',
      url: `/api/v1/calls/${id}`,
      payload: { to: '+966 55 000 1111', metadata: { b: 2 } },
    })
    expect(res.statusCode).toBe(200)
    expect(res.json().data.payload).toEqual({ to: '+966550001111', scriptId: 's', metadata: { b: 2 } })
  })

  it.each(['IN_PROGRESS', 'COMPLETED', 'FAILED', 'EXPIRED', 'CANCELED'] as const)(
    'refuses a %s call with 409 CALL_NOT_PENDING and changes nothing',
    async (status) => {
      const id = (await create({ to: phone(), scriptId: 's' })).json().data.id
      await sql`update calls set status = ${status}, started_at = now() where id = ${id}::uuid`.execute(t.db)
      const res = await app.inject({ method: 'PATCH', url: `/api/v1/calls/${id}`, payload: { scriptId: 'changed' } })
      expect(res.statusCode).toBe(409)
      expect(res.json().error).toMatchObject({ code: 'CALL_NOT_PENDING', details: { status } })
      const row = await t.db.selectFrom('calls').select('script_id').where('id', '=', id).executeTakeFirstOrThrow()
      expect(row.script_id).toBe('s')
    },
  )

  it('refuses an empty patch, unknown fields and a bad number with 400', async () => {
    const id = (await create({ to: phone(), scriptId: 's' })).json().data.id
    for (const payload of [{}, { status: 'COMPLETED' }, { to: '12' }]) {
      const res = await app.inject({ method: 'PATCH', url: `/api/v1/calls/${id}`, payload })
      expect(res.statusCode).toBe(400)
    }
  })

  it('answers an unknown call with 404', async () => {
    const res = await app.inject({
      method: 'PATCH',
      url: '/api/v1/calls/7b0c2f7e-0000-4000-8000-000000000000',
      payload: { scriptId: 'x' },
    })
    expect(res.statusCode).toBe(404)
  })

  it('never changes a call that a claim took first (the check and the write are one statement)', async () => {
    // A claim holds the row lock; the PATCH waits for it, then re-checks status = PENDING and finds IN_PROGRESS.
    const id = (await create({ to: phone(), scriptId: 's' })).json().data.id
    const claimed = t.db.transaction().execute(async (trx) => {
      await sql`update calls set status = 'IN_PROGRESS', attempts = 1, started_at = now() where id = ${id}::uuid`.execute(
        trx,
      )
      const patch = app.inject({ method: 'PATCH', url: `/api/v1/calls/${id}`, payload: { scriptId: 'too-late' } })
      await new Promise((r) => setTimeout(r, 150)) // the PATCH is now blocked on our row lock
      return { patch } // not the promise itself: the transaction must commit before the PATCH can finish
    })
    const res = await (await claimed).patch
    expect(res.statusCode).toBe(409)
    const row = await t.db
      .selectFrom('calls')
      .select(['script_id', 'status'])
      .where('id', '=', id)
      .executeTakeFirstOrThrow()
    expect(row).toEqual({ script_id: 's', status: 'IN_PROGRESS' })
  })
})

describe('POST /api/v1/calls/:id/cancel', () => {
  it('cancels a PENDING call', async () => {
    const id = (await create({ to: phone(), scriptId: 's' })).json().data.id
    const res = await app.inject({ method: 'POST', url: `/api/v1/calls/${id}/cancel` })
    expect(res.statusCode).toBe(200)
    expect(res.json().data).toMatchObject({ status: 'CANCELED' })
    expect(res.json().data.endedAt).not.toBeNull()
  })

  it('refuses to cancel a call twice (409)', async () => {
    const id = (await create({ to: phone(), scriptId: 's' })).json().data.id
    await app.inject({ method: 'POST', url: `/api/v1/calls/${id}/cancel` })
    const res = await app.inject({ method: 'POST', url: `/api/v1/calls/${id}/cancel` })
    expect(res.statusCode).toBe(409)
    expect(res.json().error.code).toBe('CALL_NOT_PENDING')
  })
})

describe('GET /api/v1/calls', () => {
  it('pages through calls newest first, filtered by status', async () => {
    const ids: string[] = []
    for (let i = 0; i < 5; i++) ids.push((await create({ to: phone(), scriptId: `s${i}` })).json().data.id)
    await app.inject({ method: 'POST', url: `/api/v1/calls/${ids[1]}/cancel` })

    const page1 = (await app.inject({ method: 'GET', url: '/api/v1/calls?limit=2&page=1' })).json()
    expect(page1.pagination).toEqual({ page: 1, limit: 2, total: 5 })
    expect(page1.data.map((c: { id: string }) => c.id)).toEqual([ids[4], ids[3]])
    const page3 = (await app.inject({ method: 'GET', url: '/api/v1/calls?limit=2&page=3' })).json()
    expect(page3.data.map((c: { id: string }) => c.id)).toEqual([ids[0]])

    const pending = (await app.inject({ method: 'GET', url: '/api/v1/calls?status=PENDING' })).json()
    expect(pending.pagination.total).toBe(4)
    const canceled = (await app.inject({ method: 'GET', url: '/api/v1/calls?status=CANCELED' })).json()
    expect(canceled.data.map((c: { id: string }) => c.id)).toEqual([ids[1]])
  })

  it('defaults to page 1 of 20', async () => {
    const res = (await app.inject({ method: 'GET', url: '/api/v1/calls' })).json()
    expect(res.pagination).toEqual({ page: 1, limit: 20, total: 0 })
  })

  it.each(['limit=0', 'limit=101', 'page=0', 'status=DONE', 'limit=abc', 'sort=asc'])(
    'refuses ?%s with 400',
    async (q) => {
      const res = await app.inject({ method: 'GET', url: `/api/v1/calls?${q}` })
      expect(res.statusCode).toBe(400)
      expect(res.json().error.code).toBe('VALIDATION_ERROR')
    },
  )
})

describe('ops routes', () => {
  it('reports health with the database up', async () => {
    const res = await app.inject({ method: 'GET', url: '/health' })
    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual({ status: 'ok', database: 'up' })
  })

  it('reports metrics by status, the cap and the backlog', async () => {
    const a = (await create({ to: phone(), scriptId: 's' })).json().data.id
    await create({ to: phone(), scriptId: 's' })
    await sql`update calls set status = 'COMPLETED', attempts = 2, ended_at = now() where id = ${a}::uuid`.execute(t.db)
    const { data } = (await app.inject({ method: 'GET', url: '/api/v1/metrics' })).json()
    expect(data.byStatus).toEqual({ PENDING: 1, IN_PROGRESS: 0, COMPLETED: 1, FAILED: 0, EXPIRED: 0, CANCELED: 0 })
    expect(data).toMatchObject({ inProgress: 0, maxConcurrentCalls: 30, pending: 1, dueNow: 1 })
    expect(data.attempts).toEqual({ finished: 1, average: 2, max: 2, retried: 1 })
    expect(data.oldestPendingSec).toBeGreaterThanOrEqual(0)
  })

  it('serves the OpenAPI document with every client route', async () => {
    const res = await app.inject({ method: 'GET', url: '/docs/json' })
    expect(res.statusCode).toBe(200)
    const doc = res.json()
    expect(doc.openapi).toBe('3.1.0')
    for (const p of [
      '/api/v1/calls',
      '/api/v1/calls/batch',
      '/api/v1/calls/{id}',
      '/api/v1/calls/{id}/cancel',
      '/api/v1/callbacks/call-status',
      '/health',
    ]) {
      expect(doc.paths).toHaveProperty([p])
    }
  })

  it('answers an unknown route with the error envelope', async () => {
    const res = await app.inject({ method: 'GET', url: '/api/v1/nope' })
    expect(res.statusCode).toBe(404)
    expect(res.json()).toMatchObject({ success: false, error: { code: 'ROUTE_NOT_FOUND' } })
  })
})
