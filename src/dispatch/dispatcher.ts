import type { Kysely } from 'kysely'
import type { Logger } from 'pino'
import type { Call, DB } from '../db/database.ts'
import type { DialResult, Provider } from '../providers/generic.ts'
import { runBeside } from '../run-beside.ts'
import { claimDueCalls, msUntilNextDue } from '../sql/claim.ts'
import { readDispatchSettings } from '../sql/settings.ts'
import { expireOverdueCalls, sweepCampaignCalls, timeOutSilentCalls } from '../sql/sweep.ts'
import { decideAttemptEnd, type RetryPolicy } from './call-state.ts'
import type { Recorder } from './recorder.ts'

// The dispatch loop of one process: claim -> dial -> record, with the sweep beside it. Claims take slots in
// PostgreSQL (claim.ts), so any number of processes can run this loop against one database. notify() cuts the idle
// wait short when a slot frees or calls arrive; without it the loop still polls every `pollMs`.

export interface DispatcherOptions {
  db: Kysely<DB>
  provider: Provider
  recorder: Recorder
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
  onSweep?: (expired: number, timedOut: number) => void
  /** The provider refused our credentials: dialing pauses for pauseMs. */
  onProviderUnauthorized?: (pauseMs: number) => void
}

export interface Dispatcher {
  start(): void
  notify(): void
  /** Stops claiming at once, then waits for dials in flight to be recorded (up to timeoutMs). */
  stop(timeoutMs?: number): Promise<void>
  readonly inFlight: number
}

const DUE_RECHECK_MS = 250
const SETTINGS_RECHECK_MS = 60_000
/** After a 401/403 every dial would be refused the same way: dialing pauses, doubling up to five minutes. */
const UNAUTHORIZED_FIRST_PAUSE_MS = 2000
const UNAUTHORIZED_MAX_PAUSE_MS = 5 * 60_000
/** After a 429 this process waits before its next claim, so a provider at capacity is not met by the next call. */
const THROTTLED_PAUSE_MS = 250

