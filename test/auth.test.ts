import { request } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { createRateLimiter } from '../src/http/rate-limit.ts'
import { apiOnly, phone, testConfig } from './helpers.ts'
import { useTestDb } from './kit.ts'

const t = useTestDb()
let app: FastifyInstance
let base: string

beforeAll(async () => {
  app = await apiOnly(t, { API_KEYS: 'key-one,key-two' })
  await app.listen({ port: 0, host: '127.0.0.1' })
  base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
})
afterAll(async () => {
  await app.close()
})

const list = (authorization?: string) =>
  app.inject({ method: 'GET', url: '/api/v1/calls', headers: authorization ? { authorization } : {} })

/** One request over a real socket with the path sent byte for byte (fetch and inject would normalize it). */
function raw(method: string, path: string, headers: Record<string, string> = {}) {
  return new Promise<{ status: number; body: string }>((resolve, reject) => {
    const body = ['GET', 'HEAD', 'DELETE'].includes(method) ? undefined : JSON.stringify({ to: phone(), scriptId: 's' })
    const req = request(
      `${base}/`,
      // a connection of its own per request: a spelling the server's parser refuses closes its connection
      { method, path, agent: false, headers: { ...headers, ...(body ? { 'content-type': 'application/json' } : {}) } },
      (res) => {
        let text = ''
        res.on('data', (c) => {
          text += c
        })
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }))
        res.on('error', () => resolve({ status: res.statusCode ?? 0, body: text }))
      },
    )
    // A connection the server closes without an answer (its HTTP parser refused the request): status 0, no route ran.
    req.on('error', (err: NodeJS.ErrnoException) =>
      err.code === 'ECONNRESET' || err.message === 'socket hang up'
        ? resolve({ status: 0, body: err.message })
        : reject(err),
    )
    req.end(body)
  })
}

/** Every route of the app, from Fastify's own route tree (so a route added later is covered without listing it). */
function routesOf(app: FastifyInstance): { method: string; path: string }[] {
  const routes: { method: string; path: string }[] = []
  const prefixes: string[] = []
  for (const line of app.printRoutes({ commonPrefix: false }).split('\n')) {
    const m = /^([│ ]*)(?:├── |└── )(\S+)(?: \(([^)]+)\))?$/.exec(line)
    if (!m) continue
    const depth = (m[1] as string).length / 4
    const path = (prefixes[depth - 1] ?? '') + m[2]
    prefixes[depth] = path
    prefixes.length = depth + 1
    for (const method of m[3]?.split(', ') ?? []) routes.push({ method, path })
  }
  return routes
}

// The routes meant to be reachable without an API key. Anything else the app serves is client API.
const OPEN = [/^\/health$/, /^\/metrics$/, /^\/docs(\/|$)/, /^\/dashboard(\/|$)/, /^\/api\/v1\/callbacks\//]
const isOpen = (path: string) => OPEN.some((re) => re.test(path))

/** The same path as the router may see it: percent-encoded, doubled slashes, dot segments, another case, a slash more. */
function variants(path: string): string[] {
  const segs = path.split('/').slice(1)
  const at = (i: number, s: string) => `/${segs.map((x, j) => (j === i ? s : x)).join('/')}`
  const hex = (c: string) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`
  const out = new Set<string>([
    path.toUpperCase(),
    `/${segs.map((s) => s.charAt(0).toUpperCase() + s.slice(1)).join('/')}`,
    `${path}/`,
    `${path}//`,
    `/${path}`,
    `${path.split('/').join('//')}`,
    `/./${path.slice(1)}`,
    `/x/..${path}`,
    `/%2e${path}`,
    `/x/%2e%2e${path}`,
    `/x/%2E%2E${path}`,
    `${path}/.`,
    `${path}%2f`,
    `${path};x=1`,
    `${path}%00`,
    `${path}?x=1`,
    `/${path.slice(1).replaceAll('/', '%2f')}`,
    `/${path.slice(1).replaceAll('/', '\\')}`,
    segs.map((s) => `/${[...s].map(hex).join('')}`).join(''),
  ])
  segs.forEach((s, i) => {
    const c = s.charAt(0)
    out.add(at(i, hex(c) + s.slice(1)))
    out.add(at(i, hex(c).toUpperCase() + s.slice(1)))
    out.add(at(i, `%25${hex(c).slice(1)}${s.slice(1)}`))
    out.add(at(i, `${s}/../${s}`))
    out.add(at(i, `./${s}`))
  })
  out.delete(path)
  return [...out]
}

