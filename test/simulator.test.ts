import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { verify } from '../src/providers/signature.ts'
import { type Simulator, type SimulatorOptions, startSimulator } from '../src/providers/simulator.ts'

// The provider simulator alone, against a real loopback webhook receiver: no database, no orchestrator.

interface Webhook {
  url: string
  headers: http.IncomingHttpHeaders
  raw: string
  body: any
}

interface Receiver {
  url: string
  received: Webhook[]
  close(): Promise<void>
}

/** A webhook endpoint that records every request and answers statuses[i] to the i-th one (200 past the end). */
async function startReceiver(statuses: number[] = []): Promise<Receiver> {
  const received: Webhook[] = []
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8')
      received.push({ url: req.url ?? '', headers: req.headers, raw, body: JSON.parse(raw) })
      res.writeHead(statuses[received.length - 1] ?? 200).end()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    received,
    close: async () => {
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
    },
  }
}

let sim: Simulator | undefined
let receiver: Receiver | undefined

afterEach(async () => {
  await sim?.close()
  await receiver?.close()
  sim = undefined
  receiver = undefined
})

async function setup(options: SimulatorOptions = {}, statuses: number[] = []) {
  receiver = await startReceiver(statuses)
  sim = await startSimulator({ callDurationMs: 20, webhookRetry: { attempts: 3, baseDelayMs: 10 }, ...options })
  return { sim, receiver }
}

let keySeq = 0
const nextKey = () => `call-${keySeq++}:1`

async function dial(
  s: Simulator,
  body: Record<string, unknown>,
  headers: Record<string, string> = { 'idempotency-key': nextKey() },
) {
  const res = await fetch(`${s.url}/api/v1/calls`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  })
  return { status: res.status, headers: res.headers, body: (await res.json()) as any }
}

const callTo = (to: string, r: Receiver, path = '/webhooks/provider?tenant=a&x=1') => ({
  to,
  scriptId: 'script-1',
  metadata: { campaign: 'spring' },
  webhookUrl: `${r.url}${path}`,
})

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

