import type { FastifyInstance } from 'fastify'
import { sql } from 'kysely'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createDb, createPool } from '../src/db/database.ts'
import { freePort } from '../src/db/embedded.ts'
import { createMetrics, DIAL_RESULTS, dialResultLabel } from '../src/ops/metrics.ts'
import { createProvider } from '../src/providers/generic.ts'
import { sign, webhookUrlToken } from '../src/providers/signature.ts'
import { type DialFault, startSimulator } from '../src/providers/simulator.ts'
import { saveDispatchSettings } from '../src/sql/settings.ts'
import { apiOnly, phone, waitFor } from './helpers.ts'
import { useTestDb } from './kit.ts'
import { type Family, parsePrometheusText, sampleValue } from './prometheus-text.ts'
import { resetTables, type Stack, startStack } from './stack.ts'

const t = useTestDb()
let app: FastifyInstance | undefined
let stack: Stack | undefined

beforeEach(async () => {
  await resetTables(t)
  await sql`delete from dispatch_settings`.execute(t.db)
})
afterEach(async () => {
  await app?.close()
  app = undefined
  await stack?.stop()
  stack = undefined
})

async function scrape(target: FastifyInstance): Promise<Map<string, Family>> {
  const res = await target.inject({ method: 'GET', url: '/metrics' })
  expect(res.statusCode).toBe(200)
  expect(res.headers['content-type']).toBe('text/plain; version=0.0.4; charset=utf-8')
  return parsePrometheusText(res.body)
}

