import { Pool } from 'undici'
import { BENCH_API_KEY } from './harness.ts'

// Closed-loop load: `concurrency` workers each run `op` back to back until the window ends. Latencies are per op.

export interface LoadResult {
  ops: number
  errors: number
  seconds: number
  perSecond: number
  latenciesMs: number[]
  firstError?: string
}

export async function closedLoop(
  concurrency: number,
  durationMs: number,
  op: () => Promise<void>,
): Promise<LoadResult> {
  const latenciesMs: number[] = []
  let errors = 0
  let firstError: string | undefined
  const start = performance.now()
  const end = start + durationMs
  const worker = async () => {
    while (performance.now() < end) {
      const t0 = performance.now()
      try {
        await op()
        latenciesMs.push(performance.now() - t0)
      } catch (err) {
        errors++
        firstError ??= (err as Error).message
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  const seconds = (performance.now() - start) / 1000
  return {
    ops: latenciesMs.length,
    errors,
    seconds,
    perSecond: latenciesMs.length / seconds,
    latenciesMs,
    ...(firstError ? { firstError } : {}),
  }
}

/** A keep-alive HTTP client for the service's JSON API, with `connections` sockets. */
export function apiClient(baseUrl: string, connections: number) {
  const pool = new Pool(baseUrl, { connections, pipelining: 1, keepAliveTimeout: 60_000 })
  const headers = { 'content-type': 'application/json', authorization: `Bearer ${BENCH_API_KEY}` }
  return {
    /** POSTs `body`; throws unless the status is `expect`. Returns the parsed answer. */
    async post(path: string, body: unknown, expect = 201): Promise<unknown> {
      const res = await pool.request({ method: 'POST', path, headers, body: JSON.stringify(body) })
      const text = await res.body.text()
      if (res.statusCode !== expect) throw new Error(`POST ${path}: ${res.statusCode} ${text.slice(0, 300)}`)
      return JSON.parse(text)
    },
    close: () => pool.close(),
  }
}

export type ApiClient = ReturnType<typeof apiClient>