const ID = '0b8f9a52-3c1e-4c8f-9d0c-7a1e2b3c4d5e'
const concrete = (path: string) => path.replace(/:[A-Za-z]+/g, ID)

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
    expect((await app.inject({ method: 'GET', url: '/metrics' })).statusCode).toBe(200)
    expect((await app.inject({ method: 'GET', url: '/docs/json' })).statusCode).toBe(200)
    expect((await app.inject({ method: 'GET', url: '/docs' })).statusCode).toBe(200)
    expect((await app.inject({ method: 'GET', url: '/dashboard' })).statusCode).toBe(200)
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

describe('every client API route, however its path is spelled', () => {
  const protectedRoutes = () => routesOf(app).filter((r) => !isOpen(r.path))

  it('finds the client API routes in the app itself', () => {
    const found = protectedRoutes().map((r) => `${r.method} ${r.path}`)
    expect(found).toEqual(expect.arrayContaining(['POST /api/v1/calls', 'GET /api/v1/calls/:id', 'HEAD /api/v1/calls']))
    expect(routesOf(app).filter((r) => isOpen(r.path)).length).toBeGreaterThan(3)
  })

  it('answers 401 on the route itself without a key, and never 2xx on any spelling of it', async () => {
    const seen: string[] = []
    for (const { method, path } of protectedRoutes()) {
      const plain = await raw(method, concrete(path))
      expect(plain.status, `${method} ${path}`).toBe(401)
      for (const v of variants(concrete(path))) {
        const res = await raw(method, v)
        seen.push(`${res.status} ${method} ${v}`)
        // 400 "Client Error", or a closed connection, only from Node's own parser: no route saw the request
        const refused = (res.status === 400 && res.body.includes('Client Error')) || res.status === 0
        if (!refused) expect([401, 404], `${method} ${v}: ${res.status} ${res.body}`).toContain(res.status)
      }
      // the key is the only difference: with it the same request gets past the check
      expect((await raw(method, concrete(path), { authorization: 'Bearer key-one' })).status).not.toBe(401)
    }
    expect(seen.filter((s) => s.startsWith('401')).length).toBeGreaterThan(10) // some spellings do reach the route
    const rows = await t.db.selectFrom('calls').select('id').execute()
    expect(rows.length).toBeLessThanOrEqual(protectedRoutes().filter((r) => r.method === 'POST').length)
  })
})

describe('rate limiting', () => {
  it('limits each API key on its own, however the path is spelled, and answers 429 with Retry-After', async () => {
    const other = await apiOnly(t, { API_KEYS: 'key-one,key-two', RATE_LIMIT_MAX: '5', RATE_LIMIT_WINDOW_MS: '60000' })
    try {
      const get = (url: string, key = 'key-one') =>
        other.inject({ method: 'GET', url, headers: { authorization: `Bearer ${key}` } })
      // spellings the router decodes to GET /api/v1/calls: each one counts against the same key
      const urls = ['/%61pi/v1/calls', '/api/v1/%63alls', '/api/%761/calls', '/api/v1/calls', '/%61pi/v1/calls']
      const codes: number[] = []
      for (const url of urls) codes.push((await get(url)).statusCode)
      expect(codes).toEqual([200, 200, 200, 200, 200])
      const limited = await get('/%61pi/v1/calls')
      expect(limited.statusCode).toBe(429)
      expect(limited.json()).toMatchObject({ success: false, error: { code: 'RATE_LIMITED' } })
      expect(Number(limited.headers['retry-after'])).toBeGreaterThan(0)
      expect((await get('/api/v1/calls', 'key-two')).statusCode).toBe(200)
    } finally {
      await other.close()
    }
  })
})