export function createDispatcher(o: DispatcherOptions): Dispatcher {
  const maxInFlight = o.maxInFlightDials ?? 256
  const pollMs = o.pollMs ?? 1000
  const inFlight = new Set<Promise<void>>()
  let running = false
  let loopDone: Promise<void> | undefined
  let wanted = false // a notify() arrived while a pass was running: run another right away
  let starved = false // the last pass had no room for dials: the next dial to finish starts one
  let wake: (() => void) | undefined
  let lastSettingsCheck = 0
  let pausedUntil = 0 // performance.now() before which this process claims nothing
  let unauthorizedRun = 0

  function notify() {
    wanted = true
    wake?.()
  }

  async function sweep() {
    const expired = await expireOverdueCalls(o.db)
    const timedOut = await timeOutSilentCalls(o.db, o.callTimeoutMs)
    o.onSweep?.(expired, timedOut)
    if (expired > 0 || timedOut > 0) o.log.info({ expired, timedOut }, 'swept calls')
    if (timedOut > 0) notify() // their slots are free
    await sweepCampaignCalls(o.db) // campaigns ended, phones suppressed, windows closed (docs/campaigns.md)
    if (Date.now() - lastSettingsCheck >= SETTINGS_RECHECK_MS) {
      lastSettingsCheck = Date.now()
      const saved = await readDispatchSettings(o.db)
      if (saved && saved.maxConcurrentCalls !== o.maxConcurrentCalls) {
        o.log.warn(
          { ours: o.maxConcurrentCalls, saved: saved.maxConcurrentCalls },
          'MAX_CONCURRENT_CALLS differs between instances on this database: each claim keeps its own cap, so the effective cap is the largest; give every instance the same value',
        )
      }
    }
  }

  function pause(ms: number) {
    pausedUntil = Math.max(pausedUntil, performance.now() + ms)
  }

  // The sweep runs beside the claims, never more than one at a time: awaited in the pass, its three or four statements
  // held up the claim of every slot freed meanwhile, once a second (the refill gap's tail). The sweep and the claims
  // of other processes always ran side by side; PostgreSQL's row locks and the claim's lock keep them apart.
  const sweeper = runBeside({
    everyMs: o.sweepIntervalMs,
    run: sweep,
    onError: (err, failures) => o.log.error({ err, failures }, 'sweep failed'),
  })

  /** One claim-dial round (the sweep started beside it when due); true when it took as many calls as it asked for. */
  async function pass(): Promise<boolean> {
    sweeper.whenDue()
    if (performance.now() < pausedUntil) return false
    const asked = maxInFlight - inFlight.size
    starved = asked <= 0
    const calls = await claimDueCalls(o.db, o.maxConcurrentCalls, asked)
    dialAll(calls)
    return asked > 0 && calls.length === asked
  }

  /** Dials claimed calls, whoever claimed them: this loop, or the recorder in the statement that freed their slots. */
  function dialAll(calls: Call[]) {
    for (const call of calls) {
      const p = dialAndRecord(call).finally(() => {
        inFlight.delete(p)
        // Free slots wait for room to dial them (a ramp to a cap above maxInFlight, a burst of ends): nothing else
        // wakes the loop then, and it waited for the poll (measured: a ramp to 1,000 calls took 1.8 s).
        if (starved) {
          starved = false
          notify()
        }
      })
      inFlight.add(p)
    }
  }

  // The recorder refills the slots that the ends it writes free, in the same statement (recorder.ts), as long as this
  // loop would claim: not after stop(), and not during a pause after a 401 or a 429.
  o.recorder.refillFor({
    cap: o.maxConcurrentCalls,
    room: () => (running && performance.now() >= pausedUntil ? Math.max(0, maxInFlight - inFlight.size) : 0),
    dial: dialAll,
  })

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
      await record(call, result)
    } catch (err) {
      // Only after the recorder's patience (the call's timeout) ran out, or at shutdown: the slot is still held, and
      // the timeout sweep, a webhook or reconciliation ends the attempt.
      o.log.error({ err, callId: call.id, attempt }, 'could not record dial result')
    }
  }

  async function record(call: Call, result: DialResult) {
    const attempt = call.attempts
    switch (result.kind) {
      case 'accepted':
        unauthorizedRun = 0
        return o.recorder.dialAccepted({ callId: call.id, attempt, providerCallId: result.providerCallId })
      case 'unknown':
        o.log.warn(
          { callId: call.id, attempt, error: result.error.message },
          'dial outcome unknown: keeping the slot until the provider reports, never dialing this attempt again',
        )
        return o.recorder.dialUnknown(call.id, attempt, result.error)
      case 'unauthorized': {
        // The other dials of the same claim are refused alike: only the first refusal after a pause lengthens it.
        if (performance.now() >= pausedUntil) {
          unauthorizedRun++
          pause(Math.min(UNAUTHORIZED_MAX_PAUSE_MS, UNAUTHORIZED_FIRST_PAUSE_MS * 2 ** (unauthorizedRun - 1)))
          o.onProviderUnauthorized?.(pausedUntil - performance.now())
          o.log.error(
            {
              error: result.error.message,
              pauseMs: Math.round(pausedUntil - performance.now()),
              refusals: unauthorizedRun,
            },
            'the provider refused our credentials (check AI_CALL_API_KEY): dialing paused, no attempt spent',
          )
        }
        const pauseMs = Math.max(0, Math.round(pausedUntil - performance.now()))
        return end(call, { kind: 'unauthorized', error: result.error, pauseMs }, 'DIAL_UNAUTHORIZED')
      }
      case 'throttled':
        pause(THROTTLED_PAUSE_MS)
        return end(
          call,
          {
            ...result,
            throttles: call.throttles,
            throttledForMs: call.throttled_since ? Date.now() - new Date(call.throttled_since).getTime() : 0,
          },
          'DIAL_THROTTLED',
        )
      case 'failed':
        return end(call, result, 'DIAL_FAILED')
      case 'rejected':
        return end(call, result, 'DIAL_REJECTED')
    }
  }

  async function end(
    call: Call,
    outcome: Parameters<typeof decideAttemptEnd>[2] & { error: { code: string; message: string } },
    eventKind: 'DIAL_UNAUTHORIZED' | 'DIAL_THROTTLED' | 'DIAL_FAILED' | 'DIAL_REJECTED',
  ) {
    const attempt = call.attempts
    const decided = decideAttemptEnd(o.policy, attempt, outcome)
    const settled = await o.recorder.settle({
      callId: call.id,
      attempt,
      end: decided,
      eventKind,
      detail: { error: outcome.error },
    })
    o.log.warn(
      { callId: call.id, attempt, result: outcome.kind, next: settled.status, error: outcome.error.message },
      'dial not accepted',
    )
  }

  // When the next retry is due (performance.now() clock; undefined: none within pollMs), as last read. Under load
  // the loop idles between bursts dozens of times a second, and a read per pause was one statement in seven in the
  // slot benchmark; retries this process schedules wake it by themselves (wakeup.ts, dueLater), so a reading a quarter
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
    const dueIn = nextDue.at === undefined ? pollMs : Math.min(pollMs, Math.max(0, nextDue.at - now) + 5)
    return Math.max(dueIn, pausedUntil - now)
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
      // No claim starts after this line: a pass already running finishes its claim (the claimed calls are dialed
      // and recorded like any other in flight), and the loop ends.
      running = false
      wake?.()
      await loopDone
      await sweeper.idle()
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
