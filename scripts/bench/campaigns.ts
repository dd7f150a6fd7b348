import { type Kysely, sql } from 'kysely'
import type { DB } from '../../src/db/database.ts'
import type { DialRecord, Simulator } from '../../src/providers/simulator.ts'
import { claimDueCalls } from '../../src/sql/claim.ts'
import { CAP, resetCalls } from './dispatch.ts'
import { apiClient } from './load.ts'
import { benchPhone, percentile, round, sleep } from './stats.ts'

// Benchmarks 8-10 (issue 11): the claim with campaigns. 8 times the claim against 100,000 PENDING calls over 100
// campaigns, 99% of them outside their calling window; 9 compares cap-30 slot utilization with every call in one
// campaign against the same run without one; 10 measures campaign B's share of dials while a large campaign A of
// the same priority also has due calls.

class Rollback extends Error {}

export interface ClaimResult {
  pending: number
  campaigns: number
  outsideWindow: number
  rounds: number
  claimed: number
  p50Ms: number
  p99Ms: number
}

/**
 * 100 campaigns of 1,000 calls: 99 with a window that opens in two hours (their calls wait, next_attempt_at at the
 * opening, as a create puts them), one open now. CAP calls are IN_PROGRESS elsewhere, so each claim asks for CAP
 * more slots than are taken; every claim is rolled back so every round sees the same backlog.
 */
export async function benchCampaignClaim(db: Kysely<DB>): Promise<ClaimResult> {
  await resetCalls(db)
  await sql`delete from campaigns`.execute(db)
  const hh = (offsetMin: number) => {
    const d = new Date(Date.now() + offsetMin * 60_000)
    return `${String(d.getUTCHours()).padStart(2, '0')}:${String(d.getUTCMinutes()).padStart(2, '0')}`
  }
  const closed = {
    timezone: 'UTC',
    days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'],
    start: hh(120),
    end: hh(180),
  }
  const open = { ...closed, start: hh(-60), end: hh(60) }
  await sql`
    insert into campaigns (name, calling_window)
    select 'bench-' || i, case when i = 1 then ${JSON.stringify(open)}::jsonb else ${JSON.stringify(closed)}::jsonb end
      from generate_series(1, 100) i
  `.execute(db)
  await sql`
    insert into calls (to_phone, script_id, expires_at, campaign_id, time_zones, next_attempt_at)
    select '+9665' || (10000000 + n)::text, 'bench', now() + interval '1 day', k.id, '{}', k.opens
      from (select id, row_number() over (order by name) as r,
                   window_next_open(calling_window, window_zones(calling_window, '{}'), now()) as opens
              from campaigns) k,
           generate_series((k.r - 1) * 1000, k.r * 1000 - 1) n
  `.execute(db)
  await sql`
    update calls set status = 'IN_PROGRESS', attempts = 1, started_at = now()
     where id in (select c.id from calls c join campaigns k on k.id = c.campaign_id
                   where k.name = 'bench-1' order by c.id limit ${CAP}::int)
  `.execute(db)
  await sql`analyze calls`.execute(db)
  const { rows } = await sql<{ pending: number; outside: number }>`
    select count(*)::int as pending, count(*) filter (where next_attempt_at > now())::int as outside
      from calls where status = 'PENDING'`.execute(db)
  const times: number[] = []
  let claimed = 0
  for (let i = 0; i < 300; i++) {
    await db
      .transaction()
      .execute(async (trx) => {
        const t0 = performance.now()
        const got = await claimDueCalls(trx, 2 * CAP, CAP)
        times.push(performance.now() - t0)
        claimed = got.length
        throw new Rollback()
      })
      .catch((err) => {
        if (!(err instanceof Rollback)) throw err
      })
  }
  const measured = times.slice(20) // the first runs plan the function's statements
  return {
    pending: rows[0]?.pending ?? 0,
    campaigns: 100,
    outsideWindow: rows[0]?.outside ?? 0,
    rounds: measured.length,
    claimed,
    p50Ms: round(percentile(measured, 50), 2),
    p99Ms: round(percentile(measured, 99), 2),
  }
}

async function waitForAcks(sim: Simulator, n: number, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs
  while (sim.stats().dials.filter((d) => d.finalAckedAt !== undefined).length < n) {
    if (Date.now() > deadline) throw new Error(`calls did not settle within ${timeoutMs / 1000} s`)
    await sleep(20)
  }
}

let seq = 5_000_000

