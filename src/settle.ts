import type { Kysely } from 'kysely'
import type { DB } from './db.ts'
import type { Wakeup } from './queue.ts'
import { type EndAttemptInput, type EndAttemptResult, endAttempt } from './sql/attempts.ts'

/**
 * Ends an attempt (from a webhook or a dial result) and passes the freed slot on. Applying the outcome, freeing the
 * slot and scheduling the retry's wake-up are one transaction; the common case (a completed call, with a local
 * dispatcher) is a single statement.
 */
export async function settleAttempt(db: Kysely<DB>, wakeup: Wakeup, input: EndAttemptInput): Promise<EndAttemptResult> {
  const { end } = input
  const publishes = end.next === 'PENDING' || wakeup.remote
  const result = publishes
    ? await db.transaction().execute(async (trx) => {
        const r = await endAttempt(trx, input)
        if (r.freedSlot) {
          await wakeup.dueNow(trx)
          if (end.next === 'PENDING') await wakeup.dueLater(trx, end.delayMs)
        }
        return r
      })
    : await endAttempt(db, input)
  if (result.freedSlot) wakeup.nudge()
  return result
}
