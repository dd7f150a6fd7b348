import { type Kysely, sql } from 'kysely'
import type { Campaign, DB } from '../db/database.ts'

// Statements on campaigns. The rules themselves are kept by the claim (migration 0010); these statements keep two
// promises of the API exactly:
// - pause and cancel take the dispatch lock (the claim's), so a claim that began before them has committed when
//   they return and every later claim sees the new status: no dial of the campaign is claimed after the request;
// - a change of window or start time moves each PENDING call's next_attempt_at to its new next opening in the same
//   transaction, so the next claim follows the new setting.

export type CampaignStatus = 'ACTIVE' | 'PAUSED' | 'CANCELED'

export interface CampaignSettings {
  name?: string
  priority?: number
  maxConcurrentCalls?: number | null
  callingWindow?: Record<string, unknown> | null
  retryPolicy?: Record<string, unknown> | null
  startsAt?: Date | null
  endsAt?: Date | null
  maxDialsPerPhonePerDay?: number | null
  metadata?: Record<string, unknown>
}

const json = (v: Record<string, unknown> | null | undefined) =>
  v === null || v === undefined ? null : JSON.stringify(v)

export async function insertCampaign(db: Kysely<DB>, s: CampaignSettings & { name: string }): Promise<Campaign> {
  return db
    .insertInto('campaigns')
    .values({
      name: s.name,
      priority: s.priority ?? 50,
      max_concurrent_calls: s.maxConcurrentCalls ?? null,
      calling_window: json(s.callingWindow),
      retry_policy: json(s.retryPolicy),
      starts_at: s.startsAt ?? null,
      ends_at: s.endsAt ?? null,
      max_dials_per_phone_per_day: s.maxDialsPerPhonePerDay ?? null,
      metadata: JSON.stringify(s.metadata ?? {}),
    })
    .returningAll()
    .executeTakeFirstOrThrow()
}

export async function getCampaign(db: Kysely<DB>, id: string): Promise<Campaign | undefined> {
  return db.selectFrom('campaigns').selectAll().where('id', '=', id).executeTakeFirst()
}

export async function listCampaigns(db: Kysely<DB>, q: { page: number; limit: number; status?: CampaignStatus }) {
  let query = db.selectFrom('campaigns')
  if (q.status) query = query.where('status', '=', q.status)
  const [campaigns, count] = await Promise.all([
    query
      .selectAll()
      .orderBy('created_at', 'desc')
      .orderBy('id', 'desc')
      .limit(q.limit)
      .offset((q.page - 1) * q.limit)
      .execute(),
    query.select(sql<number>`count(*)::int`.as('total')).executeTakeFirstOrThrow(),
  ])
  return { campaigns, total: count.total }
}

export type CampaignChange =
  | { kind: 'changed'; campaign: Campaign }
  | { kind: 'not_found' }
  | { kind: 'canceled'; campaign: Campaign }

/** Applies `s` (keys present are set, null clears); a canceled campaign is not changed. */
export async function updateCampaign(db: Kysely<DB>, id: string, s: CampaignSettings): Promise<CampaignChange> {
  return db.transaction().execute(async (trx) => {
    const set: Record<string, unknown> = {}
    if (s.name !== undefined) set.name = s.name
    if (s.priority !== undefined) set.priority = s.priority
    if (s.maxConcurrentCalls !== undefined) set.max_concurrent_calls = s.maxConcurrentCalls
    if (s.callingWindow !== undefined) set.calling_window = json(s.callingWindow)
    if (s.retryPolicy !== undefined) set.retry_policy = json(s.retryPolicy)
    if (s.startsAt !== undefined) set.starts_at = s.startsAt
    if (s.endsAt !== undefined) set.ends_at = s.endsAt
    if (s.maxDialsPerPhonePerDay !== undefined) set.max_dials_per_phone_per_day = s.maxDialsPerPhonePerDay
    if (s.metadata !== undefined) set.metadata = JSON.stringify(s.metadata)
    const campaign = await trx
      .updateTable('campaigns')
      .set(set)
      .where('id', '=', id)
      .where('status', '<>', 'CANCELED')
      .returningAll()
      .executeTakeFirst()
    if (!campaign) return whyNotChanged(trx, id)
    if (s.callingWindow !== undefined || s.startsAt !== undefined) await rescheduleCampaignCalls(trx, id)
    return { kind: 'changed', campaign }
  })
}

/**
 * Moves every PENDING call of the campaign to its next eligible time under the campaign's current window and start:
 * from max(now, scheduledAt, startsAt, the end of a retry's delay), so a retry keeps its backoff (calls.retry_at,
 * migration 0043).
 */
async function rescheduleCampaignCalls(db: Kysely<DB>, id: string) {
  await sql`
    update calls c
       set next_attempt_at = coalesce(
             window_next_open(k.calling_window, window_zones(k.calling_window, c.time_zones),
                              greatest(now(), c.scheduled_at, k.starts_at, c.retry_at)),
             now() + interval '1 day')
      from campaigns k
     where k.id = ${id}::uuid and c.campaign_id = k.id and c.status = 'PENDING'
  `.execute(db)
}

