import { request } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createTestDb, type TestDb } from './db.ts'
import { apiOnly, phone } from './helpers.ts'

let t: TestDb
let app: FastifyInstance
let base: string

beforeAll(async () => {
  t = await createTestDb()
  app = await apiOnly(t, { API_KEYS: 'key-one,key-two' })
  await app.listen({ port: 0, host: '127.0.0.1' })
  base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
})
afterAll(async () => {
  await app.close()
  await t.drop()
})

const list = (authorization?: string) =>
  app.inject({ method: 'GET', url: '/api/v1/calls', headers: authorization ? { authorization } : {} })

/** One request over a real socket with the path sent byte for byte (fetch and inject would normalize it). */
function raw(method: string, path: string, headers: Record<string, string> = {}) {
  return new Promise<{ status: number; body: string }>((resolve, reject) => {
    const body = method === 'GET' || method === 'HEAD' ? undefined : JSON.stringify({ to: phone(), scriptId: 's' })
    const req = request(
      `${base}/`,
      { method, path, headers: { ...headers, ...(body ? { 'content-type': 'application/json' } : {}) } },
      (res) => {
        let text = ''
        res.on('data', (c) => {
          text += c
        })
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }))
      },
    )
    req.on('error', reject)
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
        expect([401, 404], `${method} ${v}: ${res.status} ${res.body}`).toContain(res.status)
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
