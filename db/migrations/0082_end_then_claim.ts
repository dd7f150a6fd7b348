import { type Kysely, sql } from 'kysely'

// Ending an attempt frees exactly the slot the next claim needs, and the two used to be two round trips and two
// commits: the webhook's end of the attempt, then (after the process's dispatcher was nudged) the claim. Measured from
// the provider's send (scripts/bench, refill gap), that second commit and the wake-up between them were most of the
// gap. end_attempts_and_claim() does both in one call and one commit.
//
// The end moves here from src/sql/attempts.ts unchanged (end_attempts(), the one copy of it), so both functions share
// it. In PL/pgSQL each statement takes its own snapshot under READ COMMITTED, so the claim that follows the end sees
// the slots it freed; the claim still runs under the dispatch lock, so the cap stays exact across processes
// (src/sql/claim.ts). Under REPEATABLE READ both would share one snapshot, and src/sql/attempts.ts then ends and
// claims separately.

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create function end_attempts(reports jsonb)
      returns table (ord integer, before_status text, after_status text, outcome text, due_in_ms float8)
    language plpgsql volatile
    as $$
    #variable_conflict use_column
    begin
      -- Calls are found through "id = any(array(select call_id from report))", which the planner answers from the
      -- primary key: joined to the JSON alone, the plan hashed it against a sequential scan of calls (about 1.5 ms
      -- per statement at 3,000-5,000 rows, growing with them), and a plain array of ids was re-planned every run.
      return query
        with report as (
          select * from jsonb_to_recordset(reports) as r(
            ord int, call_id uuid, attempt int, next text, refund int, throttled boolean, delay_sec float8, error jsonb,
            duration_sec int, outcome text, provider_call_id text, event_kind text, event_status text, detail jsonb)
        ), target as (
          select r.ord, c.id, c.status, c.attempts,
                 -- a signed report replayed against another call names a provider id that is not this call's
                 (c.provider_call_id is not null and r.provider_call_id is not null
                  and c.provider_call_id <> r.provider_call_id) as mismatch
            from calls c join report r on r.call_id = c.id
           where c.id = any(array(select call_id from report))
        ), locked as (
          -- in id order, like recordDialsAccepted: batches that lock shared rows in different orders would deadlock
          select id from calls where id = any(array(select call_id from report)) order by id for no key update
        ), decided as (
          -- campaigns (migration 0010): a campaign's retryPolicy may override r.next, a retry waits for the calling
          -- window, and a retry of a canceled campaign's call ends CANCELED. For other calls this is r.next unchanged.
          select r.ord, d.next, d.next_at, d.due_at
            from report r join calls c on c.id = r.call_id
            cross join lateral campaign_end_attempt(c.campaign_id, c.time_zones, r.next, r.refund = 0, r.delay_sec,
                                                    r.outcome, r.event_kind, r.attempt, r.error ->> 'code') d
           where c.id = any(array(select call_id from report))
        ), ended as (
          update calls c
             set status           = d.next,
                 attempts         = c.attempts - r.refund,
                 next_attempt_at  = case when d.next = 'PENDING' then d.next_at else c.next_attempt_at end,
                 -- the retry delay's end before the window moved it (migration 0043): a window change keeps it
                 retry_at         = case when d.next = 'PENDING' then d.due_at else c.retry_at end,
                 ended_at         = case when d.next = 'PENDING' then null else now() end,
                 last_error       = r.error,
                 last_outcome     = coalesce(r.outcome, c.last_outcome),
                 reported_attempt = case when r.outcome is not null then r.attempt else c.reported_attempt end,
                 -- consecutive 429s: their delay grows and their total time is bounded (call-state.ts)
                 throttles        = case when r.throttled then c.throttles + 1 when r.refund = 1 then c.throttles else 0 end,
                 throttled_since  = case when r.throttled then coalesce(c.throttled_since, now())
                                         when r.refund = 1 then c.throttled_since end,
                 duration_sec     = coalesce(r.duration_sec, c.duration_sec),
                 -- what the platform reported (issue 13), in this statement so that the final client event's copy of
                 -- the call carries it (the event is written by this UPDATE's trigger)
                 last_result      = coalesce(r.detail -> 'result', c.last_result),
                 -- a dial whose answer we never read (unknown) learns its provider id from the report
                 provider_call_id = coalesce(c.provider_call_id, r.provider_call_id)
            from report r join locked l on l.id = r.call_id join decided d on d.ord = r.ord
           where c.id = r.call_id and c.status = 'IN_PROGRESS' and c.attempts = r.attempt
             and (c.provider_call_id is null or r.provider_call_id is null or c.provider_call_id = r.provider_call_id)
          returning r.ord, c.status, c.next_attempt_at
        ), late as (
          update calls c
             set status           = case when r.outcome = 'COMPLETED' then 'COMPLETED' else c.status end,
                 ended_at         = case when r.outcome = 'COMPLETED' then now() else c.ended_at end,
                 last_error       = r.error,
                 last_outcome     = r.outcome,
                 reported_attempt = r.attempt,
                 duration_sec     = coalesce(r.duration_sec, c.duration_sec),
                 last_result      = coalesce(r.detail -> 'result', c.last_result),
                 provider_call_id = coalesce(c.provider_call_id, r.provider_call_id)
            from report r join locked l on l.id = r.call_id
           where c.id = r.call_id and c.attempts = r.attempt and r.outcome is not null
             and c.status in ('PENDING', 'FAILED', 'EXPIRED', 'CANCELED')
             and c.reported_attempt is distinct from r.attempt
             and (c.provider_call_id is null or r.provider_call_id is null or c.provider_call_id = r.provider_call_id)
          returning r.ord, c.status
        ), outcome as (
          select t.ord, t.id, t.status as before_status, coalesce(e.status, l.status, t.status) as after_status,
                 case when e.status = 'PENDING'
                      then greatest(extract(epoch from e.next_attempt_at - now())::float8 * 1000, 0) end as due_in_ms,
                 case when e.ord is not null then 'applied'
                      when l.ord is not null then 'late'
                      when t.attempts > r.attempt then 'stale'
                      when t.mismatch then 'mismatch'
                      else 'duplicate' end as outcome
            from target t join report r on r.ord = t.ord
            left join ended e on e.ord = t.ord
            left join late l on l.ord = t.ord
        ), history as (
          insert into call_events (call_id, attempt, kind, status, detail)
          select o.id, r.attempt, r.event_kind, r.event_status,
                 r.detail || jsonb_build_object('outcome', o.outcome, 'next', r.next)
            from outcome o join report r on r.ord = o.ord
           where o.outcome <> 'mismatch'
           order by o.ord
        )
        select o.ord, o.before_status, o.after_status, o.outcome, o.due_in_ms from outcome o;
    end
    $$
  `.execute(db)
  await sql`comment on function end_attempts(jsonb) is ${sql.lit(
    'Ends attempts from a batch of reports (src/sql/attempts.ts builds them), fenced on IN_PROGRESS and the attempt number, with a history row per report; returns per report what became of it. Not for hand use: the service calls it with the reports of the provider (an operator cancels calls with cancel_pending_calls() or the API).',
  )}`.execute(db)

  await sql`
    create function end_attempts_and_claim(reports jsonb, slot_cap integer, max_claims integer)
      returns table (ord integer, before_status text, after_status text, outcome text, due_in_ms float8,
                     claimed jsonb)
    language plpgsql volatile
    as $$
    #variable_conflict use_column
    declare
      ended record;
      freed boolean := false;
    begin
      for ended in select * from end_attempts(reports) loop
        ord := ended.ord;
        before_status := ended.before_status;
        after_status := ended.after_status;
        outcome := ended.outcome;
        due_in_ms := ended.due_in_ms;
        claimed := null;
        freed := freed or ended.outcome = 'applied';
        return next;
      end loop;
      -- a new statement, so a new snapshot: the claim counts the slots just freed as free
      if freed and max_claims > 0 then
        return query
          select null::integer, null::text, null::text, null::text, null::float8, to_jsonb(c)
            from claim_due_calls(slot_cap, max_claims) c;
      end if;
    end
    $$
  `.execute(db)
  await sql`comment on function end_attempts_and_claim(jsonb, integer, integer) is ${sql.lit(
    'end_attempts(), then, if a slot was freed, claim_due_calls() in the same transaction: one round trip and one commit for a burst of provider reports and the calls that take their slots. Rows with ord null are the claimed calls. Not for hand use: a claimed call is dialed only by the process that claimed it.',
  )}`.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop function end_attempts_and_claim(jsonb, integer, integer)`.execute(db)
  await sql`drop function end_attempts(jsonb)`.execute(db)
}
