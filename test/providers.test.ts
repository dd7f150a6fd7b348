import { createHmac } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import { sql } from 'kysely'
import { sign as retellSign } from 'retell-sdk'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { webhookError } from '../src/dispatch/call-state.ts'
import {
  findOutcomeRow,
  type OutcomeRow,
  type Platform,
  RETELL_OUTCOMES,
  VAPI_OUTCOMES,
} from '../src/providers/outcomes.ts'
import { signVapi } from '../src/providers/vapi-signature.ts'
import { apiOnly, phone, waitFor } from './helpers.ts'
import { useTestDb } from './kit.ts'
import { retellReasons, vapiReasons } from './sdk-reasons.ts'
import { dialsPerCall, resetTables, type Stack, startStack } from './stack.ts'

// Vapi and Retell end to end: the service dials the simulator through the official SDKs, the simulator calls back
// in the platform's dialect with the platform's signature, and every guarantee of the generic contract holds.

const KEY = 'key_test_0123456789'
const SECRET = 'whsec_test_vapi'

const t = useTestDb()
let stack: Stack | undefined
let app: FastifyInstance | undefined

beforeEach(async () => {
  await resetTables(t)
})
afterEach(async () => {
  await stack?.stop()
  stack = undefined
  await app?.close()
  app = undefined
})

const callRow = (id: string) => t.db.selectFrom('calls').selectAll().where('id', '=', id).executeTakeFirstOrThrow()
const eventsOf = (id: string) =>
  t.db.selectFrom('call_events').selectAll().where('call_id', '=', id).orderBy('id').execute()

function envFor(platform: Platform, extra: Record<string, string> = {}) {
  return {
    AI_CALL_PROVIDER: platform,
    AI_CALL_API_KEY: KEY,
    WEBHOOK_SECRET: SECRET,
    VAPI_PHONE_NUMBER_ID: 'pn_test',
    RETELL_FROM_NUMBER: '+14155550100',
    PROVIDER_SCRIPT_MAP: 'welcome=agent_welcome_v2',
    ...extra,
  }
}

async function platformStack(platform: Platform, env: Record<string, string> = {}, sim = {}) {
  const s = await startStack(t, envFor(platform, env), { apiKey: KEY, webhookSecret: SECRET, ...sim })
  s.sim.configure({
    webhookUrls: { [platform]: `${s.svc.url}/api/v1/callbacks/${platform}` },
  })
  return s
}

/** A final webhook body for our call, the platform's way. */
function finalBody(platform: Platform, callId: string, attempt: number, reason: string, providerCallId = 'pc_1') {
  const metadata = { orchestrator_call_id: callId, orchestrator_attempt: attempt }
  if (platform === 'retell') {
    return {
      event: 'call_ended',
      call: {
        call_id: providerCallId,
        call_type: 'phone_call',
        call_status: 'ended',
        metadata,
        disconnection_reason: reason,
        duration_ms: 42_000,
        recording_url: 'https://r.example/rec.wav',
        call_cost: { combined_cost: 7.5 },
      },
    }
  }
  return {
    message: {
      type: 'end-of-call-report',
      endedReason: reason,
      call: { id: providerCallId, assistantOverrides: { metadata } },
      cost: 0.11,
      artifact: { recordingUrl: 'https://r.example/rec.wav', transcript: 'hello' },
      startedAt: '2026-01-01T00:00:00.000Z',
      endedAt: '2026-01-01T00:00:42.000Z',
    },
  }
}

async function signedHeaders(
  platform: Platform,
  body: string,
  key = platform === 'retell' ? KEY : SECRET,
  at?: number,
): Promise<Record<string, string>> {
  if (platform === 'retell') {
    if (at === undefined) return { 'x-retell-signature': await retellSign(body, key) }
    // a signature made at `at`, the way Retell documents it: v=<ms>,d=hex HMAC-SHA256(key, body + ms)
    const digest = createHmac('sha256', key)
      .update(body + String(at))
      .digest('hex')
    return { 'x-retell-signature': `v=${at},d=${digest}` }
  }
  at ??= Date.now()
  const ts = String(Math.floor(at / 1000))
  return { 'x-signature': signVapi(key, body, ts), 'x-timestamp': ts }
}

