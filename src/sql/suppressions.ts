import { type Kysely, sql } from 'kysely'
import type { DB, Suppression } from '../db/database.ts'

// Do-not-call list. Invariant: a suppressed phone is never dialed. Three things keep it, each alone sufficient for
// what it covers:
// - the claim (migration 0010) skips a phone with a live entry, whatever the call's campaign or state;
// - adding an entry cancels the phone's PENDING calls in the same statement;
// - a create racing that statement (both under READ COMMITTED, neither sees the other) leaves a PENDING call that
//   cancelSuppressedCalls() ends CANCELED (SUPPRESSED) at the next sweep.

export interface NewSuppression {
  phone: string
  reason: string | null
  expiresAt: Date | null
  campaignId: string | null
}

const SUPPRESSED_ERROR = JSON.stringify({ code: 'SUPPRESSED', message: 'the phone is on the do-not-call list' })

/** Adds or refreshes entries (one per phone and scope), and cancels their phones' PENDING calls. */
export async function addSuppressions(
  db: Kysely<DB>,
  entries: readonly NewSuppression[],
): Promise<{ count: number; canceledCalls: number }> {
  const input = entries.map((e) => ({
    phone: e.phone,
    reason: e.reason,
    expires_at: e.expiresAt?.toISOString() ?? null,
    campaign_id: e.campaignId,
  }))
  const { rows } = await sql<{ count: number; canceled: number }>`
    with input as (
      select distinct on (phone, campaign_id) *
        from jsonb_to_recordset(${JSON.stringify(input)}::jsonb)
          as t(phone text, reason text, expires_at timestamptz, campaign_id uuid)
    ), saved as (
      insert into suppressions (phone, campaign_id, reason, expires_at)
      select phone, campaign_id, reason, expires_at from input
      on conflict on constraint suppressions_one_per_scope
        do update set reason = excluded.reason, expires_at = excluded.expires_at, created_at = now()
      returning phone, campaign_id, expires_at
    ), canceled as (
      update calls c set status = 'CANCELED', ended_at = now(), last_error = ${SUPPRESSED_ERROR}::jsonb
        from saved s
       where c.to_phone = s.phone and c.status = 'PENDING'
         and (s.campaign_id is null or c.campaign_id = s.campaign_id)
         and (s.expires_at is null or s.expires_at > now())
      returning c.id, c.attempts
    ), history as (
      insert into call_events (call_id, attempt, kind, status, detail)
      select id, attempts, 'CANCELED', 'CANCELED', '{"reason":"SUPPRESSED"}'::jsonb from canceled
    )
    select (select count(*)::int from saved) as count, (select count(*)::int from canceled) as canceled
  `.execute(db)
  return { count: rows[0]?.count ?? 0, canceledCalls: rows[0]?.canceled ?? 0 }
}

/** Which of `phones` may not be called in `campaignId` (or outside any campaign when null). */
export async function suppressedAmong(
  db: Kysely<DB>,
  phones: readonly string[],
  campaignId: string | null,
): Promise<Set<string>> {
  if (phones.length === 0) return new Set()
  const { rows } = await sql<{ phone: string }>`
    select distinct phone from suppressions
     where phone = any(${[...new Set(phones)]}::text[])
       and (campaign_id is null or campaign_id = ${campaignId}::uuid)
       and (expires_at is null or expires_at > now())
  `.execute(db)
  return new Set(rows.map((r) => r.phone))
}

export async function listSuppressions(
  db: Kysely<DB>,
  q: { page: number; limit: number; phone?: string },
): Promise<{ suppressions: Suppression[]; total: number }> {
  let query = db.selectFrom('suppressions')
  if (q.phone) query = query.where('phone', '=', q.phone)
  const [suppressions, count] = await Promise.all([
    query
      .selectAll()
      .orderBy('created_at', 'desc')
      .orderBy('phone')
      .limit(q.limit)
      .offset((q.page - 1) * q.limit)
      .execute(),
    query.select(sql<number>`count(*)::int`.as('total')).executeTakeFirstOrThrow(),
  ])
  return { suppressions, total: count.total }
}

/** Removes a phone's entries (every scope, or one campaign's); returns how many. */
export async function deleteSuppression(db: Kysely<DB>, phone: string, campaignId?: string): Promise<number> {
  let q = db.deleteFrom('suppressions').where('phone', '=', phone)
  if (campaignId) q = q.where('campaign_id', '=', campaignId)
  const r = await q.executeTakeFirst()
  return Number(r.numDeletedRows)
}

/**
 * The sweep's half of the invariant: PENDING calls to a phone suppressed in the last `lookbackSec` seconds (entries
 * older than that already canceled theirs when added, or were caught by an earlier sweep) end CANCELED (SUPPRESSED).
 */
export async function cancelSuppressedCalls(db: Kysely<DB>, lookbackSec = 3600, batch = 1000): Promise<number> {
  const { rows } = await sql<{ n: number }>`
    with hit as (
      select c.id from suppressions s
        join calls c on c.to_phone = s.phone and c.status = 'PENDING'
                    and (s.campaign_id is null or c.campaign_id = s.campaign_id)
       where s.created_at > now() - make_interval(secs => ${lookbackSec}::float8)
         and (s.expires_at is null or s.expires_at > now())
       limit ${batch}::int
         for update of c skip locked
    ), canceled as (
      update calls c set status = 'CANCELED', ended_at = now(), last_error = ${SUPPRESSED_ERROR}::jsonb
        from hit where c.id = hit.id and c.status = 'PENDING'
      returning c.id, c.attempts
    ), history as (
      insert into call_events (call_id, attempt, kind, status, detail)
      select id, attempts, 'CANCELED', 'CANCELED', '{"reason":"SUPPRESSED"}'::jsonb from canceled
    )
    select count(*)::int as n from canceled
  `.execute(db)
  return rows[0]?.n ?? 0
}
