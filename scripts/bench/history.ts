import { performance } from 'node:perf_hooks'
import { sql } from 'kysely'
import type { Database } from '../../src/db/database.ts'
import { insertCallsForIds } from '../../src/sql/calls.ts'
import { claimDueCalls } from '../../src/sql/claim.ts'
import { dashboardState, recentCalls } from '../../src/sql/dashboard.ts'
import { callSnapshot } from '../../src/sql/metrics.ts'
import { BENCH_API_KEY } from './harness.ts'
import { percentile, round } from './stats.ts'

// Benchmark 8 (issue 14): the reads that used to grow with history, on a database filled with `calls` finished
// calls and 4 history rows each (10M / 40M in the issue; --history-calls=N picks the size, CI runs a small one).
//
// The fill is server-side generate_series in chunks of 500,000 calls, with triggers and foreign-key checks off for
// the filling session (session_replication_role = replica) and the secondary indexes dropped and rebuilt after,
// then call_counts rebuilt from the rows under a lock. It writes what the service would: calls COMPLETED (80 %) or
// FAILED, 1-3 attempts, created over the last 365 days (ids UUIDv7 of that time, as src/ids.ts makes them), with
// CREATED, CLAIMED, DIAL_ACCEPTED and WEBHOOK events.
//
// "Before" runs the statements the previous code ran (copied below) on the same database, so before and after
// share the data, the cache and the machine.

const CHUNK = 500_000

export async function fillHistory(db: Database, calls: number, log: (m: string) => void): Promise<void> {
  await db.connection().execute(async (c) => {
    await sql`set session_replication_role = replica`.execute(c)
    await sql`set maintenance_work_mem = '512MB'`.execute(c)
    const { rows: indexes } = await sql<{ name: string; def: string }>`
      select indexname as name, indexdef as def from pg_indexes
       where tablename in ('calls', 'call_events') and indexname not like '%pkey'`.execute(c)
    for (const i of indexes) await sql`drop index ${sql.id(i.name)}`.execute(c)
    for (let from = 0; from < calls; from += CHUNK) {
      const to = Math.min(calls, from + CHUNK) - 1
      const t0 = performance.now()
      // Each kind of history row goes in its own statement, as the service writes them (creates, claims, accepted
      // dials and webhooks each in their own batches), and a later, smaller row fills the hole a page ends in, as in
      // a table the service grew. Written call by call in one statement, the fill left a hole on nine pages in ten
      // that a CLAIMED row fits, and the benchmark's claims then spread their rows over old pages of the whole year
      // (docs/scaling.md: 184,671 of the first 200,000 pages; a table grown by the service: 6 of 5,225).
      await c.transaction().execute(async (trx) => {
        await sql`create temp table made (id uuid, attempts int, created_at timestamptz) on commit drop`.execute(trx)
        await sql`
          with inserted as (
            insert into calls (id, to_phone, script_id, metadata, status, attempts, next_attempt_at, created_at,
                               updated_at, started_at, ended_at, expires_at, duration_sec, provider_call_id, last_outcome)
            select encode(set_byte(v.b, 6, (get_byte(v.b, 6) & 15) | 112), 'hex')::uuid, '+9665' || lpad((10000000 + i % 89999999)::text, 8, '0'), 'bench-history',
                   '{"campaign": "history"}', case when i % 5 = 0 then 'FAILED' else 'COMPLETED' end, 1 + i % 3,
                   at, at, at + interval '1 minute', at, at + interval '1 minute', at + interval '1 day',
                   case when i % 5 = 0 then null else 45 end, 'sim-' || i,
                   case when i % 5 = 0 then 'NO_ANSWER' else 'COMPLETED' end
              from generate_series(${from}::int, ${to}::int) i,
                   lateral (select now() - interval '365 days' + (i::float8 / ${calls}::float8) * interval '364 days' as at) t,
                   -- a UUIDv7 of the call's created_at, as src/ids.ts makes them
                   lateral (select overlay(uuid_send(gen_random_uuid())
                                    placing substring(int8send((extract(epoch from t.at) * 1000)::int8) from 3)
                                    from 1 for 6) as b) v
            returning id, attempts, created_at
          )
          insert into made select * from inserted
        `.execute(trx)
        for (const [kind, status, detail, after] of [
          ['CREATED', 'PENDING', '{}', '0'],
          ['CLAIMED', 'IN_PROGRESS', '{}', '1 second'],
          ['DIAL_ACCEPTED', null, '{"providerCallId": "sim"}', '2 seconds'],
          ['WEBHOOK', 'COMPLETED', '{"outcome": "applied", "next": "COMPLETED"}', '1 minute'],
        ] as const) {
          await sql`
            insert into call_events (call_id, attempt, kind, status, detail, created_at)
            select id, ${kind === 'CREATED' ? sql`0` : sql`attempts`}, ${kind}, ${status}, ${detail}::jsonb,
                   created_at + ${after}::interval
              from made
          `.execute(trx)
        }
      })
      // Autovacuum runs as the service's table grows (migration 0041: every 2 % of new rows), and only vacuum makes the
      // holes of the new pages visible to later inserts (the free space map's upper levels are updated lazily): without
      // it, a fifth of the old pages kept a hole a CLAIMED row fits.
      await sql`vacuum call_events`.execute(c)
      log(`  filled ${to + 1} calls (${round((performance.now() - t0) / 1000)} s for this chunk)`)
    }
    for (const i of indexes) {
      const t0 = performance.now()
      await sql.raw(i.def).execute(c)
      log(`  rebuilt ${i.name} (${round((performance.now() - t0) / 1000)} s)`)
    }
    await sql`set session_replication_role = origin`.execute(c)
    await c.transaction().execute(async (trx) => {
      await sql`lock table calls in share mode`.execute(trx)
      await sql`delete from call_count_deltas`.execute(trx)
      await sql`delete from call_counts`.execute(trx)
      await sql`insert into call_counts select status, attempts, count(*) from calls group by 1, 2`.execute(trx)
    })
  })
  log('  vacuum analyze')
  await sql`vacuum analyze calls`.execute(db)
  await sql`vacuum analyze call_events`.execute(db)
}

