import type { Kysely } from 'kysely'
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client'
import type { DB } from '../db/database.ts'
import { type AttemptEnd, STATUSES } from '../dispatch/call-state.ts'
import type { DeliveryObserver } from '../notify/delivery.ts'
import type { DialResult } from '../providers/generic.ts'
import type { EndAttemptResult } from '../sql/attempts.ts'
import { type CallSnapshot, type CampaignGauge, callSnapshot, campaignGauges } from '../sql/metrics.ts'
import { cachedFor } from './cached.ts'
import { registerWebhookMetrics } from './webhook-metrics.ts'

// Prometheus metrics of one process, in a registry of its own (tests build several apps in one process).
// Two kinds of values:
// - gauges of what is in the database (calls by status, slots, backlog), read at scrape time by one query cached for
//   a second, so every instance reports the same numbers: aggregate them with max(), not sum();
// - counters and histograms of what happened in this process (dials, webhooks, retries, sweeps): sum() them.

export const DIAL_RESULTS = [
  'accepted',
  'failed_5xx',
  'throttled_429',
  'unauthorized',
  'rejected_4xx',
  'timeout',
  'unknown',
  'error',
] as const
export type DialLabel = (typeof DIAL_RESULTS)[number]

export const WEBHOOK_OUTCOMES = [
  'applied',
  'late',
  'duplicate',
  'stale',
  'progress',
  'unknown',
  'mismatch',
  'bad_signature',
] as const
export type WebhookOutcome = (typeof WEBHOOK_OUTCOMES)[number]

export interface Metrics {
  readonly registry: Registry
  readonly contentType: string
  /** The exposition text. */
  render(): Promise<string>
  /** Dispatcher hook: a dial answered (or failed) after elapsedMs. */
  dialed(result: DialResult, elapsedMs: number): void
  /** An attempt ended through the recorder (dial result or webhook): counts the retries it scheduled. */
  attemptEnded(end: AttemptEnd, result: EndAttemptResult): void
  /** A webhook was answered. providerCallId with a final outcome observes the dial -> webhook lag. */
  webhook(providerStatus: string, outcome: WebhookOutcome, providerCallId?: string): void
  /** Dispatcher hook: a sweep expired and timed out this many calls. */
  swept(expired: number, timedOut: number): void
  /** Client webhook delivery hook (src/notify/delivery.ts). */
  readonly clientWebhooks: DeliveryObserver
}

export interface MetricsOptions {
  db: Kysely<DB>
  /** Reported while dispatch_settings has no row (no dispatcher has started yet). */
  maxConcurrentCalls: number
  cacheMs?: number
  /** A scrape waits this long for the database before reporting orchestrator_database_up 0. */
  queryTimeoutMs?: number
  /** Accepted dials remembered for the lag histogram; the oldest are forgotten beyond this. */
  maxTrackedDials?: number
}

