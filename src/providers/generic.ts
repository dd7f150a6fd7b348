import { Pool } from 'undici'
import { CALL_ERRORS, type CallError, type ProviderFinal, webhookError } from '../dispatch/call-state.ts'
import { compact, type FinalReport } from './types.ts'

// The AI voice provider's dial endpoint. dial() never throws: every answer, timeout or socket error becomes one
// of the results below, which src/dispatch/call-state.ts knows how to end an attempt with.
//
// The line that matters is between "certainly not placed" and "may have been placed". A dial that may have rung a
// person is never repeated: it is 'unknown', keeps its slot, and waits for the webhook, reconciliation or
// CALL_TIMEOUT like any call in progress. Only an answer that says no call started (4xx, 5xx) or a connection that
// never opened is 'failed' or 'rejected'.

export type DialResult =
  | { kind: 'accepted'; providerCallId: string }
  | { kind: 'throttled'; retryAfterMs: number | undefined; error: CallError } // 429: at capacity, attempt not spent
  | { kind: 'failed'; error: CallError } // 5xx or no connection: the call was not placed; a failed attempt, retried
  | { kind: 'rejected'; error: CallError } // other 4xx: this call will never be accepted
  | { kind: 'unknown'; error: CallError } // sent, but no usable answer: the call may have been placed
  | { kind: 'unauthorized'; error: CallError } // 401/403: our credentials, not the call; a provider outage

export interface DialRequest {
  callId: string
  attempt: number
  to: string
  scriptId: string
  metadata: Record<string, unknown>
  webhookUrl: string
}

export interface Provider {
  dial(req: DialRequest): Promise<DialResult>
  close(): Promise<void>
}

export function createProvider(opts: {
  baseUrl: string
  apiKey: string | undefined
  timeoutMs: number
  connections?: number
}): Provider {
  const url = new URL(opts.baseUrl)
  const pool = new Pool(url.origin, {
    connections: opts.connections ?? 64,
    keepAliveTimeout: 30_000,
    headersTimeout: opts.timeoutMs,
    bodyTimeout: opts.timeoutMs,
    // Shorter than the request's own timeout, so a dial that never connected is told apart from one that was sent.
    connectTimeout: Math.min(Math.floor(opts.timeoutMs / 2), 5000),
  })
  const path = `${url.pathname.replace(/\/+$/, '')}/api/v1/calls`
  const auth = opts.apiKey ? { authorization: `Bearer ${opts.apiKey}` } : {}

  async function dial(req: DialRequest): Promise<DialResult> {
    let status: number
    let text: string
    let retryAfter: string | string[] | undefined
    try {
      const res = await pool.request({
        method: 'POST',
        path,
        headers: {
          ...auth,
          'content-type': 'application/json',
          // The provider drops a repeated key, so a retried request cannot place a second call for one attempt.
          'idempotency-key': `${req.callId}:${req.attempt}`,
        },
        body: JSON.stringify({
          to: req.to,
          scriptId: req.scriptId,
          metadata: req.metadata,
          webhookUrl: req.webhookUrl,
        }),
        signal: AbortSignal.timeout(opts.timeoutMs),
      })
      status = res.statusCode
      retryAfter = res.headers['retry-after']
      try {
        text = await res.body.text() // always drained, so the socket goes back to the pool
      } catch (err) {
        // The status line came but not the body: a 2xx whose call id we never read may have placed a call.
        if (status >= 200 && status < 300) return unknown(`provider answered ${status} but its body ${failure(err)}`)
        text = ''
      }
    } catch (err) {
      return neverConnected(err)
        ? { kind: 'failed', error: { code: CALL_ERRORS.dialError, message: `dial failed: ${failure(err)}` } }
        : unknown(`the dial was sent but ${failure(err)}`)
    }
    if (status >= 200 && status < 300) {
      const providerCallId = parseCallId(text)
      return providerCallId
        ? { kind: 'accepted', providerCallId }
        : unknown(`provider answered ${status} without a usable callId: ${text.slice(0, 200)}`)
    }
    const message = `provider answered ${status}: ${text.slice(0, 200)}`
    if (status === 429) {
      return { kind: 'throttled', retryAfterMs: parseRetryAfter(retryAfter), error: { code: 'PROVIDER_BUSY', message } }
    }
    if (status === 401 || status === 403) {
      return { kind: 'unauthorized', error: { code: CALL_ERRORS.providerUnauthorized, message } }
    }
    if (status >= 400 && status < 500) return { kind: 'rejected', error: { code: CALL_ERRORS.dialRejected, message } }
    return { kind: 'failed', error: { code: CALL_ERRORS.dialError, message } }
  }

  function failure(err: unknown): string {
    const e = err as Error & { code?: string }
    const timedOut =
      e.name === 'TimeoutError' ||
      e.name === 'AbortError' ||
      e.code === 'UND_ERR_HEADERS_TIMEOUT' ||
      e.code === 'UND_ERR_BODY_TIMEOUT'
    return timedOut ? `did not answer within ${opts.timeoutMs} ms` : `${e.code ?? e.message}`
  }

  return { dial, close: () => pool.close() }
}

const unknown = (message: string): DialResult => ({
  kind: 'unknown',
  error: { code: CALL_ERRORS.dialUnknown, message },
})

/** Errors raised before a request could reach the provider: nothing was sent, so nothing was placed. */
const NOT_SENT = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'UND_ERR_CONNECT_TIMEOUT',
])

function neverConnected(err: unknown): boolean {
  const e = err as { code?: string; cause?: { code?: string } }
  return NOT_SENT.has(e.code ?? '') || NOT_SENT.has(e.cause?.code ?? '')
}

function parseCallId(text: string): string | undefined {
  try {
    const body = JSON.parse(text) as { callId?: unknown }
    return typeof body.callId === 'string' && body.callId.length > 0 && body.callId.length <= 255
      ? body.callId
      : undefined
  } catch {
    return undefined
  }
}

/** Retry-After as delta-seconds or an HTTP date, capped at one hour; 0 or a past date is 0 (call-state.ts sets the floor). */
export function parseRetryAfter(value: string | string[] | undefined): number | undefined {
  const v = Array.isArray(value) ? value[0] : value
  if (!v) return undefined
  const ms = /^\d+$/.test(v.trim()) ? Number(v) * 1000 : Date.parse(v) - Date.now()
  return Number.isFinite(ms) ? Math.min(Math.max(ms, 0), 3_600_000) : undefined
}

/**
 * The generic provider's final status, from its webhook or its get-call API, in the vocabulary every provider's report
 * shares (dispatch/final-report.ts).
 */
export function genericReport(body: {
  callId: string
  status: ProviderFinal
  error?: string
  durationSec?: number
  completedAt?: string
}): FinalReport {
  return {
    outcome: body.status,
    fault: body.status === 'COMPLETED' ? 'none' : body.status === 'FAILED' ? 'platform' : 'callee',
    known: true,
    ...(body.status === 'COMPLETED' ? {} : { error: body.error ?? webhookError(body.status, undefined).message }),
    result: compact({
      provider: 'generic',
      providerCallId: body.callId,
      endReason: body.status,
      durationSec: body.durationSec,
      endedAt: body.completedAt,
    }),
  }
}
