import { randomBytes } from 'node:crypto'
import { setMaxListeners } from 'node:events'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { Agent, request } from 'undici'
import { sign } from './signature.ts'

// A stand-in for the AI voice provider: accepts dials, "talks" for callDurationMs, then reports the outcome by
// webhook, signed and retried like a real provider would. It also watches the orchestrator: how many calls it has
// in progress (maxActive), whether two overlap on one phone, whether an attempt is dialed twice.

export type SimOutcome = 'COMPLETED' | 'FAILED' | 'BUSY' | 'NO_ANSWER' | 'VOICEMAIL' | 'NO_WEBHOOK'
export type DialFault =
  | { kind: 'none' }
  | { kind: 'error'; status: number } // e.g. 500, 503: answer that status, start nothing
  | { kind: 'throttle'; retryAfterSec?: number } // 429 with Retry-After header when given
  | { kind: 'reject'; status?: number } // 4xx (default 400) permanent rejection
  | { kind: 'slow'; delayMs: number } // wait delayMs before answering 202 (the call then proceeds normally)
  | { kind: 'hang' } // never answer (socket left open until close())
  | { kind: 'no_call_id' } // place the call but answer 202 {"id": ...}: a dial whose outcome the client cannot know

export interface SimulatorOptions {
  port?: number // 0 = ephemeral (default 0)
  host?: string // default '127.0.0.1'
  apiKey?: string
  webhookSecret?: string
  callDurationMs?: number // default 3000; 0 = immediate webhook after the 202
  outcomes?: Partial<Record<SimOutcome, number>> // weights, default { COMPLETED: 1 }
  progressEvents?: boolean
  webhookRetry?: { attempts: number; baseDelayMs: number }
  /** Awaited before each dial is answered (tests use it to break something at exactly that moment). */
  beforeAnswer?: (rec: DialRecord) => Promise<void> | void
  logger?: { info: (obj: object, msg?: string) => void; warn: (obj: object, msg?: string) => void }
}

export interface DialRecord {
  idempotencyKey: string
  to: string
  providerCallId: string | null
  status: number // HTTP status answered (0 while a slow or hung dial is unanswered)
  receivedAt: number // performance.timeOrigin + performance.now(): ms with sub-ms precision
  outcome?: SimOutcome
  finalSentAt?: number // the final webhook was sent
  finalAckedAt?: number // the final webhook first got a 2xx status
}

export interface SimulatorStats {
  dials: DialRecord[] // every dial request in arrival order (including rejected ones)
  accepted: number
  duplicates: number
  rejected: number
  active: number // accepted calls whose final webhook has not been SENT yet
  maxActive: number
  phoneOverlaps: number // dials accepted for a phone that already had an active call
  webhooksSent: number // deliveries started (progress and final), each counted once however often retried
  webhookFailures: number // deliveries that gave up
}

export interface Simulator {
  url: string
  /** The live counters: cheap to poll, replaced (not mutated) by resetStats(). */
  stats(): SimulatorStats
  resetStats(): void
  configure(
    patch: Partial<Pick<SimulatorOptions, 'callDurationMs' | 'outcomes' | 'progressEvents' | 'beforeAnswer'>> & {
      fault?: DialFault
    },
  ): void
  /** Resolves when no call is active and no webhook delivery is pending (or rejects after timeoutMs). */
  idle(timeoutMs?: number): Promise<void>
  close(): Promise<void>
}

type Dial = { to: string; scriptId: string; webhookUrl: string }

const OUTCOMES: readonly SimOutcome[] = ['COMPLETED', 'FAILED', 'BUSY', 'NO_ANSWER', 'VOICEMAIL', 'NO_WEBHOOK']
const ERRORS: Partial<Record<SimOutcome, string>> = {
  FAILED: 'agent error',
  BUSY: 'line busy',
  NO_ANSWER: 'no answer',
  VOICEMAIL: 'reached voicemail',
}
const MAX_BODY_BYTES = 64 * 1024
const now = () => performance.timeOrigin + performance.now()

