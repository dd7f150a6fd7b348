import Retell, { APIConnectionTimeoutError, APIError } from 'retell-sdk'
import { parseRetryAfter } from './generic.ts'
import { classifyEnd } from './outcomes.ts'
import {
  type AttemptResult,
  asVariables,
  type CallProvider,
  compact,
  type DialRequest,
  type DialResult,
  dialResultFromStatus,
  type FinalReport,
  META_ATTEMPT,
  META_CALL_ID,
  type PollResult,
  TRANSCRIPT_MAX,
} from './types.ts'

// Retell through its official SDK (retell-sdk 5.66.1, Node >= 18). The request follows
// https://docs.retellai.com/api-references/create-phone-call and the SDK's CallCreatePhoneCallParams: from_number
// (RETELL_FROM_NUMBER), to_number (E.164), override_agent_id (the call's scriptId through PROVIDER_SCRIPT_MAP),
// metadata ("an arbitrary object for storage purpose only": our call id and attempt, repeated in every webhook and
// get-call) and retell_llm_dynamic_variables (our call's metadata; Retell takes string values only).
// The SDK retries 408/409/429/5xx and timeouts by itself (maxRetries 2): a retried create can place a second call,
// so retries are ours alone (maxRetries 0).

export interface RetellOptions {
  apiKey: string
  baseUrl: string | undefined
  fromNumber: string | undefined
  timeoutMs: number
  script: (scriptId: string) => string
}

type RetellCall = Retell.Call.PhoneCallResponse | Retell.Call.WebCallResponse

export function createRetellProvider(o: RetellOptions): CallProvider {
  const client = new Retell({
    apiKey: o.apiKey,
    ...(o.baseUrl ? { baseURL: o.baseUrl } : {}),
    maxRetries: 0,
    timeout: o.timeoutMs,
  })

  async function dial(req: DialRequest): Promise<DialResult> {
    try {
      const call = await client.call.createPhoneCall({
        from_number: o.fromNumber ?? '',
        to_number: req.to,
        override_agent_id: o.script(req.scriptId),
        metadata: { [META_CALL_ID]: req.callId, [META_ATTEMPT]: req.attempt },
        retell_llm_dynamic_variables: asVariables(req.metadata),
      })
      const id = call.call_id
      if (typeof id === 'string' && id.length > 0 && id.length <= 255) return { kind: 'accepted', providerCallId: id }
      return { kind: 'failed', error: { code: 'DIAL_ERROR', message: 'Retell answered without a call_id' } }
    } catch (err) {
      return dialError(err, o.timeoutMs)
    }
  }

  async function getCall(providerCallId: string): Promise<PollResult> {
    try {
      const call = (await client.call.retrieve(providerCallId)) as RetellCall
      if (call.call_status === 'registered' || call.call_status === 'ongoing') return { kind: 'active' }
      return { kind: 'ended', report: retellReport(call) }
    } catch (err) {
      if (err instanceof APIError && err.status === 404) return { kind: 'not_found' }
      return { kind: 'error', error: dialError(err, o.timeoutMs).error }
    }
  }

  return { name: 'retell', dial, getCall, close: async () => {} }
}

function dialError(err: unknown, timeoutMs: number): Exclude<DialResult, { kind: 'accepted' }> {
  if (err instanceof APIConnectionTimeoutError) {
    // sent, no answer: the call may have been placed; it keeps its slot and is never dialed again for this attempt
    return { kind: 'unknown', error: { code: 'DIAL_ERROR', message: `Retell did not answer within ${timeoutMs} ms` } }
  }
  if (err instanceof APIError && typeof err.status === 'number') {
    const message = `Retell answered ${err.status}: ${JSON.stringify(err.error ?? '').slice(0, 200)}`
    const retryAfter = err.headers?.get('retry-after') ?? undefined
    return dialResultFromStatus(err.status, message, parseRetryAfter(retryAfter)) as Exclude<
      DialResult,
      { kind: 'accepted' }
    >
  }
  const e = err as Error & { code?: string }
  return { kind: 'failed', error: { code: 'DIAL_ERROR', message: `Retell dial failed: ${e.code ?? e.message}` } }
}

/** A Retell call object (call_ended / call_analyzed webhook, or get-call) as our FinalReport. */
export function retellReport(call: Partial<RetellCall>): FinalReport {
  const reason = call.disconnection_reason
  const c = classifyEnd('retell', reason)
  const iso = (ms: number | undefined) => (typeof ms === 'number' ? new Date(ms).toISOString() : undefined)
  const cost = call.call_cost?.combined_cost
  const result: AttemptResult = compact({
    provider: 'retell' as const,
    providerCallId: call.call_id,
    endReason: reason,
    durationSec: typeof call.duration_ms === 'number' ? Math.round(call.duration_ms / 1000) : undefined,
    recordingUrl: call.recording_url,
    logUrl: call.public_log_url,
    transcript: call.transcript?.slice(0, TRANSCRIPT_MAX),
    cost,
    costUnit: cost === undefined ? undefined : ('USD_CENTS' as const),
    startedAt: iso(call.start_timestamp),
    endedAt: iso(call.end_timestamp),
  })
  return {
    ...c,
    ...(reason ? {} : { error: `Retell reported ${call.call_status ?? 'an end'} without a reason` }),
    result,
  }
}
