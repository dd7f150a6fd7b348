import pg from 'pg'
import { apiClient, closedLoop, type LoadResult } from './load.ts'
import { benchPhone, median, percentile, round } from './stats.ts'

// Benchmarks 1 and 2: how fast the API takes calls, one per request and 1000 per request.

const CLIENTS = 50
const ROUNDS = 5
const ROUND_MS = 2000 // 5 rounds x 2 s = the 10 s per arm, interleaved so every arm sees the same machine
const WARMUP_MS = 3000

// The rows one API create writes (src/sql/calls.ts insertCalls): a calls row and its CREATED history row. The bare
// pool writes them with one statement per call, with no HTTP, validation, JSON or Kysely in between; the API puts the
// creates that arrive together into one statement, so it can beat this baseline.
const RAW_SAME_ROWS = `
  with inserted as (
    insert into calls (to_phone, script_id, metadata, expires_at)
    values ($1, $2, '{}'::jsonb, now() + interval '1 day')
    returning id
  )
  insert into call_events (call_id, attempt, kind, status) select id, 0, 'CREATED', 'PENDING' from inserted`
// The calls row alone: a stricter floor, reported for information.
const RAW_CALLS_ONLY = `
  insert into calls (to_phone, script_id, metadata, expires_at)
  values ($1, $2, '{}'::jsonb, now() + interval '1 day')`

let seq = 0

export interface SingleCreateResult {
  apiPerSec: number
  rawPerSec: number
  rawCallsOnlyPerSec: number
  /** Median over rounds of (API req/s) / (raw inserts/s) measured back to back. */
  ratio: number
  ratioCallsOnly: number
  apiP50Ms: number
  apiP99Ms: number
  rawP99Ms: number
  errors: number
  rounds: { api: number; raw: number; rawCallsOnly: number }[]
}

export async function benchSingleCreate(serviceUrl: string, databaseUrl: string): Promise<SingleCreateResult> {
  const api = apiClient(serviceUrl, CLIENTS)
  const pool = new pg.Pool({ connectionString: databaseUrl, max: CLIENTS })
  const apiOp = async () => {
    await api.post('/api/v1/calls', { to: benchPhone(seq++), scriptId: 'bench' })
  }
  const rawOp = (text: string) => async () => {
    await pool.query(text, [benchPhone(seq++), 'bench'])
  }
  try {
    // Warm-up: connections, JIT, plan caches, and PostgreSQL's first WAL segments (a fresh cluster creates and
    // zero-fills each one, which halved the first round's rate in early runs).
    await closedLoop(CLIENTS, WARMUP_MS, apiOp)
    await closedLoop(CLIENTS, WARMUP_MS, rawOp(RAW_SAME_ROWS))
    const apiRuns: LoadResult[] = []
    const rawRuns: LoadResult[] = []
    const rawOnlyRuns: LoadResult[] = []
    const arms = [
      async () => apiRuns.push(await closedLoop(CLIENTS, ROUND_MS, apiOp)),
      async () => rawRuns.push(await closedLoop(CLIENTS, ROUND_MS, rawOp(RAW_SAME_ROWS))),
      async () => rawOnlyRuns.push(await closedLoop(CLIENTS, ROUND_MS, rawOp(RAW_CALLS_ONLY))),
    ]
    // The order rotates each round, so no arm always runs first (after a checkpoint, say) or last.
    for (let i = 0; i < ROUNDS; i++) for (let a = 0; a < arms.length; a++) await arms[(a + i) % arms.length]?.()
    const rounds = apiRuns.map((a, i) => ({
      api: round(a.perSecond),
      raw: round((rawRuns[i] as LoadResult).perSecond),
      rawCallsOnly: round((rawOnlyRuns[i] as LoadResult).perSecond),
    }))
    const apiLat = apiRuns.flatMap((r) => r.latenciesMs)
    return {
      apiPerSec: round(median(rounds.map((r) => r.api))),
      rawPerSec: round(median(rounds.map((r) => r.raw))),
      rawCallsOnlyPerSec: round(median(rounds.map((r) => r.rawCallsOnly))),
      ratio: round(median(rounds.map((r) => r.api / r.raw)), 3),
      ratioCallsOnly: round(median(rounds.map((r) => r.api / r.rawCallsOnly)), 3),
      apiP50Ms: round(percentile(apiLat, 50), 2),
      apiP99Ms: round(percentile(apiLat, 99), 2),
      rawP99Ms: round(
        percentile(
          rawRuns.flatMap((r) => r.latenciesMs),
          99,
        ),
        2,
      ),
      errors: [...apiRuns, ...rawRuns, ...rawOnlyRuns].reduce((n, r) => n + r.errors, 0),
      rounds,
    }
  } finally {
    await api.close()
    await pool.end()
  }
}

export const BATCH_SIZE = 1000

export function batchBody(n: number, scriptId = 'bench') {
  return { calls: Array.from({ length: n }, () => ({ to: benchPhone(seq++), scriptId })) }
}

/** POSTs `total` calls through the batch endpoint, `concurrency` requests at a time; returns calls/s. */
export async function createInBatches(serviceUrl: string, total: number, concurrency = 2, scriptId = 'bench') {
  const api = apiClient(serviceUrl, concurrency)
  const bodies = Array.from({ length: Math.ceil(total / BATCH_SIZE) }, (_, i) =>
    batchBody(Math.min(BATCH_SIZE, total - i * BATCH_SIZE), scriptId),
  )
  const started = performance.now()
  const latenciesMs: number[] = []
  try {
    let next = 0
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < bodies.length) {
          const body = bodies[next++]
          const t0 = performance.now()
          await api.post('/api/v1/calls/batch', body)
          latenciesMs.push(performance.now() - t0)
        }
      }),
    )
  } finally {
    await api.close()
  }
  const seconds = (performance.now() - started) / 1000
  return { perSecond: total / seconds, seconds, latenciesMs }
}

export interface BatchCreateResult {
  callsPerSec: number
  p50RequestMs: number
  p99RequestMs: number
  rounds: number[]
}

export async function benchBatchCreate(serviceUrl: string): Promise<BatchCreateResult> {
  await createInBatches(serviceUrl, 2 * BATCH_SIZE) // warm-up
  const runs = []
  for (let i = 0; i < ROUNDS; i++) runs.push(await createInBatches(serviceUrl, 10 * BATCH_SIZE))
  const lat = runs.flatMap((r) => r.latenciesMs)
  return {
    callsPerSec: round(median(runs.map((r) => r.perSecond))),
    p50RequestMs: round(percentile(lat, 50), 1),
    p99RequestMs: round(percentile(lat, 99), 1),
    rounds: runs.map((r) => round(r.perSecond)),
  }
}