describe('dialing', () => {
  it('answers 202 with a provider call id and posts the final webhook to the exact webhookUrl', async () => {
    const { sim, receiver } = await setup({ callDurationMs: 30 })
    const res = await dial(sim, callTo('+966500000001', receiver))
    expect(res.status).toBe(202)
    expect(res.body.callId).toMatch(/^sim_[0-9a-f]{16}$/)
    await sim.idle(2000)

    expect(receiver.received).toHaveLength(1)
    const hook = receiver.received[0]!
    expect(hook.url).toBe('/webhooks/provider?tenant=a&x=1')
    expect(hook.headers['content-type']).toBe('application/json')
    expect(hook.headers['x-signature']).toBeUndefined()
    expect(hook.body).toEqual({
      callId: res.body.callId,
      status: 'COMPLETED',
      durationSec: 0,
      completedAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
    })

    const s = sim.stats()
    expect(s).toMatchObject({ accepted: 1, duplicates: 0, rejected: 0, active: 0, maxActive: 1, webhooksSent: 1 })
    const rec = s.dials[0]!
    expect(rec).toMatchObject({
      to: '+966500000001',
      providerCallId: res.body.callId,
      status: 202,
      outcome: 'COMPLETED',
    })
    expect(rec.finalSentAt! - rec.receivedAt).toBeGreaterThanOrEqual(25)
    expect(rec.finalAckedAt).toBeGreaterThanOrEqual(rec.finalSentAt!)
  })

  it('signs the exact bytes it sends when a webhook secret is set', async () => {
    const { sim, receiver } = await setup({ webhookSecret: 'whsec_test' })
    await dial(sim, callTo('+966500000002', receiver))
    await sim.idle(2000)
    const hook = receiver.received[0]!
    const header = hook.headers['x-signature'] as string
    expect(header).toMatch(/^t=\d+,v1=[0-9a-f]{64}$/)
    expect(verify('whsec_test', hook.raw, header)).toEqual({ ok: true })
    expect(verify('another-secret', hook.raw, header)).toEqual({ ok: false, reason: 'mismatch' })
  })

  it('reports the drawn outcome with an error for calls that did not complete', async () => {
    const { sim, receiver } = await setup({ outcomes: { BUSY: 1 } })
    await dial(sim, callTo('+966500000003', receiver))
    await sim.idle(2000)
    expect(receiver.received[0]!.body).toMatchObject({ status: 'BUSY', error: 'line busy' })
    sim.configure({ outcomes: { COMPLETED: 0, NO_ANSWER: 3 } })
    await dial(sim, callTo('+966500000003', receiver))
    await sim.idle(2000)
    expect(receiver.received[1]!.body).toMatchObject({ status: 'NO_ANSWER', error: 'no answer' })
  })

  it('sends nothing for NO_WEBHOOK and stops counting the call as active when it ends', async () => {
    const { sim, receiver } = await setup({ outcomes: { NO_WEBHOOK: 1 }, callDurationMs: 40 })
    await dial(sim, callTo('+966500000004', receiver))
    expect(sim.stats().active).toBe(1)
    await sim.idle(2000)
    await sleep(30)
    expect(receiver.received).toHaveLength(0)
    expect(sim.stats()).toMatchObject({ active: 0, webhooksSent: 0, accepted: 1 })
    expect(sim.stats().dials[0]!.outcome).toBe('NO_WEBHOOK')
    expect(sim.stats().dials[0]!.finalSentAt).toBeUndefined()
  })

  it('sends RINGING and IN_PROGRESS before the final webhook when asked to', async () => {
    const { sim, receiver } = await setup({ progressEvents: true, callDurationMs: 0 })
    const { body } = await dial(sim, callTo('+966500000005', receiver))
    await sim.idle(2000)
    expect(receiver.received.map((h) => h.body.status)).toEqual(['RINGING', 'IN_PROGRESS', 'COMPLETED'])
    expect(receiver.received.every((h) => h.body.callId === body.callId)).toBe(true)
  })

  it('sends the final webhook right after the 202 when the call lasts 0 ms', async () => {
    const { sim, receiver } = await setup({ callDurationMs: 0 })
    await dial(sim, callTo('+966500000006', receiver))
    await sim.idle(1000)
    const rec = sim.stats().dials[0]!
    expect(receiver.received).toHaveLength(1)
    expect(rec.finalSentAt! - rec.receivedAt).toBeLessThan(100) // 0 is honoured, not replaced by the 3 s default
  })

  it('rejects a missing or wrong API key with 401 when one is configured', async () => {
    const { sim, receiver } = await setup({ apiKey: 'k-123' })
    const body = callTo('+966500000007', receiver)
    expect((await dial(sim, body)).status).toBe(401)
    expect((await dial(sim, body, { 'idempotency-key': nextKey(), authorization: 'Bearer nope' })).status).toBe(401)
    expect((await dial(sim, body, { 'idempotency-key': nextKey(), authorization: 'Bearer k-123' })).status).toBe(202)
    expect(sim.stats()).toMatchObject({ accepted: 1, rejected: 2 })
    expect(sim.stats().dials.map((d) => d.status)).toEqual([401, 401, 202])
  })

  it('answers 400 to a dial with missing or invalid fields and starts nothing', async () => {
    const { sim, receiver } = await setup()
    const good = callTo('+966500000008', receiver)
    const bad = [
      { ...good, to: undefined },
      { ...good, scriptId: undefined },
      { ...good, webhookUrl: undefined },
      { ...good, webhookUrl: 'not a url' },
      { ...good, to: 966500000008 },
      { ...good, metadata: 'x' },
    ]
    for (const body of bad) {
      const res = await dial(sim, body)
      expect(res.status).toBe(400)
      expect(res.body.error).toEqual(expect.any(String))
    }
    expect((await dial(sim, good, {})).status).toBe(400) // no Idempotency-Key
    const notJson = await fetch(`${sim.url}/api/v1/calls`, { method: 'POST', body: '{"to":', headers: {} })
    expect(notJson.status).toBe(400)
    await notJson.body?.cancel()
    await sim.idle(500)
    expect(sim.stats()).toMatchObject({ accepted: 0, rejected: 8, active: 0 })
    expect(receiver.received).toHaveLength(0)
  })
})

