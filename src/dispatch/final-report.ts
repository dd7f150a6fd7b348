import type { Kysely } from 'kysely'
import type { DB } from '../db/database.ts'
import type { FinalReport } from '../providers/types.ts'
import type { EndAttemptInput, EndAttemptResult } from '../sql/attempts.ts'
import { recordAttemptResult } from '../sql/provider-results.ts'
import { CALL_ERRORS, decideAttemptEnd as decideEnd, type RetryPolicy, webhookError } from './call-state.ts'

// One path from a platform's report of a call's end to the committed end of the attempt, whether the report came by
// webhook (routes/provider-callbacks.ts) or by poll (reconcile.ts): the same decision, the same statement, so a
// webhook that arrives after reconciliation settled the attempt is a duplicate, and the reverse.

export type EndAttempt = (input: EndAttemptInput) => Promise<EndAttemptResult>

export interface ReportTarget {
  callId: string
  attempt: number
  providerCallId: string | undefined
}

export async function applyFinalReport(
  deps: { db: Kysely<DB>; endAttempt: EndAttempt; policy: RetryPolicy },
  target: ReportTarget,
  report: FinalReport,
  how: { eventKind: 'WEBHOOK' | 'RECONCILED'; eventStatus: string },
): Promise<EndAttemptResult> {
  const reason = report.result.endReason
  const message = report.error ?? `${report.result.provider} ended the call: ${reason ?? 'no reason given'}`
  const end = report.throttled
    ? decideEnd(deps.policy, target.attempt, {
        kind: 'throttled',
        retryAfterMs: undefined,
        error: { code: 'PROVIDER_BUSY', message },
        // a capacity refusal reported after the dial: this call's throttle history is not at hand here
        throttles: 0,
        throttledForMs: 0,
      })
    : report.permanent
      ? decideEnd(deps.policy, target.attempt, {
          kind: 'rejected',
          error: { code: webhookError(report.outcome, undefined).code, message },
        })
      : report.outcome === 'COMPLETED'
        ? decideEnd(deps.policy, target.attempt, { kind: 'completed' })
        : decideEnd(deps.policy, target.attempt, { kind: 'failed', error: webhookError(report.outcome, message) })
  const result = await deps.endAttempt({
    callId: target.callId,
    attempt: target.attempt,
    end,
    eventKind: how.eventKind,
    eventStatus: how.eventStatus,
    // a report naming another provider call than the one stored for this attempt is refused (sql/attempts.ts)
    ...(target.providerCallId ? { providerCallId: target.providerCallId } : {}),
    // A capacity refusal says nothing about the callee: the call's last outcome stays what it was.
    ...(report.throttled ? {} : { outcome: report.outcome }),
    detail: {
      ...(target.providerCallId ? { providerCallId: target.providerCallId } : {}),
      ...(reason ? { endReason: reason } : {}),
      fault: report.fault,
      ...(report.known ? {} : { unknownReason: true }),
      result: report.result,
    },
    durationSec: report.result.durationSec ?? null,
  })
  if (result.outcome !== 'unknown_call' && result.outcome !== 'stale' && result.outcome !== 'mismatch') {
    const applied = result.outcome === 'applied' || result.outcome === 'late'
    await recordAttemptResult(deps.db, target.callId, target.attempt, { ...report.result }, applied)
  }
  return result
}

/** The provider has no record of a call it accepted: nobody was phoned, so the attempt failed and is retried. */
export function applyLostCall(
  deps: { endAttempt: EndAttempt; policy: RetryPolicy },
  target: ReportTarget,
): Promise<EndAttemptResult> {
  const error = {
    code: CALL_ERRORS.lostCall,
    message: `the provider has no record of call ${target.providerCallId ?? '(no id)'}`,
  }
  return deps.endAttempt({
    callId: target.callId,
    attempt: target.attempt,
    end: decideEnd(deps.policy, target.attempt, { kind: 'failed', error }),
    eventKind: 'RECONCILED',
    eventStatus: 'NOT_FOUND',
    outcome: 'FAILED',
    detail: { providerCallId: target.providerCallId, error },
  })
}
