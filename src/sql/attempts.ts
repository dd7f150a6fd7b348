import { type Kysely, sql } from 'kysely'
import type { DB } from '../db/database.ts'
import type { AttemptEnd, CallError, CallStatus, EventKind, ProviderFinal } from '../dispatch/call-state.ts'

// Invariant: an attempt ends once. Every statement here is fenced on (id, status = 'IN_PROGRESS', attempts =
// attempt), so a duplicate, late or out-of-order report matches no row: it is recorded in call_events and changes
// nothing. Ending an attempt frees its slot in the same statement, because the slot IS the IN_PROGRESS status.
//
// The one exception is the provider's final report of the call's latest attempt that arrives after something else
// ended it (CALL_TIMEOUT after an unknown dial, a dial error the provider contradicts): the provider knows what
// happened to the person, so it settles the call ('late'), once (calls.reported_attempt), without taking a slot.
// A late COMPLETED ends the call COMPLETED whatever it was; a late failure only records itself: a call that is
// PENDING keeps its retry, and a final call stays final.
//
// The src/dispatch/recorder.ts module is the only caller: it batches these statements and retries them while the
// database is unreachable (every statement here is safe to repeat).

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
  // An accepted dial ends the call's run of 429s.
  await sql`
    with accepted as (
      select * from jsonb_to_recordset(${JSON.stringify(dials)}::jsonb)
        as t("callId" uuid, attempt int, "providerCallId" text)
    ), locked as (
      select id from calls where id = any(array(select "callId" from accepted)) order by id for no key update
    ), noted as (
      update calls c set provider_call_id = a."providerCallId", throttles = 0, throttled_since = null
        from accepted a join locked l on l.id = a."callId"
       where c.id = a."callId" and c.attempts = a.attempt
      returning c.id, a.attempt, a."providerCallId"
    )
    insert into call_events (call_id, attempt, kind, detail)
    select id, attempt, 'DIAL_ACCEPTED', jsonb_build_object('providerCallId', "providerCallId") from noted
  `.execute(db)
}

/**
 * A dial that may have placed a call (sent, but no usable answer): history only. The call stays IN_PROGRESS and keeps
 * its slot until the provider's report, reconciliation or CALL_TIMEOUT ends it; it is never dialed again for this
 * attempt, because a second dial could ring the person twice.
 */
export async function recordDialUnknown(db: Kysely<DB>, callId: string, attempt: number, error: CallError) {
  await sql`
    insert into call_events (call_id, attempt, kind, status, detail)
    values (${callId}::uuid, ${attempt}::int, 'DIAL_UNKNOWN', 'IN_PROGRESS', ${JSON.stringify({ error })}::jsonb)
  `.execute(db)
}

export type EndOutcome = 'applied' | 'late' | 'duplicate' | 'stale' | 'mismatch' | 'unknown_call'

