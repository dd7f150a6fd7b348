import { Writable } from 'node:stream'
import { sql } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createDb, createPool } from '../src/db/database.ts'
import { createLogger } from '../src/log.ts'
import { startSimulator } from '../src/providers/simulator.ts'
import { startService } from '../src/service.ts'
import { claimDueCalls } from '../src/sql/claim.ts'
import { createTestDb, type TestDb } from './db.ts'
import { phone, testConfig } from './helpers.ts'
import { callIn } from './seed.ts'

let t: TestDb

beforeAll(async () => {
  t = await createTestDb()
})
afterAll(async () => {
  await t.drop()
})

describe('the claim under a database whose default isolation is REPEATABLE READ', () => {
  it('still runs READ COMMITTED: concurrent claimers never fail and never exceed the cap', async () => {
    // reproduced before: most claims failed with serialization errors
    const name = new URL(t.url).pathname.slice(1)
    await sql.raw(`alter database ${name} set default_transaction_isolation = 'repeatable read'`).execute(t.db)
    const claimers = [1, 2, 3].map(() => createDb(createPool(t.url, 2)))
    try {
      for (let i = 0; i < 60; i++) await callIn(t, 'PENDING', { to: phone(4700 + i) })
      const { rows } = await sql<{ transaction_isolation: string }>`show transaction_isolation`.execute(claimers[0]!)
      expect(rows[0]?.transaction_isolation).toBe('repeatable read')
      const claimed = await Promise.all(
        claimers.flatMap((db) => Array.from({ length: 5 }, () => claimDueCalls(db, 10, 4))),
      )
      expect(claimed.flat()).toHaveLength(10)
      const { rows: live } = await sql<{ n: number }>`
        select count(*)::int as n from calls where status = 'IN_PROGRESS'`.execute(t.db)
      expect(live[0]?.n).toBe(10)
    } finally {
      await sql.raw(`alter database ${name} reset default_transaction_isolation`).execute(t.db)
      for (const db of claimers) await db.destroy()
    }
  })
})

describe('instances with different MAX_CONCURRENT_CALLS on one database', () => {
  it('are told loudly at start-up', async () => {
    const sim = await startSimulator({ callDurationMs: 10 })
    const lines: string[] = []
    const sink = new Writable({
      write(chunk, _enc, done) {
        lines.push(String(chunk))
        done()
      },
    })
    const start = (cap: string) =>
      startService(
        testConfig({ DATABASE_URL: t.url, AI_CALL_API_URL: sim.url, MAX_CONCURRENT_CALLS: cap }),
        createLogger('warn', 'test', sink),
      )
    const first = await start('30')
    const second = await start('50')
    try {
      const warnings = lines.map((l) => JSON.parse(l)).filter((l) => /MAX_CONCURRENT_CALLS differs/.test(l.msg))
      // the second instance at its start; the first one's sweep, which runs beside its claims, may also have read
      // the second's setting already, and says so from its side
      const atStart = warnings.filter((w) => 'previous' in w)
      expect(atStart).toHaveLength(1)
      expect(atStart[0]).toMatchObject({ level: 40, ours: 50, previous: 30 })
      for (const w of warnings.filter((w) => !('previous' in w))) expect(w).toMatchObject({ ours: 30, saved: 50 })
    } finally {
      await second.stop()
      await first.stop()
      await sim.close()
    }
  })
})
