import type { Kysely } from 'kysely'
import { sql } from 'kysely'
import type { DB } from '../../src/db/database.ts'
import type { Simulator } from '../../src/providers/simulator.ts'
import { createInBatches } from './create.ts'
import { round, sleep } from './stats.ts'

// Benchmark 15 (issue 14 §2): how big the database is after N calls went through the dispatcher, really dialed
// through the simulator (zero-length calls, each ending COMPLETED in one attempt), with migration 0041's storage
// settings and with them reset in the same kind of database. The calls are created through the API in chunks while
// the dispatcher works, so the backlog stays small as in production, and every row the service writes for a call
// (calls, call_events, the counts, pg-boss's wake-up jobs) is in the figure.

/** The reloptions migration 0041 sets; "before" resets them after the service migrated its database. */
export const RESET_0041 = [
  `alter table calls reset (fillfactor, autovacuum_vacuum_scale_factor, autovacuum_analyze_scale_factor,
                            autovacuum_vacuum_insert_scale_factor)`,
  `alter table call_events reset (autovacuum_vacuum_scale_factor, autovacuum_analyze_scale_factor,
                                  autovacuum_vacuum_insert_scale_factor)`,
]

const CHUNK = 10_000

export interface TableSize {
  table: string
  /** pg_total_relation_size: heap, indexes, TOAST, free space and visibility maps. */
  totalBytes: number
  /** pg_relation_size: the heap's main fork. */
  heapBytes: number
  /** pg_indexes_size: every index of the table. */
  indexBytes: number
  liveTuples: number
  deadTuples: number
  autovacuums: number
  indexes: { index: string; bytes: number }[]
}

export interface SizesArm {
  settings: 'reset (before 0041)' | 'migration 0041 (after)'
  calls: number
  seconds: number
  callsPerSec: number
  reloptions: Record<string, string[] | null>
  tables: TableSize[]
  totalBytes: number
  bytesPerCall: number
  /** Simulator checks over the whole run. */
  maxActive: number
  phoneOverlaps: number
  duplicates: number
  notCompletedOnce: number
}

async function completedCount(db: Kysely<DB>): Promise<number> {
  const { rows } = await sql<{ n: string | null }>`
    select sum(n) as n from call_counts_current where status = 'COMPLETED'`.execute(db)
  return Number(rows[0]?.n ?? 0)
}

/**
 * Feeds `calls` calls through the service at `serviceUrl` (a fresh database; the simulator answers with zero-length
 * calls) and waits until every one is COMPLETED. Keeps at most two chunks waiting so the claim sees a production-like
 * backlog.
 */
export async function runCalls(
  serviceUrl: string,
  db: Kysely<DB>,
  sim: Simulator,
  calls: number,
  log: (m: string) => void,
) {
  sim.configure({ callDurationMs: 0 })
  sim.resetStats()
  let created = 0
  let maxActive = 0
  let phoneOverlaps = 0
  let duplicates = 0
  let lastLog = Date.now()
  const started = performance.now()
  for (;;) {
    const done = await completedCount(db)
    // The simulator's dial records grow with every call: fold its checks in and start it afresh each chunk.
    const s = sim.stats()
    if (s.dials.length > CHUNK) {
      maxActive = Math.max(maxActive, s.maxActive)
      phoneOverlaps += s.phoneOverlaps
      duplicates += s.duplicates
      sim.resetStats()
    }
    if (done >= calls) break
    if (created < calls && created - done < 2 * CHUNK) {
      const n = Math.min(CHUNK, calls - created)
      await createInBatches(serviceUrl, n, 2, 'sizes')
      created += n
    } else {
      await sleep(200)
    }
    if (Date.now() - lastLog > 30_000) {
      lastLog = Date.now()
      log(`  ${done} of ${calls} calls completed`)
    }
  }
  const seconds = (performance.now() - started) / 1000
  const s = sim.stats()
  return {
    seconds,
    maxActive: Math.max(maxActive, s.maxActive),
    phoneOverlaps: phoneOverlaps + s.phoneOverlaps,
    duplicates: duplicates + s.duplicates,
  }
}

