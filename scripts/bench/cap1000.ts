import type { Kysely } from 'kysely'
import { sql } from 'kysely'
import type { DB } from '../../src/db/database.ts'
import type { DialRecord, Simulator } from '../../src/providers/simulator.ts'
import { createInBatches } from './create.ts'
import { dispatchRun, type RunChecks, resetCalls } from './dispatch.ts'
import { median, round, sleep } from './stats.ts'

// Benchmark 16 (issue 14 §3): a cap of 1,000 on three worker instances (ROLE=worker) and one API instance
// (ROLE=api), as a scaled-out deployment runs. Every figure comes from the simulator's clock: a call is in progress
// from the dial the simulator received to the final webhook it sent.

export const BIG_CAP = 1000

export interface HoldResult {
  calls: number
  callDurationMs: number
  /** Time-weighted mean of calls in progress from the first dial to the last (the backlog is empty after it). */
  meanInProgress: number
  /** The same from the moment the cap was first reached to the last dial: the ramp of the first wave left out. */
  meanInProgressAfterRamp: number
  /** First dial to the cap first reached, ms (undefined: never reached). */
  rampMs: number | undefined
  backlogSec: number
  totalSec: number
  /** Dials each worker's webhook URL received: how the load spread over the instances. */
  perWorker: number[]
  maxConnections: number
  peakConnections: number
  checks: RunChecks
}

export interface ZeroLengthCompare {
  /** Calls/s end to end (create through the API -> last final webhook acknowledged), per round. */
  cap30Rounds: number[]
  /** The same single instance as benchmark 5 with only MAX_CONCURRENT_CALLS raised: what the cap itself costs. */
  cap1000OneRounds: number[]
  /** The scaled-out deployment: created through a ROLE=api instance, dialed by three ROLE=worker instances. */
  cap1000Rounds: number[]
  cap30PerSec: number
  cap1000OnePerSec: number
  cap1000PerSec: number
  cap30Checks: RunChecks[]
  cap1000Checks: RunChecks[]
}

/** Time-weighted mean of active calls over [from, to], from each dial's (receivedAt, finalSentAt). */
export function meanActive(dials: DialRecord[], from: number, to: number): number {
  const edges: [number, number][] = []
  let active = 0
  for (const d of dials) {
    const end = d.finalSentAt ?? Number.POSITIVE_INFINITY
    if (d.receivedAt <= from && end > from) active++
    else if (d.receivedAt > from && d.receivedAt < to) edges.push([d.receivedAt, 1])
    if (end > from && end < to && d.receivedAt <= end) edges.push([end, -1])
  }
  // a call that starts and ends inside the window adds both edges; one that started before `from` only its end
  edges.sort((a, b) => a[0] - b[0] || a[1] - b[1])
  let area = 0
  let t = from
  for (const [at, delta] of edges) {
    area += active * (at - t)
    active += delta
    t = at
  }
  area += active * (to - t)
  return area / (to - from)
}

async function connections(db: Kysely<DB>) {
  const { rows } = await sql<{ n: number; max: number }>`
    select count(*)::int as n, current_setting('max_connections')::int as max from pg_stat_activity
     where backend_type = 'client backend'`.execute(db)
  return rows[0] ?? { n: -1, max: -1 }
}

/**
 * The run: `n` calls of `callDurationMs` on distinct phones, created through the API instance at once; waits
 * until every final webhook is acknowledged, sampling PostgreSQL's client connections meanwhile.
 */
