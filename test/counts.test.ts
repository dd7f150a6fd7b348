import { sql } from 'kysely'
import pg from 'pg'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createLogger } from '../src/log.ts'
import { createHousekeeping } from '../src/ops/housekeeping.ts'
import { compactCallCounts } from '../src/sql/counts.ts'
import { callSnapshot } from '../src/sql/metrics.ts'
import { deleteExpiredHistory } from '../src/sql/retention.ts'
import { phone } from './helpers.ts'
import { useTestDb } from './kit.ts'
import { callIn } from './seed.ts'
import { resetTables, type Stack, startStack } from './stack.ts'

// Migration 0040's counts and the retention job: the counts equal a count of the table in every snapshot, whatever
// ran (creates, claims, webhooks, retries, cancels, expiry, operator functions, deletes, concurrent transactions),
// and retention deletes exactly the old finished calls with their history.

const t = useTestDb()
let stack: Stack | undefined

beforeEach(async () => {
  await resetTables(t)
})
afterEach(async () => {
  await stack?.stop()
  stack = undefined
})

type Counts = Record<string, number>

/** The counts and a real count of calls, read in one REPEATABLE READ snapshot: they must be equal at any moment. */
async function bothCounts(client: pg.Client): Promise<{ counted: Counts; kept: Counts }> {
  await client.query('begin isolation level repeatable read')
  try {
    const real = await client.query<{ k: string; n: number }>(
      `select status || '/' || attempts as k, count(*)::int as n from calls group by 1`,
    )
    const kept = await client.query<{ k: string; n: number }>(
      `select status || '/' || attempts as k, n::int as n from call_counts_current`,
    )
    return {
      counted: Object.fromEntries(real.rows.map((r) => [r.k, r.n])),
      kept: Object.fromEntries(kept.rows.map((r) => [r.k, r.n])),
    }
  } finally {
    await client.query('commit')
  }
}

describe('call counts', () => {
  it('equal a count of calls in every snapshot during a mixed run with concurrent writers', async () => {
    stack = await startStack(
      t,
      { MAX_CONCURRENT_CALLS: '8', MAX_RETRY_ATTEMPTS: '3', RETRY_BASE_DELAY_MS: '50', RETRY_MAX_DELAY_MS: '100' },
      { callDurationMs: 20, outcomes: { COMPLETED: 3, FAILED: 1, BUSY: 1, NO_ANSWER: 1 } },
    )
    const s = stack
    const reader = new pg.Client({ connectionString: t.url })
    await reader.connect()
    const mismatches: { counted: Counts; kept: Counts }[] = []
    let samples = 0
    let running = true
    // Concurrent readers and compactors while everything below runs.
    const watch = (async () => {
      while (running) {
        const b = await bothCounts(reader)
        samples++
        if (JSON.stringify(sortKeys(b.counted)) !== JSON.stringify(sortKeys(b.kept))) mismatches.push(b)
      }
    })()
    const compactor = (async () => {
      while (running) {
        await compactCallCounts(t.db)
        await new Promise((r) => setTimeout(r, 5))
      }
    })()

    try {
      // Creates by batch and one by one from parallel connections, cancels racing the dispatcher, calls that expire,
      // operator functions.
      const ids = await s.createCalls(120, (i) => phone(i % 40)) // shared phones: some wait for another call to end
      await Promise.all(
        Array.from({ length: 20 }, (_, i) => s.api('POST', '/api/v1/calls', { to: phone(1000 + i), scriptId: 's' })),
      )
      await Promise.all(ids.slice(0, 30).map((id) => s.api('POST', `/api/v1/calls/${id}/cancel`)))
      // calls that expire before they are due (the sweep expires them)
      await sql`
        insert into calls (to_phone, script_id, next_attempt_at, expires_at)
        select '+9665' || (30000000 + i)::text, 's', now() + interval '1 hour', now() + interval '200 milliseconds'
          from generate_series(1, 10) i`.execute(t.db)
      await s.waitAllFinal(60_000)
      const { rows: failed } = await sql<{ id: string }>`select id from calls where status = 'FAILED' limit 5`.execute(
        t.db,
      )
      for (const f of failed) await sql`select retry_call(${f.id}::uuid)`.execute(t.db)
      await s.createCalls(10, (i) => phone(2000 + i))
      await sql`select cancel_pending_calls()`.execute(t.db)
      await s.waitAllFinal(60_000)
      await sql`delete from calls where id in (select id from calls where status = 'CANCELED' limit 7)`.execute(t.db)
    } finally {
      running = false
      await Promise.allSettled([watch, compactor])
    }
    const end = await bothCounts(reader)
    await reader.end()

    expect(mismatches).toEqual([])
    expect(samples).toBeGreaterThan(10)
    expect(sortKeys(end.kept)).toEqual(sortKeys(end.counted))
    // the run really went through the statuses and retries the counts must follow
    for (const status of ['COMPLETED', 'FAILED', 'EXPIRED', 'CANCELED'])
      expect(Object.keys(end.counted).some((k) => k.startsWith(`${status}/`))).toBe(true)
    expect(Object.keys(end.counted).some((k) => /\/[2-9]$/.test(k))).toBe(true)
    await compactCallCounts(t.db)
    const { rows } = await sql<{ n: number }>`select count(*)::int as n from call_count_deltas`.execute(t.db)
    expect(rows[0]?.n).toBe(0)
    const after = await connected(t.url)
    expect(sortKeys((await bothCounts(after)).kept)).toEqual(sortKeys(end.counted))
    await after.end()
  }, 120_000)

  it('give the metrics the same figures a scan of calls gives', async () => {
    await callIn(t, 'PENDING')
    await callIn(t, 'IN_PROGRESS')
    await callIn(t, 'COMPLETED', { attempts: 1 })
    await callIn(t, 'COMPLETED', { attempts: 3 })
    await callIn(t, 'FAILED', { attempts: 2 })
    await callIn(t, 'EXPIRED', { attempts: 0 })
    const s = await callSnapshot(t.db)
    expect(s.byStatus).toEqual({ PENDING: 1, IN_PROGRESS: 1, COMPLETED: 2, FAILED: 1, EXPIRED: 1 })
    expect(s.inProgress).toBe(1)
    expect(s.attempts).toEqual({ finished: 3, average: 2, max: 3, retried: 2 })
    // the max follows deletions: a stored maximum could not
    await sql`delete from calls where attempts = 3`.execute(t.db)
    expect((await callSnapshot(t.db)).attempts).toEqual({ finished: 2, average: 1.5, max: 2, retried: 1 })
  })

  it('are emptied by TRUNCATE', async () => {
    await callIn(t, 'COMPLETED')
    await compactCallCounts(t.db)
    await callIn(t, 'FAILED')
    await sql`truncate calls cascade`.execute(t.db)
    expect((await callSnapshot(t.db)).byStatus).toEqual({})
  })
})

