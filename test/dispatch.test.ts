import { sql } from 'kysely'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { freePort } from '../src/db/embedded.ts'
import { createDispatcher } from '../src/dispatch/dispatcher.ts'
import { createRecorder } from '../src/dispatch/recorder.ts'
import { createWakeup } from '../src/dispatch/wakeup.ts'
import { createCallProvider } from '../src/providers/index.ts'
import { sign, webhookUrlToken } from '../src/providers/signature.ts'
import { startSimulator } from '../src/providers/simulator.ts'
import { insertCalls } from '../src/sql/calls.ts'
import { log, phone, testConfig, waitFor } from './helpers.ts'
import { useTestDb } from './kit.ts'
import { plainCall } from './seed.ts'
import { dialsPerCall, resetTables, type Stack, startStack } from './stack.ts'

const t = useTestDb()
let stack: Stack | undefined

beforeEach(async () => {
  await resetTables(t)
})
afterEach(async () => {
  await stack?.stop()
  stack = undefined
})

const callRow = (id: string) => t.db.selectFrom('calls').selectAll().where('id', '=', id).executeTakeFirstOrThrow()
const eventsOf = (id: string) =>
  t.db.selectFrom('call_events').selectAll().where('call_id', '=', id).orderBy('id').execute()

describe('the global cap and one call per phone', () => {
  it('keeps at most MAX_CONCURRENT_CALLS in progress, reaches it, and completes every call', async () => {
    stack = await startStack(t, { MAX_CONCURRENT_CALLS: '5' }, { callDurationMs: 40 })
    await stack.createCalls(100, (i) => phone(i))
    const calls = await stack.waitAllFinal()
    const s = stack.sim.stats()
    expect(calls.every((c) => c.status === 'COMPLETED' && c.attempts === 1)).toBe(true)
    expect(s.maxActive).toBeLessThanOrEqual(5)
    expect(s.maxActive).toBe(5)
    expect(s.accepted).toBe(100)
    expect(s.duplicates).toBe(0)
  })

  it('never dials two calls to the same phone at once, while other phones keep dialing', async () => {
    stack = await startStack(t, { MAX_CONCURRENT_CALLS: '5' }, { callDurationMs: 60 })
    const same = '+966501110000'
    await stack.createCalls(10, () => same)
    await stack.createCalls(20, (i) => phone(500 + i))
    const calls = await stack.waitAllFinal()
    const s = stack.sim.stats()
    expect(calls.every((c) => c.status === 'COMPLETED')).toBe(true)
    expect(s.phoneOverlaps).toBe(0)
    expect(s.maxActive).toBeGreaterThan(1)
    const sameDials = s.dials.filter((d) => d.to === same).sort((a, b) => a.receivedAt - b.receivedAt)
    expect(sameDials).toHaveLength(10)
    // each dial to the phone came after the previous call's final webhook was sent
    for (let i = 1; i < sameDials.length; i++) {
      expect(sameDials[i]!.receivedAt).toBeGreaterThanOrEqual(sameDials[i - 1]!.finalSentAt as number)
    }
  })

  it("claims the next call in the statement that ends the previous one's attempt", async () => {
    // cap 1: a call can only be claimed once the previous one has ended. Claimed by the webhook's own statement
    // (migration 0082), its CLAIMED row was written by the transaction (xmin) that wrote the previous call's WEBHOOK.
    stack = await startStack(t, { MAX_CONCURRENT_CALLS: '1' }, { callDurationMs: 30 })
    await stack.createCalls(4, (i) => phone(700 + i))
    await stack.waitAllFinal()
    const { rows } = await sql<{ kind: string; xid: string }>`
      select kind, xmin::text as xid from call_events where kind in ('CLAIMED', 'WEBHOOK') order by id`.execute(t.db)
    const ends = new Set(rows.filter((r) => r.kind === 'WEBHOOK').map((r) => r.xid))
    const claims = rows.filter((r) => r.kind === 'CLAIMED').map((r) => r.xid)
    expect(claims).toHaveLength(4)
    expect(claims.slice(1).map((at) => ends.has(at))).toEqual([true, true, true])
  })

  it('claims with its plan pinned and never JIT-compiled (db/migrations/0004)', async () => {
    // Before PostgreSQL 18 the pinned plan's cost crosses jit_above_cost: without jit = off a claim took 171 ms.
    const { rows } = await sql<{ config: string[] }>`
      select proconfig as config from pg_proc where proname = 'claim_due_calls'`.execute(t.db)
    expect(rows[0]?.config).toEqual(
      expect.arrayContaining(['enable_bitmapscan=off', 'enable_sort=off', 'enable_hashjoin=off', 'jit=off']),
    )
  })
})

