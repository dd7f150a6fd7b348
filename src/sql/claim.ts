import { type Kysely, sql, type Transaction } from 'kysely'
import type { Call, DB } from '../db.ts'

// Invariant: at most `cap` calls are IN_PROGRESS, across every process that shares the database.
//
// Every claim runs under one transaction-scoped advisory lock, so claims happen one at a time. The claim statement
// starts after the lock is granted, and under READ COMMITTED it therefore sees every earlier claimer's committed
// rows: count(IN_PROGRESS) is exact and the cap cannot be overshot (measured in shared/notes/stack-facts.md §2.2:
// pg-boss's unlocked groupConcurrency overshot a cap of 30 by up to 20; under this lock it was exact every round).
// Freeing a slot needs no lock: it only lowers the count. The lock is held for one statement, about a millisecond.
//
// Invariant: never two IN_PROGRESS calls to one phone. The claim skips phones that have one and takes one call per
// phone; the partial unique index calls_one_live_call_per_phone enforces it regardless of this code.

/** pg_advisory_xact_lock(int, int) key; pg-boss uses the one-bigint form, so the key spaces never overlap. */
export const DISPATCH_LOCK = { classId: 0x43414c4c /* "CALL" */, objectId: 1 } as const

export async function claimDueCalls(db: Kysely<DB>, cap: number, max: number): Promise<Call[]> {
  if (max <= 0) return []
  return db.transaction().execute(async (trx) => {
    await lockDispatch(trx)
    const { rows } = await claimStatement(cap, max).execute(trx)
    return rows
  })
}

/**
 * Takes the dispatch lock until the end of the transaction `trx`; the claim statement must come after it.
 *
 * The same statement pins the claim's plan for the rest of the transaction: an ordered walk of calls_dispatch_queue
 * and primary-key lookups, whatever the statistics say. Left to them, the planner chose a bitmap scan of every
 * PENDING call plus a sort while a fresh backlog was not yet analyzed (9 ms per claim at 5,000 calls, growing with
 * the backlog), and a hash join over the whole table once it was (40-75 ms per claim at 100,000 PENDING calls);
 * pinned, a claim of 30 took 1.5-3 ms at both sizes (scripts/bench, benchmark 6).
 */
export async function lockDispatch(trx: Transaction<DB>): Promise<void> {
  await sql`
    select pg_advisory_xact_lock(${DISPATCH_LOCK.classId}::int, ${DISPATCH_LOCK.objectId}::int),
           set_config('enable_bitmapscan', 'off', true), set_config('enable_sort', 'off', true),
           set_config('enable_hashjoin', 'off', true)
  `.execute(trx)
}

/** The claim itself, exported so scripts/bench can EXPLAIN it; run it only after lockDispatch in one transaction. */
export function claimStatement(cap: number, max: number) {
  return sql<Call>`
      with free as (
        select least(greatest(${cap}::int - count(*)::int, 0), ${max}::int) as slots
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
        select id from (
          select distinct on (to_phone) id, next_attempt_at from due order by to_phone, next_attempt_at, id
        ) one_per_phone
        order by next_attempt_at, id
        limit (select slots from free)
      ), claimed as (
        update calls c
           set status = 'IN_PROGRESS', attempts = c.attempts + 1, started_at = now(), provider_call_id = null
          from chosen
         where c.id = chosen.id and c.status = 'PENDING'
        returning c.*
      ), history as (
        insert into call_events (call_id, attempt, kind, status)
        select id, attempts, 'CLAIMED', 'IN_PROGRESS' from claimed
      )
      select * from claimed order by next_attempt_at, id
    `
}

/**
 * Milliseconds until the next PENDING call becomes due (a retry's backoff), or undefined when none is waiting for
 * its time. Lets an idle dispatcher wake when a retry is due instead of at its next poll. Reads calls_dispatch_queue.
 */
export async function msUntilNextDue(db: Kysely<DB>): Promise<number | undefined> {
  const { rows } = await sql<{ ms: number | null }>`
    select extract(epoch from min(next_attempt_at) - now())::float8 * 1000 as ms
      from calls where status = 'PENDING' and next_attempt_at > now()
  `.execute(db)
  const ms = rows[0]?.ms
  return ms === null || ms === undefined ? undefined : Math.max(0, ms)
}