describe('idempotency', () => {
  it('answers a repeated Idempotency-Key with the same call id and places one call', async () => {
    const { sim, receiver } = await setup()
    const headers = { 'idempotency-key': 'call-abc:1' }
    const first = await dial(sim, callTo('+966500000010', receiver), headers)
    const second = await dial(sim, callTo('+966500000010', receiver), headers)
    expect(first.status).toBe(202)
    expect(second).toMatchObject({ status: 202, body: { callId: first.body.callId } })
    await sim.idle(2000)
    await sleep(30)
    expect(receiver.received).toHaveLength(1)
    expect(sim.stats()).toMatchObject({ accepted: 1, duplicates: 1, maxActive: 1, phoneOverlaps: 0 })
    // the next attempt has its own key and is a new call
    const next = await dial(sim, callTo('+966500000010', receiver), { 'idempotency-key': 'call-abc:2' })
    expect(next.body.callId).not.toBe(first.body.callId)
  })

  it('gives a key retried during a slow answer the same call id', async () => {
    const { sim, receiver } = await setup()
    sim.configure({ fault: { kind: 'slow', delayMs: 150 } })
    const headers = { 'idempotency-key': 'call-slow:1' }
    const slow = dial(sim, callTo('+966500000011', receiver), headers)
    await sleep(30)
    const retried = await dial(sim, callTo('+966500000011', receiver), headers)
    expect(retried.status).toBe(202)
    expect((await slow).body.callId).toBe(retried.body.callId)
    await sim.idle(2000)
    expect(receiver.received).toHaveLength(1)
    expect(sim.stats()).toMatchObject({ accepted: 1, duplicates: 1 })
  })
})

describe('webhook delivery', () => {
  it('retries a webhook the receiver answers 500 until it gets a 2xx', async () => {
    const { sim, receiver } = await setup({}, [500, 200])
    await dial(sim, callTo('+966500000020', receiver))
    await sim.idle(2000)
    expect(receiver.received).toHaveLength(2)
    expect(receiver.received[1]!.raw).toBe(receiver.received[0]!.raw)
    expect(sim.stats()).toMatchObject({ webhooksSent: 1, webhookFailures: 0 })
    expect(sim.stats().dials[0]!.finalAckedAt).toBeGreaterThan(sim.stats().dials[0]!.finalSentAt!)
  })

  it('gives up after the configured attempts and counts the failure', async () => {
    const { sim, receiver } = await setup({ webhookRetry: { attempts: 3, baseDelayMs: 5 } }, [500, 503, 500, 200])
    await dial(sim, callTo('+966500000021', receiver))
    await sim.idle(2000)
    expect(receiver.received).toHaveLength(3)
    expect(sim.stats()).toMatchObject({ webhooksSent: 1, webhookFailures: 1, active: 0 })
    expect(sim.stats().dials[0]!.finalAckedAt).toBeUndefined()
  })

  it('retries when the receiver is not listening, and close() does not wait for the backoff', async () => {
    const { sim, receiver } = await setup({ webhookRetry: { attempts: 6, baseDelayMs: 5000 } })
    const body = callTo('+966500000022', receiver)
    await receiver.close()
    await dial(sim, body)
    await expect(sim.idle(200)).rejects.toThrow(/still busy/)
    const started = Date.now()
    await sim.close()
    expect(Date.now() - started).toBeLessThan(1000)
    expect(sim.stats().webhookFailures).toBe(0) // cut short by close(), not given up
  })
})

