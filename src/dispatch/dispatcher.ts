import type { Kysely } from 'kysely'
import type { Logger } from 'pino'
import { coalesce } from '../db/coalesce.ts'
import type { Call, DB } from '../db/database.ts'
import type { DialResult, Provider } from '../providers/generic.ts'
import { type AcceptedDial, type EndAttemptResult, recordDialsAccepted } from '../sql/attempts.ts'
import { claimDueCalls, msUntilNextDue } from '../sql/claim.ts'
import { expireOverdueCalls, sweepCampaignCalls, timeOutSilentCalls } from '../sql/sweep.ts'
import { type AttemptEnd, endAttempt as decideEnd, type RetryPolicy } from './call-state.ts'
import { settleAttempt } from './settle.ts'
import type { Wakeup } from './wakeup.ts'

// The dispatch loop of one process: sweep -> claim -> dial -> record. Claims take slots in PostgreSQL (claim.ts),
// so any number of processes can run this loop against one database. notify() cuts the idle wait short when a
// slot frees or calls arrive; without it the loop still polls every `pollMs`.

export interface DispatcherOptions {
  db: Kysely<DB>
  provider: Provider
  wakeup: Wakeup
  log: Logger
  policy: RetryPolicy
  maxConcurrentCalls: number
  callTimeoutMs: number
  sweepIntervalMs: number
  webhookUrl: (call: Call) => string
  /** Dials this process keeps open at once; more free slots are left to other processes or the next pass. */
  maxInFlightDials?: number
  pollMs?: number
  /** Observers (metrics); never awaited. */
  onDial?: (result: DialResult, elapsedMs: number) => void
  onAttemptEnd?: (end: AttemptEnd, result: EndAttemptResult) => void
  onSweep?: (expired: number, timedOut: number) => void
}

export interface Dispatcher {
  start(): void
  notify(): void
  /** Stops claiming, waits for dials in flight to be recorded (up to timeoutMs), then resolves. */
  stop(timeoutMs?: number): Promise<void>
  readonly inFlight: number
}

const DUE_RECHECK_MS = 250

export function createDispatcher(o: DispatcherOptions): Dispatcher {
  const maxInFlight = o.maxInFlightDials ?? 256
  const pollMs = o.pollMs ?? 1000
  const inFlight = new Set<Promise<void>>()
  let running = false
  let loopDone: Promise<void> | undefined
  let wanted = false // a notify() arrived while a pass was running: run another right away
  let wake: (() => void) | undefined
  let lastSweep = 0
  const recordAccepted = coalesce(async (dials: AcceptedDial[]) => {
    await recordDialsAccepted(o.db, dials)
    return dials.map(() => undefined)
  })

  function notify() {
    wanted = true
    wake?.()
  }

  async function sweep() {
    lastSweep = Date.now()
    const expired = await expireOverdueCalls(o.db)
    const timedOut = await timeOutSilentCalls(o.db, o.callTimeoutMs)
    o.onSweep?.(expired, timedOut)
    if (expired > 0 || timedOut > 0) o.log.info({ expired, timedOut }, 'swept calls')
    await sweepCampaignCalls(o.db) // campaigns ended, phones suppressed, windows closed (docs/campaigns.md)
  }

  /** One sweep-claim-dial round; true when it took as many calls as it asked for, so more may be waiting. */
  async function pass(): Promise<boolean> {
    if (Date.now() - lastSweep >= o.sweepIntervalMs) await sweep()
    const asked = maxInFlight - inFlight.size
    const calls = await claimDueCalls(o.db, o.maxConcurrentCalls, asked)
    for (const call of calls) {
      const p = dialAndRecord(call).finally(() => inFlight.delete(p))
      inFlight.add(p)
    }
    return asked > 0 && calls.length === asked
  }

  async function dialAndRecord(call: Call) {
    const attempt = call.attempts
    const started = performance.now()
    const result = await o.provider.dial({
      callId: call.id,
      attempt,
      to: call.to_phone,
      scriptId: call.script_id,
      metadata: call.metadata,
      webhookUrl: o.webhookUrl(call),
    })
    o.onDial?.(result, performance.now() - started)
    try {
      if (result.kind === 'accepted') {
        await recordAccepted({ callId: call.id, attempt, providerCallId: result.providerCallId })
        return
      }
      const end = decideEnd(o.policy, attempt, result)
      const eventKind = ({ failed: 'DIAL_FAILED', rejected: 'DIAL_REJECTED', throttled: 'DIAL_THROTTLED' } as const)[
        result.kind
      ]
      const settled = await settleAttempt(o.db, o.wakeup, {
        callId: call.id,
        attempt,
        end,
        eventKind,
        detail: { error: result.error },
      })
      o.onAttemptEnd?.(end, settled)
      o.log.warn(
        { callId: call.id, attempt, result: result.kind, next: settled.status, error: result.error.message },
        'dial not accepted',
      )
    } catch (err) {
      // The database is unreachable: the call keeps its slot and CALL_TIMEOUT settles it, or the webhook does.
      o.log.error({ err, callId: call.id, attempt }, 'could not record dial result')
    }
  }

  // When the next retry is due (performance.now() clock; undefined: none within pollMs), as last read. Under load
  // the loop idles between bursts dozens of times a second, and a read per pause was one statement in seven in the
  // slot benchmark; retries this process schedules wake it by themselves (queue.ts, dueLater), so a reading a quarter
  // of a second old only delays the retries of other processes, and by less than their pg-boss wake-up would.
  let nextDue: { at: number | undefined; readAt: number } | undefined

  async function idleWait(): Promise<number> {
    const now = performance.now()
    if (!nextDue || now - nextDue.readAt >= DUE_RECHECK_MS) {
      try {
        const ms = await msUntilNextDue(o.db, pollMs)
        nextDue = { at: ms === undefined ? undefined : now + ms, readAt: now }
      } catch {
        return pollMs
      }
    }
    return nextDue.at === undefined ? pollMs : Math.min(pollMs, Math.max(0, nextDue.at - now) + 5)
  }

  async function loop() {
    let failures = 0
    while (running) {
      wanted = false
      let more = false
      try {
        more = await pass()
        failures = 0
      } catch (err) {
        failures++
        if (failures === 1 || failures % 30 === 0) o.log.error({ err, failures }, 'dispatch pass failed')
      }
      if (!running) break
      // A claim that took fewer calls than it asked for filled every free slot or found nothing more due (rarely, a
      // backlog crowded with calls to phones already in a call hides a few due calls beyond the claim's window
      // until the next notify or poll). Asking again at once was an empty claim per burst: a quarter of all claims
      // in the slot benchmark.
      if (more || wanted) continue
      // Back off while the database is down, so a restart is not met by a tight error loop. Otherwise sleep until
      // the next retry is due, the poll interval, or a notify(), whichever comes first.
      const waitMs = failures > 0 ? Math.min(pollMs * 2 ** Math.min(failures - 1, 4), 10_000) : await idleWait()
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

  return {
    start() {
      if (running) return
      running = true
      loopDone = loop()
    },
    notify,
    async stop(timeoutMs = 10_000) {
      running = false
      wake?.()
      await loopDone
      let timer: NodeJS.Timeout | undefined
      await Promise.race([
        Promise.allSettled([...inFlight]),
        new Promise((r) => {
          timer = setTimeout(r, timeoutMs)
        }),
      ])
      clearTimeout(timer)
    },
    get inFlight() {
      return inFlight.size
    },
  }
}
