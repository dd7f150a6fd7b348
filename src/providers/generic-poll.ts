import { Pool } from 'undici'
import { PROVIDER_FINAL, type ProviderFinal } from '../dispatch/call-state.ts'
import { genericReport } from './generic.ts'
import type { PollResult } from './types.ts'

// The generic contract's optional get-call API (issue 13, "Reconciliation"):
//   GET {AI_CALL_API_URL}/api/v1/calls/:callId -> 200 {callId, status, durationSec?, completedAt?, error?}
// A 404 whose JSON body says {"code": "CALL_NOT_FOUND"} is a call the provider has no record of
// (PROVIDER_LOST_CALL); any other 404, or a 405, means the provider has no such API, and it is not asked again.

export function createGenericPoll(opts: { baseUrl: string; apiKey: string | undefined; timeoutMs: number }) {
  const url = new URL(opts.baseUrl)
  const pool = new Pool(url.origin, {
    connections: 8,
    headersTimeout: opts.timeoutMs,
    bodyTimeout: opts.timeoutMs,
    connectTimeout: Math.min(opts.timeoutMs, 5000),
  })
  const base = `${url.pathname.replace(/\/+$/, '')}/api/v1/calls/`
  const auth = opts.apiKey ? { authorization: `Bearer ${opts.apiKey}` } : {}

  async function getCall(providerCallId: string): Promise<PollResult> {
    try {
      const res = await pool.request({
        method: 'GET',
        path: base + encodeURIComponent(providerCallId),
        headers: { ...auth, accept: 'application/json' },
        signal: AbortSignal.timeout(opts.timeoutMs),
      })
      const text = await res.body.text()
      const body = parse(text)
      if (res.statusCode === 404 && body?.code === 'CALL_NOT_FOUND') return { kind: 'not_found' }
      if (res.statusCode === 404 || res.statusCode === 405) return { kind: 'unsupported' }
      if (res.statusCode !== 200 || !body) {
        return {
          kind: 'error',
          error: { code: 'DIAL_ERROR', message: `provider answered ${res.statusCode}: ${text.slice(0, 200)}` },
        }
      }
      const status = body.status
      if (!(PROVIDER_FINAL as readonly unknown[]).includes(status)) return { kind: 'active' }
      return {
        kind: 'ended',
        report: genericReport({
          callId: providerCallId,
          status: status as ProviderFinal,
          ...(typeof body.error === 'string' ? { error: body.error } : {}),
          ...(typeof body.durationSec === 'number' ? { durationSec: body.durationSec } : {}),
          ...(typeof body.completedAt === 'string' ? { completedAt: body.completedAt } : {}),
        }),
      }
    } catch (err) {
      const e = err as Error & { code?: string }
      return { kind: 'error', error: { code: 'DIAL_ERROR', message: `get-call failed: ${e.code ?? e.message}` } }
    }
  }

  return { getCall, close: () => pool.close() }
}

function parse(text: string): Record<string, unknown> | undefined {
  try {
    const v = JSON.parse(text)
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? v : undefined
  } catch {
    return undefined
  }
}
