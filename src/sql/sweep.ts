import { type Kysely, sql } from 'kysely'
import type { DB } from '../db/database.ts'
import { CALL_ERRORS } from '../dispatch/call-state.ts'
import { cancelSuppressedCalls } from './suppressions.ts'

// Invariant: every call reaches a final status. Two clocks close the gaps that no event closes:
// - a PENDING call past expires_at is never dialed (claim.ts skips it) and becomes EXPIRED here;
// - an IN_PROGRESS call whose final webhook never came frees its slot after CALL_TIMEOUT_MS and ends FAILED with
//   CALL_TIMEOUT. It is not retried: the provider may have reached the person. A late webhook still settles it
//   (attempts.ts, 'late'). This also recovers the slot of a process killed between claim and dial.
// Both take at most `batch` rows and skip rows locked by another sweeper, so instances can sweep at once.

export async function expireOverdueCalls(db: Kysely<DB>, batch = 1000): Promise<number> {
  const { rows } = await sql<{ n: number }>`
    with overdue as (
      select id from calls
       where status = 'PENDING' and expires_at <= now()
       order by expires_at
       limit ${batch}::int
         for update skip locked
    ), expired as (
      update calls c set status = 'EXPIRED', ended_at = now()
        from overdue where c.id = overdue.id and c.status = 'PENDING'
      returning c.id, c.attempts
    ), history as (
      insert into call_events (call_id, attempt, kind, status) select id, attempts, 'EXPIRED', 'EXPIRED' from expired
    )
    select count(*)::int as n from expired
  `.execute(db)
  return rows[0]?.n ?? 0
}

export async function timeOutSilentCalls(db: Kysely<DB>, callTimeoutMs: number, batch = 1000): Promise<number> {
  const error = JSON.stringify({
    code: CALL_ERRORS.timeout,
    message: `no final webhook within ${Math.round(callTimeoutMs / 1000)} s`,
  })
  const { rows } = await sql<{ n: number }>`
    with silent as (
      select id from calls
       where status = 'IN_PROGRESS' and started_at <= now() - make_interval(secs => ${callTimeoutMs / 1000}::float8)
       order by started_at
       limit ${batch}::int
         for update skip locked
    ), timed_out as (
      update calls c set status = 'FAILED', ended_at = now(), last_error = ${error}::jsonb
        from silent where c.id = silent.id and c.status = 'IN_PROGRESS'
      returning c.id, c.attempts
    ), history as (
      insert into call_events (call_id, attempt, kind, status) select id, attempts, 'TIMED_OUT', 'FAILED' from timed_out
    )
    select count(*)::int as n from timed_out
  `.execute(db)
  return rows[0]?.n ?? 0
}

/**
 * The campaigns' share of the sweep (docs/campaigns.md): PENDING calls of a campaign past its ends_at end EXPIRED;
 * calls to a phone suppressed after they were queued end CANCELED (SUPPRESSED); due calls whose window has closed
 * move to its next opening in bulk (the claim does the same for the few it walks, so the due prefix stays calls that
 * may ring); dial records older than a day, which no daily limit reads, are deleted.
 */
export async function sweepCampaignCalls(
  db: Kysely<DB>,
  batch = 1000,
): Promise<{ expired: number; suppressed: number }> {
  const { rows } = await sql<{ n: number }>`
    with overdue as (
      select c.id from campaigns k
        join calls c on c.campaign_id = k.id and c.status = 'PENDING'
       where k.ends_at <= now()
       limit ${batch}::int
         for update of c skip locked
    ), expired as (
      update calls c set status = 'EXPIRED', ended_at = now()
        from overdue where c.id = overdue.id and c.status = 'PENDING'
      returning c.id, c.attempts
    ), history as (
      insert into call_events (call_id, attempt, kind, status, detail)
      select id, attempts, 'EXPIRED', 'EXPIRED', '{"reason":"CAMPAIGN_ENDED"}'::jsonb from expired
    )
    select count(*)::int as n from expired
  `.execute(db)
  await sql`
    with closed as (
      select c.id, k.calling_window as w, window_zones(k.calling_window, c.time_zones) as zones
        from campaigns k
        cross join lateral (
          select c.id, c.time_zones from calls c
           where c.campaign_id = k.id and c.status = 'PENDING' and c.next_attempt_at <= now()
           order by c.next_attempt_at, c.id
           limit ${batch}::int
        ) c
       where k.status <> 'CANCELED' and k.calling_window is not null
         and not window_open(k.calling_window, window_zones(k.calling_window, c.time_zones), now())
    ), locked as (
      select c.id from calls c join closed on closed.id = c.id for update of c skip locked
    )
    update calls c set next_attempt_at = coalesce(window_next_open(closed.w, closed.zones, now()), now() + interval '1 day')
      from closed join locked on locked.id = closed.id
     where c.id = closed.id and c.status = 'PENDING'
  `.execute(db)
  await sql`delete from campaign_dials where ctid = any(array(
    select ctid from campaign_dials where dialed_at < now() - interval '1 day' limit ${batch * 10}::int))`.execute(db)
  const suppressed = await cancelSuppressedCalls(db)
  return { expired: rows[0]?.n ?? 0, suppressed }
}