export async function startSimulator(options: SimulatorOptions = {}): Promise<Simulator> {
  const settings = {
    callDurationMs: options.callDurationMs ?? 3000,
    drawOutcome: outcomePicker(options.outcomes ?? { COMPLETED: 1 }),
    progressEvents: options.progressEvents ?? false,
    fault: { kind: 'none' } as DialFault,
    beforeAnswer: options.beforeAnswer as SimulatorOptions['beforeAnswer'],
  }
  const retry = options.webhookRetry ?? { attempts: 6, baseDelayMs: 100 }
  const log = options.logger
  const agent = new Agent({
    connections: 128,
    keepAliveTimeout: 10_000,
    connectTimeout: 5000,
    headersTimeout: 10_000,
    bodyTimeout: 10_000,
  })
  // One signal ends every sleep and in-flight webhook, so close() never waits on a call or a retry backoff.
  const closing = new AbortController()
  setMaxListeners(0, closing.signal)

  let stats = emptyStats()
  const callIdByKey = new Map<string, string>() // idempotency is provider state: it survives resetStats()
  const activePhones = new Map<string, number>()
  const hanging = new Set<http.ServerResponse>()
  const idleWaiters = new Set<() => void>()
  let pending = 0 // calls from acceptance (or a slow dial's arrival) until their final delivery is over

  function settle() {
    pending--
    if (pending > 0) return
    for (const wake of idleWaiters) wake()
    idleWaiters.clear()
  }

  function startActive(to: string) {
    stats.active++
    if (stats.active > stats.maxActive) stats.maxActive = stats.active
    const onPhone = activePhones.get(to) ?? 0
    if (onPhone > 0) stats.phoneOverlaps++
    activePhones.set(to, onPhone + 1)
  }

  function endActive(to: string) {
    stats.active--
    const onPhone = (activePhones.get(to) ?? 1) - 1
    if (onPhone > 0) activePhones.set(to, onPhone)
    else activePhones.delete(to)
  }

  /** POSTs one webhook until a 2xx, retrying with exponential backoff; resolves either way. */
  async function deliver(webhookUrl: string, payload: object, rec?: DialRecord): Promise<void> {
    const body = JSON.stringify(payload)
    stats.webhooksSent++
    for (let attempt = 1; attempt <= retry.attempts; attempt++) {
      if (closing.signal.aborted) return
      const headers: Record<string, string> = { 'content-type': 'application/json' }
      // Signed per attempt, over the exact bytes sent, so a late retry is not rejected as stale.
      if (options.webhookSecret) headers['x-signature'] = sign(options.webhookSecret, body)
      try {
        const res = await request(webhookUrl, {
          method: 'POST',
          headers,
          body,
          dispatcher: agent,
          signal: closing.signal,
        })
        const answeredAt = now()
        await res.body.dump()
        if (res.statusCode >= 200 && res.statusCode < 300) {
          if (rec && rec.finalAckedAt === undefined) rec.finalAckedAt = answeredAt
          return
        }
      } catch {
        // refused, reset or timed out: retried like a non-2xx
      }
      if (attempt < retry.attempts) {
        const aborted = await sleep(retry.baseDelayMs * 2 ** (attempt - 1), false, { signal: closing.signal }).catch(
          () => true,
        )
        if (aborted) return
      }
    }
    if (closing.signal.aborted) return
    stats.webhookFailures++
    log?.warn({ webhookUrl, attempts: retry.attempts }, 'webhook delivery gave up')
  }

  async function runCall(rec: DialRecord, to: string, webhookUrl: string, durationMs: number, progress: boolean) {
    const outcome = rec.outcome as SimOutcome
    const startedAt = now()
    try {
      const events = progress
        ? (async () => {
            await deliver(webhookUrl, { callId: rec.providerCallId, status: 'RINGING' })
            await deliver(webhookUrl, { callId: rec.providerCallId, status: 'IN_PROGRESS' })
          })()
        : undefined
      if (durationMs === 0) await new Promise((resolve) => setImmediate(resolve))
      else await sleep(durationMs, undefined, { signal: closing.signal })
      await events
      endActive(to)
      if (outcome === 'NO_WEBHOOK' || closing.signal.aborted) return
      const error = ERRORS[outcome]
      rec.finalSentAt = now()
      const final = {
        callId: rec.providerCallId,
        status: outcome,
        durationSec: Math.round((rec.finalSentAt - startedAt) / 1000),
        completedAt: new Date().toISOString(),
        ...(error ? { error } : {}),
      }
      await deliver(webhookUrl, final, rec)
    } catch {
      // only close() interrupts a call
    } finally {
      settle()
    }
  }

  function answer(res: http.ServerResponse, rec: DialRecord, status: number, body: object, headers = {}) {
    rec.status = status
    if (status >= 400) stats.rejected++
    send(res, status, body, headers)
  }

  async function handleDial(req: http.IncomingMessage, res: http.ServerResponse, raw: string) {
    const key = req.headers['idempotency-key']
    const rec: DialRecord = {
      idempotencyKey: typeof key === 'string' ? key : '',
      to: '',
      providerCallId: null,
      status: 0,
      receivedAt: now(),
    }
    stats.dials.push(rec)
    if (options.apiKey && req.headers.authorization !== `Bearer ${options.apiKey}`) {
      return answer(res, rec, 401, { error: 'missing or wrong API key' })
    }
    const dial = parseDial(raw)
    if (typeof dial === 'string') return answer(res, rec, 400, { error: dial })
    rec.to = dial.to
    if (!rec.idempotencyKey) return answer(res, rec, 400, { error: 'the Idempotency-Key header is required' })

    await settings.beforeAnswer?.(rec)
    const fault = settings.fault
    if (fault.kind === 'error') return answer(res, rec, fault.status, { error: 'simulated provider error' })
    if (fault.kind === 'throttle') {
      const retryAfter = fault.retryAfterSec === undefined ? {} : { 'retry-after': String(fault.retryAfterSec) }
      return answer(res, rec, 429, { error: 'too many concurrent calls' }, retryAfter)
    }
    if (fault.kind === 'reject') return answer(res, rec, fault.status ?? 400, { error: 'simulated rejection' })
    if (fault.kind === 'hang') {
      hanging.add(res)
      res.once('close', () => hanging.delete(res))
      return
    }

    const known = callIdByKey.get(rec.idempotencyKey)
    if (known) {
      stats.duplicates++
      rec.providerCallId = known
      return answer(res, rec, 202, { callId: known })
    }
    const callId = `sim_${randomBytes(8).toString('hex')}`
    // Reserved on arrival: a client that gives up on a slow answer and retries the key must not start a second call.
    callIdByKey.set(rec.idempotencyKey, callId)
    pending++
    if (fault.kind === 'slow') {
      const aborted = await sleep(fault.delayMs, false, { signal: closing.signal }).catch(() => true)
      if (aborted) return settle()
    }
    rec.providerCallId = callId
    rec.outcome = settings.drawOutcome()
    stats.accepted++
    startActive(dial.to)
    const { callDurationMs, progressEvents } = settings
    // The call starts once the 202 is written (or the client is gone), so a zero-length call's webhook follows it.
    let started = false
    const start = () => {
      if (started) return
      started = true
      void runCall(rec, dial.to, dial.webhookUrl, callDurationMs, progressEvents)
    }
    rec.status = 202
    if (res.destroyed) return start()
    res.once('close', start)
    send(res, 202, fault.kind === 'no_call_id' ? { id: callId } : { callId }, {}, start)
  }

  const server = http.createServer((req, res) => {
    req.on('error', () => {}) // a client that hangs up mid-body is not our failure
    const path = req.url?.split('?', 1)[0]
    if (req.method === 'GET' && path === '/health') return send(res, 200, { status: 'ok' })
    if (req.method !== 'POST' || path !== '/api/v1/calls') return send(res, 404, { error: 'not found' })
    const chunks: Buffer[] = []
    let size = 0
    req.on('data', (chunk: Buffer) => {
      size += chunk.length
      if (size <= MAX_BODY_BYTES) chunks.push(chunk)
    })
    req.on('end', () => {
      if (size > MAX_BODY_BYTES) return send(res, 413, { error: 'body too large' })
      handleDial(req, res, Buffer.concat(chunks).toString('utf8')).catch((err: unknown) => {
        log?.warn({ err }, 'simulator dial handler failed')
        if (!res.headersSent) send(res, 500, { error: 'simulator failure' })
      })
    })
  })
  server.keepAliveTimeout = 30_000
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => {
      server.off('error', reject)
      resolve()
    })
  })
  const url = urlOf(server.address() as AddressInfo)
  log?.info({ url }, 'provider simulator listening')

  let closed: Promise<void> | undefined
  return {
    url,
    stats: () => stats,
    resetStats() {
      // calls still in progress stay counted, so maxActive after a reset starts from them
      stats = { ...emptyStats(), active: stats.active, maxActive: stats.active }
    },
    configure(patch) {
      if (patch.callDurationMs !== undefined) settings.callDurationMs = patch.callDurationMs
      if (patch.outcomes) settings.drawOutcome = outcomePicker(patch.outcomes)
      if (patch.progressEvents !== undefined) settings.progressEvents = patch.progressEvents
      if (patch.fault) settings.fault = patch.fault
      if ('beforeAnswer' in patch) settings.beforeAnswer = patch.beforeAnswer
    },
    idle(timeoutMs = 30_000) {
      if (pending === 0) return Promise.resolve()
      return new Promise<void>((resolve, reject) => {
        const wake = () => {
          clearTimeout(timer)
          resolve()
        }
        const timer = setTimeout(() => {
          idleWaiters.delete(wake)
          reject(new Error(`simulator still busy after ${timeoutMs} ms: ${pending} calls or deliveries pending`))
        }, timeoutMs)
        idleWaiters.add(wake)
      })
    },
    close() {
      closed ??= (async () => {
        closing.abort()
        for (const res of hanging) res.destroy()
        server.closeAllConnections()
        await new Promise<void>((resolve) => server.close(() => resolve()))
        await agent.destroy()
      })()
      return closed
    },
  }
}

