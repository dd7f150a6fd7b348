import { Agent } from 'undici'
import { parseRetryAfter } from './retry.ts'
import { guardedConnector } from './ssrf.ts'

// One client webhook request: undici on a pool of its own (a slow receiver cannot starve the provider's client),
// one timeout for the whole exchange, no redirect followed (undici's request() follows none), and at most
// RESPONSE_READ_LIMIT bytes of the answer read: receivers are untrusted, only their status matters.

export const RESPONSE_READ_LIMIT = 64 * 1024

export interface SendOutcome {
  ok: boolean
  status: number | null
  latencyMs: number
  /** A short reason for the attempt log; never the request (it carries signatures). */
  error: string | null
  retryAfterMs: number | undefined
}

export interface Sender {
  send(url: string, headers: Record<string, string>, body: string): Promise<SendOutcome>
  close(): Promise<void>
}

export function createSender(o: { timeoutMs: number; allowPrivateNetworks: boolean; connections?: number }): Sender {
  const agent = new Agent({
    connect: guardedConnector({ allowPrivateNetworks: o.allowPrivateNetworks, timeoutMs: o.timeoutMs }),
    connections: o.connections ?? 16,
    headersTimeout: o.timeoutMs,
    bodyTimeout: o.timeoutMs,
    keepAliveTimeout: 4000,
  })
  return {
    async send(url, headers, body) {
      const started = performance.now()
      const elapsed = () => Math.round(performance.now() - started)
      try {
        const res = await agent.request({
          origin: new URL(url).origin,
          path: new URL(url).pathname + new URL(url).search,
          method: 'POST',
          headers: { 'content-type': 'application/json', 'user-agent': 'ai-call-orchestrator-webhooks/1', ...headers },
          body,
          signal: AbortSignal.timeout(o.timeoutMs),
        })
        let read = 0
        for await (const chunk of res.body) {
          read += (chunk as Buffer).length
          if (read >= RESPONSE_READ_LIMIT) {
            res.body.destroy()
            break
          }
        }
        const ok = res.statusCode >= 200 && res.statusCode < 300
        return {
          ok,
          status: res.statusCode,
          latencyMs: elapsed(),
          error: ok ? null : `HTTP ${res.statusCode}`,
          retryAfterMs:
            res.statusCode === 429 || res.statusCode === 503 ? parseRetryAfter(res.headers['retry-after']) : undefined,
        }
      } catch (err) {
        const e = err as { code?: string; name?: string; message?: string }
        const reason = e.name === 'TimeoutError' ? `timeout after ${o.timeoutMs} ms` : (e.message ?? String(err))
        return {
          ok: false,
          status: null,
          latencyMs: elapsed(),
          error: e.code ? `${e.code}: ${reason}` : reason,
          retryAfterMs: undefined,
        }
      }
    },
    close: () => agent.close(),
  }
}
