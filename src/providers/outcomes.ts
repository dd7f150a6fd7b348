import type { ProviderFinal } from '../dispatch/call-state.ts'

// The platforms' end reasons in our vocabulary. Pure data and one lookup per platform; docs/providers.md prints the
// same table. Every value the SDKs' type definitions list (retell-sdk 5.66.1 PhoneCallResponse.disconnection_reason,
// @vapi-ai/server-sdk 2.0.1 Vapi.CallEndedReason, 597 values) matches a row: test/outcomes.test.ts walks them all.
//
// fault says whose doing the end was: 'none' (a conversation took place), 'callee' (the person or their line:
// busy, no answer, voicemail, a wrong number), 'platform' (Vapi, Retell or a vendor behind them: LLM, TTS, STT,
// carrier), 'account' (our own set-up: an assistant or agent id that does not exist, no credit, a custom LLM that
// failed). Modifiers:
// - throttled: the platform refused for capacity after accepting the request; the attempt is given back and
//   retried later, like a 429 at dial time (issue 13, "Limits").
// - permanent: retrying cannot help (an invalid number, an operator stopped the call); the call ends FAILED now.
// An unknown reason is FAILED with fault 'platform' and the raw reason kept in the result.

export type Fault = 'none' | 'callee' | 'platform' | 'account'

export interface EndClass {
  outcome: ProviderFinal
  fault: Fault
  throttled?: boolean
  permanent?: boolean
}

export interface OutcomeRow extends EndClass {
  /** An exact value, or a prefix ending in '*'. Prefix rows come after the exact rows they would shadow. */
  reason: string
  note?: string
}

const ok = (reason: string, note?: string): OutcomeRow => ({ reason, outcome: 'COMPLETED', fault: 'none', note })
const failed = (reason: string, fault: Fault, note?: string, extra: Partial<EndClass> = {}): OutcomeRow => ({
  reason,
  outcome: 'FAILED',
  fault,
  note,
  ...extra,
})

/**
 * Retell `disconnection_reason`, from https://docs.retellai.com/reliability/debug-call-disconnect (the table of
 * reasons with call_status ended / not_connected / error), https://docs.retellai.com/deprecation-notice/6-30 (the
 * not_connected reasons) and the SDK's PhoneCallResponse type.
 */
export const RETELL_OUTCOMES: readonly OutcomeRow[] = [
  ok('user_hangup'),
  ok('agent_hangup'),
  ok('call_transfer'),
  ok('inactivity', 'connected, then ended after end_call_after_silence_ms'),
  ok('max_duration_reached'),
  ok('transfer_bridged'),
  ok('transfer_cancelled', 'the callee was reached; only the transfer failed'),
  ok('call_take_over', 'a human took the call over'),
  { reason: 'voicemail_reached', outcome: 'VOICEMAIL', fault: 'callee' },
  {
    reason: 'ivr_reached',
    outcome: 'VOICEMAIL',
    fault: 'callee',
    note: 'ambiguous: an IVR answered; a machine, not the person, so retried like voicemail',
  },
  { reason: 'dial_busy', outcome: 'BUSY', fault: 'callee' },
  { reason: 'dial_no_answer', outcome: 'NO_ANSWER', fault: 'callee' },
  {
    reason: 'user_declined',
    outcome: 'BUSY',
    fault: 'callee',
    note: 'ambiguous: the callee rejected the call (SIP 603); retried like busy',
  },
  failed('invalid_destination', 'callee', 'the number cannot be dialed', { permanent: true }),
  failed('dial_failed', 'platform', 'no or unknown SIP error; also a number marked as spam by carriers'),
  failed('telephony_provider_unavailable', 'platform'),
  failed('marked_as_spam', 'platform', 'the carrier flagged the caller number'),
  failed('scam_detected', 'platform'),
  failed('error_no_audio_received', 'platform'),
  failed('error_asr', 'platform'),
  failed('error_retell', 'platform'),
  failed('error_unknown', 'platform'),
  failed('error_user_not_joined', 'platform', 'web calls only'),
  failed('registered_call_timeout', 'platform', 'registered (custom telephony) calls only'),
  failed('concurrency_limit_reached', 'platform', 'at capacity: no attempt spent', { throttled: true }),
  failed('no_concurrency_fallback', 'platform', 'at capacity: no attempt spent', { throttled: true }),
  failed('telephony_provider_permission_denied', 'account', 'SIP trunk authentication failed'),
  failed('sip_routing_error', 'account'),
  failed('no_valid_payment', 'account'),
  failed('error_llm_websocket_open', 'account', 'our custom LLM websocket'),
  failed('error_llm_websocket_lost_connection', 'account', 'our custom LLM websocket'),
  failed('error_llm_websocket_runtime', 'account', 'our custom LLM websocket'),
  failed('error_llm_websocket_corrupt_payload', 'account', 'our custom LLM websocket'),
  failed('manual_stopped', 'account', 'stopped through the dashboard or API: not retried', { permanent: true }),
]

/**
 * Vapi `endedReason`, from https://docs.vapi.ai/calls/call-ended-reason (the categories: assistant-, customer-,
 * pipeline-error-*, call.in-progress.error-vapifault-* / -providerfault-*, call.start.error-*) and the SDK's
 * CallEndedReason type, whose 597 values are too many to list one by one: the provider-specific pipeline errors
 * are prefix rows.
 */
