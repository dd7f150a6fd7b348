import { Pool } from 'undici'
import { CALL_ERRORS, type CallError } from '../dispatch/call-state.ts'

// The AI voice provider's dial endpoint. dial() never throws: every answer, timeout or socket error becomes one
// of four results that call-state.ts knows how to end an attempt with.

export type DialResult =
  | { kind: 'accepted'; providerCallId: string }
  | { kind: 'throttled'; retryAfterMs: number | undefined; error: CallError } // 429: at capacity, attempt not spent
  | { kind: 'failed'; error: CallError } // 5xx, timeout, connection error: a failed attempt, retried
  | { kind: 'rejected'; error: CallError } // other 4xx: this call will never be accepted

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
    connectTimeout: Math.min(opts.timeoutMs, 5000),
  })
  const path = `${url.pathname.replace(/\/+$/, '')}/api/v1/calls`
  const auth = opts.apiKey ? { authorization: `Bearer ${opts.apiKey}` } : {}

  async function dial(req: DialRequest): Promise<DialResult> {
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
      const text = await res.body.text() // always drained, so the socket goes back to the pool
      const status = res.statusCode
      if (status >= 200 && status < 300) {
        const providerCallId = parseCallId(text)
        return providerCallId
          ? { kind: 'accepted', providerCallId }
          : {
              kind: 'failed',
              error: { code: CALL_ERRORS.dialError, message: `provider answered ${status} without a callId` },
            }
      }
      const message = `provider answered ${status}: ${text.slice(0, 200)}`
      if (status === 429) {
        return {
          kind: 'throttled',
          retryAfterMs: parseRetryAfter(res.headers['retry-after']),
          error: { code: 'PROVIDER_BUSY', message },
        }
      }
      if (status >= 400 && status < 500) return { kind: 'rejected', error: { code: CALL_ERRORS.dialRejected, message } }
      return { kind: 'failed', error: { code: CALL_ERRORS.dialError, message } }
    } catch (err) {
      const e = err as Error & { code?: string }
      const timedOut =
        e.name === 'TimeoutError' || e.code === 'UND_ERR_HEADERS_TIMEOUT' || e.code === 'UND_ERR_BODY_TIMEOUT'
      return {
        kind: 'failed',
        error: {
          code: CALL_ERRORS.dialError,
          message: timedOut
            ? `provider did not answer within ${opts.timeoutMs} ms`
            : `dial failed: ${e.code ?? e.message}`,
        },
      }
    }
  }

  return { dial, close: () => pool.close() }
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

/** Retry-After as delta-seconds or an HTTP date, capped at one hour. */
export function parseRetryAfter(value: string | string[] | undefined): number | undefined {
  const v = Array.isArray(value) ? value[0] : value
  if (!v) return undefined
  const ms = /^\d+$/.test(v.trim()) ? Number(v) * 1000 : Date.parse(v) - Date.now()
  return Number.isFinite(ms) ? Math.min(Math.max(ms, 0), 3_600_000) : undefined
}