describe('the dispatch loop', () => {
  it('claims again as soon as a dial finishes when the last pass had no room to dial', async () => {
    // Two dials in flight at most, ten free slots, and a poll interval longer than the test: once the first two dials
    // are out, only the end of one of them can start the next claim (before the fix the rest waited for the poll).
    const sim = await startSimulator({ callDurationMs: 600_000 })
    const config = testConfig({ DATABASE_URL: t.url, AI_CALL_API_URL: sim.url })
    const wakeup = createWakeup(undefined, undefined)
    const recorder = createRecorder({ db: t.db, wakeup, log, patienceMs: 5000 })
    const provider = createCallProvider(config, sim.url)
    const dispatcher = createDispatcher({
      db: t.db,
      provider,
      recorder,
      log,
      policy: config.dispatch,
      maxConcurrentCalls: 10,
      callTimeoutMs: 600_000,
      sweepIntervalMs: 600_000,
      webhookUrl: () => 'http://127.0.0.1:9/unused',
      maxInFlightDials: 2,
      pollMs: 600_000,
    })
    try {
      await insertCalls(
        t.db,
        Array.from({ length: 10 }, (_, i) => plainCall(phone(900 + i))),
        3600_000,
      )
      dispatcher.start()
      // the provider's id is recorded after its 202 is read: wait for the database, not the simulator
      await waitFor('ten calls in progress with their provider ids', async () => {
        const { rows } = await sql<{ n: number }>`
          select count(*)::int as n from calls where status = 'IN_PROGRESS' and provider_call_id is not null
        `.execute(t.db)
        return rows[0]?.n === 10 || undefined
      })
      expect(sim.stats().accepted).toBe(10)
      expect(sim.stats().maxActive).toBe(10)
    } finally {
      await dispatcher.stop()
      recorder.close()
      await provider.close()
      await sim.close()
    }
  })
})

describe('retries', () => {
  it('retries a failed attempt and then completes', async () => {
    stack = await startStack(t, {}, { callDurationMs: 20, outcomes: { FAILED: 1 } })
    const [id] = await stack.createCalls(1, () => phone())
    await waitFor('the first attempt to fail', async () => {
      const c = await callRow(id as string)
      return c.status === 'PENDING' && c.attempts === 1
    })
    stack.sim.configure({ outcomes: { COMPLETED: 1 } })
    await stack.waitAllFinal()
    const c = await callRow(id as string)
    expect(c).toMatchObject({ status: 'COMPLETED', attempts: 2 })
    const hooks = (await eventsOf(id as string)).filter((e) => e.kind === 'WEBHOOK').map((e) => [e.attempt, e.status])
    expect(hooks).toEqual([
      [1, 'FAILED'],
      [2, 'COMPLETED'],
    ])
  })

  it('gives up after MAX_RETRY_ATTEMPTS, waiting at least the backoff between attempts', async () => {
    stack = await startStack(
      t,
      { MAX_RETRY_ATTEMPTS: '3', RETRY_BASE_DELAY_MS: '300', RETRY_MAX_DELAY_MS: '5000' },
      { callDurationMs: 0, outcomes: { BUSY: 1 } },
    )
    const [id] = await stack.createCalls(1, () => phone())
    await stack.waitAllFinal()
    const c = await callRow(id as string)
    expect(c.status).toBe('FAILED')
    expect(c.attempts).toBe(3)
    expect(c.last_error).toMatchObject({ code: 'BUSY' })
    const dials = stack.sim.stats().dials
    expect(dials.map((d) => d.idempotencyKey)).toEqual([`${id}:1`, `${id}:2`, `${id}:3`])
    // nominal delays 300 and 600 ms with equal jitter: never less than half of each
    expect(dials[1]!.receivedAt - (dials[0]!.finalSentAt as number)).toBeGreaterThanOrEqual(150)
    expect(dials[2]!.receivedAt - (dials[1]!.finalSentAt as number)).toBeGreaterThanOrEqual(300)
  })
})

