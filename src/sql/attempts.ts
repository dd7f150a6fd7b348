import { type Kysely, sql } from 'kysely'
import type { Call, DB } from '../db/database.ts'
import type { AttemptEnd, CallError, CallStatus, EventKind, ProviderFinal } from '../dispatch/call-state.ts'
import { callFromJson, defaultIsReadCommitted } from './claim.ts'

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
  /**
   * For a call this report put back to PENDING: milliseconds until it is due. A campaign's retry rule and calling
   * window decide it in the statement (campaign_end_attempt), so it can differ from the environment's delay.
   */
  dueInMs?: number
}

/**
 * Ends several attempts, at most one report per call, in one statement: the fenced updates and a history row per
 * report that says whether it applied (end_attempts(), migration 0082). A burst of webhooks (every slot's call ends at
 * about the same time when calls have one length) then costs one round trip and one commit instead of one each.
 * Results are in input order.
 */
export async function endAttempts(db: Kysely<DB>, inputs: readonly EndAttemptInput[]): Promise<EndAttemptResult[]> {
  return (await endThenClaim(db, inputs, undefined)).results
}

export interface EndedAndClaimed {
  results: EndAttemptResult[]
  /** Calls claimed into the freed slots: now IN_PROGRESS, to be dialed by the caller. */
  claimed: Call[]
  /**
   * True when every slot these reports freed was offered to the claim and the claim took fewer calls than it was
   * allowed: nothing more is due for now, so the dispatcher need not claim again.
   */
  refilled: boolean
}

/**
 * endAttempts, then, if a slot was freed, the claim of up to `max` calls (claim.ts rules, under the dispatch lock)
 * in the same transaction: one round trip and one commit where there were two, between the provider's report and
 * the dial that takes its slot (end_attempts_and_claim(), migration 0082). The claim must see the end's rows, which
 * a function's second statement does only under READ COMMITTED; otherwise this only ends the attempts.
 */
export async function endAttemptsAndClaim(
  db: Kysely<DB>,
  inputs: readonly EndAttemptInput[],
  cap: number,
  max: number,
): Promise<EndedAndClaimed> {
  const claim = max > 0 && (await defaultIsReadCommitted(db)) ? { cap, max } : undefined
  return endThenClaim(db, inputs, claim)
}

async function endThenClaim(
  db: Kysely<DB>,
  inputs: readonly EndAttemptInput[],
  claim: { cap: number; max: number } | undefined,
): Promise<EndedAndClaimed> {
  const first = await endAttemptsOnce(db, inputs, claim)
  const { results, claimed } = first
  // A row that was IN_PROGRESS in our snapshot but that another statement (a duplicate of this report, or the
  // timeout sweep) changed first. Look again, once, so a report that races the timeout still lands as 'late'.
  const again = inputs.flatMap((input, i) => {
    const r = results[i] as EndAttemptResult
    return r.outcome === 'duplicate' && r.status === 'IN_PROGRESS' ? [{ input, i }] : []
  })
  let refilled = claim !== undefined && claimed.length < claim.max
  if (again.length > 0) {
    const second = await endAttemptsOnce(
      db,
      again.map((a) => a.input),
      undefined,
    )
    again.forEach((a, j) => {
      const r = second.results[j] as EndAttemptResult
      results[a.i] = r
      if (r.freedSlot) refilled = false
    })
  }
  return { results, claimed, refilled }
}

async function endAttemptsOnce(
  db: Kysely<DB>,
  inputs: readonly EndAttemptInput[],
  claim: { cap: number; max: number } | undefined,
): Promise<{ results: EndAttemptResult[]; claimed: Call[] }> {
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
  const json = JSON.stringify(reports)
  const { rows } = claim
    ? await sql<EndedRow>`
        select * from end_attempts_and_claim(${json}::jsonb, ${claim.cap}::int, ${claim.max}::int)`.execute(db)
    : await sql<EndedRow>`select * from end_attempts(${json}::jsonb)`.execute(db)
  const byOrd = new Map(rows.flatMap((r) => (r.ord === null ? [] : [[r.ord, r] as const])))
  const results = reports.map(({ ord }): EndAttemptResult => {
    const row = byOrd.get(ord)
    if (!row) return { outcome: 'unknown_call', status: undefined, freedSlot: false }
    return {
      outcome: row.outcome as EndOutcome,
      status: row.after_status as CallStatus,
      freedSlot: row.outcome === 'applied',
      ...(row.due_in_ms === null ? {} : { dueInMs: row.due_in_ms }),
    }
  })
  const claimed = rows.flatMap((r) => (r.claimed ? [callFromJson(r.claimed)] : []))
  return { results, claimed }
}

/** A row of end_attempts(), or of end_attempts_and_claim(): a report's end (ord set) or a claimed call. */
interface EndedRow {
  ord: number | null
  before_status: string | null
  after_status: string | null
  outcome: string | null
  due_in_ms: number | null
  claimed?: Record<string, unknown> | null
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
