// The life of a call, as data. Every status change the service makes is one of TRANSITIONS; the SQL that performs
// it (src/sql/*) fences on the `from` status, and migration 0001's CHECK lists the same STATUSES (a test compares).

export const STATUSES = ['PENDING', 'IN_PROGRESS', 'COMPLETED', 'FAILED', 'EXPIRED', 'CANCELED'] as const
export type CallStatus = (typeof STATUSES)[number]

export const FINAL_STATUSES: readonly CallStatus[] = ['COMPLETED', 'FAILED', 'EXPIRED', 'CANCELED']

export const TRANSITIONS = {
  claim: { from: 'PENDING', to: 'IN_PROGRESS' }, // a slot is taken and attempts grows by one
  cancel: { from: 'PENDING', to: 'CANCELED' },
  expire: { from: 'PENDING', to: 'EXPIRED' }, // expires_at passed before it could be dialed
  complete: { from: 'IN_PROGRESS', to: 'COMPLETED' },
  retry: { from: 'IN_PROGRESS', to: 'PENDING' }, // a failed attempt with attempts left, or a 429
  fail: { from: 'IN_PROGRESS', to: 'FAILED' }, // attempts exhausted, a permanent error, or CALL_TIMEOUT
  // A final webhook for the attempt that timed out: the provider knows better than our clock. No slot is taken.
  lateOutcome: { from: 'FAILED', to: ['COMPLETED', 'FAILED'] },
} as const

/**
 * What call_events.kind may say, one per row of call_event_kinds (migration 0005 and later ones add rows; a test
 * compares the two). Write history through these names, never bare strings.
 */
export const EVENT_KINDS = [
  'CREATED',
  'UPDATED',
  'CANCELED',
  'CLAIMED',
  'DIAL_ACCEPTED',
  'DIAL_FAILED',
  'DIAL_REJECTED',
  'DIAL_THROTTLED',
  'DIAL_UNKNOWN',
  'DIAL_UNAUTHORIZED',
  'WEBHOOK',
  'EXPIRED',
  'TIMED_OUT',
  'RETRY_REQUESTED',
] as const
export type EventKind = (typeof EVENT_KINDS)[number]

/**
 * Webhook statuses from the provider. RINGING and IN_PROGRESS only report progress. A final one is also the call's
 * last_outcome: VOICEMAIL is an outcome of its own (retried like NO_ANSWER), not a completed call.
 */
export const PROVIDER_FINAL = ['COMPLETED', 'FAILED', 'BUSY', 'NO_ANSWER', 'VOICEMAIL'] as const
export const PROVIDER_PROGRESS = ['RINGING', 'IN_PROGRESS'] as const
export type ProviderFinal = (typeof PROVIDER_FINAL)[number]
export type ProviderStatus = ProviderFinal | (typeof PROVIDER_PROGRESS)[number]

export function isFinalProviderStatus(s: ProviderStatus): s is ProviderFinal {
  return (PROVIDER_FINAL as readonly string[]).includes(s)
}

/** Error codes stored in calls.last_error.code and shown to API clients. */
export const CALL_ERRORS = {
  providerFailed: 'PROVIDER_FAILED', // webhook FAILED
  busy: 'BUSY',
  noAnswer: 'NO_ANSWER',
  voicemail: 'VOICEMAIL',
  dialError: 'DIAL_ERROR', // a 5xx, or no connection: the call was not placed
  dialRejected: 'DIAL_REJECTED', // a 4xx other than 401, 403, 429: the provider will never accept this call
  dialUnknown: 'DIAL_UNKNOWN', // sent without a usable answer: the call may have been placed (history only)
  providerBusy: 'PROVIDER_BUSY', // 429; a failed attempt once the call has been throttled for THROTTLE_MAX_MS
  providerUnauthorized: 'PROVIDER_UNAUTHORIZED', // 401/403: our credentials; no attempt spent
  timeout: 'CALL_TIMEOUT', // no final webhook within CALL_TIMEOUT_MS
} as const

export interface RetryPolicy {
  maxAttempts: number
  retryBaseDelayMs: number
  retryMaxDelayMs: number
  /** A call throttled (429) for longer than this spends an attempt on each further 429. */
  throttleMaxMs: number
}

