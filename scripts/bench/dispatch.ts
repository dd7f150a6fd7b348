import { spawn } from 'node:child_process'
import type { Kysely } from 'kysely'
import { sql } from 'kysely'
import type { DB } from '../../src/db/database.ts'
import type { DialRecord, Simulator } from '../../src/providers/simulator.ts'
import { createInBatches } from './create.ts'
import { BENCH_WEBHOOK_SECRET, watchRss } from './harness.ts'
import { median, percentile, round, sleep } from './stats.ts'

// Benchmarks 3, 4, 5 and 7: the dispatcher against the simulator. Every time comes from the simulator's clock
// (dial received, final webhook acknowledged), so nothing inside the dispatcher measures itself.

export const CAP = 30
const now = () => performance.timeOrigin + performance.now()

export interface RunChecks {
  maxActive: number
  phoneOverlaps: number
  duplicates: number
  webhookFailures: number
  /** Calls not COMPLETED with exactly one attempt at the end (should be 0). */
  notCompletedOnce: number
}

async function waitForAcks(sim: Simulator, n: number, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const acked = sim.stats().dials.filter((d) => d.finalAckedAt !== undefined).length
    if (acked >= n) return
    if (Date.now() > deadline) throw new Error(`only ${acked} of ${n} calls settled within ${timeoutMs / 1000} s`)
    await sleep(20)
  }
}

async function checks(db: Kysely<DB>, sim: Simulator): Promise<RunChecks> {
  const s = sim.stats()
  const { rows } = await sql<{ n: number }>`
    select count(*)::int as n from calls where not (status = 'COMPLETED' and attempts = 1)`.execute(db)
  return {
    maxActive: s.maxActive,
    phoneOverlaps: s.phoneOverlaps,
    duplicates: s.duplicates,
    webhookFailures: s.webhookFailures,
    notCompletedOnce: rows[0]?.n ?? -1,
  }
}

export async function resetCalls(db: Kysely<DB>) {
  await sql`truncate calls cascade`.execute(db)
}

/** One run: `n` calls on distinct phones created through the batch endpoint, until every final webhook is acked. */
export async function dispatchRun(
  serviceUrl: string,
  db: Kysely<DB>,
  sim: Simulator,
  n: number,
  callDurationMs: number,
) {
  await resetCalls(db)
  sim.configure({ callDurationMs })
  sim.resetStats()
  const createdAt = now()
  await createInBatches(serviceUrl, n, 1, 'dispatch')
  await waitForAcks(sim, n, 180_000)
  const dials = sim.stats().dials.filter((d) => d.status === 202)
  return { createdAt, dials, checks: await checks(db, sim) }
}

export interface SlotResult {
  callsPerSec: number
  idealPerSec: number
  utilization: number
  /** The same run with bench/bare-dialer.ts in the service's place: the bound the machine and simulator set. */
  bare: { callsPerSec: number; utilization: number; refill: RefillGap; refillFromSend: RefillGap }
  windowSec: number
  refill: RefillGap
  /** The refill gap measured from the provider's send of the webhook that freed the slot. */
  refillFromSend: RefillGap
  checks: RunChecks
  peakRssMb: number
  rssMethod: string
}

export interface RefillGap {
  /** Brief's definition: each final ack while calls waited -> the next dial the simulator received. */
  p50Ms: number
  p99Ms: number
  samples: number
  /** Stricter pairing: the k-th ack against the (cap + k)-th dial, i.e. the dial that took the slot it freed. */
  pairedP50Ms: number
  pairedP99Ms: number
}

export async function benchSlotUtilization(
  serviceUrl: string,
  pid: number,
  db: Kysely<DB>,
  sim: Simulator,
): Promise<SlotResult> {
  const n = 3000
  const durationMs = 200
  const idealPerSec = CAP / (durationMs / 1000)
  const rss = watchRss(pid)
  const run = await dispatchRun(serviceUrl, db, sim, n, durationMs)
  const mem = await rss.stop()
  const windowSec = activeWindowSec(run.dials)
  const callsPerSec = n / windowSec
  const bareDials = await bareDialerRun(sim, n, durationMs)
  const bareRate = n / activeWindowSec(bareDials)
  return {
    callsPerSec: round(callsPerSec),
    idealPerSec,
    utilization: round(callsPerSec / idealPerSec, 3),
    bare: {
      callsPerSec: round(bareRate),
      utilization: round(bareRate / idealPerSec, 3),
      refill: refillGap(bareDials, n),
      refillFromSend: refillGap(bareDials, n, 'finalSentAt'),
    },
    windowSec: round(windowSec, 2),
    refill: refillGap(run.dials, n),
    refillFromSend: refillGap(run.dials, n, 'finalSentAt'),
    checks: run.checks,
    peakRssMb: mem.peakMb,
    rssMethod: mem.method,
  }
}

