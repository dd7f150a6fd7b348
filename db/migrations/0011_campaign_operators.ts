import { type Kysely, sql } from 'kysely'

// Campaigns for the operator in psql and scripts/calls.ts: one view to read, two functions to act. The functions
// change rows the way the API does (src/sql/campaigns.ts calls pause_campaign too), so they are the safe
// alternative to a hand-written UPDATE.

export async function up(db: Kysely<any>): Promise<void> {
  // One pass over each campaign's calls through calls_by_campaign_status; campaigns without calls show zeros.
  await sql`
    create view campaign_overview as
    select k.id, k.name, k.status, k.priority,
           least(coalesce(k.max_concurrent_calls, s.max_concurrent_calls), s.max_concurrent_calls) as max_concurrent_calls,
           coalesce(a.in_progress, 0) as in_progress,
           coalesce(a.pending, 0) as pending,
           coalesce(a.due_now, 0) as due_now,
           coalesce(a.pending, 0) - coalesce(a.due_now, 0) as waiting,
           a.next_eligible_at,
           coalesce(a.completed, 0) as completed,
           coalesce(a.failed, 0) as failed,
           coalesce(a.expired, 0) as expired,
           coalesce(a.canceled, 0) as canceled,
           coalesce(a.total, 0) as total,
           case when coalesce(a.total, 0) = 0 then null
                else round(100.0 * (a.total - a.pending - a.in_progress) / a.total, 1) end as done_percent,
           coalesce(a.completed_last_hour, 0) as completed_last_hour,
           k.calling_window, k.starts_at, k.ends_at, k.created_at
      from campaigns k
      left join dispatch_settings s on true
      left join lateral (
        select count(*) filter (where c.status = 'PENDING')::int as pending,
               count(*) filter (where c.status = 'PENDING' and c.next_attempt_at <= now())::int as due_now,
               min(c.next_attempt_at) filter (where c.status = 'PENDING' and c.next_attempt_at > now()) as next_eligible_at,
               count(*) filter (where c.status = 'IN_PROGRESS')::int as in_progress,
               count(*) filter (where c.status = 'COMPLETED')::int as completed,
               count(*) filter (where c.status = 'COMPLETED' and c.ended_at > now() - interval '1 hour')::int
                 as completed_last_hour,
               count(*) filter (where c.status = 'FAILED')::int as failed,
               count(*) filter (where c.status = 'EXPIRED')::int as expired,
               count(*) filter (where c.status = 'CANCELED')::int as canceled,
               count(*)::int as total
          from calls c where c.campaign_id = k.id
      ) a on true
  `.execute(db)
  await sql`comment on view campaign_overview is ${sql.lit(
    'One row per campaign: status and priority; in_progress against its cap (max_concurrent_calls, at most the global cap); pending split into due_now (may ring now: window open, due) and waiting (outside the calling window, scheduled later, waiting for a retry or the daily limit) with next_eligible_at (the next window opening for calls outside it); calls by final status; done_percent; completed_last_hour.',
  )}`.execute(db)
  for (const [column, text] of Object.entries(VIEW_COLUMNS)) {
    await sql`comment on column campaign_overview.${sql.ref(column)} is ${sql.lit(text)}`.execute(db)
  }

  // Under the dispatch lock (the claim's): when it returns, no claim that could still see the campaign ACTIVE is
  // running, so no dial of it starts afterwards.
  await sql`
    create function pause_campaign(campaign uuid, paused boolean) returns setof campaigns
    language plpgsql volatile as $$
    begin
      perform pg_advisory_xact_lock(1128352844, 1);
      return query
        update campaigns set status = case when paused then 'PAUSED' else 'ACTIVE' end
         where id = campaign and status <> 'CANCELED'
        returning *;
    end
    $$
  `.execute(db)
  await sql`comment on function pause_campaign(uuid, boolean) is ${sql.lit(
    'Pauses (paused = true) or resumes a campaign that is not canceled and returns it; no row: unknown or canceled. No dial of a paused campaign starts after it returns; calls in progress finish.',
  )}`.execute(db)

  await sql`
    create function suppress_phone(phone text, reason text default null) returns integer
    language sql volatile as $$
      with saved as (
        insert into suppressions (phone, reason) values (phone, reason)
        on conflict on constraint suppressions_one_per_scope
          do update set reason = excluded.reason, expires_at = null, created_at = now()
        returning phone
      ), canceled as (
        update calls c set status = 'CANCELED', ended_at = now(),
               last_error = '{"code":"SUPPRESSED","message":"the phone is on the do-not-call list"}'::jsonb
          from saved where c.to_phone = saved.phone and c.status = 'PENDING'
        returning c.id, c.attempts
      ), history as (
        insert into call_events (call_id, attempt, kind, status, detail)
        select id, attempts, 'CANCELED', 'CANCELED', '{"reason":"SUPPRESSED"}'::jsonb from canceled
      )
      select count(*)::int from canceled
    $$
  `.execute(db)
  await sql`comment on function suppress_phone(text, text) is ${sql.lit(
    'Puts an E.164 phone on the do-not-call list for every call (no expiry) and cancels its PENDING calls (SUPPRESSED); returns how many were canceled. The claim never dials a suppressed phone.',
  )}`.execute(db)
}

const VIEW_COLUMNS: Record<string, string> = {
  max_concurrent_calls: "The campaign's cap in effect: its own, at most the global one (dispatch_settings).",
  due_now: 'PENDING calls that may ring now (due, window open when they were scheduled).',
  waiting: 'PENDING calls not yet due: outside the calling window, scheduled later, retry delay or daily limit.',
  next_eligible_at: 'When the first waiting call becomes due (for calls outside the window: its next opening).',
  done_percent: "Calls in a final status, in percent of all the campaign's calls.",
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop function suppress_phone(text, text)`.execute(db)
  await sql`drop function pause_campaign(uuid, boolean)`.execute(db)
  await sql`drop view campaign_overview`.execute(db)
}
