import { type ChildProcess, spawn } from 'node:child_process'
import { once } from 'node:events'
import { sql } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type Simulator, startSimulator } from '../src/providers/simulator.ts'
import { createTestDb, type TestDb } from './db.ts'
import { phone, waitFor } from './helpers.ts'
import { type Received, type Receiver, startReceiver } from './receiver.ts'
import { FAST } from './stack.ts'

// A service process (`node src/main.ts`) killed with SIGKILL while it delivers client webhooks: after a restart
// every event reaches the receiver, each call's in order.

let t: TestDb
let sim: Simulator
let r: Receiver
const procs: ChildProcess[] = []

beforeAll(async () => {
  t = await createTestDb()
  sim = await startSimulator({ callDurationMs: 100 })
  r = await startReceiver()
})
afterAll(async () => {
  for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL')
  await r?.close()
  await sim?.close()
  await t?.drop()
})

async function startProcess(): Promise<string> {
  const child = spawn(process.execPath, ['src/main.ts'], {
    env: {
      PATH: process.env.PATH,
      DATABASE_URL: t.url,
      AI_CALL_API_URL: sim.url,
      PORT: '0',
      HOST: '127.0.0.1',
      LOG_LEVEL: 'info',
      ...FAST,
      WEBHOOK_RETRY_BASE_DELAY_MS: '100',
      WEBHOOK_RETRY_MAX_DELAY_MS: '400',
      WEBHOOK_TIMEOUT_MS: '1000',
      RATE_LIMIT_MAX: '100000',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  procs.push(child)
  const logs: string[] = []
  return new Promise<string>((resolve, reject) => {
    child.on('exit', (code) => reject(new Error(`process exited (${code}) before it was ready:\n${logs.join('')}`)))
    child.stdout?.on('data', (chunk: Buffer) => {
      logs.push(chunk.toString())
      const m = /"port":(\d+).*call orchestrator ready/.exec(chunk.toString())
      if (m) resolve(`http://127.0.0.1:${m[1]}`)
    })
    child.stderr?.on('data', (chunk: Buffer) => logs.push(chunk.toString()))
  })
}

describe('client webhooks across a SIGKILL', () => {
  it('lose no event and keep each call in order', { timeout: 150_000 }, async () => {
    const url = await startProcess()
    const ep = await fetch(`${url}/api/v1/webhook-endpoints`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ url: r.url }),
    })
    expect(ep.status).toBe(201)
    const calls = Array.from({ length: 40 }, (_, i) => ({ to: phone(50_000 + i), scriptId: 'kill' }))
    const created = await fetch(`${url}/api/v1/calls/batch`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ calls }),
    })
    expect(created.status).toBe(201)
    await waitFor('deliveries under way', () => r.received.length >= 20)
    const first = procs[0] as ChildProcess
    first.kill('SIGKILL')
    await once(first, 'exit')

    const second = await startProcess()
    await waitFor(
      'every call final',
      async () => {
        const { rows } = await sql<{ n: number }>`
          select count(*)::int as n from calls where status in ('PENDING', 'IN_PROGRESS')`.execute(t.db)
        return rows[0]?.n === 0
      },
      60_000,
      100,
    )
    await waitFor(
      'every event acknowledged',
      async () => {
        const { rows } = await sql<{ n: number }>`
          select count(*)::int as n from webhook_events where call_id is not null`.execute(t.db)
        return r.acknowledged().length >= (rows[0]?.n ?? 1)
      },
      60_000,
      100,
    )
    const { rows: events } = await sql<{ id: string }>`select id from webhook_events where call_id is not null`.execute(
      t.db,
    )
    const acked = new Set(r.acknowledged().map((x) => x.headers['webhook-id']))
    for (const e of events) expect(acked.has(e.id)).toBe(true)
    // per call, each event's first acknowledged delivery comes after the previous one's
    const byCall = new Map<string, Received[]>()
    for (const x of r.acknowledged()) byCall.set(x.json.data.call.id, [...(byCall.get(x.json.data.call.id) ?? []), x])
    for (const [, xs] of byCall) expect(xs.map((x) => x.json.data.sequence)).toEqual(xs.map((_, i) => i + 1))
    const p = procs[1] as ChildProcess
    p.kill('SIGTERM')
    await once(p, 'exit')
    void second
  })
})
