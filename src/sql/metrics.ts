import { type Kysely, sql } from 'kysely'
import type { DB } from '../db.ts'

export interface CallSnapshot {
  byStatus: Record<string, number>
  inProgress: number
  pending: number
  dueNow: number
  oldestPendingSec: number | null
  attempts: { finished: number; average: number | null; max: number | null; retried: number }
}

/** Everything the metrics endpoints show that lives in the database, in one statement. */
export async function callSnapshot(db: Kysely<DB>): Promise<CallSnapshot> {
  const { rows } = await sql<{
    by_status: Record<string, number>
    in_progress: number
    due_now: number
    oldest_pending_sec: number | null
    finished: number
    avg_attempts: number | null
    max_attempts: number | null
    retried: number
  }>`
    select
      (select coalesce(jsonb_object_agg(status, n), '{}'::jsonb)
         from (select status, count(*)::int as n from calls group by status) s)                       as by_status,
      (select count(*)::int from calls where status = 'IN_PROGRESS')                                  as in_progress,
      (select count(*)::int from calls
        where status = 'PENDING' and next_attempt_at <= now() and expires_at > now())                 as due_now,
      (select extract(epoch from now() - min(created_at))::float8 from calls where status = 'PENDING') as oldest_pending_sec,
      f.finished, f.avg_attempts, f.max_attempts, f.retried
    from (
      select count(*)::int as finished, avg(attempts)::float8 as avg_attempts, max(attempts) as max_attempts,
             (count(*) filter (where attempts > 1))::int as retried
        from calls where status in ('COMPLETED', 'FAILED')
    ) f
  `.execute(db)
  const r = rows[0]
  if (!r) throw new Error('metrics query returned no row')
  return {
    byStatus: r.by_status,
    inProgress: r.in_progress,
    pending: r.by_status.PENDING ?? 0,
    dueNow: r.due_now,
    oldestPendingSec: r.oldest_pending_sec,
    attempts: { finished: r.finished, average: r.avg_attempts, max: r.max_attempts, retried: r.retried },
  }
}
