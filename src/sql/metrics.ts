import { type Kysely, sql } from 'kysely'
import type { DB } from '../db/database.ts'

export interface CallSnapshot {
  byStatus: Record<string, number>
  inProgress: number
  pending: number
  dueNow: number
  oldestPendingSec: number | null
  /** How long the oldest IN_PROGRESS call has held its slot. */
  longestInProgressSec: number | null
  /** dispatch_settings: the cap the dispatchers were started with; null before any has started. */
  maxConcurrentCalls: number | null
  attempts: { finished: number; average: number | null; max: number | null; retried: number }
}

/**
 * Everything the metrics endpoints show that lives in the database, in one statement. Counts and attempt statistics
 * come from call_counts_current (migration 0040), the backlog figures from the partial indexes of PENDING and
 * IN_PROGRESS calls: the cost follows the backlog and the cap, not the history (627 ms at 3 million calls when
 * this counted every row, issue 14).
 */
export async function callSnapshot(db: Kysely<DB>): Promise<CallSnapshot> {
  const { rows } = await sql<{
    by_status: Record<string, number>
    in_progress: number
    due_now: number
    oldest_pending_sec: number | null
    longest_in_progress_sec: number | null
    max_concurrent_calls: number | null
    finished: number
    avg_attempts: number | null
    max_attempts: number | null
    retried: number
  }>`
    with counts as (select status, attempts, n from call_counts_current)
    select
      (select coalesce(jsonb_object_agg(status, n), '{}'::jsonb)
         from (select status, sum(n)::int as n from counts group by status) s)                        as by_status,
      (select coalesce(sum(n), 0)::int from counts where status = 'IN_PROGRESS')                       as in_progress,
      (select count(*)::int from calls
        where status = 'PENDING' and next_attempt_at <= now() and expires_at > now())                 as due_now,
      (select extract(epoch from now() - min(created_at))::float8 from calls where status = 'PENDING') as oldest_pending_sec,
      (select extract(epoch from now() - min(started_at))::float8
         from calls where status = 'IN_PROGRESS')                                                    as longest_in_progress_sec,
      (select max_concurrent_calls from dispatch_settings)                                            as max_concurrent_calls,
      f.finished, f.avg_attempts, f.max_attempts, f.retried
    from (
      select coalesce(sum(n), 0)::int as finished, (sum(attempts * n) / nullif(sum(n), 0))::float8 as avg_attempts,
             max(attempts) as max_attempts, coalesce(sum(n) filter (where attempts > 1), 0)::int as retried
        from counts where status in ('COMPLETED', 'FAILED')
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
    longestInProgressSec: r.longest_in_progress_sec,
    maxConcurrentCalls: r.max_concurrent_calls,
    attempts: { finished: r.finished, average: r.avg_attempts, max: r.max_attempts, retried: r.retried },
  }
}

/** Campaign gauges carry at most this many campaign labels; the rest are summed under campaign="other". */
export const CAMPAIGN_LABELS_MAX = 20

export interface CampaignGauge {
  /** A campaign id, or 'other'. */
  campaign: string
  inProgress: number
  pending: number
}

/**
 * In-progress and pending calls per campaign, for Prometheus. Label cardinality is bounded: only campaigns that
 * have calls PENDING or IN_PROGRESS are reported, the CAMPAIGN_LABELS_MAX with the most of them by id, the rest
 * summed as 'other' (docs/campaigns.md). Reads calls_by_campaign_status.
 */
export async function campaignGauges(db: Kysely<DB>): Promise<CampaignGauge[]> {
  const { rows } = await sql<{ campaign: string; in_progress: number; pending: number }>`
    with live as (
      select campaign_id, count(*) filter (where status = 'IN_PROGRESS')::int as in_progress,
             count(*) filter (where status = 'PENDING')::int as pending
        from calls where campaign_id is not null and status in ('PENDING', 'IN_PROGRESS')
       group by campaign_id
    ), ranked as (
      select *, row_number() over (order by in_progress + pending desc, campaign_id) as n from live
    )
    select case when n <= ${CAMPAIGN_LABELS_MAX}::int then campaign_id::text else 'other' end as campaign,
           sum(in_progress)::int as in_progress, sum(pending)::int as pending
      from ranked group by 1
  `.execute(db)
  return rows.map((r) => ({ campaign: r.campaign, inProgress: r.in_progress, pending: r.pending }))
}