export async function benchHold(
  apiUrl: string,
  workerUrls: string[],
  db: Kysely<DB>,
  sim: Simulator,
  n = 5000,
  callDurationMs = 30_000,
): Promise<HoldResult> {
  await resetCalls(db)
  sim.configure({ callDurationMs })
  sim.resetStats()
  let peakConnections = 0
  let maxConnections = 0
  let sampling = true
  const sampler = (async () => {
    while (sampling) {
      const c = await connections(db)
      peakConnections = Math.max(peakConnections, c.n)
      maxConnections = c.max
      await sleep(500)
    }
  })()
  const started = performance.timeOrigin + performance.now()
  try {
    await createInBatches(apiUrl, n, 2, 'cap1000')
    const deadline = Date.now() + 10 * callDurationMs + 120_000
    for (;;) {
      const acked = sim.stats().dials.filter((d) => d.finalAckedAt !== undefined).length
      if (acked >= n) break
      if (Date.now() > deadline) throw new Error(`only ${acked} of ${n} calls settled in time`)
      await sleep(200)
    }
  } finally {
    sampling = false
    await sampler
  }
  const s = sim.stats()
  const dials = s.dials.filter((d) => d.status === 202)
  const starts = dials.map((d) => d.receivedAt).sort((a, b) => a - b)
  const first = starts[0] as number
  const last = starts.at(-1) as number
  // when the cap was first reached: the BIG_CAP-th start with no end before it
  let rampEnd: number | undefined
  const ends = dials.map((d) => d.finalSentAt as number).sort((a, b) => a - b)
  for (let i = BIG_CAP - 1, j = 0; i < starts.length; i++) {
    const at = starts[i] as number
    while (j < ends.length && (ends[j] as number) <= at) j++
    if (i + 1 - j >= BIG_CAP) {
      rampEnd = at
      break
    }
  }
  const { rows } = await sql<{ n: number }>`
    select count(*)::int as n from calls where not (status = 'COMPLETED' and attempts = 1)`.execute(db)
  const perWorker = workerUrls.map((u) => dials.filter((d) => JSON.stringify(d.body).includes(u)).length)
  return {
    calls: n,
    callDurationMs,
    meanInProgress: round(meanActive(dials, first, last), 1),
    meanInProgressAfterRamp: rampEnd === undefined ? 0 : round(meanActive(dials, rampEnd, last), 1),
    rampMs: rampEnd === undefined ? undefined : round(rampEnd - first),
    backlogSec: round((last - first) / 1000, 1),
    totalSec: round((Math.max(...dials.map((d) => d.finalAckedAt as number)) - started) / 1000, 1),
    perWorker,
    maxConnections,
    peakConnections,
    checks: {
      maxActive: s.maxActive,
      phoneOverlaps: s.phoneOverlaps,
      duplicates: s.duplicates,
      webhookFailures: s.webhookFailures,
      notCompletedOnce: rows[0]?.n ?? -1,
    },
  }
}

/**
 * Zero-length calls, 5,000 a round: the cap-30 service (one ROLE=all instance, as benchmark 5), the same service at
 * cap 1,000, and the cap-1,000 deployment, in alternating rounds, so all three see the same machine.
 */
export async function benchZeroLengthCompare(
  cap30: { url: string; db: Kysely<DB>; sim: Simulator },
  cap1000One: { url: string; db: Kysely<DB>; sim: Simulator },
  cap1000: { url: string; db: Kysely<DB>; sim: Simulator },
  rounds = 3,
  n = 5000,
): Promise<ZeroLengthCompare> {
  const cap30Rounds: number[] = []
  const cap1000OneRounds: number[] = []
  const cap1000Rounds: number[] = []
  const cap30Checks: RunChecks[] = []
  const cap1000Checks: RunChecks[] = []
  for (let i = 0; i < rounds; i++) {
    for (const [arm, out, checks] of [
      [cap30, cap30Rounds, cap30Checks],
      [cap1000One, cap1000OneRounds, cap1000Checks],
      [cap1000, cap1000Rounds, cap1000Checks],
    ] as const) {
      const run = await dispatchRun(arm.url, arm.db, arm.sim, n, 0)
      const last = Math.max(...run.dials.map((d) => d.finalAckedAt as number))
      out.push(round(n / ((last - run.createdAt) / 1000)))
      checks.push(run.checks)
    }
  }
  return {
    cap30Rounds,
    cap1000OneRounds,
    cap1000Rounds,
    cap30PerSec: round(median(cap30Rounds)),
    cap1000OnePerSec: round(median(cap1000OneRounds)),
    cap1000PerSec: round(median(cap1000Rounds)),
    cap30Checks,
    cap1000Checks,
  }
}
