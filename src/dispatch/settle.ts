import type { Kysely } from 'kysely'
import { coalesce } from '../db/coalesce.ts'
import type { DB } from '../db/database.ts'
import { type EndAttemptInput, type EndAttemptResult, endAttempt, endAttempts } from '../sql/attempts.ts'
import type { Wakeup } from './wakeup.ts'

/**
 * Ends an attempt (from a webhook or a dial result) and passes the freed slot on. Applying the outcome, freeing the
 * slot and scheduling the retry's wake-up are one transaction.
 *
 * The common case (a call that ends for good, with a local dispatcher) publishes nothing, so reports that arrive
 * together are ended together: one statement per burst (endAttempts), each report still acknowledged only after the
 * commit that holds it.
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
    : await batchedFor(db)(input)
  if (result.freedSlot) wakeup.nudge()
  return result
}

const batchers = new WeakMap<Kysely<DB>, (input: EndAttemptInput) => Promise<EndAttemptResult>>()

/** One batcher per database handle (tests run several services in one process). */
function batchedFor(db: Kysely<DB>) {
  let batched = batchers.get(db)
  if (!batched) {
    batched = coalesce((inputs: EndAttemptInput[]) => endAttempts(db, inputs), {
      keyOf: (input) => input.callId,
      // every statement that ends an attempt is fenced, so ending one again changes nothing
      retryAlone: true,
    })
    batchers.set(db, batched)
  }
  return batched
}