/**
 * Throttling has a schedule of its own: a 429 (or a provider outage) puts the call back for at least
 * THROTTLE_FLOOR_MS, doubling with each consecutive 429 up to THROTTLE_CEILING_MS, and longer when Retry-After says
 * so. Without a floor, `Retry-After: 0` re-dialed one call 230 times in 2 s.
 */
export const THROTTLE_FLOOR_MS = 1000
export const THROTTLE_CEILING_MS = 60_000

export function throttleDelayMs(throttles: number, retryAfterMs: number | undefined, random = Math.random): number {
  const nominal = Math.min(THROTTLE_CEILING_MS, THROTTLE_FLOOR_MS * 2 ** Math.min(Math.max(0, throttles), 16))
  return Math.max(retryAfterMs ?? 0, Math.round(nominal / 2 + (nominal / 2) * random()), THROTTLE_FLOOR_MS)
}

/**
 * Delay before attempt `attempt + 1`, after attempt `attempt` (1-based) failed:
 * min(max, base * 2^(attempt-1)), then "equal jitter" (half fixed, half random) so calls that failed together do
 * not come back together, while the gap never drops below half the nominal delay.
 */
export function retryDelayMs(policy: RetryPolicy, attempt: number, random = Math.random): number {
  const nominal = Math.min(policy.retryMaxDelayMs, policy.retryBaseDelayMs * 2 ** Math.max(0, attempt - 1))
  return Math.round(nominal / 2 + (nominal / 2) * random())
}

export type AttemptEnd =
  | { next: 'COMPLETED' }
  | { next: 'PENDING'; delayMs: number; spendsAttempt: boolean; throttled: boolean; error: CallError }
  | { next: 'FAILED'; error: CallError }

export interface CallError {
  code: string
  message: string
}

/** What ended an attempt, as call-state sees it: a provider report, or a dial's answer. */
export type AttemptOutcome =
  | { kind: 'completed' }
  | { kind: 'failed'; error: CallError }
  | { kind: 'rejected'; error: CallError }
  | { kind: 'unauthorized'; error: CallError; pauseMs: number }
  | {
      kind: 'throttled'
      retryAfterMs: number | undefined
      error: CallError
      /** Consecutive 429s of this call before this one, and how long it has been throttled. */
      throttles: number
      throttledForMs: number
    }

/**
 * The next status of a call whose attempt `attempt` ended with `outcome`. A failed attempt (FAILED, BUSY, NO_ANSWER,
 * VOICEMAIL webhooks, 5xx) is retried while attempts remain; a permanent rejection is not. A 429 and a provider
 * outage (401/403) do not spend the attempt, until the call has been throttled for throttleMaxMs: the provider has
 * then been refusing it long enough for the retry budget to decide.
 */
export function decideAttemptEnd(
  policy: RetryPolicy,
  attempt: number,
  outcome: AttemptOutcome,
  random = Math.random,
): AttemptEnd {
  switch (outcome.kind) {
    case 'completed':
      return { next: 'COMPLETED' }
    case 'rejected':
      return { next: 'FAILED', error: outcome.error }
    case 'unauthorized':
      return { next: 'PENDING', delayMs: outcome.pauseMs, spendsAttempt: false, throttled: false, error: outcome.error }
    case 'throttled':
      if (outcome.throttledForMs >= policy.throttleMaxMs)
        return decideAttemptEnd(policy, attempt, { kind: 'failed', error: outcome.error }, random)
      return {
        next: 'PENDING',
        delayMs: throttleDelayMs(outcome.throttles, outcome.retryAfterMs, random),
        spendsAttempt: false,
        throttled: true,
        error: outcome.error,
      }
    case 'failed':
      if (attempt >= policy.maxAttempts) return { next: 'FAILED', error: outcome.error }
      return {
        next: 'PENDING',
        delayMs: retryDelayMs(policy, attempt, random),
        spendsAttempt: true,
        throttled: false,
        error: outcome.error,
      }
  }
}

export function webhookError(status: ProviderFinal, detail: string | undefined): CallError {
  const code =
    status === 'BUSY'
      ? CALL_ERRORS.busy
      : status === 'NO_ANSWER'
        ? CALL_ERRORS.noAnswer
        : status === 'VOICEMAIL'
          ? CALL_ERRORS.voicemail
          : CALL_ERRORS.providerFailed
  return { code, message: detail ?? `provider reported ${status}` }
}
