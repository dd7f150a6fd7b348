import type { Kysely } from 'kysely'
import type { Logger } from 'pino'
import type { DB } from '../db/database.ts'
import { compactCallCounts } from '../sql/counts.ts'
import { deleteExpiredHistory } from '../sql/retention.ts'

// Background upkeep every instance runs (api and worker alike, so a deployment without workers still compacts):
// - fold call_count_deltas into call_counts about once a second (the readers' cost grows with the deltas left);
// - retention: every `retentionEveryMs`, delete finished calls older than RETENTION_DAYS in batches of `batch`
//   with `pauseMs` between them, until a batch comes back short. Both take transaction-scoped advisory locks, tried
//   and never waited for, so one instance does each at a time and the others skip.
// A failure (database restarting) is logged and tried again on the next tick; it never stops the process.

export interface HousekeepingOptions {
  db: Kysely<DB>
  log: Logger
  /** 0 keeps everything. */
  retentionDays: number
  compactEveryMs?: number
  retentionEveryMs?: number
  batch?: number
  pauseMs?: number
}

export interface Housekeeping {
  start(): void
  stop(): Promise<void>
  /** One retention run to the end (tests call it instead of waiting). */
  runRetention(): Promise<{ calls: number; events: number }>
}

export function createHousekeeping(o: HousekeepingOptions): Housekeeping {
  const compactEveryMs = o.compactEveryMs ?? 1000
  const retentionEveryMs = o.retentionEveryMs ?? 10 * 60_000
  const batch = o.batch ?? 1000
  const pauseMs = o.pauseMs ?? 200
  let stopped = true
  let stopping = false // set by stop(): a retention run in progress ends after its current batch
  let timer: NodeJS.Timeout | undefined
  let running: Promise<void> | undefined
  let lastRetention = 0

  async function runRetention() {
    const total = { calls: 0, events: 0 }
    if (o.retentionDays <= 0) return total
    while (!stopping) {
      const r = await deleteExpiredHistory(o.db, o.retentionDays, batch)
      total.calls += r.calls
      total.events += r.events
      if (!r.locked || r.calls < batch) break
      await new Promise((resolve) => setTimeout(resolve, pauseMs))
    }
    if (total.calls > 0) o.log.info({ ...total, retentionDays: o.retentionDays }, 'deleted old calls')
    return total
  }

  async function tick() {
    try {
      await compactCallCounts(o.db)
      if (o.retentionDays > 0 && Date.now() - lastRetention >= retentionEveryMs) {
        lastRetention = Date.now()
        await runRetention()
      }
    } catch (err) {
      o.log.warn({ err }, 'housekeeping failed; trying again on the next tick')
    }
  }

  function schedule() {
    if (stopped) return
    timer = setTimeout(() => {
      running = tick().finally(() => {
        running = undefined
        schedule()
      })
    }, compactEveryMs)
    timer.unref()
  }

  return {
    start() {
      stopped = false
      // The first retention run waits a full interval: instances starting together do not all begin with it.
      lastRetention = Date.now() - retentionEveryMs + Math.min(retentionEveryMs, 60_000)
      schedule()
    },
    async stop() {
      stopped = true
      stopping = true
      clearTimeout(timer)
      await running
    },
    runRetention,
  }
}