async function post(a: FastifyInstance, platform: Platform, payload: object, headers?: Record<string, string>) {
  const body = JSON.stringify(payload)
  const res = await a.inject({
    method: 'POST',
    url: `/api/v1/callbacks/${platform}`,
    headers: { 'content-type': 'application/json', ...(headers ?? (await signedHeaders(platform, body))) },
    payload: body,
  })
  return { statusCode: res.statusCode, body: res.json() }
}

/** A call already dialed (attempt 1, IN_PROGRESS), as the dispatcher leaves it. */
async function inProgressCall(providerCallId = 'pc_1'): Promise<string> {
  const { rows } = await sql<{ id: string }>`
    insert into calls (to_phone, script_id, metadata, status, attempts, started_at, expires_at, provider_call_id)
    values (${phone()}, 'welcome', '{}'::jsonb, 'IN_PROGRESS', 1, now(), now() + interval '1 day', ${providerCallId})
    returning id`.execute(t.db)
  return (rows[0] as { id: string }).id
}

/** One documented value per row of the table (prefix rows: the first SDK value they match). */
function rowExamples(platform: Platform): [OutcomeRow, string][] {
  const rows = platform === 'vapi' ? VAPI_OUTCOMES : RETELL_OUTCOMES
  const reasons = platform === 'vapi' ? vapiReasons() : retellReasons()
  return rows.map((row) => [row, reasons.find((r) => findOutcomeRow(platform, r) === row) as string])
}

