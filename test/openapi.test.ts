import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import Fastify, { type FastifyInstance } from 'fastify'
import { astToString, openapiTS } from 'openapi-typegen'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ErrorResponse } from '../src/http/errors.ts'
import { documentRoutes } from '../src/http/openapi.ts'
import { createTestDb, type TestDb } from './db.ts'
import { apiOnly } from './helpers.ts'

// The served OpenAPI document is what client generators read: types generated from it must carry every operation
// under its name, the request shapes and the statuses, and a small client must type-check against them.

let t: TestDb
let app: FastifyInstance
let doc: any

beforeAll(async () => {
  t = await createTestDb()
  app = await apiOnly(t) // no API_KEYS: the document must still say which routes need one
  const res = await app.inject({ method: 'GET', url: '/docs/json' })
  expect(res.statusCode).toBe(200)
  doc = res.json()
})
afterAll(async () => {
  await app.close()
  await t.drop()
})

const OPEN = ['getHealth', 'getPrometheusMetrics', 'receiveCallStatus', 'vapiWebhook', 'retellWebhook']
const OPERATIONS = [
  'createCall',
  'createCallBatch',
  'getCall',
  'listCallEvents',
  'updateCall',
  'cancelCall',
  'createWebhookEndpoint',
  'listWebhookEndpoints',
  'getWebhookEndpoint',
  'updateWebhookEndpoint',
  'deleteWebhookEndpoint',
  'rotateWebhookEndpointSecret',
  'listWebhookDeliveries',
  'listEvents',
  'redeliverEvent',
  'listCalls',
  'getMetrics',
  'getDashboard',
  'createCampaign',
  'listCampaigns',
  'getCampaign',
  'updateCampaign',
  'pauseCampaign',
  'resumeCampaign',
  'cancelCampaign',
  'addSuppression',
  'addSuppressions',
  'listSuppressions',
  'deleteSuppression',
  ...OPEN,
]
const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace']

function operations() {
  return Object.entries(doc.paths).flatMap(([path, item]) =>
    Object.entries(item as Record<string, any>)
      .filter(([method]) => METHODS.includes(method))
      .map(([method, op]) => ({ where: `${method.toUpperCase()} ${path}`, ...op })),
  )
}

const WEBHOOK_OPERATIONS = [
  'createWebhookEndpoint',
  'listWebhookEndpoints',
  'getWebhookEndpoint',
  'updateWebhookEndpoint',
  'deleteWebhookEndpoint',
  'rotateWebhookEndpointSecret',
  'listWebhookDeliveries',
  'listEvents',
  'redeliverEvent',
]