async function queue(serviceUrl: string, n: number, campaignId: string | undefined) {
  const api = apiClient(serviceUrl, 1)
  try {
    for (let i = 0; i < n; i += 1000) {
      const calls = Array.from({ length: Math.min(1000, n - i) }, () => ({ to: benchPhone(seq++), scriptId: 'bench' }))
      await api.post('/api/v1/calls/batch', { ...(campaignId ? { campaignId } : {}), calls })
    }
  } finally {
    await api.close()
  }
}

async function createCampaign(serviceUrl: string, body: object): Promise<string> {
  const api = apiClient(serviceUrl, 1)
  try {
    const r = (await api.post('/api/v1/campaigns', body)) as { data: { id: string } }
    return r.data.id
  } finally {
    await api.close()
  }
}

const rate = (dials: DialRecord[], n: number) => {
  const first = Math.min(...dials.map((d) => d.receivedAt))
  const last = Math.max(...dials.map((d) => d.finalAckedAt as number))
  return n / ((last - first) / 1000)
}

export interface CampaignUtilization {
  withoutPerSec: number
  withPerSec: number
  idealPerSec: number
  /** with / without */
  ratio: number
  rounds: number
}

/** Cap 30, 3000 calls of 200 ms, alternating rounds without and with a campaign (window open, no cap of its own). */
export async function benchCampaignUtilization(serviceUrl: string, db: Kysely<DB>, sim: Simulator) {
  const n = 3000
  const durationMs = 200
  const without: number[] = []
  const within: number[] = []
  for (let round_ = 0; round_ < 2; round_++) {
    for (const inCampaign of [false, true]) {
      await resetCalls(db)
      sim.configure({ callDurationMs: durationMs })
      sim.resetStats()
      const campaignId = inCampaign
        ? await createCampaign(serviceUrl, {
            name: 'bench-utilization',
            callingWindow: { timezone: 'UTC', start: '00:00', end: '23:59' },
          })
        : undefined
      await queue(serviceUrl, n, campaignId)
      await waitForAcks(sim, n, 180_000)
      ;(inCampaign ? within : without).push(
        rate(
          sim.stats().dials.filter((d) => d.status === 202),
          n,
        ),
      )
    }
  }
  const avg = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length
  const idealPerSec = CAP / (durationMs / 1000)
  return {
    withoutPerSec: round(avg(without)),
    withPerSec: round(avg(within)),
    idealPerSec,
    ratio: round(avg(within) / avg(without), 3),
    rounds: without.length,
  } satisfies CampaignUtilization
}

export interface FairnessResult {
  aCalls: number
  bCalls: number
  /** B's share of the dials from B's first dial to its last, while A also had due calls. */
  bShare: number
  dialsInWindow: number
}

/** A (20,000 calls) starts; B (200 calls, same priority) starts 5 s later. Calls of 200 ms, cap 30. */
export async function benchFairness(serviceUrl: string, db: Kysely<DB>, sim: Simulator): Promise<FairnessResult> {
  await resetCalls(db)
  sim.configure({ callDurationMs: 200 })
  sim.resetStats()
  const a = await createCampaign(serviceUrl, { name: 'bench-A' })
  const b = await createCampaign(serviceUrl, { name: 'bench-B' })
  await queue(serviceUrl, 20_000, a)
  await sleep(5000)
  await queue(serviceUrl, 200, b)
  const { rows: bIds } = await sql<{ id: string }>`select id::text from calls where campaign_id = ${b}::uuid`.execute(
    db,
  )
  const bSet = new Set(bIds.map((r) => r.id))
  const deadline = Date.now() + 120_000
  for (;;) {
    const { rows } = await sql<{ n: number }>`
      select count(*)::int as n from calls where campaign_id = ${b}::uuid and status in ('PENDING', 'IN_PROGRESS')`.execute(
      db,
    )
    if (rows[0]?.n === 0) break
    if (Date.now() > deadline) throw new Error('campaign B did not finish within 120 s')
    await sleep(100)
  }
  const dials = sim.stats().dials.filter((d) => d.status === 202)
  const isB = (d: DialRecord) => bSet.has(d.idempotencyKey.split(':')[0] as string)
  const firstB = dials.findIndex(isB)
  const lastB = dials.length - 1 - [...dials].reverse().findIndex(isB)
  const window = dials.slice(firstB, lastB + 1)
  await sql`update campaigns set status = 'CANCELED' where id = ${a}::uuid`.execute(db)
  await sql`update calls set status = 'CANCELED', ended_at = now() where campaign_id = ${a}::uuid and status = 'PENDING'`.execute(
    db,
  )
  return {
    aCalls: 20_000,
    bCalls: 200,
    bShare: round(window.filter(isB).length / window.length, 3),
    dialsInWindow: window.length,
  }
}
