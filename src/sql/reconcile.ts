import { type Kysely, sql } from 'kysely'
import type { DB } from '../db/database.ts'

// Reconciliation's one guarantee-carrying statement: take up to `want` silent calls to ask the provider about,
// never more than `maxPerMinute` requests in any minute across all instances.
// The advisory lock serializes the takers; under it, the requests of the last minute are counted in
// reconcile_requests, the grant is what is left of the minute's budget, and each granted request is logged there in
// the same transaction. The clock is read after the lock is held (clock_timestamp, not the transaction's now()),
// so logged times grow in lock order and every window of a minute holds at most maxPerMinute of them.

/** Key of the advisory lock that serializes reconcile grants (an arbitrary constant, used nowhere else). */
const RECONCILE_LOCK = 7_313_001

export interface ReconcileTarget {
  id: string
  attempts: number
  provider_call_id: string
}

export async function takeReconcileBatch(
  db: Kysely<DB>,
  opts: { want: number; maxPerMinute: number; afterMs: number; intervalMs: number },
): Promise<ReconcileTarget[]> {
  return db.transaction().execute(async (trx) => {
    await sql`select pg_advisory_xact_lock(${RECONCILE_LOCK}::bigint)`.execute(trx)
    const { rows } = await sql<ReconcileTarget>`
      with clock as (
        select clock_timestamp() as t
      ), pruned as (
        delete from reconcile_requests where at < (select t from clock) - interval '1 minute'
      ), used as (
        select count(*)::int as n from reconcile_requests where at > (select t from clock) - interval '1 minute'
      ), due as (
        -- oldest calls first; a call asked about recently waits RECONCILE_INTERVAL_MS before it is asked again
        select id from calls
         where status = 'IN_PROGRESS' and provider_call_id is not null
           and started_at <= (select t from clock) - make_interval(secs => ${opts.afterMs / 1000}::float8)
           and (reconciled_at is null
                or reconciled_at <= (select t from clock) - make_interval(secs => ${opts.intervalMs / 1000}::float8))
         order by started_at, id
         limit greatest(0, least(${opts.want}::int, ${opts.maxPerMinute}::int - (select n from used)))
           for update skip locked
      ), marked as (
        update calls c set reconciled_at = (select t from clock)
          from due where c.id = due.id and c.status = 'IN_PROGRESS'
        returning c.id, c.attempts, c.provider_call_id
      ), logged as (
        insert into reconcile_requests (at) select (select t from clock) from marked
      )
      select id, attempts, provider_call_id from marked order by id
    `.execute(trx)
    return rows
  })
}

/** Requests granted in the last minute (tests and metrics). */
export async function reconcileRequestsLastMinute(db: Kysely<DB>): Promise<number> {
  const { rows } = await sql<{ n: number }>`
    select count(*)::int as n from reconcile_requests where at > clock_timestamp() - interval '1 minute'
  `.execute(db)
  return rows[0]?.n ?? 0
}
