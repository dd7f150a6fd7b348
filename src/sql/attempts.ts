import { type Kysely, sql } from 'kysely'
import { type AttemptEnd, CALL_ERRORS, type CallStatus } from '../call-state.ts'
import type { DB } from '../db.ts'

// Invariant: an attempt ends once. Every statement here is fenced on (id, status = 'IN_PROGRESS', attempts =
// attempt), so a duplicate, late or out-of-order report matches no row: it is recorded in call_events and changes
// nothing. Ending an attempt frees its slot in the same statement, because the slot IS the IN_PROGRESS status.

export interface AcceptedDial {
  callId: string
  attempt: number
  providerCallId: string
}

/**
 * Notes the provider's id of accepted dials, any number in one statement: a claim's calls are dialed at once and
 * their 202s come back together, so one round trip and one commit serve them all (10 per statement on average in
 * the zero-length benchmark, where one statement per dial cost 0.5 ms of PostgreSQL CPU per call).
 */
export async function recordDialsAccepted(db: Kysely<DB>, dials: readonly AcceptedDial[]) {
  if (dials.length === 0) return
  // No status fence: the final webhook may already have been applied (it can arrive before the 202 is read); the
  // provider's id is still worth keeping for that attempt.
  await sql`
    with accepted as (
      select * from jsonb_to_recordset(${JSON.stringify(dials)}::jsonb)
        as t("callId" uuid, attempt int, "providerCallId" text)
    ), noted as (
      update calls c set provider_call_id = a."providerCallId"
        from accepted a
       where c.id = a."callId" and c.attempts = a.attempt
      returning c.id, a.attempt, a."providerCallId"
    )
    insert into call_events (call_id, attempt, kind, detail)
    select id, attempt, 'DIAL_ACCEPTED', jsonb_build_object('providerCallId', "providerCallId") from noted
  `.execute(db)
}

export type EndOutcome = 'applied' | 'late' | 'duplicate' | 'stale' | 'unknown_call'

export interface EndAttemptInput {
  callId: string
  attempt: number
  end: AttemptEnd
  /** call_events.kind of the report that ended the attempt, e.g. WEBHOOK or DIAL_FAILED. */
  eventKind: string
  /** call_events.status: the provider's status for a webhook. */
  eventStatus?: string
  detail?: Record<string, unknown>
  durationSec?: number | null
}

export interface EndAttemptResult {
  outcome: EndOutcome
  /** The call's status after the statement (undefined for an unknown call). */
  status: CallStatus | undefined
  /** True when an IN_PROGRESS slot was released. */
  freedSlot: boolean
}

/**
 * Ends attempt `attempt` of a call as `end` says. One statement: the fenced update, and a history row that says
 * whether it applied. A call that timed out (FAILED with CALL_TIMEOUT) still takes the provider's final outcome for
 * that attempt ('late'); it does not take a slot again and is never re-dialed.
 */
export async function endAttempt(db: Kysely<DB>, input: EndAttemptInput): Promise<EndAttemptResult> {
  const first = await endAttemptOnce(db, input)
  // The row was IN_PROGRESS in our snapshot but another statement (a duplicate of this report, or the timeout sweep)
  // changed it first. Look again, once, so a webhook that races the timeout still lands as 'late'.
  if (first.outcome === 'duplicate' && first.status === 'IN_PROGRESS') return endAttemptOnce(db, input)
  return first
}

async function endAttemptOnce(db: Kysely<DB>, input: EndAttemptInput): Promise<EndAttemptResult> {
  const { end } = input
  const error = end.next === 'COMPLETED' ? null : JSON.stringify(end.error)
  const delaySec = end.next === 'PENDING' ? end.delayMs / 1000 : 0
  const refund = end.next === 'PENDING' && !end.spendsAttempt ? 1 : 0
  // A late outcome can only end the call: a retry would dial a phone that may already have been called.
  const lateStatus = end.next === 'COMPLETED' ? 'COMPLETED' : 'FAILED'
  const { rows } = await sql<{ before_status: CallStatus; before_attempts: number; applied: boolean; late: boolean }>`
    with target as (
      select id, status, attempts from calls where id = ${input.callId}::uuid
    ), ended as (
      update calls
         set status          = ${end.next},
             attempts        = attempts - ${refund}::int,
             next_attempt_at = case when ${end.next} = 'PENDING'
                                    then now() + make_interval(secs => ${delaySec}::float8) else next_attempt_at end,
             ended_at        = case when ${end.next} = 'PENDING' then null else now() end,
             last_error      = ${error}::jsonb,
             duration_sec    = coalesce(${input.durationSec ?? null}::int, duration_sec)
       where id = ${input.callId}::uuid and status = 'IN_PROGRESS' and attempts = ${input.attempt}::int
      returning id
    ), late as (
      update calls
         set status = ${lateStatus}, ended_at = now(), last_error = ${error}::jsonb,
             duration_sec = coalesce(${input.durationSec ?? null}::int, duration_sec)
       where id = ${input.callId}::uuid and status = 'FAILED' and attempts = ${input.attempt}::int
         and last_error ->> 'code' = ${CALL_ERRORS.timeout}
         and not exists (select 1 from ended)
      returning id
    ), history as (
      insert into call_events (call_id, attempt, kind, status, detail)
      select id, ${input.attempt}::int, ${input.eventKind}, ${input.eventStatus ?? end.next},
             ${JSON.stringify(input.detail ?? {})}::jsonb || jsonb_build_object('outcome',
               case when exists (select 1 from ended) then 'applied'
                    when exists (select 1 from late) then 'late'
                    when target.attempts > ${input.attempt}::int then 'stale'
                    else 'duplicate' end,
               'next', ${end.next}::text)
        from target
    )
    select target.status as before_status, target.attempts as before_attempts,
           exists (select 1 from ended) as applied, exists (select 1 from late) as late
      from target
  `.execute(db)
  const row = rows[0]
  if (!row) return { outcome: 'unknown_call', status: undefined, freedSlot: false }
  if (row.applied) return { outcome: 'applied', status: end.next, freedSlot: true }
  if (row.late) return { outcome: 'late', status: lateStatus, freedSlot: false }
  return {
    outcome: row.before_attempts > input.attempt ? 'stale' : 'duplicate',
    status: row.before_status,
    freedSlot: false,
  }
}

/** A progress report (RINGING, IN_PROGRESS): history only. Returns false for an unknown call. */
export async function recordProgress(
  db: Kysely<DB>,
  callId: string,
  attempt: number,
  providerStatus: string,
  detail: Record<string, unknown>,
): Promise<boolean> {
  const { rows } = await sql`
    insert into call_events (call_id, attempt, kind, status, detail)
    select id, ${attempt}::int, 'WEBHOOK', ${providerStatus}, ${JSON.stringify({ ...detail, outcome: 'progress' })}::jsonb
      from calls where id = ${callId}::uuid
    returning id
  `.execute(db)
  return rows.length > 0
}

/** Finds our call and attempt for a provider call id (webhooks whose URL lost our query parameters). */
export async function findByProviderCallId(db: Kysely<DB>, providerCallId: string) {
  return db
    .selectFrom('calls')
    .select(['id', 'attempts'])
    .where('provider_call_id', '=', providerCallId)
    .executeTakeFirst()
}
