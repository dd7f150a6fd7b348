import { CALL_ERRORS, type CallError, type ProviderFinal } from '../dispatch/call-state.ts'
import type { DialRequest, DialResult, Provider } from './generic.ts'
import type { Fault } from './outcomes.ts'

// What every provider adapter offers the dispatcher and the reconciler. dial() and getCall() never throw: every
// answer, timeout or socket error is a value. The dial contract (DialRequest, DialResult) lives in generic.ts, where
// the lead keeps it; this module adds the poll and the final report that webhooks and polls share.

export type { DialRequest, DialResult }

export type ProviderName = 'generic' | 'vapi' | 'retell'

/** What the platform reported about an attempt, stored in its history row and shown on the call as `result`. */
export interface AttemptResult {
  provider: ProviderName
  providerCallId?: string
  /** The platform's own end reason (Vapi endedReason, Retell disconnection_reason, the generic status). */
  endReason?: string
  durationSec?: number
  recordingUrl?: string
  /** A link to the platform's log or transcript of the call, when it gives one. */
  logUrl?: string
  /** The transcript as text, cut to 4,000 characters. */
  transcript?: string
  cost?: number
  /** Vapi reports USD, Retell cents of USD (call_cost.combined_cost). */
  costUnit?: 'USD' | 'USD_CENTS'
  startedAt?: string
  endedAt?: string
}

/** A call's end as the platform reported it, by webhook or by poll, in our vocabulary. */
export interface FinalReport {
  outcome: ProviderFinal
  fault: Fault
  /** The platform refused for capacity: the attempt is given back (issue 13, "Limits"). */
  throttled?: boolean
  /** Retrying cannot help: the call ends FAILED now. */
  permanent?: boolean
  /** False when the end reason matched no row of the outcome table (kept raw in result.endReason). */
  known: boolean
  error?: string
  result: AttemptResult
}

export type PollResult =
  | { kind: 'ended'; report: FinalReport }
  | { kind: 'active' }
  /** The platform has no record of a call it accepted: nobody was phoned (PROVIDER_LOST_CALL). */
  | { kind: 'not_found' }
  /** The provider has no get-call API (generic: 404 or 405 without our not-found code): stop asking. */
  | { kind: 'unsupported' }
  | { kind: 'error'; error: CallError }

export interface CallProvider extends Provider {
  readonly name: ProviderName
  getCall(providerCallId: string): Promise<PollResult>
}

export const TRANSCRIPT_MAX = 4000

/** Drops undefined fields, so a stored result holds only what the platform reported. */
export function compact<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined && v !== null && v !== '')) as T
}

/** Our metadata keys in the platform's call metadata: every webhook and poll finds its call and attempt by them. */
export const META_CALL_ID = 'orchestrator_call_id'
export const META_ATTEMPT = 'orchestrator_attempt'

export function correlationOf(metadata: unknown): { callId: string; attempt: number } | undefined {
  if (typeof metadata !== 'object' || metadata === null) return undefined
  const m = metadata as Record<string, unknown>
  const callId = m[META_CALL_ID]
  const attempt = Number(m[META_ATTEMPT])
  const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i
  if (typeof callId !== 'string' || !uuid.test(callId) || !Number.isInteger(attempt) || attempt < 1) return undefined
  return { callId, attempt }
}

/** PROVIDER_SCRIPT_MAP: our scriptId -> the platform's assistant or agent id; unmapped ids pass through. */
export function scriptMapper(map: Record<string, string>) {
  return (scriptId: string) => map[scriptId] ?? scriptId
}

/**
 * A dial the platform answered with an HTTP error. 429, or a refusal that names the concurrency limit, is throttled
 * (no attempt spent); 401, 402 and 403 are our account's problem, not this call's: unauthorized (a provider outage,
 * no attempt spent), never a permanent rejection of the call; other 4xx reject this call; 5xx failed.
 */
export function dialResultFromStatus(status: number, message: string, retryAfterMs: number | undefined): DialResult {
  if (status === 429 || (status >= 400 && status < 500 && /concurrency|rate.?limit/i.test(message))) {
    return { kind: 'throttled', retryAfterMs, error: { code: 'PROVIDER_BUSY', message } }
  }
  if (status === 401 || status === 402 || status === 403) {
    return { kind: 'unauthorized', error: { code: CALL_ERRORS.providerUnauthorized, message } }
  }
  if (status >= 500) return { kind: 'failed', error: { code: 'DIAL_ERROR', message } }
  return { kind: 'rejected', error: { code: 'DIAL_REJECTED', message } }
}

/** Our metadata as a platform's dynamic variables: Retell takes strings only, so every value is a string. */
export function asVariables(metadata: Record<string, unknown>): Record<string, string> {
  return Object.fromEntries(
    Object.entries(metadata).map(([k, v]) => [k, typeof v === 'string' ? v : JSON.stringify(v)]),
  )
}
