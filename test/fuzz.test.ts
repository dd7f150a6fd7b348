import fc from 'fast-check'
import type { FastifyInstance } from 'fastify'
import { sql } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { apiOnly } from './helpers.ts'
import { useTestDb } from './kit.ts'

// Arbitrary and near-valid input to every route that takes a body or a query: never a 5xx, always the error
// envelope on a 4xx, and a refused request writes nothing.

const t = useTestDb()
let app: FastifyInstance
let pendingId: string

beforeAll(async () => {
  app = await apiOnly(t)
  const res = await app.inject({
    method: 'POST',
    url: '/api/v1/calls',
    payload: { to: '+966501234567', scriptId: 'fuzz' },
  })
  pendingId = res.json().data.id
})
afterAll(async () => {
  await app.close()
})

const counts = async () => {
  const { rows } = await sql<{ calls: number; events: number }>`
    select (select count(*)::int from calls) as calls, (select count(*)::int from call_events) as events`.execute(t.db)
  return rows[0]
}

const nearCall = fc.record(
  {
    to: fc.oneof(
      fc.string(),
      fc.constantFrom('+966501234567', '+1 415 555 2671', '+', '+0000', '٠٥٠١٢٣٤٥٦٧'),
      fc.integer(),
    ),
    scriptId: fc.oneof(fc.string(), fc.stringMatching(/^[A-Za-z0-9_.-]{0,120}$/), fc.constant(null)),
    metadata: fc.oneof(fc.object(), fc.jsonValue(), fc.constant(undefined)),
    expiresAt: fc.oneof(
      fc.date({ noInvalidDate: true }).map((d) => d.toISOString()),
      fc.string(),
      fc.constant(undefined),
    ),
    extra: fc.option(fc.string()),
  },
  { requiredKeys: [] },
)
const anyBody = fc.oneof(fc.jsonValue(), nearCall, fc.string())

function expectClientError(res: { statusCode: number; body: string }) {
  expect(res.statusCode).toBeLessThan(500)
  if (res.statusCode >= 400) {
    const body = JSON.parse(res.body)
    expect(body.success).toBe(false)
    expect(typeof body.error.code).toBe('string')
  }
}

describe('fuzzed input', () => {
  it('POST /api/v1/calls never answers 5xx and writes only what it accepts', async () => {
    await fc.assert(
      fc.asyncProperty(anyBody, async (payload) => {
        const before = await counts()
        const res = await app.inject({
          method: 'POST',
          url: '/api/v1/calls',
          headers: { 'content-type': 'application/json' },
          payload: typeof payload === 'string' ? payload : JSON.stringify(payload),
        })
        expectClientError(res)
        const after = await counts()
        if (res.statusCode !== 201) expect(after).toEqual(before)
      }),
      { numRuns: 200 },
    )
  })

  it('POST /api/v1/calls/batch is all or nothing', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(fc.record({ calls: fc.array(nearCall, { maxLength: 5 }) }), fc.jsonValue()),
        async (payload) => {
          const before = await counts()
          const res = await app.inject({
            method: 'POST',
            url: '/api/v1/calls/batch',
            payload: JSON.stringify(payload),
            headers: { 'content-type': 'application/json' },
          })
          expectClientError(res)
          if (res.statusCode !== 201) expect(await counts()).toEqual(before)
        },
      ),
      { numRuns: 150 },
    )
  })

  it('PATCH /api/v1/calls/:id never answers 5xx and changes nothing it refuses', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(anyBody, fc.record({ to: fc.string() }), fc.record({ metadata: fc.jsonValue() })),
        async (payload) => {
          const before = await t.db.selectFrom('calls').selectAll().where('id', '=', pendingId).executeTakeFirst()
          const res = await app.inject({
            method: 'PATCH',
            url: `/api/v1/calls/${pendingId}`,
            headers: { 'content-type': 'application/json' },
            payload: typeof payload === 'string' ? payload : JSON.stringify(payload),
          })
          expectClientError(res)
          const after = await t.db.selectFrom('calls').selectAll().where('id', '=', pendingId).executeTakeFirst()
          if (res.statusCode !== 200) expect(after).toEqual(before)
        },
      ),
      { numRuns: 150 },
    )
  })

  it('GET /api/v1/calls never answers 5xx whatever the query', async () => {
    await fc.assert(
      fc.asyncProperty(fc.dictionary(fc.constantFrom('status', 'page', 'limit', 'x'), fc.string()), async (query) => {
        const qs = new URLSearchParams(query).toString()
        expectClientError(await app.inject({ method: 'GET', url: `/api/v1/calls?${qs}` }))
      }),
      { numRuns: 150 },
    )
  })

  it('the webhook never answers 5xx and changes no call it refuses', async () => {
    const status = fc.constantFrom('COMPLETED', 'FAILED', 'BUSY', 'NO_ANSWER', 'RINGING', 'IN_PROGRESS', 'EXPLODED')
    const hook = fc.record(
      {
        callId: fc.oneof(fc.string(), fc.integer()),
        status,
        durationSec: fc.oneof(fc.integer(), fc.string()),
        error: fc.string(),
      },
      { requiredKeys: [] },
    )
    const query = fc.record(
      { call: fc.oneof(fc.uuid(), fc.string(), fc.constant(pendingId)), attempt: fc.oneof(fc.integer(), fc.string()) },
      { requiredKeys: [] },
    )
    await fc.assert(
      fc.asyncProperty(fc.oneof(hook, fc.jsonValue()), query, async (payload, q) => {
        const before = await t.db.selectFrom('calls').selectAll().where('id', '=', pendingId).executeTakeFirst()
        const qs = new URLSearchParams(Object.entries(q).map(([k, v]): [string, string] => [k, String(v)])).toString()
        const res = await app.inject({
          method: 'POST',
          url: `/api/v1/callbacks/call-status?${qs}`,
          headers: { 'content-type': 'application/json' },
          payload: JSON.stringify(payload),
        })
        expectClientError(res)
        // the only call is PENDING: no webhook may change it
        expect(await t.db.selectFrom('calls').selectAll().where('id', '=', pendingId).executeTakeFirst()).toEqual(
          before,
        )
      }),
      { numRuns: 200 },
    )
  })
})