describe.each(['retell', 'vapi'] as const)('%s', (platform) => {
  it('sends the documented create-call request through the SDK, with our ids in the platform metadata', async () => {
    stack = await platformStack(platform, {}, { progressEvents: true })
    const [id] = await stack.createCalls(1, () => '+966501234567', {
      scriptId: 'welcome',
      metadata: { name: 'Sara', visits: 3 },
    })
    await stack.waitAllFinal()
    const dial = stack.sim.stats().dials[0]
    expect(dial?.dialect).toBe(platform)
    expect(dial?.authorization).toBe(`Bearer ${KEY}`)
    const meta = { orchestrator_call_id: id, orchestrator_attempt: 1 }
    if (platform === 'retell') {
      expect(dial?.body).toEqual({
        from_number: '+14155550100',
        to_number: '+966501234567',
        override_agent_id: 'agent_welcome_v2',
        metadata: meta,
        retell_llm_dynamic_variables: { name: 'Sara', visits: '3' },
      })
    } else {
      expect(dial?.body).toEqual({
        assistantId: 'agent_welcome_v2',
        phoneNumberId: 'pn_test',
        customer: { number: '+966501234567' },
        assistantOverrides: { variableValues: { name: 'Sara', visits: 3 }, metadata: meta },
      })
    }
    const call = await callRow(id as string)
    expect(call).toMatchObject({ status: 'COMPLETED', last_outcome: 'COMPLETED', attempts: 1 })
    expect(call.provider_call_id).toBe(dial?.providerCallId)
    expect(call.last_result).toMatchObject({ provider: platform, providerCallId: dial?.providerCallId })
    expect(call.last_result?.recordingUrl).toMatch(/^https:\/\//)
    // events that are not the end are acknowledged and kept in the history, nothing more
    const progress = (await eventsOf(id as string)).filter((e) => e.detail.outcome === 'progress').map((e) => e.status)
    expect(progress).toEqual(
      platform === 'retell' ? ['call_started'] : ['status-update:ringing', 'status-update:in-progress'],
    )
    const res = await stack.api('GET', `/api/v1/calls/${id}`)
    expect(res.body.data.result).toMatchObject({ provider: platform, endReason: expect.any(String) })
  })

  it('applies a correctly signed webhook; refuses a wrong, a missing and a replayed signature, writing nothing', async () => {
    // API_KEYS set: the webhook route is authenticated by its signature, not by a client key
    app = await apiOnly(t, envFor(platform, { MAX_RETRY_ATTEMPTS: '1', API_KEYS: 'client-key' }))
    const id = await inProgressCall()
    const payload = finalBody(platform, id, 1, platform === 'retell' ? 'user_hangup' : 'customer-ended-call')
    const body = JSON.stringify(payload)
    const before = (await eventsOf(id)).length

    const wrong = await post(app, platform, payload, await signedHeaders(platform, body, 'not-the-key'))
    expect(wrong.statusCode).toBe(401)
    expect(wrong.body.error.code).toBe('INVALID_SIGNATURE')
    expect((await post(app, platform, payload, {})).statusCode).toBe(401)
    const replayed = await post(
      app,
      platform,
      payload,
      await signedHeaders(platform, body, undefined, Date.now() - 6 * 60_000),
    )
    expect(replayed.statusCode).toBe(401)
    expect(await callRow(id)).toMatchObject({ status: 'IN_PROGRESS', last_outcome: null })
    expect((await eventsOf(id)).length).toBe(before)

    const ok = await post(app, platform, payload)
    expect(ok).toMatchObject({ statusCode: 200, body: { data: { outcome: 'applied' } } })
    // the same signed request again (within the tolerance) changes nothing
    const again = await post(app, platform, payload)
    expect(again.body.data.outcome).toBe('duplicate')
    expect(await callRow(id)).toMatchObject({ status: 'COMPLETED', last_outcome: 'COMPLETED', duration_sec: 42 })
  })

  it('ends a call as every row of the outcome table says', async () => {
    app = await apiOnly(t, envFor(platform, { MAX_RETRY_ATTEMPTS: '1' }))
    const examples = rowExamples(platform)
    const problems: string[] = []
    for (const [row, reason] of examples) {
      const id = await inProgressCall(`pc_${reason}`)
      const res = await post(app, platform, finalBody(platform, id, 1, reason, `pc_${reason}`))
      const c = await callRow(id)
      const want = row.throttled
        ? { status: 'PENDING', attempts: 0, last_outcome: null }
        : row.outcome === 'COMPLETED'
          ? { status: 'COMPLETED', attempts: 1, last_outcome: 'COMPLETED' }
          : { status: 'FAILED', attempts: 1, last_outcome: row.outcome }
      const got = { status: c.status, attempts: c.attempts, last_outcome: c.last_outcome }
      if (res.statusCode !== 200 || JSON.stringify(got) !== JSON.stringify(want)) {
        problems.push(`${reason}: ${res.statusCode} ${JSON.stringify(got)} != ${JSON.stringify(want)}`)
      }
      if (
        !row.throttled &&
        row.outcome !== 'COMPLETED' &&
        c.last_error?.code !== webhookError(row.outcome, undefined).code
      ) {
        problems.push(`${reason}: last_error ${JSON.stringify(c.last_error)}`)
      }
      // a throttled end gives the attempt back: its report is in the history, not the call's result
      const reported = row.throttled ? (await eventsOf(id)).at(-1)?.detail.result : c.last_result
      expect((reported as { endReason?: string } | undefined)?.endReason).toBe(reason)
    }
    expect(problems).toEqual([])
    expect(examples.length).toBe(platform === 'vapi' ? VAPI_OUTCOMES.length : RETELL_OUTCOMES.length)
  })

  it('retries a callee outcome while attempts remain and ends FAILED with it as lastOutcome', async () => {
    stack = await platformStack(platform, { MAX_RETRY_ATTEMPTS: '2' }, { outcomes: { VOICEMAIL: 1 } })
    const [id] = await stack.createCalls(1, () => phone())
    await stack.waitAllFinal()
    expect(await callRow(id as string)).toMatchObject({ status: 'FAILED', attempts: 2, last_outcome: 'VOICEMAIL' })
    expect(stack.sim.stats().accepted).toBe(2)
  })

  it('settles a call whose webhook arrives before the create-call response', async () => {
    // the simulator answers only after our webhook handler answered it: give the dial time for that under load
    stack = await platformStack(platform, { PROVIDER_TIMEOUT_MS: '10000', CALL_TIMEOUT_MS: '30000' })
    stack.sim.configure({ fault: { kind: 'webhookFirst' } })
    const ids = await stack.createCalls(3, (i) => phone(i))
    const calls = await stack.waitAllFinal()
    expect(calls.every((c) => c.status === 'COMPLETED' && c.attempts === 1)).toBe(true)
    // the provider's id is still noted when the 201 is read after the end
    await waitFor('provider ids', async () => (await Promise.all(ids.map(callRow))).every((c) => c.provider_call_id))
    expect(stack.sim.stats().accepted).toBe(3)
  })

  it('treats a concurrency refusal as a throttled dial: no attempt spent, dialed again after Retry-After', async () => {
    stack = await platformStack(platform)
    stack.sim.configure({ fault: { kind: 'throttle', retryAfterSec: 1 } })
    const [id] = await stack.createCalls(1, () => phone())
    await waitFor('a throttled dial', async () =>
      (await eventsOf(id as string)).some((e) => e.kind === 'DIAL_THROTTLED'),
    )
    expect(await callRow(id as string)).toMatchObject({ status: 'PENDING', attempts: 0 })
    stack.sim.configure({ fault: { kind: 'none' } })
    await stack.waitAllFinal()
    expect(await callRow(id as string)).toMatchObject({ status: 'COMPLETED', attempts: 1 })
  })

  it('settles from the poll a call whose final webhook never comes, without dialing it again', async () => {
    stack = await platformStack(platform, { RECONCILE_AFTER_MS: '0', RECONCILE_INTERVAL_MS: '600000' })
    stack.sim.configure({ dropFinalWebhooks: 1, outcomes: { BUSY: 1 } })
    const [id] = await stack.createCalls(1, () => phone(), {})
    await waitFor('the call to end at the provider', () => stack?.sim.stats().finalsDropped === 1)
    expect((await callRow(id as string)).status).toBe('IN_PROGRESS')
    const summary = await stack.svc.reconciler?.runOnce()
    expect(summary).toMatchObject({ asked: 1, settled: 1 })
    const c = await callRow(id as string)
    expect(c).toMatchObject({ last_outcome: 'BUSY' })
    expect(c.last_result?.endReason).toBe(platform === 'retell' ? 'dial_busy' : 'customer-busy')
    expect((await eventsOf(id as string)).filter((e) => e.kind === 'RECONCILED')).toHaveLength(1)
    // a webhook for that attempt arriving now is a duplicate (it names the provider call stored for the attempt)
    const late = await post(
      stack.svc.app,
      platform,
      finalBody(
        platform,
        id as string,
        1,
        platform === 'retell' ? 'dial_busy' : 'customer-busy',
        c.provider_call_id ?? undefined,
      ),
    )
    expect(late.body.data.outcome).toMatch(/duplicate|stale/)
    expect(
      dialsPerCall(stack.sim)
        .get(id as string)
        ?.filter((k) => k.endsWith(':1')),
    ).toHaveLength(1)
  })

  it('fails a call the provider lost with PROVIDER_LOST_CALL and dials it again', async () => {
    stack = await platformStack(platform, { RECONCILE_AFTER_MS: '0', RECONCILE_INTERVAL_MS: '600000' })
    stack.sim.configure({ loseCalls: 1 })
    const [id] = await stack.createCalls(1, () => phone())
    await waitFor('the dial', async () => (await callRow(id as string)).provider_call_id !== null)
    stack.sim.configure({ loseCalls: 0 })
    const summary = await stack.svc.reconciler?.runOnce()
    expect(summary).toMatchObject({ asked: 1, lost: 1 })
    const events = await eventsOf(id as string)
    expect(events.find((e) => e.kind === 'RECONCILED')?.status).toBe('NOT_FOUND')
    await stack.waitAllFinal()
    expect(await callRow(id as string)).toMatchObject({ status: 'COMPLETED', attempts: 2 })
    expect(stack.sim.stats().lost).toBe(1)
  })

  it('keeps the invariants: the cap, one call per phone, one dial per attempt', async () => {
    stack = await platformStack(
      platform,
      { MAX_CONCURRENT_CALLS: '4', MAX_RETRY_ATTEMPTS: '2' },
      { callDurationMs: 30 },
    )
    stack.sim.configure({ outcomes: { COMPLETED: 3, BUSY: 1, NO_ANSWER: 1, VOICEMAIL: 1 } })
    await stack.createCalls(40, (i) => phone(i % 15))
    const calls = await stack.waitAllFinal(30_000)
    const s = stack.sim.stats()
    expect(s.maxActive).toBeLessThanOrEqual(4)
    expect(s.phoneOverlaps).toBe(0)
    expect(s.duplicates).toBe(0)
    const attempts = calls.reduce((n, c) => n + c.attempts, 0)
    expect(s.dials.filter((d) => d.status === 201)).toHaveLength(attempts)
    expect(calls.every((c) => c.status === 'COMPLETED' || c.status === 'FAILED')).toBe(true)
  })
})
