import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { type Kysely, sql } from 'kysely'
import type { DB } from '../../src/db/database.ts'
import type { Simulator } from '../../src/providers/simulator.ts'
import { createInBatches } from './create.ts'
import { apiClient } from './load.ts'
import { median, percentile, round, sleep } from './stats.ts'

// Benchmark 8 (issue 12): client webhooks. A fast receiver in this process (answers 204 at once) and the service
// as a child process, as for the other benchmarks.
// - cost: the cap-30 slot run (200 ms calls) without an endpoint, with one that takes no call events (every event is
//   written, already published since migration 0083, and nothing is relayed or sent: the cost of event writing, the
//   issue's goal) and with one that takes them all (written and delivered, the receiver on the same two cores),
//   alternating, calls/s compared;
// - latency: the simulator's final webhook sent -> the receiver got call.completed for that call (both clocks are
//   this process's performance clock);
// - throughput: 3,000 calls created in 3 requests -> 3,000 call.created deliveries, first to last receipt.

const now = () => performance.timeOrigin + performance.now()
const BURST = 3000

interface Receiver {
  url: string
  count: number
  completedAt: Map<string, number>
  createdTimes: number[]
  reset(): void
  close(): Promise<void>
}

async function startFastReceiver(): Promise<Receiver> {
  const r: Receiver = {
    url: '',
    count: 0,
    completedAt: new Map(),
    createdTimes: [],
    reset() {
      r.count = 0
      r.completedAt.clear()
      r.createdTimes = []
    },
    close: () => new Promise((resolve) => server.close(() => resolve())),
  }
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const at = now()
      r.count++
      const body = JSON.parse(Buffer.concat(chunks).toString()) as { type: string; data: { call: { id: string } } }
      if (body.type === 'call.completed' && !r.completedAt.has(body.data.call.id))
        r.completedAt.set(body.data.call.id, at)
      if (body.type === 'call.created') r.createdTimes.push(at)
      res.writeHead(204)
      res.end()
    })
  })
  server.keepAliveTimeout = 60_000
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  r.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks`
  return r
}

export interface WebhookBenchResult {
  /** Slot run calls/s per round: without an endpoint, with one that takes no call events, with one that takes all. */
  slotCallsPerSec: { without: number[]; written: number[]; with: number[] }
  /** Median cost of event writing (the endpoint that takes no call events), and of writing and delivering. */
  writeCostPercent: number
  costPercent: number
  finalEventLatency: { p50Ms: number; p99Ms: number; count: number }
  deliveriesPerSec: number
}

async function until(what: string, probe: () => boolean | Promise<boolean>, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

async function slotRun(serviceUrl: string, db: Kysely<DB>, sim: Simulator, n: number) {
  await sql`truncate calls cascade`.execute(db)
  sim.resetStats()
  const started = now()
  await createInBatches(serviceUrl, n, 1, 'webhooks')
  await until(
    'every final webhook acknowledged',
    () => sim.stats().dials.filter((d) => d.finalAckedAt !== undefined).length >= n,
    180_000,
  )
  const dials = sim.stats().dials.filter((d) => d.status === 202)
  const last = Math.max(...dials.map((d) => d.finalAckedAt ?? 0))
  return { callsPerSec: n / ((last - started) / 1000), dials }
}

/** BENCH_TRACE=1: the timeline of the slowest final events, each moment relative to the simulator's send. */
async function traceSlowest(db: Kysely<DB>, slow: { callId: string; ms: number; sentAt: number }[]) {
  slow.sort((a, b) => b.ms - a.ms)
  for (const s of slow.slice(0, 8)) {
    const { rows } = await sql<Record<string, unknown>>`
      select e.type, e.sequence,
             round(extract(epoch from e.created_at) * 1000 - ${s.sentAt}) as event_ms,
             round(extract(epoch from d.created_at) * 1000 - ${s.sentAt}) as relayed_ms,
             round(extract(epoch from j.created_on) * 1000 - ${s.sentAt}) as job_ms,
             round(extract(epoch from j.started_on) * 1000 - ${s.sentAt}) as fetched_ms,
             round(extract(epoch from d.delivered_at) * 1000 - ${s.sentAt}) as recorded_ms,
             d.attempts
        from webhook_events e
        join webhook_deliveries d on d.event_id = e.id
        left join pgboss.job j on j.name = 'client-webhook' and j.data->>'eventId' = e.id::text
       where e.call_id = ${s.callId}::uuid
       order by e.sequence, j.created_on`.execute(db)
    console.log(`slow final event: ${Math.round(s.ms)} ms, call ${s.callId}`)
    console.table(rows)
  }
}

export async function benchWebhooks(serviceUrl: string, db: Kysely<DB>, sim: Simulator): Promise<WebhookBenchResult> {
  const receiver = await startFastReceiver()
  const api = apiClient(serviceUrl, 4)
  const N = 1500
  const without: number[] = []
  const written: number[] = []
  const withEndpoint: number[] = []
  const latencies: number[] = []
  let progress = ''
  try {
    sim.configure({ callDurationMs: 200 })
    await slotRun(serviceUrl, db, sim, 300) // warm-up
    for (let round = 0; round < 3; round++) {
      await sql`delete from webhook_endpoints`.execute(db)
      without.push((await slotRun(serviceUrl, db, sim, N)).callsPerSec)
      // any enabled endpoint makes every status change write its event; this one wants none of them
      await api.post('/api/v1/webhook-endpoints', { url: receiver.url, events: ['campaign.finished'] })
      written.push((await slotRun(serviceUrl, db, sim, N)).callsPerSec)
      await sql`delete from webhook_endpoints`.execute(db)
      await api.post('/api/v1/webhook-endpoints', { url: receiver.url })
      receiver.reset()
      const run = await slotRun(serviceUrl, db, sim, N)
      withEndpoint.push(run.callsPerSec)
      await until(
        'every call.completed delivered',
        async () => {
          if (receiver.completedAt.size >= N) return true
          const { rows } = await sql<{ state: string; n: number }>`
            select state, count(*)::int as n from webhook_deliveries group by 1`.execute(db)
          progress = `${receiver.completedAt.size} of ${N} call.completed; deliveries ${JSON.stringify(rows)}`
          return false
        },
        180_000,
      ).catch((err) => {
        throw new Error(`${(err as Error).message}: ${progress}`)
      })
      const slow: { callId: string; ms: number; sentAt: number }[] = []
      for (const d of run.dials) {
        const callId = d.idempotencyKey.split(':')[0] as string
        const got = receiver.completedAt.get(callId)
        if (got !== undefined && d.finalSentAt !== undefined) {
          latencies.push(got - d.finalSentAt)
          slow.push({ callId, ms: got - d.finalSentAt, sentAt: d.finalSentAt })
        }
      }
      if (process.env.BENCH_TRACE) await traceSlowest(db, slow)
    }

    // throughput: call.created for 5,000 calls at once; the calls stay PENDING behind long ones
    sim.configure({ callDurationMs: 3_600_000 })
    await sql`truncate calls cascade`.execute(db)
    receiver.reset()
    await createInBatches(serviceUrl, BURST, 2, 'webhooks')
    // on a loaded machine the burst may not drain in time: the rate is then what arrived so far
    await until('the burst delivered', () => receiver.createdTimes.length >= BURST, 120_000).catch(() => {})
    const first = Math.min(...receiver.createdTimes)
    const last = Math.max(...receiver.createdTimes)
    const deliveriesPerSec = receiver.createdTimes.length / ((last - first) / 1000)

    const mWithout = median(without)
    const cost = (xs: number[]) => round((1 - median(xs) / mWithout) * 100, 1)
    const perRound = (xs: number[]) => xs.map((x) => round(x, 1))
    return {
      slotCallsPerSec: { without: perRound(without), written: perRound(written), with: perRound(withEndpoint) },
      writeCostPercent: cost(written),
      costPercent: cost(withEndpoint),
      finalEventLatency: {
        p50Ms: round(percentile(latencies, 50), 1),
        p99Ms: round(percentile(latencies, 99), 1),
        count: latencies.length,
      },
      deliveriesPerSec: round(deliveriesPerSec),
    }
  } finally {
    await sql`delete from webhook_endpoints`.execute(db)
    await api.close()
    await receiver.close()
  }
}
