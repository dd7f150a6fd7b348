import { type Kysely, sql } from 'kysely'
import type { DB } from '../db/database.ts'

// The dashboard's reads, each one statement. Read-only; phones leave the database masked (mask_phone, 0003).
// The per-minute series reads call_events through call_events_recent (created_at): 30 minutes of events, not the
// whole calls table, whose ended_at has no index.

export interface Slot {
  callId: string
  phone: string
  attempt: number
  startedAt: string
  seconds: number
}

export interface MinuteCounts {
  minute: string
  completed: number
  failed: number
  retries: number
  expired: number
}

export interface DashboardState {
  now: string
  maxConcurrentCalls: number | null
  slots: Slot[]
  backlog: { pending: number; dueNow: number; retrying: number; oldestPendingSec: number | null }
  perMinute: MinuteCounts[]
}

export const DASHBOARD_MINUTES = 30

export interface CampaignRow {
  id: string
  name: string
  status: string
  priority: number
  inProgress: number
  maxConcurrentCalls: number | null
  pending: number
  dueNow: number
  waiting: number
  nextEligibleAt: string | null
  completed: number
  total: number
  donePercent: number | null
}

/** The campaigns panel: campaigns not canceled or with calls still open, newest first, from campaign_overview. */
export async function dashboardCampaigns(db: Kysely<DB>, limit = 20): Promise<CampaignRow[]> {
  const { rows } = await sql<CampaignRow>`
    select id, name, status, priority, in_progress as "inProgress", max_concurrent_calls as "maxConcurrentCalls",
           pending, due_now as "dueNow", waiting, next_eligible_at as "nextEligibleAt", completed, total,
           done_percent::float8 as "donePercent"
      from campaign_overview
     where status <> 'CANCELED' or pending + in_progress > 0
     order by created_at desc
     limit ${limit}::int
  `.execute(db)
  return rows.map((r) => ({ ...r, nextEligibleAt: r.nextEligibleAt ? new Date(r.nextEligibleAt).toISOString() : null }))
}

export interface WebhookEndpointRow {
  id: string
  /** Scheme, host and path only: a query string can carry a receiver's token. */
  url: string
  health: 'healthy' | 'failing' | 'disabled'
  disabledReason: string | null
  failingSince: string | null
  lastSuccessAt: string | null
  /** Deliveries not yet delivered or given up (waiting or queued). */
  backlog: number
  retrying: number
  oldestUndeliveredSec: number | null
}

export interface WebhooksPanel {
  healthy: number
  failing: number
  disabled: number
  endpoints: WebhookEndpointRow[]
}

/**
 * The webhook endpoints panel: health counts over all endpoints, and the `limit` endpoints most in need of a look
 * (failing, then by backlog) with their backlog and the age of their oldest undelivered event. Health is the rule of
 * webhook_delivery_overview (migration 0020); the backlog is read, like the Prometheus gauges (ops/webhook-metrics.ts),
 * through the partial index of undone deliveries, where the view counts every delivery the endpoint ever had.
 */
export async function dashboardWebhooks(db: Kysely<DB>, limit = 20): Promise<WebhooksPanel> {
  const { rows } = await sql<{ panel: WebhooksPanel }>`
    with ep as (
      select ep.id, regexp_replace(ep.url, '[?#].*$', '') as url,
             case when not ep.enabled then 'disabled' when ep.failing_since is not null then 'failing'
                  else 'healthy' end as health,
             ep.disabled_reason, ep.failing_since, ep.last_success_at, ep.created_at,
             coalesce(d.backlog, 0) as backlog, coalesce(d.retrying, 0) as retrying, d.oldest
        from webhook_endpoints ep
        left join lateral (
          select count(*)::int as backlog,
                 count(*) filter (where state = 'queued' and attempts > 0)::int as retrying,
                 min(created_at) as oldest
            from webhook_deliveries
           where endpoint_id = ep.id and state in ('waiting', 'queued')
        ) d on true
    ), shown as (
      select * from ep
       order by health = 'failing' desc, backlog desc, health = 'disabled', created_at, id
       limit ${limit}::int
    )
    select jsonb_build_object(
             'healthy', (select count(*) from ep where health = 'healthy'),
             'failing', (select count(*) from ep where health = 'failing'),
             'disabled', (select count(*) from ep where health = 'disabled'),
             'endpoints', coalesce((
               select jsonb_agg(jsonb_build_object(
                        'id', id, 'url', url, 'health', health, 'disabledReason', disabled_reason,
                        'failingSince', failing_since, 'lastSuccessAt', last_success_at, 'backlog', backlog,
                        'retrying', retrying,
                        'oldestUndeliveredSec', round(extract(epoch from now() - oldest)::numeric, 1))
                      order by health = 'failing' desc, backlog desc, health = 'disabled', created_at, id)
                 from shown), '[]'::jsonb)) as panel
  `.execute(db)
  const panel = rows[0]?.panel
  if (!panel) throw new Error('webhooks panel query returned no row')
  return panel
}