/** Sizes of every table of the public and pgboss schemas that holds anything, largest first. */
export async function tableSizes(db: Kysely<DB>): Promise<TableSize[]> {
  const { rows } = await sql<{
    table: string
    total_bytes: string
    heap_bytes: string
    index_bytes: string
    live: string
    dead: string
    autovacuums: string
    indexes: { index: string; bytes: number }[]
  }>`
    select n.nspname || '.' || c.relname as table,
           pg_total_relation_size(c.oid) as total_bytes,
           pg_relation_size(c.oid) as heap_bytes,
           pg_indexes_size(c.oid) as index_bytes,
           coalesce(s.n_live_tup, 0) as live,
           coalesce(s.n_dead_tup, 0) as dead,
           coalesce(s.autovacuum_count, 0) as autovacuums,
           coalesce((select json_agg(json_build_object('index', ic.relname, 'bytes', pg_relation_size(ic.oid))
                                     order by pg_relation_size(ic.oid) desc)
                       from pg_index i join pg_class ic on ic.oid = i.indexrelid
                      where i.indrelid = c.oid), '[]') as indexes
      from pg_class c
      join pg_namespace n on n.oid = c.relnamespace
      left join pg_stat_user_tables s on s.relid = c.oid
     where c.relkind in ('r', 'p') and n.nspname in ('public', 'pgboss')
       and pg_total_relation_size(c.oid) > 8192 * 4
     order by pg_total_relation_size(c.oid) desc`.execute(db)
  return rows.map((r) => ({
    table: r.table,
    totalBytes: Number(r.total_bytes),
    heapBytes: Number(r.heap_bytes),
    indexBytes: Number(r.index_bytes),
    liveTuples: Number(r.live),
    deadTuples: Number(r.dead),
    autovacuums: Number(r.autovacuums),
    indexes: r.indexes.map((i) => ({ index: i.index, bytes: Number(i.bytes) })),
  }))
}

export async function reloptions(db: Kysely<DB>) {
  const { rows } = await sql<{ relname: string; reloptions: string[] | null }>`
    select relname, reloptions from pg_class
     where relname in ('calls', 'call_events') and relnamespace = 'public'::regnamespace`.execute(db)
  return Object.fromEntries(rows.map((r) => [r.relname, r.reloptions]))
}

export async function notCompletedOnce(db: Kysely<DB>) {
  const { rows } = await sql<{ n: number }>`
    select count(*)::int as n from calls where not (status = 'COMPLETED' and attempts = 1)`.execute(db)
  return rows[0]?.n ?? -1
}

export function summarize(
  settings: SizesArm['settings'],
  calls: number,
  run: Awaited<ReturnType<typeof runCalls>>,
  options: SizesArm['reloptions'],
  tables: TableSize[],
  notCompleted: number,
): SizesArm {
  const totalBytes = tables.reduce((n, t) => n + t.totalBytes, 0)
  return {
    settings,
    calls,
    seconds: round(run.seconds),
    callsPerSec: round(calls / run.seconds),
    reloptions: options,
    tables,
    totalBytes,
    bytesPerCall: Math.round(totalBytes / calls),
    maxActive: run.maxActive,
    phoneOverlaps: run.phoneOverlaps,
    duplicates: run.duplicates,
    notCompletedOnce: notCompleted,
  }
}

const mb = (b: number) => `${(b / 2 ** 20).toFixed(1)} MB`

/** A plain-text table of one arm, for the bench's log. */
export function formatArm(a: SizesArm): string {
  const lines = [
    `${a.settings}: ${a.calls} calls in ${a.seconds} s (${a.callsPerSec}/s), ${mb(a.totalBytes)} in all, ` +
      `${a.bytesPerCall} bytes per call; reloptions ${JSON.stringify(a.reloptions)}`,
  ]
  for (const t of a.tables)
    lines.push(
      `  ${t.table.padEnd(28)} total ${mb(t.totalBytes).padStart(10)}  heap ${mb(t.heapBytes).padStart(10)}  ` +
        `indexes ${mb(t.indexBytes).padStart(10)}  live ${t.liveTuples} dead ${t.deadTuples} autovacuums ${t.autovacuums}`,
    )
  return lines.join('\n')
}
