import { type Kysely, sql } from 'kysely'
import type { DB } from '../db/database.ts'
import {
  type AttemptEnd,
  CALL_ERRORS,
  type CallStatus,
  type EventKind,
  type ProviderFinal,
} from '../dispatch/call-state.ts'

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
  // provider's id is still worth keeping for that attempt. Rows are locked in id order, as endAttempts locks them:
  // two batches that lock one set of rows in different orders deadlock, and PostgreSQL takes a second to notice.
  await sql`
    with accepted as (
      select * from jsonb_to_recordset(${JSON.stringify(dials)}::jsonb)
        as t("callId" uuid, attempt int, "providerCallId" text)
    ), locked as (
      select id from calls where id = any(array(select "callId" from accepted)) order by id for no key update
    ), noted as (
      update calls c set provider_call_id = a."providerCallId"
        from accepted a join locked l on l.id = a."callId"
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
  eventKind: EventKind
  /** The provider's final outcome, when the report is one (webhook, reconciliation): becomes calls.last_outcome. */
  outcome?: ProviderFinal
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
 * Ends attempt `attempt` of a call as `end` says: endAttempts for one report. A call that timed out (FAILED with
 * CALL_TIMEOUT) still takes the provider's final outcome for that attempt ('late'); it does not take a slot again and
 * is never re-dialed.
 */
export async function endAttempt(db: Kysely<DB>, input: EndAttemptInput): Promise<EndAttemptResult> {
  return (await endAttempts(db, [input]))[0] as EndAttemptResult
}

/**
 * Ends several attempts, at most one report per call, in one statement: the fenced updates and a history row per
 * report that says whether it applied. A burst of webhooks (every slot's call ends at about the same time when calls
 * have one length) then costs one round trip and one commit instead of one each. Results are in input order.
 */
export async function endAttempts(db: Kysely<DB>, inputs: readonly EndAttemptInput[]): Promise<EndAttemptResult[]> {
  const first = await endAttemptsOnce(db, inputs)
  // A row that was IN_PROGRESS in our snapshot but that another statement (a duplicate of this report, or the
  // timeout sweep) changed first. Look again, once, so a webhook that races the timeout still lands as 'late'.
  const again = inputs.flatMap((input, i) => {
    const r = first[i] as EndAttemptResult
    return r.outcome === 'duplicate' && r.status === 'IN_PROGRESS' ? [{ input, i }] : []
  })
  if (again.length === 0) return first
  const second = await endAttemptsOnce(
    db,
    again.map((a) => a.input),
  )
  again.forEach((a, j) => {
    first[a.i] = second[j] as EndAttemptResult
  })
  return first
}

async function endAttemptsOnce(db: Kysely<DB>, inputs: readonly EndAttemptInput[]): Promise<EndAttemptResult[]> {
  const reports = inputs.map((input, ord) => {
    const { end } = input
    return {
      ord,
      call_id: input.callId,
      attempt: input.attempt,
      next: end.next,
      refund: end.next === 'PENDING' && !end.spendsAttempt ? 1 : 0,
      delay_sec: end.next === 'PENDING' ? end.delayMs / 1000 : 0,
      error: end.next === 'COMPLETED' ? null : end.error,
      // A late outcome can only end the call: a retry would dial a phone that may already have been called.
      late_status: end.next === 'COMPLETED' ? 'COMPLETED' : 'FAILED',
      duration_sec: input.durationSec ?? null,
      outcome: input.outcome ?? null,
      event_kind: input.eventKind,
      event_status: input.eventStatus ?? end.next,
      detail: input.detail ?? {},
    }
  })
  // Calls are found through "id = any(array(select call_id from report))", which the planner answers from the primary
  // key: joined to the JSON alone, the plan hashed it against a sequential scan of calls (about 1.5 ms per statement
  // at 3,000-5,000 rows, growing with them). An array the planner cannot see into also keeps custom plans no cheaper
  // than the generic one, so PostgreSQL settles on the generic plan: with the ids as a parameter it re-planned every
  // run (up to 0.7 ms of planning per statement, more than its execution).
  const { rows } = await sql<{
    ord: number
    before_status: CallStatus
    before_attempts: number
    after_status: CallStatus | null
    outcome: EndOutcome
  }>`
    with report as (
      select * from jsonb_to_recordset(${JSON.stringify(reports)}::jsonb) as r(
        ord int, call_id uuid, attempt int, next text, refund int, delay_sec float8, error jsonb,
        late_status text, duration_sec int, outcome text, event_kind text, event_status text, detail jsonb)
    ), target as (
      select r.ord, c.id, c.status, c.attempts
        from calls c join report r on r.call_id = c.id
       where c.id = any(array(select call_id from report))
    ), locked as (
      -- in id order, like recordDialsAccepted: batches that lock shared rows in different orders would deadlock
      select id from calls where id = any(array(select call_id from report)) order by id for no key update
    ), decided as (
      -- campaigns (migration 0010): a campaign's retryPolicy may override r.next, a retry waits for the calling
      -- window, and a retry of a canceled campaign's call ends CANCELED. For other calls this is r.next unchanged.
      select r.ord, d.next, d.next_at
        from report r join calls c on c.id = r.call_id
        cross join lateral campaign_end_attempt(c.campaign_id, c.time_zones, r.next, r.refund = 0, r.delay_sec,
                                                r.outcome, r.event_kind, r.attempt, r.error ->> 'code') d
       where c.id = any(array(select call_id from report))
    ), ended as (
      update calls c
         set status          = d.next,
             attempts        = c.attempts - r.refund,
             next_attempt_at = case when d.next = 'PENDING' then d.next_at else c.next_attempt_at end,
             ended_at        = case when d.next = 'PENDING' then null else now() end,
             last_error      = r.error,
             last_outcome    = coalesce(r.outcome, c.last_outcome),
             duration_sec    = coalesce(r.duration_sec, c.duration_sec)
        from report r join locked l on l.id = r.call_id join decided d on d.ord = r.ord
       where c.id = r.call_id and c.status = 'IN_PROGRESS' and c.attempts = r.attempt
      returning r.ord, d.next
    ), late as (
      update calls c
         set status = r.late_status, ended_at = now(), last_error = r.error,
             last_outcome = coalesce(r.outcome, c.last_outcome),
             duration_sec = coalesce(r.duration_sec, c.duration_sec)
        from report r join locked l on l.id = r.call_id
       where c.id = r.call_id and c.status = 'FAILED' and c.attempts = r.attempt
         and c.last_error ->> 'code' = ${CALL_ERRORS.timeout}
      returning r.ord
    ), outcome as (
      select t.ord, t.id, t.status as before_status, t.attempts as before_attempts,
             (select e.next from ended e where e.ord = t.ord) as after_status,
             case when t.ord in (select ord from ended) then 'applied'
                  when t.ord in (select ord from late) then 'late'
                  when t.attempts > r.attempt then 'stale'
                  else 'duplicate' end as outcome
        from target t join report r on r.ord = t.ord
    ), history as (
      insert into call_events (call_id, attempt, kind, status, detail)
      select o.id, r.attempt, r.event_kind, r.event_status,
             r.detail || jsonb_build_object('outcome', o.outcome, 'next', r.next)
        from outcome o join report r on r.ord = o.ord
       order by o.ord
    )
    select ord, before_status, before_attempts, after_status, outcome from outcome
  `.execute(db)
  const byOrd = new Map(rows.map((r) => [r.ord, r]))
  return reports.map(({ ord, next, late_status }): EndAttemptResult => {
    const row = byOrd.get(ord)
    if (!row) return { outcome: 'unknown_call', status: undefined, freedSlot: false }
    if (row.outcome === 'applied') return { outcome: 'applied', status: row.after_status ?? next, freedSlot: true }
    if (row.outcome === 'late') return { outcome: 'late', status: late_status as CallStatus, freedSlot: false }
    return { outcome: row.outcome, status: row.before_status, freedSlot: false }
  })
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