async function whyNotChanged(db: Kysely<DB>, id: string): Promise<CampaignChange> {
  const campaign = await getCampaign(db, id)
  return campaign ? { kind: 'canceled', campaign } : { kind: 'not_found' }
}

/** Pause (ACTIVE -> PAUSED) or resume (PAUSED -> ACTIVE) under the dispatch lock (pause_campaign, migration 0011). */
export async function setCampaignPaused(db: Kysely<DB>, id: string, paused: boolean): Promise<CampaignChange> {
  const { rows } = await sql<Campaign>`select * from pause_campaign(${id}::uuid, ${paused}::boolean)`.execute(db)
  return rows[0] ? { kind: 'changed', campaign: rows[0] } : whyNotChanged(db, id)
}

/**
 * Cancels the campaign and, in one statement, every PENDING call of it (CANCELED, lastError CAMPAIGN_CANCELED).
 * Calls in progress finish; an attempt of theirs that would be retried ends CANCELED (sql/attempts.ts).
 */
export async function cancelCampaign(
  db: Kysely<DB>,
  id: string,
): Promise<{ kind: 'changed'; campaign: Campaign; canceledCalls: number } | { kind: 'not_found' }> {
  return db.transaction().execute(async (trx) => {
    await lockDispatch(trx)
    const { rows } = await sql<Campaign>`
      update campaigns set status = 'CANCELED', canceled_at = coalesce(canceled_at, now())
       where id = ${id}::uuid
      returning *
    `.execute(trx)
    const campaign = rows[0]
    if (!campaign) return { kind: 'not_found' as const }
    const error = JSON.stringify({ code: 'CAMPAIGN_CANCELED', message: 'the campaign was canceled' })
    const { rows: n } = await sql<{ n: number }>`
      with canceled as (
        update calls set status = 'CANCELED', ended_at = now(), last_error = ${error}::jsonb
         where campaign_id = ${id}::uuid and status = 'PENDING'
        returning id, attempts
      ), history as (
        insert into call_events (call_id, attempt, kind, status, detail)
        select id, attempts, 'CANCELED', 'CANCELED', '{"reason":"CAMPAIGN_CANCELED"}'::jsonb from canceled
      )
      select count(*)::int as n from canceled
    `.execute(trx)
    return { kind: 'changed' as const, campaign, canceledCalls: n[0]?.n ?? 0 }
  })
}

// The claim's lock (migration 0004): waiting for it means any claim in progress has committed.
async function lockDispatch(db: Kysely<DB>) {
  await sql`select pg_advisory_xact_lock(1128352844, 1)`.execute(db)
}

export interface CampaignStats {
  byStatus: Record<string, number>
  inProgress: number
  maxConcurrentCalls: number
  dueNow: number
  /** PENDING calls not yet due: outside their window, scheduled later, waiting for a retry or the daily limit. */
  waiting: number
  /** The earliest time a waiting call becomes eligible (the next window opening for calls outside it). */
  nextEligibleAt: Date | null
  completedLastHour: number
  /** Seconds to finish the PENDING calls at the last hour's completion rate; null without a rate. */
  estimatedSecondsToFinish: number | null
}

export async function campaignStats(db: Kysely<DB>, id: string, globalCap: number): Promise<CampaignStats> {
  const { rows } = await sql<{
    by_status: Record<string, number> | null
    due_now: number
    waiting: number
    next_eligible_at: Date | null
    completed_last_hour: number
    cap: number | null
  }>`
    select (select jsonb_object_agg(status, n) from (
              select status, count(*)::int as n from calls where campaign_id = ${id}::uuid group by status) s) as by_status,
           (select count(*)::int from calls where campaign_id = ${id}::uuid and status = 'PENDING'
               and next_attempt_at <= now()) as due_now,
           (select count(*)::int from calls where campaign_id = ${id}::uuid and status = 'PENDING'
               and next_attempt_at > now()) as waiting,
           (select min(next_attempt_at) from calls where campaign_id = ${id}::uuid and status = 'PENDING'
               and next_attempt_at > now()) as next_eligible_at,
           (select count(*)::int from calls where campaign_id = ${id}::uuid and status = 'COMPLETED'
               and ended_at > now() - interval '1 hour') as completed_last_hour,
           (select max_concurrent_calls from campaigns where id = ${id}::uuid) as cap
  `.execute(db)
  const r = rows[0]
  const byStatus = r?.by_status ?? {}
  const pending = byStatus.PENDING ?? 0
  const completed = r?.completed_last_hour ?? 0
  return {
    byStatus,
    inProgress: byStatus.IN_PROGRESS ?? 0,
    maxConcurrentCalls: Math.min(r?.cap ?? globalCap, globalCap),
    dueNow: r?.due_now ?? 0,
    waiting: r?.waiting ?? 0,
    nextEligibleAt: r?.next_eligible_at ?? null,
    completedLastHour: completed,
    estimatedSecondsToFinish: pending === 0 ? 0 : completed > 0 ? Math.round((pending / completed) * 3600) : null,
  }
}