describe('dial answers', () => {
  it('retries a 500 as a failed attempt and completes once the provider recovers', async () => {
    stack = await startStack(t, {}, { callDurationMs: 10 })
    stack.sim.configure({ fault: { kind: 'error', status: 500 } })
    const [id] = await stack.createCalls(1, () => phone())
    await waitFor('a failed attempt', async () => (await eventsOf(id as string)).some((e) => e.kind === 'DIAL_FAILED'))
    stack.sim.configure({ fault: { kind: 'none' } })
    await stack.waitAllFinal()
    const c = await callRow(id as string)
    expect(c).toMatchObject({ status: 'COMPLETED', attempts: 2 })
    expect((await eventsOf(id as string)).map((e) => e.kind)).toContain('DIAL_FAILED')
  })

  it('puts a call back after a 429 without spending an attempt', async () => {
    stack = await startStack(t, { MAX_RETRY_ATTEMPTS: '1' }, { callDurationMs: 10 })
    stack.sim.configure({ fault: { kind: 'throttle', retryAfterSec: 1 } })
    const [id] = await stack.createCalls(1, () => phone())
    await waitFor('a throttled dial', async () =>
      (await eventsOf(id as string)).some((e) => e.kind === 'DIAL_THROTTLED'),
    )
    const c = await callRow(id as string)
    expect(c).toMatchObject({ status: 'PENDING', attempts: 0 })
    // Retry-After: 1 s is honoured
    expect(new Date(c.next_attempt_at).getTime() - Date.now()).toBeGreaterThan(300)
    stack.sim.configure({ fault: { kind: 'none' } })
    await stack.waitAllFinal()
    // with a single attempt allowed, only a 429 that spends nothing lets this call complete
    expect(await callRow(id as string)).toMatchObject({ status: 'COMPLETED', attempts: 1 })
  })

  it("never dials again after a dial the provider answered too late, and settles it from that dial's webhook", async () => {
    stack = await startStack(t, { MAX_CONCURRENT_CALLS: '1', PROVIDER_TIMEOUT_MS: '300' }, { callDurationMs: 10 })
    stack.sim.configure({ fault: { kind: 'slow', delayMs: 600 } })
    const [id] = await stack.createCalls(1, () => phone())
    await stack.waitAllFinal()
    expect(await callRow(id as string)).toMatchObject({ status: 'COMPLETED', attempts: 1, last_outcome: 'COMPLETED' })
    expect(dialsPerCall(stack.sim).get(id as string)).toHaveLength(1)
    const kinds = (await eventsOf(id as string)).map((e) => e.kind)
    expect(kinds).toContain('DIAL_UNKNOWN')
    expect(kinds).not.toContain('DIAL_FAILED')
  })

  it('never dials again after a 2xx without a usable call id, and takes the webhook of that dial', async () => {
    // reproduced before: 3 real calls placed per call, their COMPLETED webhooks ignored, the call ended FAILED
    stack = await startStack(t, {}, { callDurationMs: 10 })
    stack.sim.configure({ fault: { kind: 'no_call_id' } })
    const ids = await stack.createCalls(3, (i) => phone(4200 + i))
    const calls = await stack.waitAllFinal()
    const dials = dialsPerCall(stack.sim)
    for (const id of ids) expect(dials.get(id)).toHaveLength(1)
    expect(calls.map((c) => [c.status, c.attempts])).toEqual(ids.map(() => ['COMPLETED', 1]))
  })

  it('keeps the slot of an unknown dial until CALL_TIMEOUT when no report comes, and does not retry it', async () => {
    stack = await startStack(
      t,
      { MAX_CONCURRENT_CALLS: '1', CALL_TIMEOUT_MS: '1500', PROVIDER_TIMEOUT_MS: '500' },
      { callDurationMs: 10, outcomes: { NO_WEBHOOK: 1 } },
    )
    stack.sim.configure({ fault: { kind: 'no_call_id' } })
    const [silent] = await stack.createCalls(1, () => phone())
    await waitFor('the unknown dial', async () =>
      (await eventsOf(silent as string)).some((e) => e.kind === 'DIAL_UNKNOWN'),
    )
    stack.sim.configure({ fault: { kind: 'none' }, outcomes: { COMPLETED: 1 } })
    const [next] = await stack.createCalls(1, () => phone())
    await new Promise((r) => setTimeout(r, 500))
    // the slot is still held: the next call waits
    expect(await callRow(next as string)).toMatchObject({ status: 'PENDING' })
    await stack.waitAllFinal()
    const timedOut = await callRow(silent as string)
    expect(timedOut).toMatchObject({ status: 'FAILED', attempts: 1, last_error: { code: 'CALL_TIMEOUT' } })
    expect(dialsPerCall(stack.sim).get(silent as string)).toHaveLength(1)
    expect(await callRow(next as string)).toMatchObject({ status: 'COMPLETED' })
  })

  it('waits at least a second after a 429 with Retry-After: 0, longer after each, and spends no attempt', async () => {
    // reproduced before: 230 dials in 2 s for one call
    stack = await startStack(t, { MAX_RETRY_ATTEMPTS: '1' }, { callDurationMs: 10 })
    stack.sim.configure({ fault: { kind: 'throttle', retryAfterSec: 0 } })
    const [id] = await stack.createCalls(1, () => phone())
    await new Promise((r) => setTimeout(r, 3500))
    stack.sim.configure({ fault: { kind: 'none' } })
    const times = stack.sim
      .stats()
      .dials.filter((d) => d.idempotencyKey.startsWith(id as string) && d.status === 429)
      .map((d) => d.receivedAt)
    expect(times.length).toBeGreaterThanOrEqual(2)
    expect(times.length).toBeLessThanOrEqual(4)
    for (let i = 1; i < times.length; i++) expect(times[i]! - times[i - 1]!).toBeGreaterThanOrEqual(950)
    await stack.waitAllFinal()
    expect(await callRow(id as string)).toMatchObject({ status: 'COMPLETED', attempts: 1, throttles: 0 })
  })

  it('treats a 401 as a provider outage: no attempt spent, dialing paused, every call completes once it passes', async () => {
    stack = await startStack(t, { MAX_RETRY_ATTEMPTS: '1' }, { callDurationMs: 10 })
    stack.sim.configure({ fault: { kind: 'reject', status: 401 } })
    const ids = await stack.createCalls(5, (i) => phone(4300 + i))
    await waitFor('the refused dials', async () => {
      const { rows } = await sql<{ n: number }>`
        select count(*)::int as n from call_events where kind = 'DIAL_UNAUTHORIZED'`.execute(t.db)
      return rows[0]?.n === ids.length
    })
    const refused = stack.sim.stats().dials.length
    await new Promise((r) => setTimeout(r, 1000))
    // paused: no dial in the second after the refusals, and no call charged an attempt
    expect(stack.sim.stats().dials.length).toBe(refused)
    const pending = await t.db.selectFrom('calls').select(['status', 'attempts']).execute()
    expect(pending.every((c) => c.status === 'PENDING' && c.attempts === 0)).toBe(true)
    stack.sim.configure({ fault: { kind: 'none' } })
    const calls = await stack.waitAllFinal()
    expect(calls.map((c) => [c.status, c.attempts])).toEqual(ids.map(() => ['COMPLETED', 1]))
  })

  it('fails a call whose provider refuses connections after MAX_RETRY_ATTEMPTS', async () => {
    const closed = await freePort()
    stack = await startStack(t, {
      AI_CALL_API_URL: `http://127.0.0.1:${closed}`,
      RETRY_BASE_DELAY_MS: '50',
      RETRY_MAX_DELAY_MS: '100',
    })
    const [id] = await stack.createCalls(1, () => phone())
    await stack.waitAllFinal()
    const c = await callRow(id as string)
    expect(c).toMatchObject({ status: 'FAILED', attempts: 3 })
    expect(c.last_error).toMatchObject({ code: 'DIAL_ERROR' })
    expect(c.last_error?.message).toMatch(/ECONNREFUSED/)
  })

  it('fails a call for good on a 400, with the reason', async () => {
    stack = await startStack(t, {}, { callDurationMs: 10 })
    stack.sim.configure({ fault: { kind: 'reject', status: 400 } })
    const [id] = await stack.createCalls(1, () => phone())
    await stack.waitAllFinal()
    const c = await callRow(id as string)
    expect(c).toMatchObject({ status: 'FAILED', attempts: 1 })
    expect(c.last_error).toMatchObject({ code: 'DIAL_REJECTED' })
    expect(stack.sim.stats().dials).toHaveLength(1)
  })
})