describe('the OpenAPI document', () => {
  it('names every operation with a stable camelCase operationId', () => {
    const ids = operations().map((op) => op.operationId)
    expect(ids.every((id) => typeof id === 'string' && /^[a-z][A-Za-z0-9]*$/.test(id))).toBe(true)
    expect(new Set(ids).size).toBe(ids.length)
    expect([...ids].sort()).toEqual([...OPERATIONS].sort())
  })

  it('declares bearer auth, on the client API only, even when no API_KEYS are set', () => {
    expect(doc.components.securitySchemes.bearer).toMatchObject({ type: 'http', scheme: 'bearer' })
    expect(doc.security).toBeUndefined()
    for (const op of operations()) {
      const open = OPEN.includes(op.operationId)
      expect(op.security, op.where).toEqual(open ? [] : [{ bearer: [] }])
      if (!open) expect(Object.keys(op.responses), op.where).toEqual(expect.arrayContaining(['401', '429']))
    }
  })

  it('documents the statuses each route returns', () => {
    // client webhook routes (docs/webhooks.md) are left out here; the security test above covers their 401/429
    const codes = Object.fromEntries(
      operations()
        .filter((op) => !WEBHOOK_OPERATIONS.includes(op.operationId))
        .map((op) => [op.operationId, Object.keys(op.responses).sort()]),
    )
    const client = ['401', '429', '500']
    const body = ['400', '413', '415']
    expect(codes).toEqual({
      createCall: ['200', '201', '404', '409', '422', ...body, ...client].sort(),
      createCallBatch: ['201', '404', '409', ...body, ...client].sort(),
      getCall: ['200', '400', '404', ...client].sort(),
      listCallEvents: ['200', '400', '404', ...client].sort(),
      updateCall: ['200', '404', '409', '422', ...body, ...client].sort(),
      cancelCall: ['200', '404', '409', ...body, ...client].sort(),
      listCalls: ['200', '400', ...client].sort(),
      getMetrics: ['200', ...client].sort(),
      getDashboard: ['200', ...client].sort(),
      createCampaign: ['201', ...body, ...client].sort(),
      listCampaigns: ['200', '400', ...client].sort(),
      getCampaign: ['200', '400', '404', '409', ...client].sort(),
      updateCampaign: ['200', '404', '409', ...body, ...client].sort(),
      pauseCampaign: ['200', '404', '409', ...body, ...client].sort(),
      resumeCampaign: ['200', '404', '409', ...body, ...client].sort(),
      cancelCampaign: ['200', '404', '409', ...body, ...client].sort(),
      addSuppression: ['200', '404', ...body, ...client].sort(),
      addSuppressions: ['200', '404', ...body, ...client].sort(),
      listSuppressions: ['200', '400', ...client].sort(),
      deleteSuppression: ['200', '404', ...body, ...client].sort(),
      getHealth: ['200', '429', '500', '503'],
      getPrometheusMetrics: ['200', '429', '500'],
      receiveCallStatus: ['200', '401', '404', '409', '500', ...body].sort(),
      vapiWebhook: ['200', '401', '500', ...body].sort(),
      retellWebhook: ['200', '401', '500', ...body].sort(),
    })
    const limited = operations().find((op) => op.operationId === 'createCall')
    expect(limited.responses['429'].headers['retry-after']).toBeDefined()
  })

  it('refuses to start with a route that has no operationId, reuses one, or names an undeclared tag', async () => {
    const withRoute = async (schema: Record<string, unknown>) => {
      const a = Fastify()
      a.addSchema(ErrorResponse)
      a.addHook('onRoute', documentRoutes())
      try {
        a.get('/a', { schema: { operationId: 'getA', tags: ['calls'] } }, async () => 'a')
        a.get('/b', { schema }, async () => 'b')
        await a.ready()
      } finally {
        await a.close()
      }
    }
    await expect(withRoute({ tags: ['calls'] })).rejects.toThrow(/operationId must be a camelCase name/)
    await expect(withRoute({ operationId: 'get-b', tags: ['calls'] })).rejects.toThrow(/camelCase/)
    await expect(withRoute({ operationId: 'getA', tags: ['calls'] })).rejects.toThrow(/already used by GET \/a/)
    await expect(withRoute({ operationId: 'getB', tags: ['nope'] })).rejects.toThrow(/TAGS/)
    await expect(withRoute({ operationId: 'getB', tags: ['calls'] })).resolves.toBeUndefined()
  })

  it('has a server, and a description for every tag it uses', () => {
    expect(doc.servers).toEqual([{ url: '/', description: expect.any(String) }])
    const described = new Map(doc.tags.map((tag: { name: string; description: string }) => [tag.name, tag]))
    for (const op of operations()) for (const tag of op.tags) expect(described.get(tag), op.where).toBeDefined()
  })

  it('answers with the documented error envelope where the app adds a status', async () => {
    // 413 and 415 come from Fastify's parser and pass through the documented ErrorResponse serializer
    const big = await app.inject({
      method: 'POST',
      url: '/api/v1/calls',
      headers: { 'content-type': 'application/json' },
      payload: JSON.stringify({ to: '+966501234567', scriptId: 's', metadata: { x: 'y'.repeat(70_000) } }),
    })
    expect(big.statusCode).toBe(413)
    expect(big.json()).toMatchObject({ success: false, error: { code: 'PAYLOAD_TOO_LARGE' } })
    const text = await app.inject({
      method: 'POST',
      url: '/api/v1/calls',
      headers: { 'content-type': 'application/xml' },
      payload: '<call/>',
    })
    expect(text.statusCode).toBe(415)
    expect(text.json()).toMatchObject({ success: false, error: { code: 'UNSUPPORTED_MEDIA_TYPE' } })
  })
})