export interface Timing {
  p50: number
  p99: number
  n: number
}

async function time(n: number, run: () => Promise<unknown>, pauseMs = 0): Promise<Timing> {
  for (let i = 0; i < 3; i++) await run()
  const ms: number[] = []
  for (let i = 0; i < n; i++) {
    const t0 = performance.now()
    await run()
    ms.push(performance.now() - t0)
    if (pauseMs) await new Promise((r) => setTimeout(r, pauseMs))
  }
  return { p50: round(percentile(ms, 50), 2), p99: round(percentile(ms, 99), 2), n }
}

// The statements of the code before issue 14, for the "before" column.
const BEFORE = {
  metrics: sql`
    select
      (select coalesce(jsonb_object_agg(status, n), '{}'::jsonb)
         from (select status, count(*)::int as n from calls group by status) s) as by_status,
      (select count(*)::int from calls where status = 'IN_PROGRESS') as in_progress,
      (select count(*)::int from calls where status = 'PENDING' and next_attempt_at <= now() and expires_at > now()) as due_now,
      (select extract(epoch from now() - min(created_at))::float8 from calls where status = 'PENDING') as oldest,
      (select extract(epoch from now() - min(started_at))::float8 from calls where status = 'IN_PROGRESS') as longest,
      f.*
    from (select count(*)::int as finished, avg(attempts)::float8, max(attempts), (count(*) filter (where attempts > 1))::int
            from calls where status in ('COMPLETED', 'FAILED')) f`,
  listFirst: sql`
    select *, (select count(*)::int from calls) as total from calls order by created_at desc, id desc limit 20`,
  listDeep: sql`
    select *, (select count(*)::int from calls where status = 'COMPLETED') as total
      from calls where status = 'COMPLETED' order by created_at desc, id desc limit 20 offset ${5000 * 20 - 20}::int`,
}

export interface HistoryResult {
  calls: number
  events: number
  sizes: Record<string, string>
  before: Record<string, Timing>
  after: Record<string, Timing>
}

/** Reads against the filled database: the service's HTTP endpoints, and the old statements for comparison. */
export async function benchHistoryReads(serviceUrl: string, db: Database, rounds = 50): Promise<HistoryResult> {
  const get = async (path: string) => {
    const res = await fetch(`${serviceUrl}${path}`, { headers: { authorization: `Bearer ${BENCH_API_KEY}` } })
    if (res.status !== 200) throw new Error(`GET ${path}: ${res.status} ${await res.text()}`)
    return res.json() as Promise<{ pagination?: { nextCursor: string | null } }>
  }
  const first = await get('/api/v1/calls?limit=20')
  const cursor = first.pagination?.nextCursor ?? undefined
  const oldCall = (await sql<{ id: string }>`select id from calls order by created_at limit 1`.execute(db)).rows[0]?.id
  const after: Record<string, Timing> = {
    'GET /api/v1/metrics': await time(rounds, () => get('/api/v1/metrics')),
    'metrics and Prometheus query (callSnapshot)': await time(rounds, () => callSnapshot(db)),
    'GET /metrics (Prometheus; cached 1 s, so spaced)': await time(
      10,
      () => fetch(`${serviceUrl}/metrics`).then((r) => r.text()),
      1100,
    ),
    'GET /api/v1/calls?limit=20': await time(rounds, () => get('/api/v1/calls?limit=20')),
    'GET /api/v1/calls?status=COMPLETED&page=5000': await time(rounds, () =>
      get('/api/v1/calls?status=COMPLETED&page=5000&limit=20'),
    ),
    ...(cursor
      ? {
          'GET /api/v1/calls?cursor= (page 2)': await time(rounds, () =>
            get(`/api/v1/calls?limit=20&cursor=${cursor}`),
          ),
        }
      : {}),
    'dashboard queries (dashboardState + recentCalls)': await time(rounds, () =>
      Promise.all([dashboardState(db), recentCalls(db, 20)]),
    ),
    // what `npm run calls -- status` and `-- show <id>` read (scripts/calls.ts)
    'views call_overview + calls_in_progress (CLI status)': await time(rounds, () =>
      Promise.all([
        sql`select * from call_overview`.execute(db),
        sql`select * from calls_in_progress limit 50`.execute(db),
      ]),
    ),
    ...(oldCall
      ? {
          'view call_timeline of a year-old call (CLI show)': await time(rounds, () =>
            sql`select * from call_timeline where call_id = ${oldCall}::uuid`.execute(db),
          ),
        }
      : {}),
  }
  const before: Record<string, Timing> = {
    'metrics query (before)': await time(Math.min(rounds, 10), () => BEFORE.metrics.execute(db)),
    'list page 1 + count(*) (before)': await time(Math.min(rounds, 10), () => BEFORE.listFirst.execute(db)),
    'list COMPLETED page 5000 + count (before)': await time(Math.min(rounds, 10), () => BEFORE.listDeep.execute(db)),
  }
  const { rows } = await sql<{ name: string; size: string }>`
    select relname as name, pg_size_pretty(pg_total_relation_size(oid)) as size from pg_class
     where relname in ('calls', 'call_events') order by relname`.execute(db)
  const counts = await sql<{ calls: number; events: number }>`
    select (select coalesce(sum(n), 0)::int from call_counts_current) as calls,
           (select reltuples::bigint from pg_class where relname = 'call_events') as events`.execute(db)
  return {
    calls: counts.rows[0]?.calls ?? 0,
    events: Number(counts.rows[0]?.events ?? 0),
    sizes: Object.fromEntries(rows.map((r) => [r.name, r.size])),
    before,
    after,
  }
}

