import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { apiOnly, phone } from './helpers.ts'
import { useTestDb } from './kit.ts'

const t = useTestDb()
let app: FastifyInstance

beforeAll(async () => {
  app = await apiOnly(t, { API_KEYS: 'key-one,key-two', RATE_LIMIT_MAX: '5', RATE_LIMIT_WINDOW_MS: '60000' })
})
afterAll(async () => {
  await app.close()
})

const list = (authorization?: string) =>
  app.inject({ method: 'GET', url: '/api/v1/calls', headers: authorization ? { authorization } : {} })

describe('client API keys', () => {
  it.each([
    ['no Authorization header', undefined],
    ['an unknown key', 'Bearer key-three'],
    ['a prefix of a key', 'Bearer key-on'],
    ['another scheme', 'Basic a2V5LW9uZQ=='],
  ])('refuses %s with 401 UNAUTHORIZED', async (_name, authorization) => {
    const res = await list(authorization)
    expect(res.statusCode).toBe(401)
    expect(res.json()).toMatchObject({ success: false, error: { code: 'UNAUTHORIZED' } })
    expect(res.headers['www-authenticate']).toBe('Bearer')
  })

  it('accepts each configured key', async () => {
    expect((await list('Bearer key-two')).statusCode).toBe(200)
  })

  it('writes nothing for an unauthenticated create', async () => {
    const res = await app.inject({ method: 'POST', url: '/api/v1/calls', payload: { to: phone(), scriptId: 's' } })
    expect(res.statusCode).toBe(401)
    const rows = await t.db.selectFrom('calls').select('id').execute()
    expect(rows).toHaveLength(0)
  })

  it('leaves /health, /docs and the provider webhook to their own rules', async () => {
    expect((await app.inject({ method: 'GET', url: '/health' })).statusCode).toBe(200)
    expect((await app.inject({ method: 'GET', url: '/docs/json' })).statusCode).toBe(200)
    const hook = await app.inject({
      method: 'POST',
      url: '/api/v1/callbacks/call-status',
      payload: { callId: 'nope', status: 'COMPLETED' },
    })
    expect(hook.statusCode).toBe(404) // reached the handler: unknown call, not 401
  })

  it('sends security headers', async () => {
    const res = await app.inject({ method: 'GET', url: '/docs/json' })
    expect(res.headers['x-content-type-options']).toBe('nosniff')
    expect(res.headers['content-security-policy']).toContain("default-src 'self'")
  })
})

describe('rate limiting', () => {
  it('limits each API key on its own and answers 429 with Retry-After', async () => {
    const codes: number[] = []
    for (let i = 0; i < 6; i++) codes.push((await list('Bearer key-one')).statusCode)
    // key-one had 0 requests counted so far in this file; 5 pass, the 6th is limited
    expect(codes).toEqual([200, 200, 200, 200, 200, 429])
    const limited = await list('Bearer key-one')
    expect(limited.statusCode).toBe(429)
    expect(limited.json()).toMatchObject({ success: false, error: { code: 'RATE_LIMITED' } })
    expect(Number(limited.headers['retry-after'])).toBeGreaterThan(0)
    // the other key has its own budget (it used 1 above)
    expect((await list('Bearer key-two')).statusCode).toBe(200)
  })
})