// Uses the generated types the way an SDK would; each @ts-expect-error must still be an error, so loosened types fail
// the check as surely as a renamed operation or field.
const CLIENT = `
import type { operations, paths } from './api.d.ts'

type Json<R> = R extends { content: { 'application/json': infer B } } ? B : never
type Op = keyof operations

export const every = ${JSON.stringify(OPERATIONS)} as const satisfies readonly Op[]
type Undocumented = Exclude<Op, (typeof every)[number]>
export const nothingElse: [Undocumented] extends [never] ? true : false = true

export type CreateCallBody = Json<operations['createCall']['requestBody']>
type PatchCallBody = Json<operations['updateCall']['requestBody']>
type ListQuery = NonNullable<operations['listCalls']['parameters']['query']>

// The request shapes exactly: which fields there are, and which are required.
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false
type Required<T> = { [K in keyof T]-?: {} extends Pick<T, K> ? never : K }[keyof T]
export const shapes: [
  Equal<keyof CreateCallBody, 'to' | 'scriptId' | 'metadata' | 'expiresAt' | 'scheduledAt' | 'campaignId'>,
  Equal<Required<CreateCallBody>, 'to' | 'scriptId'>,
  Equal<keyof PatchCallBody, 'to' | 'scriptId' | 'metadata'>,
  Equal<Required<PatchCallBody>, never>,
  Equal<keyof ListQuery, 'status' | 'campaignId' | 'page' | 'limit' | 'cursor'>,
  Equal<Required<ListQuery>, never>,
  Equal<keyof Json<operations['createCallBatch']['requestBody']>, 'campaignId' | 'calls'>,
] = [true, true, true, true, true, true, true]
export type Call = Json<operations['getCall']['responses'][200]>['data']
type ApiError = Json<operations['getCall']['responses'][404]>

export const body: CreateCallBody = {
  to: '+966501234567',
  scriptId: 'welcome.v2',
  metadata: { name: 'Sara' },
  expiresAt: '2030-01-01T00:00:00Z',
}
// @ts-expect-error scriptId is required
export const missing: CreateCallBody = { to: '+966501234567' }
// @ts-expect-error no such field
export const extra: CreateCallBody = { to: '+966501234567', scriptId: 's', priority: 1 }
export const batch: Json<operations['createCallBatch']['requestBody']> = { calls: [body] }
export const minimal: CreateCallBody = { to: '+966501234567', scriptId: 'welcome' }
export const change: PatchCallBody = { scriptId: 'other' }
export const query: ListQuery = { status: 'PENDING', page: 2, limit: 100 }
// @ts-expect-error not a status
export const badQuery: ListQuery = { status: 'DONE' }
export const idempotency: NonNullable<operations['createCall']['parameters']['header']>['idempotency-key'] = 'k-1'
export const pathId: paths['/api/v1/calls/{id}']['get']['parameters']['path']['id'] = 'uuid'

export const statusesOf = {
  created: (r: Json<operations['createCall']['responses'][201]>) => r.data.status,
  replayed: (r: Json<operations['createCall']['responses'][200]>) => r.data.id,
  unauthorized: (r: Json<operations['createCall']['responses'][401]>) => r.error.code,
  limited: (r: Json<operations['createCall']['responses'][429]>) => r.error.code,
  tooLarge: (r: Json<operations['createCall']['responses'][413]>) => r.error.code,
  reused: (r: Json<operations['createCall']['responses'][422]>) => r.error.details,
  notPending: (r: Json<operations['cancelCall']['responses'][409]>) => r.error.message,
  unhealthy: (r: Json<operations['getHealth']['responses'][503]>) => r.database,
}

export async function createCall(base: string, key: string, call: CreateCallBody): Promise<Call> {
  const res = await fetch(base + '/api/v1/calls', {
    method: 'POST',
    headers: { authorization: 'Bearer ' + key, 'content-type': 'application/json' },
    body: JSON.stringify(call),
  })
  if (res.status === 200 || res.status === 201) {
    const ok = (await res.json()) as Json<operations['createCall']['responses'][201]>
    const status: Call['status'] = ok.data.status
    const attempts: number = ok.data.attempts
    void status, attempts
    return ok.data
  }
  const err = (await res.json()) as ApiError
  throw new Error(err.error.code + ': ' + err.error.message)
}

export async function listPending(base: string, key: string): Promise<Call[]> {
  const res = await fetch(base + '/api/v1/calls?status=PENDING&limit=100', { headers: { authorization: 'Bearer ' + key } })
  const page = (await res.json()) as Json<operations['listCalls']['responses'][200]>
  const total: number = page.pagination.total
  void total
  return page.data
}
`

describe('types generated from the served document', () => {
  it('type-check a small client (openapi-typescript, then tsc)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'openapi-client-'))
    try {
      await writeFile(join(dir, 'api.d.ts'), astToString(await openapiTS(doc)))
      await writeFile(join(dir, 'client.ts'), CLIENT)
      await writeFile(
        join(dir, 'tsconfig.json'),
        JSON.stringify({
          compilerOptions: {
            strict: true,
            noEmit: true,
            target: 'es2022',
            module: 'esnext',
            moduleResolution: 'bundler',
            lib: ['es2022', 'dom'],
            types: [],
            allowImportingTsExtensions: true,
            noUncheckedIndexedAccess: true,
          },
          files: ['client.ts'],
        }),
      )
      const tsc = join(process.cwd(), 'node_modules', '.bin', 'tsc')
      const result = await promisify(execFile)(tsc, ['-p', dir]).then(
        () => ({ ok: true, out: '' }),
        (e: { stdout?: string; stderr?: string }) => ({ ok: false, out: `${e.stdout ?? ''}${e.stderr ?? ''}` }),
      )
      expect(result.out).toBe('')
      expect(result.ok).toBe(true)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
