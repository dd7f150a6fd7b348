import { type Kysely, sql } from 'kysely'
import type { DB } from '../db/database.ts'
import type { CallStatus } from '../dispatch/call-state.ts'

// Counts of calls, read from call_counts_current (migration 0040): exact in the reader's snapshot and independent
// of the size of calls. Triggers on calls keep them; compactCallCounts folds the appended deltas.

export interface CountRow {
  status: CallStatus
  attempts: number
  n: number
}

export async function readCallCounts(db: Kysely<DB>): Promise<CountRow[]> {
  const { rows } = await sql<CountRow>`
    select status, attempts, n::int as n from call_counts_current order by status, attempts`.execute(db)
  return rows
}

/** Calls with `status`, or all calls, from the counts. */
export async function countCalls(db: Kysely<DB>, status?: CallStatus): Promise<number> {
  const { rows } = await sql<{ n: number }>`
    select coalesce(sum(n), 0)::int as n from call_counts_current
     where ${status ?? null}::text is null or status = ${status ?? null}::text`.execute(db)
  return rows[0]?.n ?? 0
}

/** Folds the deltas into call_counts; 0 when another session is compacting. Run it about once a second. */
export async function compactCallCounts(db: Kysely<DB>): Promise<number> {
  const { rows } = await sql<{ moved: number }>`select compact_call_counts() as moved`.execute(db)
  return rows[0]?.moved ?? 0
}
