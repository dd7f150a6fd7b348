import { sql } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createSender } from '../src/notify/sender.ts'
import { isRefusedAddress, refuseEndpointUrl } from '../src/notify/ssrf.ts'
import { createTestDb, type TestDb } from './db.ts'
import { phone, waitFor } from './helpers.ts'
import { type Receiver, startReceiver } from './receiver.ts'
import { type Stack, startStack } from './stack.ts'

// The SSRF guard with WEBHOOK_ALLOW_PRIVATE_NETWORKS=false: the API refuses private literals, and a delivery never
// reaches a private address, whatever the URL says (a name resolving to 127.0.0.1 included).

describe('isRefusedAddress', () => {
  it.each([
    ['127.0.0.1'],
    ['127.255.1.2'],
    ['10.1.2.3'],
    ['172.16.0.1'],
    ['172.31.255.255'],
    ['192.168.1.1'],
    ['169.254.169.254'],
    ['0.0.0.0'],
    ['::1'],
    ['[::1]'],
    ['fc00::1'],
    ['fd12:3456::1'],
    ['fe80::1'],
    ['::ffff:127.0.0.1'],
    ['::ffff:10.0.0.1'],
  ])('refuses %s', (a) => expect(isRefusedAddress(a)).toBe(true))

  it.each([['8.8.8.8'], ['172.32.0.1'], ['192.169.0.1'], ['1.1.1.1'], ['2606:4700:4700::1111']])('allows %s', (a) =>
    expect(isRefusedAddress(a)).toBe(false),
  )
})

describe('refuseEndpointUrl', () => {
  const strict = { allowHttp: false, allowPrivateNetworks: false }
  it('wants https unless http is allowed, and no credentials', () => {
    expect(refuseEndpointUrl('http://example.com/h', strict)?.code).toBe('URL_NOT_HTTPS')
    expect(refuseEndpointUrl('http://example.com/h', { ...strict, allowHttp: true })).toBeUndefined()
    expect(refuseEndpointUrl('https://u:p@example.com/h', strict)?.code).toBe('URL_HAS_CREDENTIALS')
    expect(refuseEndpointUrl('not a url', strict)?.code).toBe('INVALID_URL')
    expect(refuseEndpointUrl('https://example.com/h', strict)).toBeUndefined()
  })
})

describe('the delivery connection', () => {
  let r: Receiver
  beforeAll(async () => {
    r = await startReceiver()
  })
  afterAll(async () => r.close())

  it('refuses loopback by literal and by a name that resolves to it, before sending anything', async () => {
    const guarded = createSender({ timeoutMs: 2000, allowPrivateNetworks: false })
    for (const host of ['127.0.0.1', 'localhost', '[::1]']) {
      const out = await guarded.send(`http://${host}:${r.port}/hooks`, {}, '{}')
      expect(out.ok).toBe(false)
      expect(out.error ?? '').toMatch(/WEBHOOK_ADDRESS_REFUSED|refused to connect/)
    }
    expect(r.received).toHaveLength(0)
    await guarded.close()
    // the same request goes through when private networks are allowed: the guard, not the network, refused it
    const open = createSender({ timeoutMs: 2000, allowPrivateNetworks: true })
    expect(
      (await open.send(`http://localhost:${r.port}/hooks`, {}, '{"type":"x.y","data":{"call":{"id":"a"}}}')).ok,
    ).toBe(true)
    await open.close()
  })
})

describe('an endpoint behind a private address', () => {
  let t: TestDb
  let s: Stack
  let r: Receiver
  beforeAll(async () => {
    t = await createTestDb()
    s = await startStack(t, { WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'false', RATE_LIMIT_MAX: '100000' })
    r = await startReceiver()
  })
  afterAll(async () => {
    await r.close()
    await s.stop()
    await t.drop()
  })

  it.each([
    ['http://127.0.0.1:9/h'],
    ['http://10.0.0.5/h'],
    ['http://172.20.1.1/h'],
    ['http://192.168.0.10/h'],
    ['http://169.254.169.254/latest/meta-data'],
    ['http://[::1]:9/h'],
    ['http://[fd00::1]/h'],
    ['http://[fe80::1]/h'],
    ['http://localhost:9/h'],
  ])('is refused by the API: %s', async (url) => {
    const res = await s.api('POST', '/api/v1/webhook-endpoints', { url })
    expect(res.statusCode).toBe(400)
    expect(res.body.error.code).toBe('URL_ADDRESS_REFUSED')
  })

  it('is never delivered to when its name resolves to loopback', async () => {
    // written past the API (which refuses the name localhost) to stand for a public name that resolves privately
    const { rows } = await sql<{ id: string }>`
      insert into webhook_endpoints (url, events, secret)
      values (${`http://localhost:${r.port}/hooks`}, '{call.created}', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')
      returning id`.execute(t.db)
    await s.createCalls(1, () => phone(42))
    const attempt = await waitFor('a refused attempt', async () => {
      const res = await s.api('GET', `/api/v1/webhook-endpoints/${rows[0]?.id}/deliveries`)
      return res.body.data[0]
    })
    expect(attempt.error).toMatch(/WEBHOOK_ADDRESS_REFUSED/)
    expect(r.received).toHaveLength(0)
  })
})
