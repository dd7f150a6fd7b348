import { type Kysely, sql } from 'kysely'

// What an operator reaches for in psql: three views to read, two functions to act. The functions change calls the
// way the service does (one statement, fenced on the status it leaves, a call_events row for each change), so they
// are the safe alternative to a hand-written UPDATE, which could break the invariants the dispatcher relies on.

export async function up(db: Kysely<any>): Promise<void> {
  // The cap lives in each process's configuration; the processes that dispatch record it here at start-up
  // (src/sql/settings.ts) so SQL can compare the slots in use with it. One row at most.
  await sql`
    create table dispatch_settings (
      singleton            boolean primary key default true check (singleton),
      max_concurrent_calls integer not null check (max_concurrent_calls > 0),
      updated_at           timestamptz not null default now()
    )
  `.execute(db)
  await sql`comment on table dispatch_settings is ${sql.lit(
    'One row: MAX_CONCURRENT_CALLS as the dispatching processes were last started with (written at start-up, read by call_overview). Editing it changes no process: the cap each dispatcher enforces comes from its own configuration.',
  )}`.execute(db)

  // Same rule as src/phone.ts maskPhone (a test compares them): '+966501234567' -> '+********4567'.
  await sql`
    create function mask_phone(phone text) returns text
    language sql immutable strict parallel safe as $$
      select case when length(phone) <= 4 then '****'
                  else '+' || repeat('*', greatest(length(phone) - 5, 0)) || right(phone, 4) end
    $$
  `.execute(db)
  await sql`comment on function mask_phone(text) is ${sql.lit('A phone number reduced to its last 4 digits, as the logs show it.')}`.execute(
    db,
  )

  // One aggregate pass over calls; the partial indexes of 0001 do not help a count by every status.
  await sql`
    create view call_overview as
    select a.pending, a.due_now, a.in_progress, s.max_concurrent_calls,
           -- null, not 0, while no dispatcher has recorded the cap
           s.max_concurrent_calls - least(a.in_progress, s.max_concurrent_calls) as free_slots,
           a.completed, a.failed, a.expired, a.canceled, a.total,
           a.oldest_pending_age, a.oldest_due_wait, a.longest_in_progress
      from (
        select count(*) filter (where status = 'PENDING')::int                                   as pending,
               count(*) filter (where status = 'PENDING' and next_attempt_at <= now()
                                  and expires_at > now())::int                                   as due_now,
               count(*) filter (where status = 'IN_PROGRESS')::int                               as in_progress,
               count(*) filter (where status = 'COMPLETED')::int                                 as completed,
               count(*) filter (where status = 'FAILED')::int                                    as failed,
               count(*) filter (where status = 'EXPIRED')::int                                   as expired,
               count(*) filter (where status = 'CANCELED')::int                                  as canceled,
               count(*)::int                                                                     as total,
               date_trunc('second', now() - min(created_at) filter (where status = 'PENDING'))  as oldest_pending_age,
               date_trunc('second', now() - min(next_attempt_at) filter (
                 where status = 'PENDING' and next_attempt_at <= now() and expires_at > now())) as oldest_due_wait,
               date_trunc('second', now() - min(started_at) filter (where status = 'IN_PROGRESS')) as longest_in_progress
          from calls
      ) a
      left join dispatch_settings s on true
  `.execute(db)
  await sql`comment on view call_overview is ${sql.lit(
    'One row: calls by status; in_progress against max_concurrent_calls (from dispatch_settings) and the free slots; the backlog: pending, due_now (could be dialed now if a slot were free), oldest_pending_age (since creation) and oldest_due_wait (how long the most overdue due call has waited: it grows only while every slot is busy, its phone is in another call, or no dispatcher runs); longest_in_progress (compare with CALL_TIMEOUT_MS).',
  )}`.execute(db)

  await sql`
    create view calls_in_progress as
    select id                                     as call_id,
           mask_phone(to_phone)                   as phone,
           attempts                               as attempt,
           date_trunc('second', now() - started_at) as age,
           provider_call_id,
           started_at,
           script_id
      from calls
     where status = 'IN_PROGRESS'
     order by started_at, id
  `.execute(db)
  await sql`comment on view calls_in_progress is ${sql.lit(
    'The calls holding a slot now, oldest first: phone masked to its last 4 digits, the attempt being dialed, how long it has held the slot, and the provider call id (null until the provider accepted the dial). A call past CALL_TIMEOUT_MS here is freed by the next sweep.',
  )}`.execute(db)

  // Filtering on call_id reaches the view's call_events through call_events_by_call (call_id, id).
  await sql`
    create view call_timeline as
    select e.call_id,
           e.id                     as event_id,
           e.created_at,
           e.attempt,
           e.kind,
           e.status,
           e.detail ->> 'outcome'   as outcome,
           e.detail,
           c.status                 as call_status,
           mask_phone(c.to_phone)   as phone
      from call_events e
      join calls c on c.id = e.call_id
     order by e.call_id, e.id
  `.execute(db)
  await sql`comment on view call_timeline is ${sql.lit(
    "Every call's history in order: select * from call_timeline where call_id = '<id>'. status is the call status after the event (the provider status for WEBHOOK rows); outcome says whether a report changed the call (applied, late) or not (duplicate, stale, progress); call_status is the status now.",
  )}`.execute(db)

  // Attempts are not reset: provider_call_id fencing, webhook URLs (&attempt=N) and the provider's Idempotency-Key
  // ("<call id>:<attempt>") all key on the attempt number, so reusing one would let a webhook of an old attempt
  // settle the new one and let the provider drop the new dial as a duplicate. A retried call therefore gets the
  // attempts it has left under MAX_RETRY_ATTEMPTS, and at least one.
  await sql`
    create function retry_call(call_id uuid, expires_in interval default interval '24 hours') returns boolean
    language sql volatile as $$
      with target as (
        select c.id, c.status from calls c
         where c.id = retry_call.call_id and c.status in ('FAILED', 'EXPIRED', 'CANCELED')
           for update
      ), retried as (
        update calls c
           set status          = 'PENDING',
               next_attempt_at = now(),
               ended_at        = null,
               expires_at      = case when c.expires_at <= now() + interval '1 minute'
                                      then now() + retry_call.expires_in else c.expires_at end
          from target
         where c.id = target.id and c.status = target.status
        returning c.id, c.attempts, target.status as previous
      ), history as (
        insert into call_events (call_id, attempt, kind, status, detail)
        select id, attempts, 'RETRY_REQUESTED', 'PENDING',
               jsonb_build_object('from', previous, 'by', session_user::text,
                                  'via', coalesce(current_setting('application_name', true), ''))
          from retried
      )
      select exists (select 1 from retried)
    $$
  `.execute(db)
  await sql`comment on function retry_call(uuid, interval) is ${sql.lit(
    'Puts a FAILED, EXPIRED or CANCELED call back to PENDING, due now; a dispatcher dials it within about a second. Keeps the attempt count (the next dial is attempt attempts+1), so the call gets the attempts it has left under MAX_RETRY_ATTEMPTS, and at least one. An expires_at already past (or within a minute) moves to now() + expires_in (default 24 hours). Writes a RETRY_REQUESTED event. Returns false, changing nothing, for any other status or an unknown id.',
  )}`.execute(db)

  await sql`
    create function cancel_pending_calls() returns integer
    language sql volatile as $$
      with canceled as (
        update calls set status = 'CANCELED', ended_at = now()
         where status = 'PENDING'
        returning id, attempts
      ), history as (
        insert into call_events (call_id, attempt, kind, status, detail)
        select id, attempts, 'CANCELED', 'CANCELED',
               jsonb_build_object('by', session_user::text,
                                  'via', coalesce(current_setting('application_name', true), ''))
          from canceled
      )
      select count(*)::int from canceled
    $$
  `.execute(db)
  await sql`comment on function cancel_pending_calls() is ${sql.lit(
    'Cancels every PENDING call (a CANCELED event each) and returns how many. Calls already IN_PROGRESS are not touched: they end by webhook or CALL_TIMEOUT_MS. A call a dispatcher is claiming at that instant stays with the claim (the update waits for its row lock, then finds it no longer PENDING).',
  )}`.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop function cancel_pending_calls()`.execute(db)
  await sql`drop function retry_call(uuid, interval)`.execute(db)
  await sql`drop view call_timeline`.execute(db)
  await sql`drop view calls_in_progress`.execute(db)
  await sql`drop view call_overview`.execute(db)
  await sql`drop function mask_phone(text)`.execute(db)
  await sql`drop table dispatch_settings`.execute(db)
}
