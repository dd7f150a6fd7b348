import type { Kysely } from 'kysely'
import pg from 'pg'
import { fromKysely, type Job, type PgBoss } from 'pg-boss'
import type { Logger } from 'pino'
import type { ClientWebhookConfig } from '../config.ts'
import { coalesce } from '../db/coalesce.ts'
import type { DB } from '../db/database.ts'
import { runBeside } from '../run-beside.ts'
import { eventBody } from './payload.ts'
import { retryDelayMs } from './retry.ts'
import { createSender, type SendOutcome } from './sender.ts'
import { signDelivery } from './signing.ts'
import {
  type AttemptResult,
  type DeliveryJob,
  failUndoneDeliveries,
  jobOf,
  type LeasedDelivery,
  leaseDeliveries,
  promoteNext,
  recordResults,
  relayEvents,
  sweepLapsedLeases,
  tryRelayLock,
} from './sql.ts'

// Client webhook delivery in one process: the relay (events -> deliveries + pg-boss jobs, one transaction) and the
// pg-boss workers that send. The relay wakes on the trigger's NOTIFY (its own LISTEN connection) and polls every
// RELAY_POLL_MS besides, so a lost notification costs latency, never an event. Several processes may run this;
// the relay lock makes one relay work at a time, and workers share the pg-boss queue.

export const DELIVERY_QUEUE = 'client-webhook'
const RELAY_BATCH = 1000
const RELAY_POLL_MS = 1000
const SWEEP_EVERY_MS = 1000
/** The priority of a sending slot for the next delivery of a line already under way (see semaphore()). */
const LINE_UNDER_WAY = Number.MAX_SAFE_INTEGER
/** pg-boss workers per process; each fetches up to WEBHOOK_DELIVERY_CONCURRENCY jobs at a time. */
const WORKERS = 2
/** While LISTEN/NOTIFY works, how often idle workers look for due jobs anyway (retries of other processes). */
const POLL_SECONDS = 2

export type DeliveryLabel = 'delivered' | 'retrying' | 'failed' | 'refused' | 'stale'

export interface DeliveryObserver {
  /** An attempt was recorded; lagMs (event created -> acknowledged) when delivered. */
  attempt(result: DeliveryLabel, lagMs?: number): void
}

export interface Notifier {
  /** Publishes jobs for deliveries inside the caller's transaction (redeliver). */
  publish(trx: Kysely<DB>, jobs: readonly DeliveryJob[]): Promise<void>
  /** Run the relay now (a status change committed in this process). */
  nudge(): void
  stop(): Promise<void>
}

interface JobData {
  endpointId: string
  eventId: string
  generation: number
}

/**
 * A call further along its life goes first: pg-boss fetches by priority, then age, and a burst of call.created
 * (a batch of 1,000 calls) would otherwise hold up the call.started and final events of calls already ringing, each
 * of which waits in its line for the one before it (measured: final-event p99 of 2-4 s behind a batch of 1,500).
 */
const priorityOf = (j: DeliveryJob) => Math.min(j.sequence, 100)

export function publisher(boss: PgBoss) {
  return async (trx: Kysely<DB>, jobs: readonly DeliveryJob[]) => {
    if (jobs.length === 0) return
    await boss.insert(
      DELIVERY_QUEUE,
      jobs.map((j) => ({
        data: { endpointId: j.endpointId, eventId: j.eventId, generation: j.generation } satisfies JobData,
        priority: priorityOf(j),
        ...(j.startAfter ? { startAfter: new Date(j.startAfter) } : {}),
      })),
      { db: fromKysely(trx) },
    )
  }
}

export async function createDeliveryQueue(boss: PgBoss, config: ClientWebhookConfig) {
  await boss.createQueue(DELIVERY_QUEUE, {
    notify: true,
    // A job fails only when the database did (recording its result); the delivery's own retries are new jobs.
    retryLimit: 10,
    retryDelay: 1,
    retryBackoff: true,
    retryDelayMax: 60,
    expireInSeconds: expireSecondsFor(config),
    deleteAfterSeconds: 3600,
  })
  // createQueue keeps an existing queue's options; a changed WEBHOOK_TIMEOUT_MS must still move the expiry.
  await boss.updateQueue(DELIVERY_QUEUE, { expireInSeconds: expireSecondsFor(config) })
}