export const VAPI_OUTCOMES: readonly OutcomeRow[] = [
  { reason: 'customer-busy', outcome: 'BUSY', fault: 'callee' },
  { reason: 'customer-did-not-answer', outcome: 'NO_ANSWER', fault: 'callee' },
  { reason: 'voicemail', outcome: 'VOICEMAIL', fault: 'callee' },
  {
    reason: 'call.in-progress.error-providerfault-outbound-sip-480-temporarily-unavailable',
    outcome: 'NO_ANSWER',
    fault: 'callee',
    note: 'SIP 480: the callee is not reachable right now',
  },
  failed('twilio-reported-customer-misdialed', 'callee', 'the number cannot be dialed', { permanent: true }),
  failed('customer-did-not-give-microphone-permission', 'callee', 'web calls only'),
  ok('assistant-ended-call*'),
  ok('assistant-said-end-call-phrase'),
  ok('assistant-forwarded-call'),
  ok('customer-ended-call*'),
  ok('exceeded-max-duration'),
  ok('silence-timed-out', 'connected, then ended after silence'),
  ok('call.in-progress.twilio-completed-call'),
  ok('call.in-progress.sip-completed-call'),
  ok('vonage-completed'),
  ok('call.forwarding.*', 'the customer was reached; the forwarding leg did not connect'),
  ok('call.ending.hook-executed-*'),
  ok('call.in-progress.error-transfer-failed', 'the customer was reached; only the transfer failed'),
  ok('call.in-progress.error-warm-transfer-*', 'the customer was reached; only the transfer failed'),
  failed('call.start.error-subscription-concurrency-limit-reached', 'platform', 'at capacity: no attempt spent', {
    throttled: true,
  }),
  failed('call.start.error-vapi-number-outbound-daily-limit', 'platform', 'daily limit: no attempt spent', {
    throttled: true,
  }),
  failed('call.start.error-subscription-*', 'account', 'billing'),
  failed('call.start.error-get-*', 'account', 'an assistant, phone number or customer that does not resolve'),
  failed('call.start.error-vapi-number-international', 'account'),
  failed('call.start.error-enterprise-feature-not-available-recording-consent', 'account'),
  failed('call.start.assistant-version-error-validation', 'account'),
  failed('call.start.error-fraud-check-failed', 'platform'),
  failed('call.start.error-vapifault-*', 'platform'),
  failed('call-start-error-neither-assistant-nor-server-set', 'account'),
  failed('assistant-not-found', 'account'),
  failed('assistant-not-valid', 'account'),
  failed('assistant-request-*', 'account', 'our assistant-request server'),
  failed('call.in-progress.error-configfault-*', 'account'),
  failed('call.in-progress.error-vapifault-*', 'platform'),
  failed('call.in-progress.error-providerfault-*', 'platform', 'a vendor behind Vapi: LLM, voice, transcriber, SIP'),
  failed('call.in-progress.error-pipeline-*', 'platform'),
  failed('call.in-progress.error-sip-*', 'platform'),
  failed('call.in-progress.error-assistant-did-not-receive-customer-audio', 'platform'),
  failed('call.ringing.*', 'platform', 'inbound calls only'),
  failed('pipeline-error-*', 'platform', 'an LLM, voice or transcriber vendor failed'),
  failed('assistant-join-timed-out', 'platform'),
  failed('twilio-failed-to-connect-call', 'platform'),
  failed('vonage-failed-to-connect-call', 'platform'),
  failed('vonage-disconnected', 'platform'),
  failed('vonage-rejected', 'platform', 'ambiguous: the docs do not say whether the callee or Vonage rejected it'),
  failed('phone-call-provider-closed-websocket', 'platform'),
  failed('phone-call-provider-bypass-enabled-but-no-call-received', 'platform'),
  failed('worker-shutdown', 'platform'),
  failed('manually-canceled', 'account', 'canceled through the API: not retried', { permanent: true }),
  failed('call-deleted', 'account', 'not retried', { permanent: true }),
  failed('scheduled-call-deleted', 'account', 'not retried', { permanent: true }),
]

export type Platform = 'vapi' | 'retell'

const TABLES: Record<Platform, readonly OutcomeRow[]> = { vapi: VAPI_OUTCOMES, retell: RETELL_OUTCOMES }

/** The row for an end reason, or undefined when no row names it. */
export function findOutcomeRow(platform: Platform, reason: string): OutcomeRow | undefined {
  const rows = TABLES[platform]
  return (
    rows.find((r) => r.reason === reason) ??
    rows.find((r) => r.reason.endsWith('*') && reason.startsWith(r.reason.slice(0, -1)))
  )
}

/** Our outcome for a platform's end reason; an unknown or missing reason is FAILED (the raw reason is kept). */
export function classifyEnd(platform: Platform, reason: string | undefined): EndClass & { known: boolean } {
  const row = reason ? findOutcomeRow(platform, reason) : undefined
  if (!row) return { outcome: 'FAILED', fault: 'platform', known: false }
  const { outcome, fault, throttled, permanent } = row
  return { outcome, fault, known: true, ...(throttled ? { throttled } : {}), ...(permanent ? { permanent } : {}) }
}
