import { sql } from 'kysely'
import { Webhook } from 'standardwebhooks'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { createTestDb, type TestDb } from './db.ts'
import { phone, waitFor } from './helpers.ts'
import { type Received, type Receiver, startReceiver } from './receiver.ts'
import { resetTables, type Stack, startStack } from './stack.ts'

// Client webhooks end to end: the service in-process on a real database, dialing the simulator, delivering to real
// HTTP receivers on 127.0.0.1, with retry delays of a few hundred milliseconds.

const WEBHOOK_ENV = {
  WEBHOOK_RETRY_BASE_DELAY_MS: '100',
  WEBHOOK_RETRY_MAX_DELAY_MS: '400',
  WEBHOOK_TIMEOUT_MS: '1000',
  WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true',
}

let t: TestDb
let s: Stack
const receivers: Receiver[] = []

beforeAll(async () => {
  t = await createTestDb()
  s = await startStack(t, WEBHOOK_ENV)
})
afterEach(async () => {
  for (const r of receivers.splice(0)) await r.close()
  await sql`delete from webhook_endpoints`.execute(t.db)
  await resetTables(t)
})
afterAll(async () => {
  await s?.stop()
  await t?.drop()
})

async function receiver(respond?: Parameters<typeof startReceiver>[0]) {
  const r = await startReceiver(respond)
  receivers.push(r)
  return r
}

async function endpoint(body: object): Promise<{ id: string; secret: string }> {
  const res = await s.api('POST', '/api/v1/webhook-endpoints', body)
  expect(res.statusCode).toBe(201)
  return res.body.data
}

const byCall = (rs: Received[]) => {
  const m = new Map<string, Received[]>()
  for (const r of rs) m.set(r.json.data.call.id, [...(m.get(r.json.data.call.id) ?? []), r])
  return m
}

/** Every request for event n+1 of a call came after event n was acknowledged. */
function expectOrderedPerCall(all: Received[]) {
  for (const [, rs] of byCall(all)) {
    const ackedAt = new Map<number, number>()
    for (const r of rs) {
      const seq = r.json.data.sequence
      if (seq > 1) {
        const prev = ackedAt.get(seq - 1)
        expect(prev, `event ${seq} sent before ${seq - 1} was acknowledged`).toBeDefined()
        expect(r.at).toBeGreaterThanOrEqual(prev as number)
      }
      if (r.status >= 200 && r.status < 300 && !ackedAt.has(seq)) ackedAt.set(seq, r.at)
    }
  }
}

describe('client webhooks', () => {
  it('signs every event (verified with standardwebhooks) and sends each call its events in order', async () => {
    const r = await receiver()
    const ep = await endpoint({ url: r.url })
    const ids = await s.createCalls(5, (i) => phone(1000 + i))
    await s.waitAllFinal()
    await waitFor('3 events per call', () => r.acknowledged().length >= 15)
    const wh = new Webhook(ep.secret)
    for (const x of r.received) {
      const verified = wh.verify(x.body, x.headers as Record<string, string>) as Received['json']
      expect(verified.type).toBe(x.json.type)
      expect(x.headers['webhook-signature']).toMatch(/^v1,[A-Za-z0-9+/=]+$/)
    }
    const calls = byCall(r.acknowledged())
    expect([...calls.keys()].sort()).toEqual([...ids].sort())
    for (const id of ids) {
      const events = calls.get(id) as Received[]
      expect(events.map((e) => e.json.type)).toEqual(['call.created', 'call.started', 'call.completed'])
      expect(events.map((e) => e.json.data.sequence)).toEqual([1, 2, 3])
      // the final event's call is the call as GET /calls/:id shows it
      const get = await s.api('GET', `/api/v1/calls/${id}`)
      expect(events[2]?.json.data.call).toEqual(get.body.data)
    }
    // the secret never appears again
    const list = await s.api('GET', '/api/v1/webhook-endpoints')
    expect(JSON.stringify(list.body)).not.toContain(ep.secret)
    expect(JSON.stringify((await s.api('GET', `/api/v1/webhook-endpoints/${ep.id}`)).body)).not.toContain('whsec_')
  })
})
