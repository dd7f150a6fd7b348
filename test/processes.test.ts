import { sql } from 'kysely'
import { afterAll, describe, expect, it } from 'vitest'
import { type Simulator, startSimulator } from '../src/providers/simulator.ts'
import { phone, waitFor } from './helpers.ts'
import { startServiceProcess, useTestDb, waitAllFinal } from './kit.ts'
import { dialsPerCall, FAST } from './stack.ts'

// Real service processes (`node src/main.ts`) sharing one database: the cap must hold across them, and a process
// killed with SIGKILL must lose no call and cause no second dial of an attempt.

const t = useTestDb()
let sim: Simulator

afterAll(async () => {
  await sim?.close()
})

/** A service process on the test database, dialing the current simulator. */
const startProcess = (env: Record<string, string>) =>
  startServiceProcess({ DATABASE_URL: t.url, AI_CALL_API_URL: sim.url, ...FAST, ...env })

async function createCalls(url: string, n: number, offset: number): Promise<string[]> {
  const calls = Array.from({ length: n }, (_, i) => ({ to: phone(offset + i), scriptId: 'multi' }))
  const res = await fetch(`${url}/api/v1/calls/batch`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ calls }),
  })
  expect(res.status).toBe(201)
  return ((await res.json()) as { data: { ids: string[] } }).data.ids
}

const finalStatuses = () => waitAllFinal(t.db, 30_000)

describe('several service processes on one database', () => {
  it('keep the global cap across three processes and complete every call', async () => {
    sim = await startSimulator({ callDurationMs: 80 })
    const all = await Promise.all([1, 2, 3].map(() => startProcess({ MAX_CONCURRENT_CALLS: '5' })))
    const ids = (await Promise.all(all.map((p, i) => createCalls(p.url, 40, 10_000 + i * 100)))).flat()
    const calls = await finalStatuses()
    expect(calls).toHaveLength(ids.length)
    expect(calls.every((c) => c.status === 'COMPLETED' && c.attempts === 1)).toBe(true)
    const s = sim.stats()
    expect(s.maxActive).toBeLessThanOrEqual(5)
    expect(s.maxActive).toBe(5)
    expect(s.duplicates).toBe(0)
    // every process took part in dialing
    const claimedBy = await sql<{
      n: number
    }>`select count(*)::int as n from call_events where kind = 'CLAIMED'`.execute(t.db)
    expect(claimedBy.rows[0]?.n).toBe(ids.length)
    await Promise.all(all.map((p) => p.stop()))
    await sim.close()
  }, 60_000)

  it('lose no call and dial no attempt twice when a process is killed mid-run', async () => {
    await sql`truncate calls cascade`.execute(t.db)
    sim = await startSimulator({ callDurationMs: 300 })
    const env = { MAX_CONCURRENT_CALLS: '5', CALL_TIMEOUT_MS: '3000' }
    const first = await startProcess(env)
    const ids = await createCalls(first.url, 40, 20_000)
    await waitFor('calls in flight', () => sim.stats().accepted >= 8)
    await first.kill()

    const second = await startProcess(env)
    const calls = await finalStatuses()
    expect(calls).toHaveLength(ids.length)
    expect(calls.every((c) => ['COMPLETED', 'FAILED'].includes(c.status))).toBe(true)
    // calls cut off by the kill time out; they are never dialed again
    for (const c of calls.filter((c) => c.status === 'FAILED')) expect(c.last_error?.code).toBe('CALL_TIMEOUT')

    const s = sim.stats()
    expect(s.duplicates).toBe(0)
    expect(s.maxActive).toBeLessThanOrEqual(5)
    const dials = dialsPerCall(sim)
    for (const c of calls) {
      const keys = dials.get(c.id) ?? []
      expect(new Set(keys).size).toBe(keys.length) // no attempt dialed twice
      // attempts = dials the provider received; the one exception is a call claimed by the killed process whose
      // dial never left it: its attempt is counted, never dialed, and settled by the timeout
      const undialedClaim = c.last_error?.code === 'CALL_TIMEOUT' && keys.length === c.attempts - 1
      if (!undialedClaim) expect(keys.length).toBe(c.attempts)
    }
    await second.stop()
    await sim.close()
  }, 60_000)

  it('hand calls from an API-only process to a worker process through pg-boss', async () => {
    await sql`truncate calls cascade`.execute(t.db)
    sim = await startSimulator({ callDurationMs: 20 })
    const api = await startProcess({ ROLE: 'api' })
    const worker = await startProcess({ ROLE: 'worker' })
    // the worker serves no client API; the API process dials nothing itself
    expect((await fetch(`${worker.url}/api/v1/calls`)).status).toBe(404)
    const ids = await createCalls(api.url, 10, 30_000)
    const calls = await finalStatuses()
    expect(calls.filter((c) => ids.includes(c.id)).every((c) => c.status === 'COMPLETED')).toBe(true)
    // a wake-up job per create reached the worker; without it the worker's 1 s poll would still find the calls
    const jobs = await sql<{ n: number }>`select count(*)::int as n from pgboss.job where name = 'call-ready'`.execute(
      t.db,
    )
    expect(jobs.rows[0]?.n).toBeGreaterThanOrEqual(1)
    await Promise.all([api.stop(), worker.stop()])
    await sim.close()
  }, 60_000)
})
