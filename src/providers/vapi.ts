import { type Vapi, VapiClient, VapiError, VapiTimeoutError } from '@vapi-ai/server-sdk'
import { parseRetryAfter } from './generic.ts'
import { classifyEnd } from './outcomes.ts'
import {
  type AttemptResult,
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

// Vapi through its official SDK (@vapi-ai/server-sdk 2.0.1, Node >= 18). The create-call request follows
// https://docs.vapi.ai/api-reference/calls/create and the SDK's CreateCallDto: assistantId, phoneNumberId,
// customer.number (E.164). A Vapi call has no metadata field of its own, so our call id and attempt travel in
// assistantOverrides.metadata ("metadata you want to store on the assistant"), which every server message repeats
// in message.call.assistantOverrides; our call's metadata becomes assistantOverrides.variableValues, the {{name}}
// variables of the assistant's prompt.
// The SDK retries 408/429/5xx by itself (maxRetries 2): that would place a second call for one attempt when the
// first request did place one, so retries are ours alone (maxRetries 0).

export interface VapiOptions {
  apiKey: string
  /** AI_CALL_API_URL: a proxy or the simulator; undefined: https://api.vapi.ai */
  baseUrl: string | undefined
  phoneNumberId: string | undefined
  timeoutMs: number
  script: (scriptId: string) => string
}

export function createVapiProvider(o: VapiOptions): CallProvider {
  const client = new VapiClient({
    token: o.apiKey,
    ...(o.baseUrl ? { baseUrl: o.baseUrl } : {}),
    maxRetries: 0,
    timeoutInSeconds: o.timeoutMs / 1000,
  })

  async function dial(req: DialRequest): Promise<DialResult> {
    try {
      const created = await client.calls.create({
        assistantId: o.script(req.scriptId),
        ...(o.phoneNumberId ? { phoneNumberId: o.phoneNumberId } : {}),
        customer: { number: req.to },
        assistantOverrides: {
          variableValues: req.metadata,
          metadata: { [META_CALL_ID]: req.callId, [META_ATTEMPT]: req.attempt },
        },
      })
      const id = (created as { id?: unknown }).id
      if (typeof id === 'string' && id.length > 0 && id.length <= 255) return { kind: 'accepted', providerCallId: id }
      return { kind: 'failed', error: { code: 'DIAL_ERROR', message: 'Vapi answered without a call id' } }
    } catch (err) {
      return dialError(err, o.timeoutMs)
    }
  }

  async function getCall(providerCallId: string): Promise<PollResult> {
    try {
      const call = await client.calls.get({ id: providerCallId })
      if (call.status === 'not-found') return { kind: 'not_found' }
      if (call.status !== 'ended') return { kind: 'active' }
      return { kind: 'ended', report: vapiReport(call.endedReason, call, call.artifact, call.cost) }
    } catch (err) {
      if (err instanceof VapiError && err.statusCode === 404) return { kind: 'not_found' }
      const failed = dialError(err, o.timeoutMs)
      return { kind: 'error', error: failed.error }
    }
  }

  return { name: 'vapi', dial, getCall, close: async () => {} }
}

function dialError(err: unknown, timeoutMs: number): Exclude<DialResult, { kind: 'accepted' }> {
  if (err instanceof VapiTimeoutError) {
    // sent, no answer: the call may have been placed; it keeps its slot and is never dialed again for this attempt
    return { kind: 'unknown', error: { code: 'DIAL_ERROR', message: `Vapi did not answer within ${timeoutMs} ms` } }
  }
  if (err instanceof VapiError && err.statusCode !== undefined) {
    const retryAfter = err.rawResponse?.headers.get('retry-after') ?? undefined
    const message = `Vapi answered ${err.statusCode}: ${JSON.stringify(err.body ?? '').slice(0, 200)}`
    return dialResultFromStatus(err.statusCode, message, parseRetryAfter(retryAfter)) as Exclude<
      DialResult,
      { kind: 'accepted' }
    >
  }
  const e = err as Error & { code?: string }
  return { kind: 'failed', error: { code: 'DIAL_ERROR', message: `Vapi dial failed: ${e.code ?? e.message}` } }
}

/** A Vapi end (end-of-call-report, status-update "ended" or GET /call/:id) as our FinalReport. */
export function vapiReport(
  endedReason: string | undefined,
  call: Partial<Pick<Vapi.Call, 'id' | 'startedAt' | 'endedAt'>> | undefined,
  artifact: Partial<Vapi.Artifact> | undefined,
  cost: number | undefined,
  times: { startedAt?: string; endedAt?: string; durationSeconds?: number } = {},
): FinalReport {
  const c = classifyEnd('vapi', endedReason)
  const startedAt = times.startedAt ?? call?.startedAt
  const endedAt = times.endedAt ?? call?.endedAt
  const fromTimes =
    startedAt && endedAt ? Math.max(0, Math.round((Date.parse(endedAt) - Date.parse(startedAt)) / 1000)) : undefined
  const durationSec =
    times.durationSeconds !== undefined
      ? Math.round(times.durationSeconds)
      : Number.isFinite(fromTimes)
        ? fromTimes
        : undefined
  const result: AttemptResult = compact({
    provider: 'vapi' as const,
    providerCallId: call?.id,
    endReason: endedReason,
    durationSec,
    recordingUrl: artifact?.recordingUrl ?? artifact?.recording?.mono?.combinedUrl,
    logUrl: artifact?.logUrl,
    transcript: artifact?.transcript?.slice(0, TRANSCRIPT_MAX),
    cost,
    costUnit: cost === undefined ? undefined : ('USD' as const),
    startedAt,
    endedAt,
  })
  return { ...c, ...(endedReason ? {} : { error: 'Vapi reported no endedReason' }), result }
}