describe('default rate limits', () => {
  let d: FastifyInstance
  beforeAll(async () => {
    vi.useFakeTimers({ toFake: ['Date'] })
    d = await apiOnly(t, { API_KEYS: 'campaign,abuser' })
  })
  afterAll(async () => {
    vi.useRealTimers()
    await d.close()
  })
  const as = (key: string) => ({ authorization: `Bearer ${key}` })
  const tick = (ms: number) => vi.setSystemTime(Date.now() + ms)

  it('never refuse a client that queues 3,000 calls one request at a time and polls them', async () => {
    const statuses = new Map<number, number>()
    const count = (s: number) => statuses.set(s, (statuses.get(s) ?? 0) + 1)
    const ids: string[] = []
    // 4 ms a create (250 a second, a client on a fast network); every simulated second it lists what is pending
    // and looks at the 30 calls it queued last, as a dashboard of its own would.
    for (let i = 0; i < 3000; i++) {
      const res = await d.inject({
        method: 'POST',
        url: '/api/v1/calls',
        headers: as('campaign'),
        payload: { to: phone(), scriptId: 'campaign' },
      })
      count(res.statusCode)
      if (res.statusCode === 201) ids.push(res.json().data.id)
      tick(4)
      if (i % 250 === 249) {
        count(
          (await d.inject({ method: 'GET', url: '/api/v1/calls?status=PENDING&limit=100', headers: as('campaign') }))
            .statusCode,
        )
        for (const id of ids.slice(-30)) {
          count((await d.inject({ method: 'GET', url: `/api/v1/calls/${id}`, headers: as('campaign') })).statusCode)
        }
      }
    }
    expect(Object.fromEntries(statuses)).toEqual({ 201: 3000, 200: 12 + 12 * 30 })
  }, 120_000)

  it('answers 429 RATE_LIMITED with Retry-After to a burst beyond the limit, and lets the client back in after it', async () => {
    const flood = (n: number, method: 'GET' | 'POST') =>
      Promise.all(
        Array.from({ length: n }, () =>
          d.inject({
            method,
            url: method === 'GET' ? '/api/v1/calls/not-a-uuid' : '/api/v1/calls',
            headers: as('abuser'),
            ...(method === 'POST' ? { payload: {} } : {}),
          }),
        ),
      )
    // writes only: reads are the same mechanism with their own bucket (see the token bucket tests)
    for (const method of ['POST'] as const) {
      const burst = 5000
      const first = await flood(burst, method)
      expect(first.every((r) => r.statusCode === 400)).toBe(true) // invalid, but counted before validation
      const [over] = await flood(1, method)
      expect(over?.statusCode).toBe(429)
      expect(over?.json()).toMatchObject({ success: false, error: { code: 'RATE_LIMITED' } })
      const wait = Number(over?.headers['retry-after'])
      expect(wait).toBeGreaterThanOrEqual(1)
      tick(wait * 1000)
      const [again] = await flood(1, method)
      expect(again?.statusCode).toBe(400)
    }
    // the flood spent the abuser's buckets only
    expect((await d.inject({ method: 'GET', url: '/api/v1/calls', headers: as('campaign') })).statusCode).toBe(200)
  })
})

describe('token buckets', () => {
  it('are configured per second with a burst, or in the older per-window form, not both', () => {
    expect(testConfig().rateLimit).toEqual({ read: { perSec: 500, burst: 5000 }, write: { perSec: 200, burst: 5000 } })
    const legacy = { perSec: 10, burst: 600 }
    expect(testConfig({ RATE_LIMIT_MAX: '600' }).rateLimit).toEqual({ read: legacy, write: legacy })
    expect(() => testConfig({ RATE_LIMIT_MAX: '600', RATE_LIMIT_WRITE_BURST: '10' })).toThrow(/not both/)
  })

  it('let a 100-minute campaign poll every outstanding call every 10 s at the defaults', () => {
    let now = 0
    const l = createRateLimiter(testConfig().rateLimit, () => now)
    let refused = 0
    // 3,000 creates at 250 a second, then 3,000 calls worked off by 30 slots of 1-minute calls (50 a minute) while
    // the client polls each unfinished one every 10 s, in one sweep as fast as its requests go (1 ms each)
    for (let i = 0; i < 3000; i++, now += 4) if (!l.take('write', 'k').ok) refused++
    for (let done = 0; done < 3000; done += 50 / 6) {
      const start = now
      for (let c = Math.floor(done); c < 3000; c++, now += 1) if (!l.take('read', 'k').ok) refused++
      now = Math.max(now, start + 10_000)
    }
    expect(refused).toBe(0)
  })

  it('refill at the rate up to the burst, refuse below one token, and forget idle clients', () => {
    let now = 0
    const l = createRateLimiter({ read: { perSec: 10, burst: 3 }, write: { perSec: 1, burst: 1 } }, () => now)
    expect([1, 2, 3, 4].map(() => l.take('read', 'a').ok)).toEqual([true, true, true, false])
    expect(l.take('read', 'a')).toEqual({ ok: false, retryAfterMs: 100 })
    expect(l.take('write', 'a').ok).toBe(true) // reads and writes apart
    expect(l.take('read', 'b').ok).toBe(true) // clients apart
    now += 100
    expect(l.take('read', 'a').ok).toBe(true)
    expect(l.take('read', 'a').ok).toBe(false)
    now += 10_000
    expect([1, 2, 3, 4].map(() => l.take('read', 'a').ok)).toEqual([true, true, true, false])
    now += 60_000
    l.take('read', 'c')
    expect(l.size).toBe(1)
  })
})