async function countsByStatus(): Promise<Record<string, number>> {
  const { rows } = await sql<{ status: string; n: number }>`
    select status, count(*)::int as n from calls group by status`.execute(t.db)
  return Object.fromEntries(rows.map((r) => [r.status, r.n]))
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe('GET /metrics', () => {
  it('parses as Prometheus text, with Node default metrics and every orchestrator family', async () => {
    app = await apiOnly(t)
    const families = await scrape(app)
    for (const name of [
      'process_cpu_user_seconds_total',
      'nodejs_eventloop_lag_seconds',
      'nodejs_heap_size_used_bytes',
    ])
      expect(families.has(name), name).toBe(true)
    expect(
      Object.fromEntries(
        [...families.values()].filter((f) => f.name.startsWith('orchestrator_')).map((f) => [f.name, f.type]),
      ),
    ).toEqual({
      orchestrator_calls: 'gauge',
      orchestrator_calls_in_progress: 'gauge',
      orchestrator_max_concurrent_calls: 'gauge',
      orchestrator_calls_pending: 'gauge',
      orchestrator_calls_due: 'gauge',
      orchestrator_oldest_pending_age_seconds: 'gauge',
      orchestrator_longest_in_progress_seconds: 'gauge',
      orchestrator_campaign_calls_in_progress: 'gauge',
      orchestrator_campaign_calls_pending: 'gauge',
      orchestrator_database_up: 'gauge',
      orchestrator_dials_total: 'counter',
      orchestrator_dial_duration_seconds: 'histogram',
      orchestrator_webhooks_total: 'counter',
      orchestrator_retries_scheduled_total: 'counter',
      orchestrator_calls_expired_total: 'counter',
      orchestrator_calls_timed_out_total: 'counter',
      orchestrator_webhook_lag_seconds: 'histogram',
      orchestrator_client_webhook_deliveries_total: 'counter',
      orchestrator_client_webhook_delivery_lag_seconds: 'histogram',
      orchestrator_client_webhook_undelivered: 'gauge',
      orchestrator_client_webhook_oldest_undelivered_seconds: 'gauge',
    })
    // every dial result is present from the start, so rate() has a series before the first event
    for (const result of DIAL_RESULTS) expect(sampleValue(families, 'orchestrator_dials_total', { result })).toBe(0)
  })

  it('reports the database as it is: calls by status, slots against the cap, the backlog', async () => {
    app = await apiOnly(t, { MAX_CONCURRENT_CALLS: '30' })
    await saveDispatchSettings(t.db, { maxConcurrentCalls: 12 })
    for (let i = 0; i < 9; i++) {
      await app.inject({ method: 'POST', url: '/api/v1/calls', payload: { to: phone(), scriptId: 's' } })
    }
    await sql`
      update calls set status = 'IN_PROGRESS', attempts = 1, started_at = now() - interval '42 seconds'
       where id in (select id from calls order by id limit 3)`.execute(t.db)
    await sql`
      update calls set status = 'COMPLETED', attempts = 1, ended_at = now()
       where id in (select id from calls where status = 'PENDING' order by id limit 2)`.execute(t.db)
    await sql`update calls set created_at = now() - interval '90 seconds' where status = 'PENDING'`.execute(t.db)
    await sql`
      update calls set next_attempt_at = now() + interval '1 hour'
       where id in (select id from calls where status = 'PENDING' order by id limit 1)`.execute(t.db)

    const families = await scrape(app)
    const db = await countsByStatus()
    for (const status of ['PENDING', 'IN_PROGRESS', 'COMPLETED', 'FAILED', 'EXPIRED', 'CANCELED']) {
      expect(sampleValue(families, 'orchestrator_calls', { status }), status).toBe(db[status] ?? 0)
    }
    expect(sampleValue(families, 'orchestrator_calls_in_progress')).toBe(3)
    expect(sampleValue(families, 'orchestrator_max_concurrent_calls')).toBe(12) // dispatch_settings, not this app's 30
    expect(sampleValue(families, 'orchestrator_calls_pending')).toBe(4)
    expect(sampleValue(families, 'orchestrator_calls_due')).toBe(3)
    expect(sampleValue(families, 'orchestrator_oldest_pending_age_seconds')).toBeGreaterThanOrEqual(90)
    expect(sampleValue(families, 'orchestrator_oldest_pending_age_seconds')).toBeLessThan(100)
    expect(sampleValue(families, 'orchestrator_longest_in_progress_seconds')).toBeGreaterThanOrEqual(42)
    expect(sampleValue(families, 'orchestrator_database_up')).toBe(1)
  })

  it("reports this instance's MAX_CONCURRENT_CALLS until a dispatcher has recorded the cap", async () => {
    app = await apiOnly(t, { MAX_CONCURRENT_CALLS: '30' })
    expect(sampleValue(await scrape(app), 'orchestrator_max_concurrent_calls')).toBe(30)
  })

  it('reads the database at most once a second, however often it is scraped', async () => {
    app = await apiOnly(t)
    const pending = async () => sampleValue(await scrape(app!), 'orchestrator_calls', { status: 'PENDING' })
    const create = () => app!.inject({ method: 'POST', url: '/api/v1/calls', payload: { to: phone(), scriptId: 's' } })
    await create()
    expect(await pending()).toBe(1)
    await create()
    expect(await pending()).toBe(1) // the cached read
    await sleep(1100)
    expect(await pending()).toBe(2)
  })

  it('still answers, with orchestrator_database_up 0, when the database is unreachable', async () => {
    const db = createDb(createPool(`postgres://postgres:postgres@127.0.0.1:${await freePort()}/none`, 1))
    try {
      const metrics = createMetrics({ db, maxConcurrentCalls: 5 })
      const families = parsePrometheusText(await metrics.render())
      expect(sampleValue(families, 'orchestrator_database_up')).toBe(0)
      expect(families.has('process_cpu_user_seconds_total')).toBe(true)
    } finally {
      await db.destroy()
    }
  })
})

describe('counters of what this instance did', () => {
  it('counts dials, applied webhooks and the dial -> webhook lag of completed calls', async () => {
    stack = await startStack(t, {}, { callDurationMs: 200 })
    await stack.createCalls(6, () => phone())
    await stack.waitAllFinal()
    const families = await scrape(stack.svc.app)
    expect(sampleValue(families, 'orchestrator_dials_total', { result: 'accepted' })).toBe(6)
    expect(sampleValue(families, 'orchestrator_dial_duration_seconds_count', { result: 'accepted' })).toBe(6)
    expect(sampleValue(families, 'orchestrator_webhooks_total', { status: 'COMPLETED', outcome: 'applied' })).toBe(6)
    expect(sampleValue(families, 'orchestrator_webhook_lag_seconds_count')).toBe(6)
    const lagSum = sampleValue(families, 'orchestrator_webhook_lag_seconds_sum') as number
    expect(lagSum / 6).toBeGreaterThanOrEqual(0.19) // each call lasted 200 ms
    expect(lagSum / 6).toBeLessThan(2)
    expect(sampleValue(families, 'orchestrator_calls', { status: 'COMPLETED' })).toBe(6)
  })

  it('counts the retries a failed attempt schedules, by error code', async () => {
    stack = await startStack(t, { MAX_RETRY_ATTEMPTS: '2' }, { callDurationMs: 0, outcomes: { BUSY: 1 } })
    await stack.createCalls(3, () => phone())
    await stack.waitAllFinal()
    await sleep(1100) // past the cached database read taken while calls were running
    const families = await scrape(stack.svc.app)
    expect(sampleValue(families, 'orchestrator_retries_scheduled_total', { reason: 'BUSY' })).toBe(3)
    expect(sampleValue(families, 'orchestrator_webhooks_total', { status: 'BUSY', outcome: 'applied' })).toBe(6)
    expect(sampleValue(families, 'orchestrator_calls', { status: 'FAILED' })).toBe((await countsByStatus()).FAILED)
    expect((await countsByStatus()).FAILED).toBe(3)
  })

  it('counts webhooks by outcome: duplicate, progress, unknown call and bad signature', async () => {
    const secret = 'whsec-test'
    stack = await startStack(t, { WEBHOOK_SECRET: secret }, { callDurationMs: 0, webhookSecret: secret })
    const [id] = await stack.createCalls(1, () => phone())
    await stack.waitAllFinal()
    const call = await t.db.selectFrom('calls').selectAll().where('id', '=', id!).executeTakeFirstOrThrow()
    const post = async (url: string, body: object, signed = true) => {
      const payload = JSON.stringify(body)
      const headers: Record<string, string> = { 'content-type': 'application/json' }
      if (signed) headers['x-signature'] = sign(secret, payload)
      return (await stack!.svc.app.inject({ method: 'POST', url, payload, headers })).statusCode
    }
    const hook = `/api/v1/callbacks/call-status?call=${id}&attempt=1&token=${webhookUrlToken(secret, id as string, 1)}`
    expect(await post(hook, { callId: call.provider_call_id, status: 'COMPLETED' })).toBe(200)
    expect(await post(hook, { callId: call.provider_call_id, status: 'RINGING' })).toBe(200)
    expect(await post('/api/v1/callbacks/call-status', { callId: 'nobody', status: 'FAILED' })).toBe(404)
    expect(await post(hook, { callId: call.provider_call_id, status: 'COMPLETED' }, false)).toBe(401)

    const families = await scrape(stack.svc.app)
    const webhooks = (labels: Record<string, string>) => sampleValue(families, 'orchestrator_webhooks_total', labels)
    expect(webhooks({ status: 'COMPLETED', outcome: 'applied' })).toBe(1)
    expect(webhooks({ status: 'COMPLETED', outcome: 'duplicate' })).toBe(1)
    expect(webhooks({ status: 'RINGING', outcome: 'progress' })).toBe(1)
    expect(webhooks({ status: 'FAILED', outcome: 'unknown' })).toBe(1)
    expect(webhooks({ status: 'unverified', outcome: 'bad_signature' })).toBe(1)
  })

  it('counts the calls the sweeps time out and expire', async () => {
    stack = await startStack(
      t,
      { CALL_TIMEOUT_MS: '1000', PROVIDER_TIMEOUT_MS: '500' },
      { callDurationMs: 0, outcomes: { NO_WEBHOOK: 1 } },
    )
    await stack.createCalls(2, () => phone())
    // A call that expired before it could be dialed (set up by hand: the API refuses a past expiresAt).
    await sql`
      insert into calls (to_phone, script_id, expires_at, next_attempt_at)
      values (${phone()}, 's', now() - interval '1 second', now() + interval '1 hour')`.execute(t.db)
    await stack.waitAllFinal()
    const families = await scrape(stack.svc.app)
    expect(sampleValue(families, 'orchestrator_calls_timed_out_total')).toBe(2)
    expect(sampleValue(families, 'orchestrator_calls_expired_total')).toBe(1)
  })
})

describe('dial results, as the provider client reports them', () => {
  it.each<[string, DialFault | 'closed', string]>([
    ['a 202 with a call id', { kind: 'none' }, 'accepted'],
    ['a 503', { kind: 'error', status: 503 }, 'failed_5xx'],
    ['a 429', { kind: 'throttle', retryAfterSec: 1 }, 'throttled_429'],
    ['a 400', { kind: 'reject', status: 400 }, 'rejected_4xx'],
    ['a 401', { kind: 'reject', status: 401 }, 'unauthorized'],
    ['no answer within the timeout', { kind: 'hang' }, 'timeout'],
    ['a refused connection', 'closed', 'error'],
  ])('labels %s as %s', async (_what, fault, label) => {
    const sim = await startSimulator({ callDurationMs: 60_000 })
    const baseUrl = fault === 'closed' ? `http://127.0.0.1:${await freePort()}` : sim.url
    if (fault !== 'closed') sim.configure({ fault })
    const provider = createProvider({ baseUrl, apiKey: undefined, timeoutMs: 300 })
    try {
      const result = await provider.dial({
        callId: '7b0c2f7e-0000-4000-8000-000000000000',
        attempt: 1,
        to: phone(),
        scriptId: 's',
        metadata: {},
        webhookUrl: 'http://127.0.0.1:9/none',
      })
      expect(dialResultLabel(result)).toBe(label)
    } finally {
      await provider.close()
      await sim.close()
    }
  })

  it('counts every dial the dispatcher makes under its result', async () => {
    stack = await startStack(t, { MAX_RETRY_ATTEMPTS: '1' }, { callDurationMs: 0 })
    stack.sim.configure({ fault: { kind: 'error', status: 500 } })
    await stack.createCalls(2, () => phone())
    await stack.waitAllFinal()
    stack.sim.configure({ fault: { kind: 'reject', status: 422 } })
    await stack.createCalls(1, () => phone())
    await stack.waitAllFinal()
    const families = await scrape(stack.svc.app)
    expect(sampleValue(families, 'orchestrator_dials_total', { result: 'failed_5xx' })).toBe(2)
    expect(sampleValue(families, 'orchestrator_dials_total', { result: 'rejected_4xx' })).toBe(1)
    expect(sampleValue(families, 'orchestrator_dials_total', { result: 'accepted' })).toBe(0)
    await waitFor('the cached read to expire', async () => {
      const f = await scrape(stack!.svc.app)
      return sampleValue(f, 'orchestrator_calls', { status: 'FAILED' }) === 3
    })
  })
})
