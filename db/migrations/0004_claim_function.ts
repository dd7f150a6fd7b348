import { type Kysely, sql } from 'kysely'

// The claim as one function, so a dispatcher claims in one round trip instead of four (begin, lock, claim, commit).
// src/sql/claim.ts calls it and explains the invariants; the statement is the one 0001's indexes were made for.
//
// Why a function and not one statement: the count of IN_PROGRESS calls must come from a snapshot taken after the
// lock is granted. A statement's snapshot is taken when it starts, before any lock it asks for; inside a VOLATILE
// PL/pgSQL function each statement takes its own, so RETURN QUERY sees every claim committed before the lock was
// granted. The lock is transaction-scoped: it is released when the caller's statement commits.
//
// The SET clauses pin the plan to an ordered walk of calls_dispatch_queue with primary-key lookups: left to the
// statistics, the planner chose a bitmap scan of every PENDING call plus a sort while a fresh backlog was not yet
// analyzed, and a hash join over the whole table once it was (40-75 ms per claim at 100,000 PENDING calls).
// jit = off: before PostgreSQL 18 a disabled plan node adds 10^10 to the plan's cost, far above jit_above_cost, so
// every claim was JIT-compiled: 171 ms for a claim that found nothing, on the PostgreSQL 15 of this machine with
// 100,000 PENDING calls; 0.6 ms without JIT, and 1.4-2.3 ms for a claim of 30. No claim runs long enough for JIT to
// pay back.

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create function claim_due_calls(slot_cap integer, max_claims integer) returns setof calls
    language plpgsql volatile
    set enable_bitmapscan = off
    set enable_sort = off
    set enable_hashjoin = off
    set jit = off
    as $$
    begin
      -- the dispatch lock: key ('CALL', 1) in pg_advisory_xact_lock's two-integer space, which pg-boss does not use
      perform pg_advisory_xact_lock(1128352844, 1);
      return query
        with free as (
          select least(greatest(slot_cap - count(*)::int, 0), max_claims) as slots
            from calls where status = 'IN_PROGRESS'
        ), due as (
          -- calls_dispatch_queue gives the order; rows a client is changing right now are skipped, not waited for
          select c.id, c.to_phone, c.next_attempt_at
            from calls c
           where c.status = 'PENDING' and c.next_attempt_at <= now() and c.expires_at > now()
             and not exists (select 1 from calls live where live.to_phone = c.to_phone and live.status = 'IN_PROGRESS')
           order by c.next_attempt_at, c.id
           limit (select case when slots = 0 then 0 else slots * 2 + 8 end from free)
             for update of c skip locked
        ), chosen as (
          select one_per_phone.id from (
            select distinct on (due.to_phone) due.id, due.next_attempt_at
              from due order by due.to_phone, due.next_attempt_at, due.id
          ) one_per_phone
          order by one_per_phone.next_attempt_at, one_per_phone.id
          limit (select slots from free)
        ), claimed as (
          update calls c
             set status = 'IN_PROGRESS', attempts = c.attempts + 1, started_at = now(), provider_call_id = null
            from chosen
           where c.id = chosen.id and c.status = 'PENDING'
          returning c.*
        ), history as (
          insert into call_events (call_id, attempt, kind, status)
          select claimed.id, claimed.attempts, 'CLAIMED', 'IN_PROGRESS' from claimed
        )
        select * from claimed order by claimed.next_attempt_at, claimed.id;
    end
    $$
  `.execute(db)
  await sql`comment on function claim_due_calls(integer, integer) is ${sql.lit(
    'The dispatcher claim (src/sql/claim.ts): under the dispatch lock, moves up to min(max_claims, slot_cap - IN_PROGRESS) due PENDING calls, one per phone and none on a phone already in a call, to IN_PROGRESS, and returns them. Not for hand use: a claimed call is dialed only by the process that claimed it.',
  )}`.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop function claim_due_calls(integer, integer)`.execute(db)
}