/** From the first dial the simulator received to the last final webhook acknowledged, in seconds. */
function activeWindowSec(dials: DialRecord[]) {
  const first = Math.min(...dials.map((d) => d.receivedAt))
  const last = Math.max(...dials.map((d) => d.finalAckedAt as number))
  return (last - first) / 1000
}

/** `n` calls through bench/bare-dialer.ts (its own process, as the service is) instead of the service. */
async function bareDialerRun(sim: Simulator, n: number, callDurationMs: number): Promise<DialRecord[]> {
  sim.configure({ callDurationMs })
  sim.resetStats()
  const child = spawn(process.execPath, ['scripts/bench/bare-dialer.ts'], {
    env: {
      PATH: process.env.PATH,
      SIM_URL: sim.url,
      WEBHOOK_SECRET: BENCH_WEBHOOK_SECRET,
      CAP: String(CAP),
      TOTAL: String(n),
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  try {
    await new Promise<void>((resolve, reject) => {
      child.stdout?.on('data', (d: Buffer) => {
        if (d.toString().includes('done')) resolve()
      })
      child.once('exit', (code) => reject(new Error(`bare-dialer exited (${code}) before it was done`)))
    })
  } finally {
    child.kill()
  }
  return sim.stats().dials.filter((d) => d.status === 202)
}

/**
 * `from`: finalAckedAt (the webhook's 2xx came back) or finalSentAt (the provider sent it; issue 14 §4: this also
 * counts the webhook's own handling, which the 2xx hides).
 */
export function refillGap(
  dials: DialRecord[],
  n: number,
  from: 'finalAckedAt' | 'finalSentAt' = 'finalAckedAt',
): RefillGap {
  const received = dials.map((d) => d.receivedAt).sort((a, b) => a - b)
  const acks = dials.map((d) => d[from] as number).sort((a, b) => a - b)
  const lastDial = received[n - 1] as number
  const gaps: number[] = []
  let j = 0
  for (const a of acks) {
    if (a >= lastDial) break // nothing was waiting any more
    while ((received[j] as number) < a) j++
    gaps.push((received[j] as number) - a)
  }
  const paired: number[] = []
  for (let k = 0; k + CAP < n; k++) paired.push((received[k + CAP] as number) - (acks[k] as number))
  return {
    p50Ms: round(percentile(gaps, 50), 2),
    p99Ms: round(percentile(gaps, 99), 2),
    samples: gaps.length,
    pairedP50Ms: round(percentile(paired, 50), 2),
    pairedP99Ms: round(percentile(paired, 99), 2),
  }
}

export interface ZeroLengthResult {
  callsPerSec: number
  rounds: number[]
  checks: RunChecks[]
  peakRssMb: number
  rssMethod: string
}

export async function benchZeroLength(
  serviceUrl: string,
  pid: number,
  db: Kysely<DB>,
  sim: Simulator,
  rounds = 3,
): Promise<ZeroLengthResult> {
  const n = 5000
  const rss = watchRss(pid)
  const perSec: number[] = []
  const allChecks: RunChecks[] = []
  for (let i = 0; i < rounds; i++) {
    const run = await dispatchRun(serviceUrl, db, sim, n, 0)
    const last = Math.max(...run.dials.map((d) => d.finalAckedAt as number))
    perSec.push(round(n / ((last - run.createdAt) / 1000)))
    allChecks.push(run.checks)
  }
  const mem = await rss.stop()
  return {
    callsPerSec: round(median(perSec)),
    rounds: perSec,
    checks: allChecks,
    peakRssMb: mem.peakMb,
    rssMethod: mem.method,
  }
}
