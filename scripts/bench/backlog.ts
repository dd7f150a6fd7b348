import { type Kysely, sql } from 'kysely'
import pg from 'pg'
import type { DB } from '../../src/db/database.ts'
import { claimDueCalls } from '../../src/sql/claim.ts'
import { createInBatches } from './create.ts'
import { CAP } from './dispatch.ts'
import { apiClient } from './load.ts'
import { benchPhone, median, round, sleep } from './stats.ts'

// Benchmark 6: does a deep backlog slow the hot statements down? Two databases side by side, one with 1,000 and
// one with 100,000 PENDING calls, each with its own service process dialing a simulator whose calls never end, so
// both hold CAP calls IN_PROGRESS and the rest stay PENDING. Rounds alternate between them.

export interface BacklogSide {
  label: string
  serviceUrl: string
  databaseUrl: string
  db: Kysely<DB>
}

class Rollback extends Error {}

/**
 * The dispatcher's own claim (src/sql/claim.ts), asked for CAP more slots than are taken, then rolled back so every
 * round sees the same backlog. Returns the claim's time in ms and the rows it claimed.
 */
async function timeClaim(db: Kysely<DB>): Promise<{ ms: number; rows: number }> {
  let out = { ms: 0, rows: 0 }
  await db
    .transaction()
    .execute(async (trx) => {
      const t0 = performance.now()
      const rows = await claimDueCalls(trx, 2 * CAP, CAP)
      out = { ms: performance.now() - t0, rows: rows.length }
      throw new Rollback()
    })
    .catch((err) => {
      if (!(err instanceof Rollback)) throw err
    })
  return out
}

/**
 * EXPLAIN ANALYZE of the statement inside claim_due_calls, as the function runs it (its plan cache, its SET
 * clauses): auto_explain reports nested statements to the client as notices. Rolled back.
 */
async function explainClaim(url: string): Promise<string[]> {
  const client = new pg.Client({ connectionString: url })
  const notices: string[] = []
  client.on('notice', (n) => notices.push(n.message ?? ''))
  await client.connect()
  try {
    await client.query('begin')
    await client.query("load 'auto_explain'")
    for (const setting of [
      'log_min_duration = 0',
      'log_analyze = on',
      'log_buffers = on',
      'log_nested_statements = on',
      "log_level = 'notice'",
    ])
      await client.query(`set local auto_explain.${setting}`)
    await client.query('select * from claim_due_calls($1, $2)', [2 * CAP, CAP])
    await client.query('rollback')
  } finally {
    await client.end()
  }
  // the claim's one statement inside claim_due_calls() (migration 0042 and later: it reads the free slots first)
  const claim = notices.find((n) => /Query Text: with live as|with free as/.test(n))
  if (!claim) throw new Error(`auto_explain reported no plan for the claim statement: ${notices.join('\n')}`)
  return claim.split('\n').filter((line) => !/^\s*$/.test(line))
}

let createSeq = 50_000_000

async function timeCreates(serviceUrl: string, n: number): Promise<number[]> {
  const api = apiClient(serviceUrl, 1)
  const out: number[] = []
  try {
    for (let i = 0; i < n; i++) {
      const t0 = performance.now()
      await api.post('/api/v1/calls', { to: benchPhone(createSeq++), scriptId: 'backlog' })
      out.push(performance.now() - t0)
    }
  } finally {
    await api.close()
  }
  return out
}

async function pendingCount(db: Kysely<DB>) {
  const { rows } = await sql<{ n: number }>`select count(*)::int as n from calls where status = 'PENDING'`.execute(db)
  return rows[0]?.n ?? 0
}

async function inProgressCount(db: Kysely<DB>) {
  const { rows } = await sql<{ n: number }>`select count(*)::int as n from calls where status = 'IN_PROGRESS'`.execute(
    db,
  )
  return rows[0]?.n ?? 0
}

export interface BacklogResult {
  pending: Record<string, number>
  loadSeconds: Record<string, number>
  claimMedianMs: Record<string, number>
  createMedianMs: Record<string, number>
  claimRatio: number
  createRatio: number
  claimedRows: number
  plan100k: string[]
  planUsesDispatchIndex: boolean
  planSeqScanOnCalls: boolean
}

export async function benchBacklog(small: BacklogSide, large: BacklogSide, sizes: [number, number]) {
  const loadSeconds: Record<string, number> = {}
  for (const [side, size] of [
    [small, sizes[0]],
    [large, sizes[1]],
  ] as const) {
    // CAP of them are dialed at once and stay IN_PROGRESS (the simulator's calls never end): load CAP more.
    const r = await createInBatches(side.serviceUrl, size + CAP, 4, 'backlog')
    loadSeconds[side.label] = round(r.seconds, 2)
  }
  for (const side of [small, large]) {
    const deadline = Date.now() + 30_000
    while ((await inProgressCount(side.db)) < CAP) {
      if (Date.now() > deadline) throw new Error(`${side.label}: the dispatcher did not fill ${CAP} slots`)
      await sleep(50)
    }
  }
  const pending = { [small.label]: await pendingCount(small.db), [large.label]: await pendingCount(large.db) }
  // Statistics as autovacuum leaves them once it has seen the backlog: the steady state. (Before that, the claim's
  // plan is pinned anyway; see src/sql/claim.ts.)
  for (const side of [small, large]) await sql`analyze calls`.execute(side.db)

  const claims: Record<string, number[]> = { [small.label]: [], [large.label]: [] }
  const creates: Record<string, number[]> = { [small.label]: [], [large.label]: [] }
  let claimedRows = Number.POSITIVE_INFINITY
  for (const side of [small, large]) await timeClaim(side.db) // warm-up
  for (let round = 0; round < 5; round++) {
    for (const side of round % 2 === 0 ? [small, large] : [large, small]) {
      for (let i = 0; i < 10; i++) {
        const c = await timeClaim(side.db)
        claims[side.label]?.push(c.ms)
        claimedRows = Math.min(claimedRows, c.rows)
      }
      creates[side.label]?.push(...(await timeCreates(side.serviceUrl, 40)))
    }
  }
  const plan100k = await explainClaim(large.databaseUrl)
  const claimMedianMs = Object.fromEntries(Object.entries(claims).map(([k, v]) => [k, round(median(v), 3)]))
  const createMedianMs = Object.fromEntries(Object.entries(creates).map(([k, v]) => [k, round(median(v), 3)]))
  const ratio = (m: Record<string, number>) => round((m[large.label] as number) / (m[small.label] as number), 2)
  return {
    pending,
    loadSeconds,
    claimMedianMs,
    createMedianMs,
    claimRatio: ratio(claimMedianMs),
    createRatio: ratio(createMedianMs),
    claimedRows,
    plan100k,
    planUsesDispatchIndex: plan100k.some((l) => l.includes('calls_dispatch_queue')),
    planSeqScanOnCalls: plan100k.some((l) => /Seq Scan on calls/.test(l)),
  } satisfies BacklogResult
}
