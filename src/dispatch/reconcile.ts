import type { Kysely } from 'kysely'
import type { Logger } from 'pino'
import type { DB } from '../db/database.ts'
import type { CallProvider } from '../providers/types.ts'
import { takeReconcileBatch } from '../sql/reconcile.ts'
import type { RetryPolicy } from './call-state.ts'
import { applyFinalReport, applyLostCall, type EndAttempt } from './final-report.ts'

// Reconciliation: every intervalMs, ask the provider about calls in progress for longer than afterMs (before
// CALL_TIMEOUT_MS would end them FAILED), oldest first, at most maxPerMinute requests a minute across all instances
// (sql/reconcile.ts). A call the provider reports ended is settled exactly as its webhook would have settled it
// (final-report.ts); one it has no record of is FAILED with PROVIDER_LOST_CALL and retried by the usual rules.
// A generic provider without the get-call API (404/405) is not asked again by this process.

export interface ReconcilerOptions {
  db: Kysely<DB>
  provider: CallProvider
  endAttempt: EndAttempt
  policy: RetryPolicy
  log: Logger
  intervalMs: number
  afterMs: number
  maxPerMinute: number
  /** Requests in flight at once. */
  concurrency?: number
}

export interface ReconcileSummary {
  asked: number
  settled: number
  lost: number
  active: number
  errors: number
}

export interface Reconciler {
  runOnce(): Promise<ReconcileSummary>
  start(): void
  stop(): Promise<void>
  readonly unsupported: boolean
}

export function createReconciler(o: ReconcilerOptions): Reconciler {
  const concurrency = o.concurrency ?? 8
  let unsupported = false
  let timer: NodeJS.Timeout | undefined
  let running: Promise<unknown> | undefined
  let stopped = true

  async function runOnce(): Promise<ReconcileSummary> {
    const summary: ReconcileSummary = { asked: 0, settled: 0, lost: 0, active: 0, errors: 0 }
    if (unsupported || o.maxPerMinute === 0) return summary
    const targets = await takeReconcileBatch(o.db, {
      want: o.maxPerMinute,
      maxPerMinute: o.maxPerMinute,
      afterMs: o.afterMs,
      intervalMs: o.intervalMs,
    })
    let next = 0
    const worker = async () => {
      while (next < targets.length && !unsupported) {
        const t = targets[next++] as (typeof targets)[number]
        const target = { callId: t.id, attempt: t.attempts, providerCallId: t.provider_call_id }
        summary.asked++
        const poll = await o.provider.getCall(t.provider_call_id)
        try {
          if (poll.kind === 'ended') {
            const r = await applyFinalReport(
              { db: o.db, endAttempt: o.endAttempt, policy: o.policy },
              target,
              poll.report,
              {
                eventKind: 'RECONCILED',
                eventStatus: poll.report.result.endReason ?? poll.report.outcome,
              },
            )
            if (r.outcome === 'applied' || r.outcome === 'late') summary.settled++
            o.log.info(
              { ...target, endReason: poll.report.result.endReason, outcome: r.outcome },
              'reconciled a silent call',
            )
          } else if (poll.kind === 'not_found') {
            const r = await applyLostCall({ endAttempt: o.endAttempt, policy: o.policy }, target)
            if (r.outcome === 'applied') summary.lost++
            o.log.warn({ ...target, next: r.status }, 'the provider has no record of the call')
          } else if (poll.kind === 'active') {
            summary.active++
          } else if (poll.kind === 'unsupported') {
            unsupported = true
            o.log.info('the provider has no get-call API: reconciliation is off')
          } else {
            summary.errors++
            o.log.warn({ ...target, error: poll.error.message }, 'could not ask the provider about a call')
          }
        } catch (err) {
          summary.errors++
          o.log.error({ err, ...target }, 'could not record a reconciled call')
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(concurrency, targets.length) }, worker))
    return summary
  }

  function schedule() {
    if (stopped) return
    timer = setTimeout(() => {
      running = runOnce()
        .catch((err: unknown) => o.log.error({ err }, 'reconcile pass failed'))
        .finally(schedule)
    }, o.intervalMs)
  }

  return {
    runOnce,
    start() {
      if (!stopped) return
      stopped = false
      schedule()
    },
    async stop() {
      stopped = true
      clearTimeout(timer)
      await running
    },
    get unsupported() {
      return unsupported
    },
  }
}