export interface WriteSide {
  serviceUrl: string
  db: Database
}

export interface WriteComparison {
  claim: Timing
  freshClaim: Timing
  create: Timing
  freshCreate: Timing
}

/**
 * Claims of 30 from 3,000 due calls (the service's claim function, each undone after, so every claim takes from the
 * same backlog) and single creates through the API, on the filled and on a fresh database in alternating rounds of
 * `perRound`: the machine's load, shared with other work, falls on both alike.
 */
export async function compareWrites(
  filled: WriteSide,
  fresh: WriteSide,
  rounds = 6,
  perRound = 20,
): Promise<WriteComparison> {
  const samples = new Map<string, number[]>()
  const add = (key: string, ms: number) => samples.set(key, [...(samples.get(key) ?? []), ms])
  for (const side of [filled, fresh]) await addDueCalls(side.db)
  let phone = 0
  const createOne = async (url: string) => {
    const res = await fetch(`${url}/api/v1/calls`, {
      method: 'POST',
      headers: { authorization: `Bearer ${BENCH_API_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ to: `+96650${String(1_000_000 + phone++).padStart(7, '0')}`, scriptId: 'bench' }),
    })
    if (res.status !== 201) throw new Error(`create: ${res.status}`)
  }
  for (let r = 0; r < rounds; r++) {
    // the first round of each side warms it up and is not counted
    for (const [name, side] of r % 2 === 0
      ? ([
          ['filled', filled],
          ['fresh', fresh],
        ] as const)
      : ([
          ['fresh', fresh],
          ['filled', filled],
        ] as const)) {
      for (let i = 0; i < perRound; i++) {
        const t0 = performance.now()
        await claimAndUndo(side.db)
        if (r > 0) add(`${name} claim`, performance.now() - t0)
      }
      for (let i = 0; i < perRound; i++) {
        const t0 = performance.now()
        await createOne(side.serviceUrl)
        if (r > 0) add(`${name} create`, performance.now() - t0)
      }
    }
  }
  for (const side of [filled, fresh])
    await sql`delete from calls where script_id in ('bench-claim', 'bench')`.execute(side.db)
  const timing = (key: string): Timing => {
    const ms = samples.get(key) ?? []
    return { p50: round(percentile(ms, 50), 2), p99: round(percentile(ms, 99), 2), n: ms.length }
  }
  return {
    claim: timing('filled claim'),
    freshClaim: timing('fresh claim'),
    create: timing('filled create'),
    freshCreate: timing('fresh create'),
  }
}

/** 3,000 due calls, written as the service writes them (its ids). */
async function addDueCalls(db: Database) {
  const calls = Array.from({ length: 3000 }, (_, i) => ({
    toPhone: `+9665${20_000_001 + i}`,
    scriptId: 'bench-claim',
    metadata: {},
    expiresAt: null,
    idempotencyKey: null,
    requestHash: null,
    campaignId: null,
    scheduledAt: null,
    timeZones: null,
  }))
  await insertCallsForIds(db, calls, 3_600_000)
  await sql`analyze calls`.execute(db)
}

async function claimAndUndo(db: Database) {
  const claimed = await claimDueCalls(db, 100_000, 30)
  if (claimed.length !== 30) throw new Error(`claimed ${claimed.length}`)
  await sql`update calls set status = 'PENDING', attempts = 0, started_at = null
             where id = any(${claimed.map((c) => c.id)}::uuid[])`.execute(db)
}