/**
 * A handler never runs longer than a lease (request timeout + recording), so a job active longer than this lost its
 * process: pg-boss's supervisor then retries it. Deliveries already leased are republished sooner, by the lease sweep.
 */
const expireSecondsFor = (config: ClientWebhookConfig) => Math.ceil(leaseMsFor(config) / 1000) + 10

function sanitized(err: unknown): Error {
  const e = err as { code?: string; message?: string }
  return new Error(`client webhook delivery failed: ${e.code ?? ''} ${e.message ?? String(err)}`.trim())
}

/** How many rounds of requests the deliveries the relay keeps (see relayOnce) may fill while they wait for slots. */
const KEPT_ROUNDS = 2

/**
 * How long a worker holds a delivery: the wait for a sending slot (the WORKERS fetched batches, each as large as
 * the slots, wait for at most two rounds of requests, and the deliveries the relay keeps go before them for at most
 * KEPT_ROUNDS more), its own request's timeout, and a margin to record its result.
 */
const leaseMsFor = (config: ClientWebhookConfig) => config.timeoutMs * (1 + WORKERS + KEPT_ROUNDS) + 5000

export async function startNotifier(o: {
  db: Kysely<DB>
  boss: PgBoss
  databaseUrl: string
  log: Logger
  config: ClientWebhookConfig
  observer?: DeliveryObserver
}): Promise<Notifier> {
  const { db, boss, log, config } = o
  const sender = createSender({ timeoutMs: config.timeoutMs, allowPrivateNetworks: config.allowPrivateNetworks })
  const publish = publisher(boss)
  const leaseMs = leaseMsFor(config)
  const schedule = { baseDelayMs: config.retryBaseDelayMs, maxDelayMs: config.retryMaxDelayMs }

  // Workers' leases go together, one statement per burst: with a lease each, 20 workers waited for the pool
  // (DB_POOL_MAX 10) holding fetched jobs, and a process killed then left those jobs to pg-boss's expiry (minutes)
  // instead of to the lease sweep (seconds).
  const lease = coalesce(
    async (jobs: JobData[]) => {
      const rows = await leaseDeliveries(db, jobs, leaseMs)
      const byKey = new Map(rows.map((x) => [`${x.endpoint_id}:${x.event_id}`, x]))
      return jobs.map((j) => byKey.get(`${j.endpointId}:${j.eventId}`))
    },
    { keyOf: (j) => `${j.endpointId}:${j.eventId}` },
  )
  let workId: string | undefined
  // The send of a line's head goes on down the line: the transaction that records it promotes the line's next delivery
  // leased to this process, and the same sending slot sends it, with no job (a lease that lapses is published again
  // by the sweep). A call's events then reach a receiver one round trip apart instead of one job fetch apart, behind
  // whatever burst of other calls' jobs is queued (measured: the slowest final events were three jobs of one call in
  // a row, each waiting 100-150 ms for its fetch). Not while stopping: the next heads get jobs then.
  let chaining = true
  const record = coalesce(
    async (results: AttemptResult[]) => {
      const { recorded, next } = await db.transaction().execute(async (trx) => {
        const r = await recordResults(trx, results, {
          retryForMs: config.retryForMs,
          disableAfterMs: config.disableAfterMs,
        })
        const retries = r.recorded
          .filter((x) => x.state === 'queued')
          .map((x) => ({ ...jobOf(x), startAfter: x.next_attempt_at }))
        const finished = r.recorded
          .filter((x) => x.state !== 'queued')
          .map((x) => ({ endpointId: x.endpoint_id, lineId: x.line_id }))
        const lease = chaining ? leaseMs : undefined
        const next = await promoteNext(trx, finished, lease)
        if (r.disabled.length > 0) {
          await failUndoneDeliveries(trx, r.disabled, 'endpoint disabled')
          log.warn({ endpointIds: r.disabled }, 'client webhook endpoints disabled')
        }
        await publish(trx, [...retries, ...(lease === undefined ? next.map(jobOf) : [])])
        return { recorded: r.recorded, next: lease === undefined ? [] : next }
      })
      // pg-boss wakes workers by NOTIFY only for jobs due now; a retry due later would wait for the notify-mode
      // poll (POLL_SECONDS). This process wakes a worker when its own retries fall due.
      for (const x of recorded) {
        if (x.state !== 'queued') continue
        const delay = new Date(x.next_attempt_at).getTime() - Date.now()
        setTimeout(() => workId && boss.notifyWorker(workId), Math.max(0, delay) + 5).unref()
      }
      const byKey = new Map(recorded.map((x) => [`${x.endpoint_id}:${x.event_id}`, x]))
      const nextByLine = new Map(next.map((x) => [`${x.endpoint_id}:${x.line_id}`, x]))
      return results.map((x) => {
        const r = byKey.get(`${x.endpointId}:${x.eventId}`)
        const line = r && `${r.endpoint_id}:${r.line_id}`
        const then = line === undefined ? undefined : nextByLine.get(line)
        if (line !== undefined) nextByLine.delete(line) // one sender per line
        return { state: r?.state, next: then }
      })
    },
    { keyOf: (x) => `${x.endpointId}:${x.eventId}`, retryAlone: true },
  )

  /**
   * Sends a leased delivery, then the deliveries of its line that recording it leased to this process. Called holding
   * one sending slot. A slot is held only while a request is out, not while its result is recorded (a coalesced
   * commit, most of a delivery's time under load): WEBHOOK_DELIVERY_CONCURRENCY bounds the requests in flight, and
   * the recording no longer bounds the rate (measured: 20 slots held through the recording moved 557-750 deliveries/s
   * on this machine, 60 slots 1,373/s).
   */
  async function deliver(head: LeasedDelivery) {
    let holding = true
    try {
      for (let d: LeasedDelivery | undefined = head; d; ) {
        if (!holding) {
          await slots.acquire(LINE_UNDER_WAY) // goes before deliveries fetched but not yet sending
          holding = true
        }
        const outcome = await send(d)
        slots.release()
        holding = false
        d = await recordOutcome(d, outcome)
      }
    } finally {
      if (holding) slots.release()
    }
  }

  async function send(d: LeasedDelivery): Promise<SendOutcome> {
    if (!d.enabled)
      return { ok: false, status: null, latencyMs: 0, error: 'endpoint disabled', retryAfterMs: undefined }
    const body = JSON.stringify(eventBody({ ...d, id: d.event_id }))
    const headers = signDelivery(d.secrets, d.event_id, new Date(), body)
    return sender.send(d.url, { ...headers }, body)
  }

  /** Records a send's outcome; the line's next delivery when the recording leased it to this process. */
  async function recordOutcome(d: LeasedDelivery, outcome: SendOutcome): Promise<LeasedDelivery | undefined> {
    const attempt = d.attempts + 1
    const { state, next } = await record({
      endpointId: d.endpoint_id,
      eventId: d.event_id,
      generation: d.generation,
      ok: outcome.ok,
      gone: outcome.status === 410,
      final: !d.enabled,
      httpStatus: outcome.status,
      latencyMs: outcome.latencyMs,
      error: outcome.error,
      delayMs: outcome.ok ? 0 : retryDelayMs(schedule, attempt, outcome.retryAfterMs),
    })
    const label: DeliveryLabel =
      state === undefined
        ? 'stale'
        : state === 'delivered'
          ? 'delivered'
          : outcome.error?.startsWith('WEBHOOK_ADDRESS_REFUSED')
            ? 'refused'
            : state === 'queued'
              ? 'retrying'
              : 'failed'
    o.observer?.attempt(label, label === 'delivered' ? Date.now() - new Date(d.event_created_at).getTime() : undefined)
    if (label !== 'delivered' && label !== 'stale') {
      log.debug({ endpointId: d.endpoint_id, eventId: d.event_id, attempt, error: outcome.error }, 'delivery failed')
    }
    return next
  }

  // A job ends once its delivery is leased: from then on the lease, not pg-boss, keeps the delivery safe (a lapsed
  // lease is republished), so sends run beside the workers, at most WEBHOOK_DELIVERY_CONCURRENCY at a time, and a
  // handler returns (and its worker fetches again) once each of its deliveries has a sending slot. pg-boss wakes every
  // worker of a queue on each NOTIFY: with 20 workers of one job each, every published job cost 20 fetches, and the
  // pipeline managed about 100 deliveries/s on this machine; WORKERS workers taking batches keep the fetches few. A
  // batch as large as the slots, not half of them: a worker's round (fetch, lease, complete) bounded the rate, 830-880
  // deliveries/s with batches of 10 against 1,335/s with 20 (2026-12-02, this machine).
  const slots = semaphore(config.concurrency)
  const sends = new Set<Promise<void>>()
  await createDeliveryQueue(boss, config)
  workId = await boss.work<JobData>(
    DELIVERY_QUEUE,
    {
      batchSize: config.concurrency,
      localConcurrency: WORKERS,
      pollingIntervalSeconds: 0.5,
      notifyPollingIntervalSeconds: POLL_SECONDS,
      // pg-boss waits out the polling interval after every fetch, full or not, unless a NOTIFY came meanwhile: two
      // workers of 10 jobs each then moved 10 jobs/s in a backlog (measured: 10.9 deliveries/s). A full batch means
      // more is waiting, so fetch again at once.
      burstWhenBatchFull: true,
    },
    async (jobs: Job<JobData>[]) => {
      let leased: (LeasedDelivery | undefined)[]
      try {
        leased = await Promise.all(jobs.map((j) => lease(j.data)))
      } catch (err) {
        // pg-boss keeps a failed job's error as its output, and PostgreSQL's detail can quote a whole
        // webhook_endpoints row, secret included: only the code and message leave this handler.
        throw sanitized(err)
      }
      await Promise.all(leased.flatMap((d) => (d ? [startSending(d, d.sequence ?? 1)] : [])))
    },
  )

  /** Sends a leased delivery once a slot is free, beside the caller; resolves when it has the slot. */
  function startSending(d: LeasedDelivery, priority: number): Promise<void> {
    const slot = slots.acquire(priority)
    const p: Promise<void> = slot
      .then(() => deliver(d))
      .catch((err) => log.error({ err: sanitized(err), eventId: d.event_id }, 'client webhook delivery failed'))
      .finally(() => sends.delete(p))
    sends.add(p)
    return slot
  }

  // ---- the relay ----
  let running = true
  let wanted = false
  let wake: (() => void) | undefined
  let listener: pg.Client | undefined

  const nudge = () => {
    wanted = true
    wake?.()
  }

  async function listen() {
    while (running && !listener) {
      const client = new pg.Client({ connectionString: o.databaseUrl, application_name: 'client-webhook-relay' })
      client.on('error', () => {
        if (listener === client) listener = undefined
        void client.end().catch(() => {})
        if (running) setTimeout(() => void listen(), 1000).unref()
      })
      try {
        await client.connect()
        client.on('notification', nudge)
        await client.query('listen client_webhook_events')
        listener = client
        nudge() // events written while not listening
      } catch {
        await client.end().catch(() => {})
        await new Promise((r) => setTimeout(r, 1000))
      }
    }
  }

  // The relay keeps a call's later events (call.started and after, and the second job of a head that a later event
  // is waiting behind) for this process: it leases them in its own transaction and sends them from here, ahead of
  // the call.created fetched in the workers' batches, with no job. A job waits for a worker's next fetch, and in a
  // burst of call.created both workers hold a batch waiting for slots: the slowest final events waited 80-140 ms
  // for that fetch, behind a head that was itself still in the burst (benchmark 13's trace). A lease that lapses is
  // published again by the sweep, as for chaining. At most KEPT_ROUNDS x WEBHOOK_DELIVERY_CONCURRENCY kept deliveries
  // wait for a slot at a time (the rest get jobs), so other processes still share the load and a lease never waits
  // out; one round was too few for the first wave of a run (30 calls ending at once, 10 of them sent as jobs).
  let keptWaiting = 0

  /** One relay transaction; the number of events it took (-1: another relay holds the lock). */
  async function relayOnce(): Promise<number> {
    const { events, kept } = await db.transaction().execute(async (trx) => {
      if (!(await tryRelayLock(trx))) return { events: -1, kept: [] }
      const { events, jobs } = await relayEvents(trx, RELAY_BATCH)
      const room = chaining ? Math.max(0, KEPT_ROUNDS * config.concurrency - keptWaiting) : 0
      const urgent = jobs.filter((j) => j.sequence > 1).slice(0, room)
      const leased = await leaseDeliveries(trx, urgent, leaseMs)
      const priority = new Map(urgent.map((j) => [`${j.endpointId}:${j.eventId}`, j.sequence]))
      const kept = leased.map((d) => ({ d, priority: priority.get(`${d.endpoint_id}:${d.event_id}`) ?? 1 }))
      const keptKeys = new Set(kept.map(({ d }) => `${d.endpoint_id}:${d.event_id}`))
      await publish(
        trx,
        jobs.filter((j) => !keptKeys.has(`${j.endpointId}:${j.eventId}`)),
      )
      return { events, kept }
    })
    keptWaiting += kept.length
    for (const { d, priority } of kept) void startSending(d, priority).finally(() => keptWaiting--)
    return events
  }

  async function sweep() {
    const jobs = await db.transaction().execute(async (trx) => {
      const j = await sweepLapsedLeases(trx)
      await publish(trx, j)
      return j
    })
    if (jobs.length > 0) log.info({ deliveries: jobs.length }, 'client webhook deliveries published again')
  }

  // The sweep runs beside the relay, one at a time: awaited in the loop, its four statements (p90 21 ms, at most
  // 109 ms in the benchmark) held up the relay of every event written meanwhile, once a second.
  const sweeper = runBeside({
    everyMs: SWEEP_EVERY_MS,
    run: sweep,
    onError: (err, failures) => log.error({ err: sanitized(err), failures }, 'client webhook lease sweep failed'),
  })

  async function loop() {
    let failures = 0
    while (running) {
      wanted = false
      let full = false
      sweeper.whenDue()
      try {
        full = (await relayOnce()) === RELAY_BATCH
        failures = 0
      } catch (err) {
        failures++
        if (failures === 1 || failures % 30 === 0)
          log.error({ err: sanitized(err), failures }, 'client webhook relay failed')
      }
      if (!running) break
      if (full || wanted) continue
      const waitMs = failures > 0 ? Math.min(RELAY_POLL_MS * 2 ** Math.min(failures - 1, 4), 10_000) : RELAY_POLL_MS
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, waitMs)
        wake = () => {
          clearTimeout(timer)
          resolve()
        }
      })
      wake = undefined
    }
  }

  await listen()
  const loopDone = loop()

  return {
    publish,
    nudge,
    async stop() {
      running = false
      chaining = false
      wake?.()
      await loopDone
      await sweeper.idle()
      await listener?.end().catch(() => {})
      await boss.offWork(DELIVERY_QUEUE, { wait: true })
      await Promise.allSettled([...sends]).catch(() => {})
      await sender.close()
    },
  }
}

/**
 * Counting semaphore of single permits. Waiters go by priority, then first come first served: a delivery fetched
 * in a batch waits behind later events of other calls (their sequence: a call.completed before a burst of
 * call.created, as pg-boss fetches them), and a line already under way goes first.
 */
function semaphore(capacity: number) {
  let free = capacity
  const waiting: { priority: number; resolve: () => void }[] = []
  return {
    acquire(priority: number) {
      return new Promise<void>((resolve) => {
        if (free > 0) {
          free--
          return resolve()
        }
        let at = waiting.length
        while (at > 0 && (waiting[at - 1] as { priority: number }).priority < priority) at--
        waiting.splice(at, 0, { priority, resolve })
      })
    },
    release() {
      const next = waiting.shift()
      if (next) next.resolve()
      else free++
    },
  }
}