export async function dashboardState(db: Kysely<DB>): Promise<DashboardState> {
  // completed: a final COMPLETED applied (or late, after a timeout); failed: a final FAILED applied, or a timeout
  // (a late FAILED after a timeout is not counted twice); retries: an attempt put back to PENDING, or an operator's
  // retry_call. The kind list lets the planner skip CREATED/CLAIMED/DIAL_ACCEPTED rows early.
  const { rows } = await sql<{ state: DashboardState }>`
    with slots as (
      select coalesce(jsonb_agg(jsonb_build_object(
               'callId', id, 'phone', mask_phone(to_phone), 'attempt', attempts, 'startedAt', started_at,
               'seconds', round(extract(epoch from now() - started_at)::numeric, 1)) order by started_at, id), '[]') as v
        from calls where status = 'IN_PROGRESS'
    ), backlog as (
      -- counts from call_counts_current (0040); due and oldest through the partial indexes of PENDING calls
      select jsonb_build_object(
               'pending', (select coalesce(sum(n), 0)::int from call_counts_current where status = 'PENDING'),
               'dueNow', (select count(*)::int from calls
                           where status = 'PENDING' and next_attempt_at <= now() and expires_at > now()),
               'retrying', (select coalesce(sum(n), 0)::int from call_counts_current
                             where status = 'PENDING' and attempts > 0),
               'oldestPendingSec', (select round(extract(epoch from now() - min(created_at))::numeric, 1)
                                      from calls where status = 'PENDING')) as v
    ), minutes as (
      select m from generate_series(date_trunc('minute', now()) - make_interval(mins => ${DASHBOARD_MINUTES - 1}::int),
                                    date_trunc('minute', now()), interval '1 minute') m
    ), counted as (
      select date_trunc('minute', created_at) as m,
             count(*) filter (where detail ->> 'next' = 'COMPLETED' and detail ->> 'outcome' in ('applied', 'late')) as completed,
             count(*) filter (where (detail ->> 'next' = 'FAILED' and detail ->> 'outcome' = 'applied')
                                 or kind = 'TIMED_OUT') as failed,
             count(*) filter (where (detail ->> 'next' = 'PENDING' and detail ->> 'outcome' = 'applied')
                                 or kind = 'RETRY_REQUESTED') as retries,
             count(*) filter (where kind = 'EXPIRED') as expired
        from call_events
       where created_at >= date_trunc('minute', now()) - make_interval(mins => ${DASHBOARD_MINUTES - 1}::int)
         and kind in ('WEBHOOK', 'DIAL_FAILED', 'DIAL_REJECTED', 'DIAL_THROTTLED', 'TIMED_OUT', 'EXPIRED',
                      'RETRY_REQUESTED')
       group by 1
    )
    select jsonb_build_object(
             'now', now(),
             'maxConcurrentCalls', (select max_concurrent_calls from dispatch_settings),
             'slots', (select v from slots),
             'backlog', (select v from backlog),
             'perMinute', (select jsonb_agg(jsonb_build_object(
                             'minute', minutes.m, 'completed', coalesce(c.completed, 0), 'failed', coalesce(c.failed, 0),
                             'retries', coalesce(c.retries, 0), 'expired', coalesce(c.expired, 0)) order by minutes.m)
                             from minutes left join counted c on c.m = minutes.m)) as state
  `.execute(db)
  const state = rows[0]?.state
  if (!state) throw new Error('dashboard query returned no row')
  return state
}

export interface RecentEvent {
  at: string
  attempt: number
  kind: string
  status: string | null
  outcome: string | null
}

export interface RecentCall {
  id: string
  phone: string
  scriptId: string
  status: string
  attempts: number
  updatedAt: string
  lastError: { code: string; message: string } | null
  events: RecentEvent[]
}

/**
 * The calls with the most recent activity: the newest `limit` distinct calls among the last 1000 events (read
 * backwards on the primary key), each with its last 30 events, oldest first.
 */
export async function recentCalls(db: Kysely<DB>, limit = 20): Promise<RecentCall[]> {
  const { rows } = await sql<RecentCall>`
    with recent as (
      select call_id, max(id) as last_event
        from (select call_id, id from call_events order by id desc limit 1000) e
       group by call_id
       order by last_event desc
       limit ${limit}::int
    )
    select c.id, mask_phone(c.to_phone) as phone, c.script_id as "scriptId", c.status, c.attempts,
           c.updated_at as "updatedAt", c.last_error as "lastError",
           (select jsonb_agg(jsonb_build_object('at', x.created_at, 'attempt', x.attempt, 'kind', x.kind,
                                                'status', x.status, 'outcome', x.detail ->> 'outcome') order by x.id)
              from (select * from call_events where call_id = c.id order by id desc limit 30) x) as events
      from recent join calls c on c.id = recent.call_id
     order by recent.last_event desc
  `.execute(db)
  return rows.map((r) => ({ ...r, updatedAt: new Date(r.updatedAt).toISOString() }))
}