describe('webhooks', () => {
  it('applies a webhook that arrives before the 202 has been recorded', async () => {
    stack = await startStack(t, { MAX_CONCURRENT_CALLS: '10' }, { callDurationMs: 0 })
    const ids = await stack.createCalls(50, (i) => phone(2000 + i))
    const calls = await stack.waitAllFinal()
    expect(calls.every((c) => c.status === 'COMPLETED' && c.attempts === 1)).toBe(true)
    await waitFor('every provider id to be recorded', async () => {
      const rows = await t.db.selectFrom('calls').select('provider_call_id').execute()
      return rows.every((r) => r.provider_call_id !== null)
    })
    const applied = await sql<{ n: number }>`
      select count(*)::int as n from call_events where kind = 'WEBHOOK' and detail ->> 'outcome' = 'applied'`.execute(
      t.db,
    )
    expect(applied.rows[0]?.n).toBe(ids.length)
  })

  it('records repeated, contradicting and progress webhooks without changing the call', async () => {
    stack = await startStack(t, {}, { callDurationMs: 10 })
    const [id] = await stack.createCalls(1, () => phone())
    await stack.waitAllFinal()
    const before = await callRow(id as string)
    const hook = (attempt: number, status: string) =>
      stack!.api('POST', `/api/v1/callbacks/call-status?call=${id}&attempt=${attempt}`, {
        callId: before.provider_call_id ?? 'x',
        status,
      })
    const dup = await hook(1, 'COMPLETED')
    const contradicting = await hook(1, 'FAILED')
    const noAnswer = await hook(1, 'NO_ANSWER')
    const progress = await hook(1, 'RINGING')
    expect([dup, contradicting, noAnswer, progress].map((r) => r.statusCode)).toEqual([200, 200, 200, 200])
    expect(dup.body.data.outcome).toBe('duplicate')
    expect(contradicting.body.data.outcome).toBe('duplicate')
    expect(progress.body.data.outcome).toBe('progress')
    const after = await callRow(id as string)
    expect(after).toEqual(before)
    const outcomes = (await eventsOf(id as string)).filter((e) => e.kind === 'WEBHOOK').map((e) => e.detail.outcome)
    expect(outcomes).toEqual(['applied', 'duplicate', 'duplicate', 'duplicate', 'progress'])
  })

  it('calls a report for an earlier attempt stale', async () => {
    stack = await startStack(t, {}, { callDurationMs: 10, outcomes: { NO_ANSWER: 1 } })
    const [id] = await stack.createCalls(1, () => phone())
    await waitFor('the first attempt to end', async () => {
      const c = await callRow(id as string)
      return c.status === 'PENDING' && c.attempts === 1
    })
    stack.sim.configure({ outcomes: { COMPLETED: 1 } })
    await stack.waitAllFinal()
    const res = await stack.api('POST', `/api/v1/callbacks/call-status?call=${id}&attempt=1`, {
      callId: 'sim_old',
      status: 'COMPLETED',
    })
    expect(res.body.data.outcome).toBe('stale')
    expect(await callRow(id as string)).toMatchObject({ status: 'COMPLETED', attempts: 2 })
  })

  it('finds the call by provider id when the webhook URL lost our parameters', async () => {
    stack = await startStack(t, {}, { callDurationMs: 60_000 })
    const [id] = await stack.createCalls(1, () => phone())
    const c = await waitFor('the dial to be recorded', async () => {
      const row = await callRow(id as string)
      return row.provider_call_id ? row : undefined
    })
    const res = await stack.api('POST', '/api/v1/callbacks/call-status', {
      callId: c.provider_call_id,
      status: 'COMPLETED',
      durationSec: 42,
    })
    expect(res.body.data.outcome).toBe('applied')
    expect(await callRow(id as string)).toMatchObject({ status: 'COMPLETED', duration_sec: 42 })
  })

  it('answers a webhook for an unknown call with 404', async () => {
    stack = await startStack(t)
    const res = await stack.api(
      'POST',
      '/api/v1/callbacks/call-status?call=7b0c2f7e-0000-4000-8000-000000000000&attempt=1',
      {
        callId: 'sim_x',
        status: 'COMPLETED',
      },
    )
    expect(res.statusCode).toBe(404)
    expect(
      (await stack.api('POST', '/api/v1/callbacks/call-status', { callId: 'sim_nobody', status: 'FAILED' })).statusCode,
    ).toBe(404)
  })

  it('refuses bad input with 400 and unsigned, wrongly signed or old webhooks with 401 when a secret is set', async () => {
    const secret = 'whsec_123'
    stack = await startStack(t, { WEBHOOK_SECRET: secret }, { callDurationMs: 20, webhookSecret: secret })
    const [id] = await stack.createCalls(1, () => phone())
    await stack.waitAllFinal() // the simulator signs, so its webhook was accepted
    expect((await callRow(id as string)).status).toBe('COMPLETED')

    const url = `/api/v1/callbacks/call-status?call=${id}&attempt=1&token=${webhookUrlToken(secret, id as string, 1)}`
    const body = JSON.stringify({ callId: (await callRow(id as string)).provider_call_id, status: 'COMPLETED' })
    const post = (headers: Record<string, string>, payload = body) =>
      stack!.svc.app.inject({
        method: 'POST',
        url,
        payload,
        headers: { 'content-type': 'application/json', ...headers },
      })
    const now = Math.floor(Date.now() / 1000)
    const cases = [
      await post({}),
      await post({ 'x-signature': sign('wrong', body) }),
      await post({ 'x-signature': sign(secret, body, now - 301) }),
      await post({ 'x-signature': sign(secret, body) }, body.replace('sim_', 'sim_X')),
    ]
    expect(cases.map((r) => r.statusCode)).toEqual([401, 401, 401, 401])
    expect(cases.map((r) => r.json().error.code)).toEqual(Array(4).fill('INVALID_SIGNATURE'))
    const ok = await post({ 'x-signature': sign(secret, body) })
    expect(ok.statusCode).toBe(200)
    const bad = JSON.stringify({ callId: 'sim_1', status: 'EXPLODED' })
    expect((await post({ 'x-signature': sign(secret, bad) }, bad)).statusCode).toBe(400)
  })
})

