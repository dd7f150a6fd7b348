import { describe, expect, it } from 'vitest'
import { sign, verify } from '../src/providers/signature.ts'

const secret = 'whsec_test'
const body = '{"callId":"sim_1","status":"COMPLETED"}'
const now = 1_800_000_000

describe('webhook signatures', () => {
  it('verifies what it signed', () => {
    expect(verify(secret, body, sign(secret, body, now), now)).toEqual({ ok: true })
  })

  it.each([
    ['a missing header', undefined, 'missing'],
    ['a header without v1', `t=${now}`, 'malformed'],
    ['a header without t', `v1=${'a'.repeat(64)}`, 'malformed'],
    ['garbage', 'hello', 'malformed'],
    ['another secret', sign('other', body, now), 'mismatch'],
    ['another body', sign(secret, `${body} `, now), 'mismatch'],
    ['a timestamp 301 s old', sign(secret, body, now - 301), 'stale'],
    ['a timestamp 301 s ahead', sign(secret, body, now + 301), 'stale'],
  ])('refuses %s', (_name, header, reason) => {
    expect(verify(secret, body, header, now)).toEqual({ ok: false, reason })
  })

  it('accepts a timestamp 300 s old and a second v1 for secret rotation', () => {
    expect(verify(secret, body, sign(secret, body, now - 300), now).ok).toBe(true)
    const rotated = `${sign('old', body, now)},v1=${sign(secret, body, now).split('v1=')[1]}`
    expect(verify(secret, body, rotated, now).ok).toBe(true)
  })

  it('signs the exact bytes: a Buffer and its string agree', () => {
    expect(sign(secret, Buffer.from(body), now)).toBe(sign(secret, body, now))
  })
})
