import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLogger } from '../src/log.ts'
import { sign } from '../src/providers/signature.ts'
import { type Simulator, startSimulator } from '../src/providers/simulator.ts'
import { type Service, startService } from '../src/service.ts'
import { testConfig, waitFor } from './helpers.ts'
import { useTestDb } from './kit.ts'
import { FAST } from './stack.ts'

// What the service logs at debug level during a run with keys and secrets set: no key, secret or signature, no
// whole phone number, and a request id on request lines.

const API_KEY = 'client-key-1c3f9a'
const SECRET = 'whsec-9b2e77'
const PROVIDER_KEY = 'provider-key-44aa'
const PHONE = '+966501234567'

const t = useTestDb()
let sim: Simulator
let svc: Service
const lines: string[] = []

beforeAll(async () => {
  sim = await startSimulator({ callDurationMs: 20, webhookSecret: SECRET, apiKey: PROVIDER_KEY })
  const log = createLogger('debug', 'test', { write: (line: string) => void lines.push(line) })
  svc = await startService(
    testConfig({
      DATABASE_URL: t.url,
      AI_CALL_API_URL: sim.url,
      AI_CALL_API_KEY: PROVIDER_KEY,
      API_KEYS: API_KEY,
      WEBHOOK_SECRET: SECRET,
      LOG_LEVEL: 'debug',
      ...FAST,
    }),
    log,
  )
})
afterAll(async () => {
  await svc.stop()
  await sim.close()
})

describe('logs', () => {
  it('carry no secret, no signature and no whole phone number', async () => {
    const auth = { authorization: `Bearer ${API_KEY}` }
    const res = await svc.app.inject({
      method: 'POST',
      url: '/api/v1/calls',
      headers: auth,
      payload: { to: PHONE, scriptId: 'logs' },
    })
    expect(res.statusCode).toBe(201)
    const id = res.json().data.id
    await waitFor('the call to complete', async () => {
      const r = await svc.app.inject({ method: 'GET', url: `/api/v1/calls/${id}`, headers: auth })
      return r.json().data.status === 'COMPLETED'
    })
    // a refused key and a refused signature are logged too
    await svc.app.inject({ method: 'GET', url: '/api/v1/calls', headers: { authorization: 'Bearer wrong-key-77' } })
    const body = JSON.stringify({ callId: 'x', status: 'COMPLETED' })
    const badSignature = sign('not-the-secret', body)
    await svc.app.inject({
      method: 'POST',
      url: `/api/v1/callbacks/call-status?call=${id}&attempt=1`,
      headers: { 'content-type': 'application/json', 'x-signature': badSignature },
      payload: body,
    })

    const text = lines.join('')
    expect(lines.length).toBeGreaterThan(5)
    for (const secret of [
      API_KEY,
      SECRET,
      PROVIDER_KEY,
      'wrong-key-77',
      badSignature.split('v1=')[1] as string,
      PHONE,
      '501234567',
    ]) {
      expect(text).not.toContain(secret)
    }
    const requestLines = lines.map((l) => JSON.parse(l)).filter((l) => l.msg === 'request')
    expect(requestLines.length).toBeGreaterThan(0)
    for (const l of requestLines) expect(l.reqId).toBeTruthy()
  })
})