describe('a captured webhook', () => {
  it('cannot be replayed against another call: the URL token and the stored provider id must both match', async () => {
    const secret = 'whsec_replay'
    stack = await startStack(
      t,
      { WEBHOOK_SECRET: secret },
      { callDurationMs: 10, webhookSecret: secret, outcomes: { NO_WEBHOOK: 1 } },
    )
    const [a, b] = (await stack.createCalls(2, (i) => phone(4400 + i))) as [string, string]
    await waitFor('both calls dialed', async () =>
      (await t.db.selectFrom('calls').select('provider_call_id').execute()).every((c) => c.provider_call_id),
    )
    const body = JSON.stringify({ callId: (await callRow(a)).provider_call_id, status: 'COMPLETED' })
    const post = (query: string) =>
      stack!.svc.app.inject({
        method: 'POST',
        url: `/api/v1/callbacks/call-status?${query}`,
        payload: body,
        headers: { 'content-type': 'application/json', 'x-signature': sign(secret, body) },
      })
    // A's signed webhook pointed at B: without a token, with A's token, with B's token for another attempt
    expect((await post(`call=${b}&attempt=1`)).statusCode).toBe(401)
    expect((await post(`call=${b}&attempt=1&token=${webhookUrlToken(secret, a, 1)}`)).statusCode).toBe(401)
    expect((await post(`call=${b}&attempt=1&token=${webhookUrlToken(secret, b, 2)}`)).statusCode).toBe(401)
    // with B's own URL the body still names A's provider call
    const mismatch = await post(`call=${b}&attempt=1&token=${webhookUrlToken(secret, b, 1)}`)
    expect(mismatch.statusCode).toBe(409)
    expect(mismatch.json().error.code).toBe('PROVIDER_CALL_MISMATCH')
    expect(await callRow(b)).toMatchObject({ status: 'IN_PROGRESS' })
    // A's webhook at A's URL applies
    const own = await post(`call=${a}&attempt=1&token=${webhookUrlToken(secret, a, 1)}`)
    expect(own.json().data.outcome).toBe('applied')
    expect(await callRow(a)).toMatchObject({ status: 'COMPLETED' })
  })
})

