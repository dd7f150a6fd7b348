import { type Kysely, sql } from 'kysely'
import type { DB } from '../db/database.ts'
import { CALL_ERRORS } from '../dispatch/call-state.ts'

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
