import type { Kysely } from 'kysely'
import { fromKysely, PgBoss } from 'pg-boss'
import type { Logger } from 'pino'
import { type DB, queueConnectionSettings } from '../db/database.ts'

// pg-boss carries wake-ups for the dispatchers: "calls may be due" now (published in the same transaction as the
// rows, so there is no wake-up without its rows and no rows without a wake-up) or at a retry's next_attempt_at.
// A job holds no call state: the calls table is the only truth, and claim.ts decides what is dialed. Losing a
// wake-up therefore costs latency, never a call (each dispatcher also polls once a second).
//
// Inside one process the dispatcher is nudged directly, which is faster than any queue; pg-boss is for the other
// processes (ROLE=api instances have no dispatcher) and for wake-ups in the future.

export const QUEUES = {
  callReady: {
    name: 'call-ready',
    options: { notify: true, retryLimit: 0, expireInSeconds: 60, deleteAfterSeconds: 600, retentionSeconds: 86_400 },
  },
} as const

/**
 * listen: false when `connectionString` is a transaction pooler (no DATABASE_DIRECT_URL): LISTEN needs a session of
 * its own, so pg-boss then polls (the dispatchers poll once a second anyway).
 */
export async function startQueue(
  connectionString: string,
  log: Logger,
  o: { statementTimeoutMs?: number; listen?: boolean } = {},
): Promise<PgBoss> {
  const boss = new PgBoss({
    connectionString,
    max: 4,
    ...queueConnectionSettings(o),
    useListenNotify: o.listen ?? true,
    // Expired jobs are retried on the monitor's pass (default every 60 s): a client webhook job fetched by a process
    // that died before leasing its delivery waits for it (src/notify/delivery.ts).
    monitorIntervalSeconds: 15,
    openTelemetry: { enabled: false },
    application_name: 'call-orchestrator-queue',
  } as ConstructorParameters<typeof PgBoss>[0])
  boss.on('error', (err) => log.error({ err }, 'pg-boss error'))
  boss.on('warning', (w) => log.warn({ warning: w }, 'pg-boss warning'))
  await boss.start()
  for (const q of Object.values(QUEUES)) await boss.createQueue(q.name, q.options)
  return boss
}

export interface Wakeup {
  /** Inside the transaction that made calls due now (created them, or freed a slot). */
  dueNow(db: Kysely<DB>): Promise<void>
  /** Inside the transaction that scheduled a retry `delayMs` from now. */
  dueLater(db: Kysely<DB>, delayMs: number): Promise<void>
  /** After commit: wake this process's dispatcher, if it has one. */
  nudge(): void
  /** True when dueNow publishes a job, i.e. it must run inside the writing transaction. */
  readonly remote: boolean
}

export function createWakeup(boss: PgBoss | undefined, localDispatcher: { notify(): void } | undefined): Wakeup {
  const publish = async (db: Kysely<DB>, startAfterSec?: number) => {
    if (!boss) return
    await boss.send(
      QUEUES.callReady.name,
      {},
      { db: fromKysely(db), ...(startAfterSec ? { startAfter: startAfterSec } : {}) },
    )
  }
  return {
    dueNow: (db) => (localDispatcher ? Promise.resolve() : publish(db)),
    dueLater: (db, delayMs) => {
      // The local dispatcher is woken at the due time to the millisecond; the job (whole seconds) is for the others.
      if (localDispatcher) setTimeout(() => localDispatcher.notify(), delayMs + 1).unref()
      return publish(db, Math.max(1, Math.ceil(delayMs / 1000)))
    },
    nudge: () => localDispatcher?.notify(),
    remote: !localDispatcher && boss !== undefined,
  }
}

/**
 * Runs a write that may make calls due; when only pg-boss can reach a dispatcher, the write and its wake-up share
 * a transaction. `madeDue` says from the write's result whether anything became due.
 */
export async function withDueNow<T>(
  db: Kysely<DB>,
  wakeup: Wakeup,
  write: (db: Kysely<DB>) => Promise<T>,
  madeDue: (result: T) => boolean,
): Promise<T> {
  const result = wakeup.remote
    ? await db.transaction().execute(async (trx) => {
        const r = await write(trx)
        if (madeDue(r)) await wakeup.dueNow(trx)
        return r
      })
    : await write(db)
  if (madeDue(result)) wakeup.nudge()
  return result
}
