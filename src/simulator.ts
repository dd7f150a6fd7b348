import { randomBytes } from 'node:crypto'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { Agent, request } from 'undici'
import { sign } from './signature.ts'

// A stand-in for the AI voice provider: accepts dials, "talks" for callDurationMs, then reports the outcome by
// webhook, signed and retried like a real provider would. It also watches the orchestrator: how many calls it has
// in progress (maxActive), whether two overlap on one phone, whether an attempt is dialed twice.

export type SimOutcome = 'COMPLETED' | 'FAILED' | 'BUSY' | 'NO_ANSWER' | 'NO_WEBHOOK'
export type DialFault =
  | { kind: 'none' }
  | { kind: 'error'; status: number }
  | { kind: 'throttle'; retryAfterSec?: number }
  | { kind: 'reject'; status?: number }
  | { kind: 'slow'; delayMs: number }
  | { kind: 'hang' }

export interface SimulatorOptions {
  port?: number
  host?: string
  apiKey?: string
  webhookSecret?: string
  callDurationMs?: number
  outcomes?: Partial<Record<SimOutcome, number>>
  progressEvents?: boolean
  webhookRetry?: { attempts: number; baseDelayMs: number }
  logger?: { info: (obj: object, msg?: string) => void; warn: (obj: object, msg?: string) => void }
}

export interface DialRecord {
  idempotencyKey: string
  to: string
  providerCallId: string | null
  status: number
  receivedAt: number
  outcome?: SimOutcome
  finalSentAt?: number
  finalAckedAt?: number
}

export interface SimulatorStats {
  dials: DialRecord[]
  accepted: number
  duplicates: number
  rejected: number
  active: number
  maxActive: number
  phoneOverlaps: number
  webhooksSent: number
  webhookFailures: number
}

export interface Simulator {
  url: string
  stats(): SimulatorStats
  resetStats(): void
  configure(
    patch: Partial<Pick<SimulatorOptions, 'callDurationMs' | 'outcomes' | 'progressEvents'>> & { fault?: DialFault },
  ): void
  idle(timeoutMs?: number): Promise<void>
  close(): Promise<void>
}

const now = () => performance.timeOrigin + performance.now()
const OUTCOMES: SimOutcome[] = ['COMPLETED', 'FAILED', 'BUSY', 'NO_ANSWER', 'NO_WEBHOOK']
const ERRORS: Record<string, string> = {
  FAILED: 'agent could not complete the call',
  BUSY: 'line busy',
  NO_ANSWER: 'no answer',
}

