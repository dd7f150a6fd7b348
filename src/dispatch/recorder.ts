import { setTimeout as sleep } from 'node:timers/promises'
import type { Kysely } from 'kysely'
import type { Logger } from 'pino'
import { coalesce } from '../db/coalesce.ts'
import type { Call, DB } from '../db/database.ts'
import { isTransientDbError } from '../db/errors.ts'
import {
  type AcceptedDial,
  type EndAttemptInput,
  type EndAttemptResult,
  endAttempts,
  endAttemptsAndClaim,
  recordDialsAccepted,
  recordDialUnknown,
} from '../sql/attempts.ts'
import type { CallError } from './call-state.ts'
import type { Wakeup } from './wakeup.ts'

// The one road from a dial result or a provider report to the committed end of an attempt:
//   dispatcher / webhook route -> recorder.settle -> (batch) -> sql/attempts.ts endAttempts[AndClaim] -> commit
//   -> the claimed calls to the dispatcher, or a wake-up.
// service.ts makes one recorder per process and hands it to the dispatcher and the routes, so reports that arrive
// together share a statement whichever side they came from.
//
// Durable: a result lives only in this process's memory until it commits. When the database is unreachable the write
// is repeated with backoff (every statement of sql/attempts.ts is fenced, so a repeat changes nothing that already
// committed) for up to `patienceMs`: for a dial result, as long as its slot is held anyway (CALL_TIMEOUT_MS), so a
// 429 or a 5xx recorded after a database restart still leads to its retry; a webhook waits less and answers 5xx,
// leaving the retry to the provider.

export interface Recorder {
  /** Ends an attempt as input.end says; resolves with what became of it once committed. */
  settle(input: EndAttemptInput, opts?: { patienceMs?: number }): Promise<EndAttemptResult>
  /** Notes the provider's id of an accepted dial. */
  dialAccepted(dial: AcceptedDial): Promise<void>
  /** Notes a dial that may have placed a call; the call keeps its slot (sql/attempts.ts recordDialUnknown). */
  dialUnknown(callId: string, attempt: number, error: CallError): Promise<void>
  /**
   * The process's dispatcher: ends that free slots then claim their successors in the same statement and hand them to
   * it (sql/attempts.ts endAttemptsAndClaim), instead of nudging it to claim in a round trip of its own.
   */
  refillFor(dispatcher: Refiller | undefined): void
  /** Ends the waits of writes still being retried (they reject): the process is going away. */
  close(): void
}

export interface Refiller {
  /** The global cap the claim keeps. */
  readonly cap: number
  /** How many calls the dispatcher would take now (0 while it is stopped or paused). */
  room(): number
  /** Calls claimed for the dispatcher, IN_PROGRESS and committed: it dials them. */
  dial(calls: Call[]): void
}

export interface RecorderOptions {
  db: Kysely<DB>
  wakeup: Wakeup
  log: Logger
  /** How long a write is retried while the database is unreachable, unless a call says otherwise. */
  patienceMs: number
  firstRetryMs?: number
  maxRetryMs?: number
  /** Every committed end, whoever reported it (dial, webhook, reconciliation): the retry metrics. */
  onSettled?: (end: EndAttemptInput['end'], result: EndAttemptResult) => void
}

export function createRecorder(o: RecorderOptions): Recorder {
  const firstRetryMs = o.firstRetryMs ?? 100
  const maxRetryMs = o.maxRetryMs ?? 5000
  const closing = new AbortController()
  let refiller: Refiller | undefined

  // Ends that publish nothing go together (one statement per burst); each is still acknowledged only after the
  // commit that holds it. A failed batch is retried item by item, so one row the database refuses fails alone.
  // The slots they free are refilled in the same statement, and the claimed calls are dialed before any of the
  // reports is acknowledged.
  type Ended = EndAttemptResult & { refilled: boolean }
  const batchedEnds = coalesce(
    async (inputs: EndAttemptInput[]): Promise<Ended[]> => {
      const room = refiller?.room() ?? 0
      const { results, claimed, refilled } = await endAttemptsAndClaim(o.db, inputs, refiller?.cap ?? 0, room)
      if (claimed.length > 0) refiller?.dial(claimed)
      return results.map((r) => ({ ...r, refilled }))
    },
    { keyOf: (input) => input.callId, retryAlone: true },
  )
  const batchedAccepts = coalesce(async (dials: AcceptedDial[]) => {
    await recordDialsAccepted(o.db, dials)
    return dials.map(() => undefined)
  })

  async function durably<T>(what: string, ids: object, write: () => Promise<T>, patienceMs: number): Promise<T> {
    const deadline = Date.now() + patienceMs
    let delay = firstRetryMs
    for (let tries = 1; ; tries++) {
      try {
        return await write()
      } catch (err) {
        if (!isTransientDbError(err) || closing.signal.aborted || Date.now() + delay > deadline) throw err
        if (tries === 1 || tries % 10 === 0) {
          o.log.warn({ ...ids, tries, error: (err as Error).message }, `could not record ${what}; retrying`)
        }
        await sleep(delay, undefined, { signal: closing.signal }).catch(() => {})
        delay = Math.min(delay * 2, maxRetryMs)
      }
    }
  }

  // A retry, or a freed slot that only pg-boss can announce, is published in the transaction that ends the attempt,
  // so there is no retry without its wake-up and no wake-up without its retry. The retry's wake-up is at the time
  // the statement set (dueInMs): a campaign's retry rule or window may differ from the environment's delay, and a
  // campaign rule may retry what the environment would end, so an attempt batched as final can come back PENDING.
  async function endOnce(input: EndAttemptInput): Promise<EndAttemptResult & { refilled?: boolean }> {
    const { end } = input
    if (end.next !== 'PENDING' && !o.wakeup.remote) {
      const r = await batchedEnds(input)
      if (r.freedSlot && r.dueInMs !== undefined) await o.wakeup.dueLater(o.db, r.dueInMs)
      return r
    }
    return o.db.transaction().execute(async (trx) => {
      const [r] = (await endAttempts(trx, [input])) as [EndAttemptResult]
      if (r.freedSlot) {
        await o.wakeup.dueNow(trx)
        if (r.dueInMs !== undefined) await o.wakeup.dueLater(trx, r.dueInMs)
      }
      return r
    })
  }

  return {
    async settle(input, opts) {
      const ids = { callId: input.callId, attempt: input.attempt }
      const { refilled, ...r } = await durably(
        'the end of an attempt',
        ids,
        () => endOnce(input),
        opts?.patienceMs ?? o.patienceMs,
      )
      if (r.freedSlot && !refilled) o.wakeup.nudge()
      o.onSettled?.(input.end, r)
      return r
    },
    dialAccepted(dial) {
      const ids = { callId: dial.callId, attempt: dial.attempt }
      return durably('an accepted dial', ids, () => batchedAccepts(dial), o.patienceMs)
    },
    dialUnknown(callId, attempt, error) {
      return durably(
        'an unknown dial',
        { callId, attempt },
        () => recordDialUnknown(o.db, callId, attempt, error),
        o.patienceMs,
      )
    },
    refillFor(dispatcher) {
      refiller = dispatcher
    },
    close() {
      closing.abort()
    },
  }
}