describe('dial faults', () => {
  it('answers the configured error status and starts nothing', async () => {
    const { sim, receiver } = await setup()
    sim.configure({ fault: { kind: 'error', status: 503 } })
    expect((await dial(sim, callTo('+966500000030', receiver))).status).toBe(503)
    sim.configure({ fault: { kind: 'error', status: 500 } })
    expect((await dial(sim, callTo('+966500000030', receiver))).status).toBe(500)
    await sim.idle(500)
    expect(sim.stats()).toMatchObject({ accepted: 0, rejected: 2, active: 0 })
    expect(receiver.received).toHaveLength(0)
  })

  it('throttles with 429 and a Retry-After header when one is given', async () => {
    const { sim, receiver } = await setup()
    sim.configure({ fault: { kind: 'throttle', retryAfterSec: 7 } })
    const withHeader = await dial(sim, callTo('+966500000031', receiver))
    expect(withHeader.status).toBe(429)
    expect(withHeader.headers.get('retry-after')).toBe('7')
    sim.configure({ fault: { kind: 'throttle' } })
    const without = await dial(sim, callTo('+966500000031', receiver))
    expect(without.status).toBe(429)
    expect(without.headers.get('retry-after')).toBeNull()
    expect(sim.stats()).toMatchObject({ accepted: 0, rejected: 2 })
  })

  it('rejects with 400 by default, or the configured 4xx', async () => {
    const { sim, receiver } = await setup()
    sim.configure({ fault: { kind: 'reject' } })
    expect((await dial(sim, callTo('+966500000032', receiver))).status).toBe(400)
    sim.configure({ fault: { kind: 'reject', status: 422 } })
    expect((await dial(sim, callTo('+966500000032', receiver))).status).toBe(422)
    sim.configure({ fault: { kind: 'none' } })
    expect((await dial(sim, callTo('+966500000032', receiver))).status).toBe(202)
    expect(sim.stats().dials.map((d) => d.status)).toEqual([400, 422, 202])
  })

  it('answers a slow dial after the delay, then runs the call normally', async () => {
    const { sim, receiver } = await setup()
    sim.configure({ fault: { kind: 'slow', delayMs: 150 } })
    const started = performance.now()
    const res = await dial(sim, callTo('+966500000033', receiver))
    expect(res.status).toBe(202)
    expect(performance.now() - started).toBeGreaterThanOrEqual(140)
    await sim.idle(2000)
    expect(receiver.received.map((h) => h.body.callId)).toEqual([res.body.callId])
  })

  it('still places a slow call whose client gave up waiting', async () => {
    const { sim, receiver } = await setup()
    sim.configure({ fault: { kind: 'slow', delayMs: 100 } })
    const gaveUp = fetch(`${sim.url}/api/v1/calls`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'idempotency-key': nextKey() },
      body: JSON.stringify(callTo('+966500000034', receiver)),
      signal: AbortSignal.timeout(30),
    })
    await expect(gaveUp).rejects.toThrow()
    await sleep(20) // the dial is under way, not yet accepted
    await sim.idle(2000)
    expect(sim.stats().accepted).toBe(1)
    expect(receiver.received).toHaveLength(1)
  })

  it('never answers a hung dial, and close() still returns promptly', async () => {
    const { sim, receiver } = await setup()
    sim.configure({ fault: { kind: 'hang' } })
    const hung = dial(sim, callTo('+966500000035', receiver)).then(
      () => 'answered',
      () => 'cut off',
    )
    const first = await Promise.race([hung, sleep(200).then(() => 'still waiting')])
    expect(first).toBe('still waiting')
    const started = Date.now()
    await sim.close()
    expect(Date.now() - started).toBeLessThan(1000)
    expect(await hung).toBe('cut off')
    expect(sim.stats().dials[0]!.status).toBe(0)
  })
})

describe('stats', () => {
  it('counts calls in progress at once and dials to a phone that already has a call', async () => {
    const { sim, receiver } = await setup({ callDurationMs: 200 })
    for (const to of ['+966500000040', '+966500000041', '+966500000042']) await dial(sim, callTo(to, receiver))
    await dial(sim, callTo('+966500000041', receiver)) // overlaps an active call
    expect(sim.stats()).toMatchObject({ active: 4, maxActive: 4, phoneOverlaps: 1 })
    await sim.idle(2000)
    expect(sim.stats()).toMatchObject({ active: 0, maxActive: 4, phoneOverlaps: 1, webhooksSent: 4 })

    // once its call has ended, a phone can be dialed again without an overlap
    await dial(sim, callTo('+966500000041', receiver))
    expect(sim.stats()).toMatchObject({ active: 1, maxActive: 4, phoneOverlaps: 1 })
    await sim.idle(2000)
  })

  it('ends a call as active when its final webhook is sent, not when it is acknowledged', async () => {
    const { sim, receiver } = await setup({ callDurationMs: 30 }, [500, 200])
    await dial(sim, callTo('+966500000043', receiver))
    while (receiver.received.length === 0) await sleep(5)
    // the first delivery failed and is waiting to be retried: sent, so no longer active, but not idle
    expect(sim.stats().active).toBe(0)
    expect(sim.stats().dials[0]!.finalAckedAt).toBeUndefined()
    await sim.idle(2000)
    expect(sim.stats().dials[0]!.finalAckedAt).toBeDefined()
  })

  it('resets counters but keeps counting calls still in progress', async () => {
    const { sim, receiver } = await setup({ callDurationMs: 150 })
    await dial(sim, callTo('+966500000044', receiver))
    await dial(sim, callTo('+966500000045', receiver))
    sim.resetStats()
    expect(sim.stats()).toMatchObject({ dials: [], accepted: 0, active: 2, maxActive: 2 })
    await dial(sim, callTo('+966500000044', receiver))
    expect(sim.stats()).toMatchObject({ accepted: 1, active: 3, maxActive: 3, phoneOverlaps: 1 })
    await sim.idle(2000)
    expect(sim.stats().active).toBe(0)
  })

  it('refuses outcome weights it does not know', async () => {
    await expect(startSimulator({ outcomes: { HUNG_UP: 1 } as any })).rejects.toThrow(/unknown simulator outcome/)
    await expect(startSimulator({ outcomes: { COMPLETED: 0 } })).rejects.toThrow(/positive weight/)
  })
})
