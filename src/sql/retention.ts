import { type Kysely, sql } from 'kysely'
import type { DB } from '../db/database.ts'

// Retention: finished calls whose creation and end are both older than the horizon go, with their history, in
// batches. Each batch is one statement and one short transaction:
// - one instance at a time: a transaction-scoped advisory lock, tried, never waited for (a session lock would not
//   survive a transaction pooler such as PgBouncer);
// - it never waits on the dispatcher: only final calls match (the dispatcher's claims, dials and ends touch PENDING
//   and IN_PROGRESS rows), and rows another transaction holds (a late webhook for a timed-out call) are skipped;
// - the oldest first, through calls_newest (created_at desc, id desc) read backwards, so it needs no index of its own.
// call_events rows go in the same statement (their foreign key would cascade row by row otherwise); the count
// triggers of 0040 take the deleted calls off call_counts in the same transaction.

export interface RetentionBatch {
  /** False when another instance held the retention lock: nothing was deleted. */
  locked: boolean
  calls: number
  events: number
}

export async function deleteExpiredHistory(db: Kysely<DB>, days: number, batch: number): Promise<RetentionBatch> {
  const { rows } = await sql<{ locked: boolean; calls: number; events: number }>`
    with lock as (
      -- key ('CALL', 41), next to the dispatch lock ('CALL', 1)
      select pg_try_advisory_xact_lock(1128352844, 41) as got
    ), horizon as (
      select now() - make_interval(days => ${days}::int) as before
    ), doomed as (
      select c.id
        from calls c, horizon h, lock
       where lock.got and c.created_at < h.before and c.ended_at < h.before
         and c.status in ('COMPLETED', 'FAILED', 'EXPIRED', 'CANCELED')
       order by c.created_at, c.id
       limit ${batch}::int
         for update of c skip locked
    ), events as (
      delete from call_events e using doomed where e.call_id = doomed.id returning 1
    ), gone as (
      delete from calls c using doomed where c.id = doomed.id returning 1
    )
    select (select got from lock) as locked, (select count(*)::int from gone) as calls,
           (select count(*)::int from events) as events
  `.execute(db)
  const r = rows[0]
  return { locked: r?.locked ?? false, calls: r?.calls ?? 0, events: r?.events ?? 0 }
}