export function createMetrics(o: MetricsOptions): Metrics {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry })
  const registers = [registry]

  let databaseUp = 0
  const loadSnapshot = cachedFor(o.cacheMs ?? 1000, () => withTimeout(callSnapshot(o.db), o.queryTimeoutMs ?? 2000))
  // A database that does not answer must not fail (or hang) the scrape: Node's metrics still matter then. The
  // database gauges keep their last values and orchestrator_database_up says they are stale.
  const snapshot = async (): Promise<CallSnapshot | undefined> => {
    try {
      const s = await loadSnapshot()
      databaseUp = 1
      return s
    } catch {
      databaseUp = 0
      return undefined
    }
  }

  new Gauge({
    name: 'orchestrator_calls',
    help: 'Calls by status, from the database (the same on every instance).',
    labelNames: ['status'],
    registers,
    async collect() {
      const s = await snapshot()
      if (s) for (const status of STATUSES) this.set({ status }, s.byStatus[status] ?? 0)
    },
  })
  const dbGauge = (name: string, help: string, read: (s: CallSnapshot) => number) =>
    new Gauge({
      name,
      help,
      registers,
      async collect() {
        const s = await snapshot()
        if (s) this.set(read(s))
      },
    })
  dbGauge(
    'orchestrator_calls_in_progress',
    'Calls holding a slot (IN_PROGRESS), from the database.',
    (s) => s.inProgress,
  )
  dbGauge(
    'orchestrator_max_concurrent_calls',
    "The global cap of IN_PROGRESS calls (dispatch_settings, else this instance's MAX_CONCURRENT_CALLS).",
    (s) => s.maxConcurrentCalls ?? o.maxConcurrentCalls,
  )
  dbGauge('orchestrator_calls_pending', 'PENDING calls, due or not.', (s) => s.pending)
  dbGauge('orchestrator_calls_due', 'PENDING calls that could be dialed now if a slot were free.', (s) => s.dueNow)
  dbGauge(
    'orchestrator_oldest_pending_age_seconds',
    'Age of the oldest PENDING call since creation; 0 when none is pending.',
    (s) => s.oldestPendingSec ?? 0,
  )
  dbGauge(
    'orchestrator_longest_in_progress_seconds',
    'How long the oldest IN_PROGRESS call has held its slot; 0 when none is in progress.',
    (s) => s.longestInProgressSec ?? 0,
  )
  // Per campaign, bounded: at most CAMPAIGN_LABELS_MAX campaign ids plus "other" (sql/metrics.ts campaignGauges).
  const loadCampaigns = cachedFor(o.cacheMs ?? 1000, () => withTimeout(campaignGauges(o.db), o.queryTimeoutMs ?? 2000))
  const campaignGauge = (name: string, help: string, read: (g: CampaignGauge) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ['campaign'],
      registers,
      async collect() {
        const rows = await loadCampaigns().catch(() => undefined)
        if (!rows) return
        this.reset() // a campaign that has finished leaves the exposition
        for (const g of rows) this.set({ campaign: g.campaign }, read(g))
      },
    })
  campaignGauge(
    'orchestrator_campaign_calls_in_progress',
    'IN_PROGRESS calls per campaign (at most 20 campaign ids, the rest as campaign="other").',
    (g) => g.inProgress,
  )
  campaignGauge(
    'orchestrator_campaign_calls_pending',
    'PENDING calls per campaign, due or waiting for their window (at most 20 campaign ids, the rest as "other").',
    (g) => g.pending,
  )
  new Gauge({
    name: 'orchestrator_database_up',
    help: '1 when the last metrics query answered; 0 means the database gauges are stale.',
    registers,
    async collect() {
      await snapshot()
      this.set(databaseUp)
    },
  })

  const dials = new Counter({
    name: 'orchestrator_dials_total',
    help: 'Dials sent to the provider by this instance, by result.',
    labelNames: ['result'],
    registers,
  })
  for (const result of DIAL_RESULTS) dials.inc({ result }, 0)
  const dialSeconds = new Histogram({
    name: 'orchestrator_dial_duration_seconds',
    help: 'Time from sending a dial to its answer (or timeout), by result.',
    labelNames: ['result'],
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers,
  })
  const webhooks = new Counter({
    name: 'orchestrator_webhooks_total',
    help: 'Provider webhooks answered by this instance, by provider status and outcome.',
    labelNames: ['status', 'outcome'],
    registers,
  })
  const retries = new Counter({
    name: 'orchestrator_retries_scheduled_total',
    help: 'Attempts that ended with the call back in PENDING for another dial, by error code.',
    labelNames: ['reason'],
    registers,
  })
  const expired = new Counter({
    name: 'orchestrator_calls_expired_total',
    help: 'PENDING calls this instance expired (expires_at passed before a dial).',
    registers,
  })
  const timedOut = new Counter({
    name: 'orchestrator_calls_timed_out_total',
    help: 'IN_PROGRESS calls this instance failed with CALL_TIMEOUT (no final webhook in time).',
    registers,
  })
  const lag = new Histogram({
    name: 'orchestrator_webhook_lag_seconds',
    help: "From the provider accepting a dial to that attempt's final webhook being applied (observed when the same instance dialed and received it).",
    buckets: [1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600],
    registers,
  })

  // providerCallId -> when its dial was accepted. Map order is insertion order, so trimming from the front drops
  // the oldest; entries whose webhook goes to another instance (or never comes) age out that way.
  const accepted = new Map<string, number>()
  const maxTracked = o.maxTrackedDials ?? 50_000
  const clientWebhooks = registerWebhookMetrics(registers, o.db)

  return {
    registry,
    contentType: registry.contentType,
    render: () => registry.metrics(),
    clientWebhooks,
    dialed(result, elapsedMs) {
      const label = dialResultLabel(result)
      dials.inc({ result: label })
      dialSeconds.observe({ result: label }, elapsedMs / 1000)
      if (result.kind === 'accepted') {
        accepted.set(result.providerCallId, performance.now())
        if (accepted.size > maxTracked) accepted.delete(accepted.keys().next().value as string)
      }
    },
    attemptEnded(end, result) {
      // the status the statement set: a campaign's retry rules can retry what the policy would end, and the reverse
      if (result.outcome === 'applied' && result.status === 'PENDING' && end.next !== 'COMPLETED')
        retries.inc({ reason: end.error.code })
    },
    webhook(providerStatus, outcome, providerCallId) {
      webhooks.inc({ status: providerStatus, outcome })
      if (!providerCallId || (outcome !== 'applied' && outcome !== 'late')) return
      const at = accepted.get(providerCallId)
      if (at === undefined) return
      accepted.delete(providerCallId)
      lag.observe((performance.now() - at) / 1000)
    },
    swept(e, t) {
      if (e > 0) expired.inc(e)
      if (t > 0) timedOut.inc(t)
    },
  }
}

/**
 * 'failed' is a 5xx or a connection that never opened; 'unknown' a dial that was sent without a usable answer (a
 * timeout, a reset, a 2xx without a call id); the provider client's messages tell them apart.
 */
export function dialResultLabel(r: DialResult): DialLabel {
  switch (r.kind) {
    case 'accepted':
      return 'accepted'
    case 'throttled':
      return 'throttled_429'
    case 'rejected':
      return 'rejected_4xx'
    case 'unauthorized':
      return 'unauthorized'
    case 'unknown':
      return r.error.message.includes('did not answer within') ? 'timeout' : 'unknown'
    case 'failed':
      return /provider answered 5\d\d/.test(r.error.message) ? 'failed_5xx' : 'error'
  }
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}