function emptyStats(): SimulatorStats {
  return {
    dials: [],
    accepted: 0,
    duplicates: 0,
    rejected: 0,
    active: 0,
    maxActive: 0,
    phoneOverlaps: 0,
    webhooksSent: 0,
    webhookFailures: 0,
  }
}

/** Cumulative weights built once per configure(), so each dial draws an outcome in a few comparisons. */
function outcomePicker(weights: Partial<Record<SimOutcome, number>>): () => SimOutcome {
  const table: { upTo: number; outcome: SimOutcome }[] = []
  let total = 0
  for (const [name, weight] of Object.entries(weights)) {
    if (!OUTCOMES.includes(name as SimOutcome)) throw new TypeError(`unknown simulator outcome: ${name}`)
    if (!Number.isFinite(weight) || (weight as number) < 0) throw new TypeError(`bad weight for ${name}: ${weight}`)
    if (weight === 0) continue
    total += weight as number
    table.push({ upTo: total, outcome: name as SimOutcome })
  }
  const last = table.at(-1)
  if (!last) throw new TypeError('simulator outcomes need at least one positive weight')
  return () => {
    const r = Math.random() * total
    return table.find((t) => r < t.upTo)?.outcome ?? last.outcome
  }
}

/** The dial body, or why it is refused. */
function parseDial(raw: string): Dial | string {
  let body: unknown
  try {
    body = JSON.parse(raw)
  } catch {
    return 'the body is not JSON'
  }
  if (!isObject(body)) return 'the body must be a JSON object'
  const { to, scriptId, webhookUrl, metadata } = body
  if (typeof to !== 'string' || to === '') return 'to is required'
  if (typeof scriptId !== 'string' || scriptId === '') return 'scriptId is required'
  if (typeof webhookUrl !== 'string' || !/^https?:\/\//.test(webhookUrl) || !URL.canParse(webhookUrl)) {
    return 'webhookUrl must be an http(s) URL'
  }
  if (metadata !== undefined && !isObject(metadata)) return 'metadata must be an object'
  return { to, scriptId, webhookUrl }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function send(
  res: http.ServerResponse,
  status: number,
  body: object,
  headers: Record<string, string> = {},
  onWritten?: () => void,
) {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers })
  res.end(text, onWritten)
}

function urlOf({ address, family, port }: AddressInfo): string {
  if (address === '0.0.0.0' || address === '::') return `http://127.0.0.1:${port}`
  return family === 'IPv6' ? `http://[${address}]:${port}` : `http://${address}:${port}`
}