describe('expiry and timeouts', () => {
  it('expires a PENDING call past expires_at without ever dialing it', async () => {
    stack = await startStack(t, { MAX_CONCURRENT_CALLS: '1' }, { callDurationMs: 1500 })
    const [blocker] = await stack.createCalls(1, () => phone())
    await waitFor('the slot to be taken', async () => (await callRow(blocker as string)).status === 'IN_PROGRESS')
    const expiresAt = new Date(Date.now() + 500).toISOString()
    const [late] = await stack.createCalls(1, () => phone(), { expiresAt })
    await stack.waitAllFinal()
    expect(await callRow(late as string)).toMatchObject({ status: 'EXPIRED', attempts: 0 })
    expect(stack.sim.stats().dials.some((d) => d.idempotencyKey.startsWith(late as string))).toBe(false)
    expect((await eventsOf(late as string)).map((e) => e.kind)).toEqual(['CREATED', 'EXPIRED'])
  })

  it('frees the slot of a call whose webhook never comes, then takes a late webhook', async () => {
    stack = await startStack(
      t,
      { MAX_CONCURRENT_CALLS: '1', CALL_TIMEOUT_MS: '1000', PROVIDER_TIMEOUT_MS: '500' },
      { callDurationMs: 20, outcomes: { NO_WEBHOOK: 1 } },
    )
    const [silent] = await stack.createCalls(1, () => phone())
    await waitFor('the dial', async () => (await callRow(silent as string)).provider_call_id !== null)
    stack.sim.configure({ outcomes: { COMPLETED: 1 } })
    const [next] = await stack.createCalls(1, () => phone())
    await stack.waitAllFinal()
    const timedOut = await callRow(silent as string)
    expect(timedOut).toMatchObject({ status: 'FAILED', attempts: 1 })
    expect(timedOut.last_error).toMatchObject({ code: 'CALL_TIMEOUT' })
    expect(await callRow(next as string)).toMatchObject({ status: 'COMPLETED' })
    expect(stack.sim.stats().dials.filter((d) => d.idempotencyKey.startsWith(silent as string))).toHaveLength(1)

    const res = await stack.api('POST', `/api/v1/callbacks/call-status?call=${silent}&attempt=1`, {
      callId: timedOut.provider_call_id,
      status: 'COMPLETED',
      durationSec: 61,
    })
    expect(res.body.data.outcome).toBe('late')
    expect(await callRow(silent as string)).toMatchObject({ status: 'COMPLETED', duration_sec: 61, last_error: null })
  })
})

