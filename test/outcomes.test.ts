import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { PROVIDER_FINAL } from '../src/dispatch/call-state.ts'
import { classifyEnd, findOutcomeRow, RETELL_OUTCOMES, VAPI_OUTCOMES } from '../src/providers/outcomes.ts'
import { signVapi, verifyVapi } from '../src/providers/vapi-signature.ts'
import { retellReasons, vapiReasons } from './sdk-reasons.ts'

// The outcome table against the SDKs' own lists of end reasons: a value the SDK gains in an upgrade and the table
// does not name fails here instead of landing as an unknown FAILED in production.

describe('the outcome table', () => {
  it('names every Retell disconnection_reason the SDK lists', () => {
    const reasons = retellReasons()
    expect(reasons.length).toBeGreaterThanOrEqual(34)
    expect(reasons.filter((r) => !findOutcomeRow('retell', r))).toEqual([])
  })

  it('names every Vapi endedReason the SDK lists', () => {
    const reasons = vapiReasons()
    expect(reasons.length).toBeGreaterThanOrEqual(500)
    expect(reasons.filter((r) => !findOutcomeRow('vapi', r))).toEqual([])
  })

  it('has no row that matches no documented value (a typo would hide behind the fallback)', () => {
    const retell = retellReasons()
    const vapi = vapiReasons()
    const unused = [
      ...RETELL_OUTCOMES.filter((row) => !retell.some((r) => findOutcomeRow('retell', r) === row)),
      ...VAPI_OUTCOMES.filter((row) => !vapi.some((r) => findOutcomeRow('vapi', r) === row)),
    ].map((r) => r.reason)
    expect(unused).toEqual([])
  })

  it('maps the callee outcomes the way the platforms document them', () => {
    expect(classifyEnd('retell', 'dial_busy').outcome).toBe('BUSY')
    expect(classifyEnd('retell', 'dial_no_answer').outcome).toBe('NO_ANSWER')
    expect(classifyEnd('retell', 'voicemail_reached').outcome).toBe('VOICEMAIL')
    expect(classifyEnd('retell', 'user_hangup').outcome).toBe('COMPLETED')
    expect(classifyEnd('vapi', 'customer-busy').outcome).toBe('BUSY')
    expect(classifyEnd('vapi', 'customer-did-not-answer').outcome).toBe('NO_ANSWER')
    expect(classifyEnd('vapi', 'voicemail').outcome).toBe('VOICEMAIL')
    expect(classifyEnd('vapi', 'customer-ended-call').outcome).toBe('COMPLETED')
    expect(classifyEnd('vapi', 'pipeline-error-openai-llm-failed')).toMatchObject({
      outcome: 'FAILED',
      fault: 'platform',
    })
    expect(classifyEnd('retell', 'concurrency_limit_reached').throttled).toBe(true)
    expect(classifyEnd('retell', 'invalid_destination').permanent).toBe(true)
  })

  it('makes an unknown or missing reason FAILED, flagged unknown', () => {
    expect(classifyEnd('vapi', 'something-new')).toEqual({ outcome: 'FAILED', fault: 'platform', known: false })
    expect(classifyEnd('retell', undefined)).toEqual({ outcome: 'FAILED', fault: 'platform', known: false })
  })

  it('is printed row for row in docs/providers.md', () => {
    const doc = readFileSync(new URL('../docs/providers.md', import.meta.url), 'utf8')
    const missing = [...RETELL_OUTCOMES, ...VAPI_OUTCOMES].filter(
      (r) => !doc.includes(`| \`${r.reason}\` | ${r.outcome} | ${r.fault} |`),
    )
    expect(missing.map((r) => r.reason)).toEqual([])
  })

  it('uses only our outcome vocabulary', () => {
    for (const row of [...RETELL_OUTCOMES, ...VAPI_OUTCOMES]) expect(PROVIDER_FINAL).toContain(row.outcome)
  })
})

describe('Vapi webhook authentication', () => {
  const secret = 'vapi-secret'
  const body = '{"message":{"type":"status-update"}}'
  const now = Date.now()
  const ts = String(Math.floor(now / 1000))

  it('accepts the HMAC credential with a timestamp in seconds or milliseconds', () => {
    expect(verifyVapi(secret, body, { 'x-signature': signVapi(secret, body, ts), 'x-timestamp': ts }, now)).toEqual({
      ok: true,
    })
    const ms = String(now)
    expect(verifyVapi(secret, body, { 'x-signature': signVapi(secret, body, ms), 'x-timestamp': ms }, now).ok).toBe(
      true,
    )
  })

  it('refuses a wrong, a missing, a stale (replayed) and a tampered signature', () => {
    expect(verifyVapi(secret, body, { 'x-signature': signVapi('other', body, ts), 'x-timestamp': ts }, now)).toEqual({
      ok: false,
      reason: 'mismatch',
    })
    expect(verifyVapi(secret, body, {}, now)).toEqual({ ok: false, reason: 'missing' })
    const old = String(Math.floor(now / 1000) - 301)
    expect(verifyVapi(secret, body, { 'x-signature': signVapi(secret, body, old), 'x-timestamp': old }, now)).toEqual({
      ok: false,
      reason: 'stale',
    })
    expect(
      verifyVapi(secret, `${body} `, { 'x-signature': signVapi(secret, body, ts), 'x-timestamp': ts }, now).ok,
    ).toBe(false)
  })

  it('accepts the server secret in x-vapi-secret and refuses a different one', () => {
    expect(verifyVapi(secret, body, { 'x-vapi-secret': secret }, now).ok).toBe(true)
    expect(verifyVapi(secret, body, { 'x-vapi-secret': 'vapi-secreT' }, now).ok).toBe(false)
  })
})
