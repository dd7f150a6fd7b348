import { setTimeout as sleep } from 'node:timers/promises'
import { sql } from 'kysely'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { createDb, createPool } from '../../src/db/database.ts'
import { createTestDb, type TestDb } from '../db.ts'
import { phone, waitFor } from '../helpers.ts'
import { dialsPerCall, resetTables, type Stack, startStack } from '../stack.ts'
import { startTcpProxy, type TcpProxy } from '../tcp-proxy.ts'

// The database connection breaking under the service: refused for a moment (a restart, a network blip) while a dial
// result waits to be recorded, and a connection that goes silent (half-open) under a query.

let t: TestDb
let proxy: TcpProxy
let stack: Stack | undefined

beforeAll(async () => {
  t = await createTestDb()
  proxy = await startTcpProxy(Number(new URL(t.url).port))
})
afterEach(async () => {
  await stack?.stop()
  stack = undefined
  await resetTables(t)
})
afterAll(async () => {
  await proxy.close()
  await t.drop()
})

describe('a database that refuses connections while a dial result is recorded', () => {
  it('records the 429 once the database is back, and the call is retried and completes', async () => {
    // reproduced before: the result was only logged; the call held its slot until CALL_TIMEOUT and ended FAILED
    stack = await startStack(t, { DATABASE_URL: proxy.via(t.url), MAX_RETRY_ATTEMPTS: '1' }, { callDurationMs: 10 })
    let dials = 0
    stack.sim.configure({
      fault: { kind: 'throttle', retryAfterSec: 0 },
      beforeAnswer: async () => {
        dials++
        if (dials === 1) {
          proxy.refuse(1500) // every connection dropped, new ones refused for 1.5 s
          await sleep(20)
        } else stack?.sim.configure({ fault: { kind: 'none' } })
      },
    })
    const [id] = await stack.createCalls(1, () => phone())
    const [call] = await stack.waitAllFinal(20_000)
    expect(call).toMatchObject({ id, status: 'COMPLETED', attempts: 1 })
    expect(dialsPerCall(stack.sim).get(id as string)).toHaveLength(1) // the 429 is not counted as a dial
    const kinds = await t.db.selectFrom('call_events').select('kind').where('call_id', '=', id!).orderBy('id').execute()
    expect(kinds.map((k) => k.kind)).toEqual([
      'CREATED',
      'CLAIMED',
      'DIAL_THROTTLED',
      'CLAIMED',
      'DIAL_ACCEPTED',
      'WEBHOOK',
    ])
  }, 30_000)
})

describe('a connection that stops answering', () => {
  it('is dropped a little after statement_timeout, and the next query gets a fresh one', async () => {
    const db = createDb(createPool(proxy.via(t.url), 2, { statementTimeoutMs: 500 }))
    try {
      const { rows } = await sql<{ statement_timeout: string }>`show statement_timeout`.execute(db)
      expect(rows[0]?.statement_timeout).toBe('500ms')
      proxy.freeze() // the open connection goes silent, without a reset
      const started = Date.now()
      await expect(sql`select 1`.execute(db)).rejects.toThrow(/Connection terminated/)
      expect(Date.now() - started).toBeLessThan(3000)
      expect((await sql<{ one: number }>`select 1 as one`.execute(db)).rows).toEqual([{ one: 1 }])
    } finally {
      await db.destroy()
    }
  })

  it('does not stall the dispatcher: calls go on completing after its connections froze', async () => {
    stack = await startStack(
      t,
      { DATABASE_URL: proxy.via(t.url), DB_STATEMENT_TIMEOUT_MS: '1000' },
      { callDurationMs: 300 },
    )
    const first = await stack.createCalls(5, (i) => phone(4500 + i))
    await waitFor('the first calls to be in progress', () => stack!.sim.stats().accepted >= 5)
    proxy.freeze() // every connection open now (the service's, pg-boss's) goes silent mid-call
    const calls = await stack.waitAllFinal(30_000)
    expect(calls.map((c) => [c.id, c.status]).sort()).toEqual(first.map((id) => [id, 'COMPLETED']).sort())
    // and new work still flows, on fresh connections
    const second = await stack.createCalls(5, (i) => phone(4600 + i))
    const after = await stack.waitAllFinal(30_000)
    expect(after.filter((c) => second.includes(c.id)).every((c) => c.status === 'COMPLETED')).toBe(true)
  }, 60_000)
})