describe('clients racing the dispatcher', () => {
  it('cancels or dials each call, never both', async () => {
    stack = await startStack(t, { MAX_CONCURRENT_CALLS: '5' }, { callDurationMs: 30 })
    const ids = await stack.createCalls(60, (i) => phone(3000 + i))
    const answers = await Promise.all(ids.map((id) => stack!.api('POST', `/api/v1/calls/${id}/cancel`)))
    const calls = await stack.waitAllFinal()
    const dials = dialsPerCall(stack.sim)
    const byId = new Map(calls.map((c) => [c.id, c]))
    ids.forEach((id, i) => {
      const call = byId.get(id)
      if (answers[i]!.statusCode === 200) {
        expect(call?.status).toBe('CANCELED')
        expect(dials.has(id)).toBe(false)
      } else {
        expect(answers[i]!.statusCode).toBe(409)
        expect(call?.status).toBe('COMPLETED')
        expect(dials.get(id)).toHaveLength(1)
      }
    })
    expect(answers.some((a) => a.statusCode === 200)).toBe(true)
  })

  it('applies a PATCH that won the race and changes nothing when it lost', async () => {
    stack = await startStack(t, { MAX_CONCURRENT_CALLS: '5' }, { callDurationMs: 30 })
    const ids = await stack.createCalls(40, (i) => phone(4000 + i), { scriptId: 'old' })
    const answers = await Promise.all(ids.map((id) => stack!.api('PATCH', `/api/v1/calls/${id}`, { scriptId: 'new' })))
    await stack.waitAllFinal()
    const rows = new Map((await t.db.selectFrom('calls').selectAll().execute()).map((c) => [c.id, c]))
    ids.forEach((id, i) => {
      const expected = answers[i]!.statusCode === 200 ? 'new' : 'old'
      expect(rows.get(id)?.script_id).toBe(expected)
    })
  })
})