describe('retention', () => {
  const age = (id: string, days: number, ended = days) =>
    sql`update calls set created_at = now() - make_interval(days => ${days}::int),
                         ended_at = case when ended_at is null then null else now() - make_interval(days => ${ended}::int) end
         where id = ${id}::uuid`.execute(t.db)
  const exists = async (id: string) =>
    (await t.db.selectFrom('calls').select('id').where('id', '=', id).executeTakeFirst()) !== undefined
  const events = async (id: string) =>
    (await sql<{ n: number }>`select count(*)::int as n from call_events where call_id = ${id}::uuid`.execute(t.db))
      .rows[0]?.n

  it('deletes finished calls older than RETENTION_DAYS with their history, and nothing else', async () => {
    const old: string[] = []
    for (const status of ['COMPLETED', 'FAILED', 'EXPIRED', 'CANCELED'] as const) {
      for (let i = 0; i < 3; i++) {
        const id = await callIn(t, status)
        await age(id, 91)
        old.push(id)
      }
    }
    const recent = await callIn(t, 'COMPLETED')
    await age(recent, 30)
    const endedRecently = await callIn(t, 'FAILED') // created long ago, retried by an operator, ended 10 days ago
    await age(endedRecently, 200, 10)
    const oldPending = await callIn(t, 'PENDING', { expiresInSec: 86_400 })
    await age(oldPending, 120)
    const oldInProgress = await callIn(t, 'IN_PROGRESS')
    await age(oldInProgress, 120)
    expect(await events(old[0] as string)).toBeGreaterThan(0)

    const housekeeping = createHousekeeping({
      db: t.db,
      log: createLogger('silent', 'test'),
      retentionDays: 90,
      batch: 5,
      pauseMs: 1,
    })
    expect(await housekeeping.runRetention()).toEqual({ calls: 12, events: 12 })

    for (const id of old) {
      expect(await exists(id)).toBe(false)
      expect(await events(id)).toBe(0)
    }
    for (const id of [recent, endedRecently, oldPending, oldInProgress]) expect(await exists(id)).toBe(true)
    expect((await callSnapshot(t.db)).byStatus).toEqual({ COMPLETED: 1, FAILED: 1, PENDING: 1, IN_PROGRESS: 1 })
    expect(await housekeeping.runRetention()).toEqual({ calls: 0, events: 0 })
  })

  it('keeps everything with RETENTION_DAYS=0 and leaves a batch to the instance holding the lock', async () => {
    const id = await callIn(t, 'COMPLETED')
    await age(id, 400)
    const keepAll = createHousekeeping({ db: t.db, log: createLogger('silent', 'test'), retentionDays: 0 })
    expect(await keepAll.runRetention()).toEqual({ calls: 0, events: 0 })

    const other = await connected(t.url)
    await other.query('begin')
    await other.query('select pg_advisory_xact_lock(1128352844, 41)')
    expect(await deleteExpiredHistory(t.db, 90, 100)).toEqual({ locked: false, calls: 0, events: 0 })
    await other.query('commit')
    await other.end()
    expect(await deleteExpiredHistory(t.db, 90, 100)).toEqual({ locked: true, calls: 1, events: 1 })
  })
})

function sortKeys(o: Counts): Counts {
  return Object.fromEntries(Object.entries(o).sort(([a], [b]) => (a < b ? -1 : 1)))
}

async function connected(url: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  return c
}