export async function startSimulator(options: SimulatorOptions = {}): Promise<Simulator> {
  const settings = {
    callDurationMs: options.callDurationMs ?? 3000,
    outcomes: options.outcomes ?? { COMPLETED: 1 },
    progressEvents: options.progressEvents ?? false,
    fault: { kind: 'none' } as DialFault,
  }
  const retry = options.webhookRetry ?? { attempts: 6, baseDelayMs: 100 }
  const agent = new Agent({ connections: 128, keepAliveTimeout: 10_000, headersTimeout: 10_000, bodyTimeout: 10_000 })

  let stats = emptyStats()
  const byKey = new Map<string, DialRecord>()
  const activePhones = new Map<string, number>()
  const timers = new Set<NodeJS.Timeout>()
  const hanging = new Set<http.ServerResponse>()
  let pending = 0 // calls in progress + webhook deliveries not yet finished
  let closed = false

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

  function later(ms: number, fn: () => void) {
    const t = setTimeout(() => {
      timers.delete(t)
      fn()
    }, ms)
    timers.add(t)
  }

  function drawOutcome(): SimOutcome {
    const weights = OUTCOMES.map((o) => Math.max(0, settings.outcomes[o] ?? 0))
    const total = weights.reduce((a, b) => a + b, 0)
    let r = Math.random() * total
    for (let i = 0; i < OUTCOMES.length; i++) {
      r -= weights[i] as number
      if (r < 0) return OUTCOMES[i] as SimOutcome
    }
    return 'COMPLETED'
  }

  function endActive(rec: DialRecord) {
    stats.active--
    const n = (activePhones.get(rec.to) ?? 1) - 1
    if (n <= 0) activePhones.delete(rec.to)
    else activePhones.set(rec.to, n)
  }

  async function deliver(webhookUrl: string, payload: object, rec?: DialRecord): Promise<void> {
    const body = JSON.stringify(payload)
    const headers: Record<string, string> = { 'content-type': 'application/json' }
    if (options.webhookSecret) headers['x-signature'] = sign(options.webhookSecret, body)
    for (let attempt = 1; attempt <= retry.attempts && !closed; attempt++) {
      try {
        const res = await request(webhookUrl, { method: 'POST', headers, body, dispatcher: agent })
        const acked = now()
        await res.body.dump()
        if (res.statusCode >= 200 && res.statusCode < 300) {
          if (rec && rec.finalAckedAt === undefined) rec.finalAckedAt = acked
          return
        }
      } catch {
        // connection refused or reset: retried like a non-2xx
      }
      if (attempt < retry.attempts)
        await new Promise((r) => later(retry.baseDelayMs * 2 ** (attempt - 1), () => r(undefined)))
    }
    stats.webhookFailures++
    options.logger?.warn({ webhookUrl }, 'webhook delivery gave up')
  }

  async function runCall(rec: DialRecord, webhookUrl: string) {
    const outcome = drawOutcome()
    rec.outcome = outcome
    const startedAt = Date.now()
    if (settings.progressEvents) {
      await deliver(webhookUrl, { callId: rec.providerCallId, status: 'RINGING' })
      await deliver(webhookUrl, { callId: rec.providerCallId, status: 'IN_PROGRESS' })
    }
    const finish = async () => {
      endActive(rec)
      if (outcome === 'NO_WEBHOOK') {
        pending--
        return
      }
      rec.finalSentAt = now()
      stats.webhooksSent++
      const durationSec = Math.round((Date.now() - startedAt) / 1000)
      await deliver(
        webhookUrl,
        {
          callId: rec.providerCallId,
          status: outcome,
          durationSec,
          completedAt: new Date().toISOString(),
          ...(ERRORS[outcome] ? { error: ERRORS[outcome] } : {}),
        },
        rec,
      )
      pending--
    }
    if (settings.callDurationMs === 0) setImmediate(() => void finish())
    else later(settings.callDurationMs, () => void finish())
  }

  function send(
    res: http.ServerResponse,
    status: number,
    body: object,
    headers: Record<string, string> = {},
    after?: () => void,
  ) {
    const text = JSON.stringify(body)
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers })
    res.end(text, after)
  }

  async function handleDial(req: http.IncomingMessage, res: http.ServerResponse, raw: string) {
    const rec: DialRecord = {
      idempotencyKey: String(req.headers['idempotency-key'] ?? ''),
      to: '',
      providerCallId: null,
      status: 0,
      receivedAt: now(),
    }
    stats.dials.push(rec)
    const answer = (status: number, body: object, headers?: Record<string, string>, after?: () => void) => {
      rec.status = status
      if (status >= 400) stats.rejected++
      send(res, status, body, headers, after)
    }
    if (options.apiKey && req.headers.authorization !== `Bearer ${options.apiKey}`)
      return answer(401, { error: 'unauthorized' })
    let body: { to?: unknown; scriptId?: unknown; metadata?: unknown; webhookUrl?: unknown }
    try {
      body = JSON.parse(raw)
    } catch {
      return answer(400, { error: 'body is not JSON' })
    }
    if (
      typeof body.to !== 'string' ||
      typeof body.scriptId !== 'string' ||
      typeof body.webhookUrl !== 'string' ||
      !rec.idempotencyKey
    ) {
      return answer(400, { error: 'to, scriptId, webhookUrl and an Idempotency-Key header are required' })
    }
    rec.to = body.to
    const fault = settings.fault
    if (fault.kind === 'error') return answer(fault.status, { error: 'simulated provider error' })
    if (fault.kind === 'throttle') {
      return answer(
        429,
        { error: 'at capacity' },
        fault.retryAfterSec !== undefined ? { 'retry-after': String(fault.retryAfterSec) } : {},
      )
    }
    if (fault.kind === 'reject') return answer(fault.status ?? 400, { error: 'simulated rejection' })
    if (fault.kind === 'hang') {
      hanging.add(res)
      return
    }
    const known = byKey.get(rec.idempotencyKey)
    if (known) {
      stats.duplicates++
      rec.providerCallId = known.providerCallId
      return answer(202, { callId: known.providerCallId })
    }
    if (fault.kind === 'slow') await new Promise((r) => later(fault.delayMs, () => r(undefined)))
    if (closed) return
    rec.providerCallId = `sim_${randomBytes(8).toString('hex')}`
    byKey.set(rec.idempotencyKey, rec)
    stats.accepted++
    stats.active++
    stats.maxActive = Math.max(stats.maxActive, stats.active)
    if (activePhones.has(rec.to)) stats.phoneOverlaps++
    activePhones.set(rec.to, (activePhones.get(rec.to) ?? 0) + 1)
    pending++
    const webhookUrl = body.webhookUrl
    // The call starts once the 202 is on the wire, so a zero-length call's webhook follows the answer.
    answer(202, { callId: rec.providerCallId }, {}, () => void runCall(rec, webhookUrl))
  }

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const path = (req.url ?? '').split('?')[0]
      if (req.method === 'POST' && path === '/api/v1/calls') {
        void handleDial(req, res, Buffer.concat(chunks).toString('utf8'))
      } else if (req.method === 'GET' && path === '/health') {
        send(res, 200, { status: 'ok' })
      } else {
        send(res, 404, { error: 'not found' })
      }
    })
  })
  server.keepAliveTimeout = 30_000
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, options.host ?? '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  const url = `http://${options.host && options.host !== '0.0.0.0' ? options.host : '127.0.0.1'}:${port}`
  options.logger?.info({ url }, 'provider simulator listening')

  return {
    url,
    stats: () => stats,
    resetStats() {
      stats = { ...emptyStats(), active: stats.active, maxActive: stats.active }
    },
    configure(patch) {
      if (patch.callDurationMs !== undefined) settings.callDurationMs = patch.callDurationMs
      if (patch.outcomes) settings.outcomes = patch.outcomes
      if (patch.progressEvents !== undefined) settings.progressEvents = patch.progressEvents
      if (patch.fault) settings.fault = patch.fault
    },
    async idle(timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs
      while (pending > 0) {
        if (Date.now() > deadline) throw new Error(`simulator still busy after ${timeoutMs} ms (${pending} pending)`)
        await new Promise((r) => setTimeout(r, 10))
      }
    },
    async close() {
      closed = true
      for (const t of timers) clearTimeout(t)
      timers.clear()
      for (const res of hanging) res.destroy()
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
      await agent.close().catch(() => {})
    },
  }
}