export interface EndAttemptInput {
  callId: string
  attempt: number
  end: AttemptEnd
  /** call_events.kind of the report that ended the attempt, e.g. WEBHOOK or DIAL_FAILED. */
  eventKind: EventKind
  /** The provider's final outcome, when the report is one (webhook, reconciliation): becomes calls.last_outcome. */
  outcome?: ProviderFinal
  /** The provider's id named by the report: a report naming another call than the one stored is refused. */
  providerCallId?: string
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
 * Ends several attempts, at most one report per call, in one statement: the fenced updates and a history row per
 * report that says whether it applied. A burst of webhooks (every slot's call ends at about the same time when calls
 * have one length) then costs one round trip and one commit instead of one each. Results are in input order.
 */
export async function endAttempts(db: Kysely<DB>, inputs: readonly EndAttemptInput[]): Promise<EndAttemptResult[]> {
  const first = await endAttemptsOnce(db, inputs)
  // A row that was IN_PROGRESS in our snapshot but that another statement (a duplicate of this report, or the
  // timeout sweep) changed first. Look again, once, so a report that races the timeout still lands as 'late'.
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
    const back = end.next === 'PENDING'
    return {
      ord,
      call_id: input.callId,
      attempt: input.attempt,
      next: end.next,
      refund: back && !end.spendsAttempt ? 1 : 0,
      throttled: back && end.throttled,
      delay_sec: back ? end.delayMs / 1000 : 0,
      error: end.next === 'COMPLETED' ? null : end.error,
      duration_sec: input.durationSec ?? null,
      outcome: input.outcome ?? null,
      provider_call_id: input.providerCallId ?? null,
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
  const { rows } = await sql<{ ord: number; before_status: CallStatus; after_status: CallStatus; outcome: EndOutcome }>`
    with report as (
      select * from jsonb_to_recordset(${JSON.stringify(reports)}::jsonb) as r(
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
      select r.ord, d.next, d.next_at
        from report r join calls c on c.id = r.call_id
        cross join lateral campaign_end_attempt(c.campaign_id, c.time_zones, r.next, r.refund = 0, r.delay_sec,
                                                r.outcome, r.event_kind, r.attempt, r.error ->> 'code') d
       where c.id = any(array(select call_id from report))
    ), ended as (
      update calls c
         set status           = d.next,
             attempts         = c.attempts - r.refund,
             next_attempt_at  = case when d.next = 'PENDING' then d.next_at else c.next_attempt_at end,
             ended_at         = case when d.next = 'PENDING' then null else now() end,
             last_error       = r.error,
             last_outcome     = coalesce(r.outcome, c.last_outcome),
             reported_attempt = case when r.outcome is not null then r.attempt else c.reported_attempt end,
             -- consecutive 429s: their delay grows and their total time is bounded (call-state.ts)
             throttles        = case when r.throttled then c.throttles + 1 when r.refund = 1 then c.throttles else 0 end,
             throttled_since  = case when r.throttled then coalesce(c.throttled_since, now())
                                     when r.refund = 1 then c.throttled_since end,
             duration_sec     = coalesce(r.duration_sec, c.duration_sec),
             -- a dial whose answer we never read (unknown) learns its provider id from the report
             provider_call_id = coalesce(c.provider_call_id, r.provider_call_id)
        from report r join locked l on l.id = r.call_id join decided d on d.ord = r.ord
       where c.id = r.call_id and c.status = 'IN_PROGRESS' and c.attempts = r.attempt
         and (c.provider_call_id is null or r.provider_call_id is null or c.provider_call_id = r.provider_call_id)
      returning r.ord, c.status
    ), late as (
      update calls c
         set status           = case when r.outcome = 'COMPLETED' then 'COMPLETED' else c.status end,
             ended_at         = case when r.outcome = 'COMPLETED' then now() else c.ended_at end,
             last_error       = r.error,
             last_outcome     = r.outcome,
             reported_attempt = r.attempt,
             duration_sec     = coalesce(r.duration_sec, c.duration_sec),
             provider_call_id = coalesce(c.provider_call_id, r.provider_call_id)
        from report r join locked l on l.id = r.call_id
       where c.id = r.call_id and c.attempts = r.attempt and r.outcome is not null
         and c.status in ('PENDING', 'FAILED', 'EXPIRED', 'CANCELED')
         and c.reported_attempt is distinct from r.attempt
         and (c.provider_call_id is null or r.provider_call_id is null or c.provider_call_id = r.provider_call_id)
      returning r.ord, c.status
    ), outcome as (
      select t.ord, t.id, t.status as before_status, coalesce(e.status, l.status, t.status) as after_status,
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
    select ord, before_status, after_status, outcome from outcome
  `.execute(db)
  const byOrd = new Map(rows.map((r) => [r.ord, r]))
  return reports.map(({ ord }): EndAttemptResult => {
    const row = byOrd.get(ord)
    if (!row) return { outcome: 'unknown_call', status: undefined, freedSlot: false }
    return { outcome: row.outcome, status: row.after_status, freedSlot: row.outcome === 'applied' }
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
