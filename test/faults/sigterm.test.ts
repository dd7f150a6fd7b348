import { sql } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type Simulator, startSimulator } from '../../src/providers/simulator.ts'
import { phone, waitFor } from '../helpers.ts'
import { startServiceProcess, useTestDb, waitAllFinal } from '../kit.ts'
import { dialsPerCall, FAST } from '../stack.ts'

// SIGTERM in the middle of a burst: the process stops within 10 s with exit code 0, every claim it made has its
// dial result recorded, and a restarted process finishes the work.

const t = useTestDb()
let sim: Simulator

beforeAll(async () => {
  sim = await startSimulator({ callDurationMs: 200 })
})
afterAll(async () => {
  await sim.close()
})

const start = () =>
  startServiceProcess({
    DATABASE_URL: t.url,
    AI_CALL_API_URL: sim.url,
    ...FAST,
    MAX_CONCURRENT_CALLS: '10',
    CALL_TIMEOUT_MS: '3000',
  })

describe('SIGTERM during a burst', () => {
  it('stops promptly and cleanly, and a restarted process finishes the work', async () => {
    const first = await start()
    const calls = Array.from({ length: 200 }, (_, i) => ({ to: phone(11_000 + i), scriptId: 'burst' }))
    const res = await fetch(`${first.url}/api/v1/calls/batch`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ calls }),
    })
    expect(res.status).toBe(201)
    await waitFor('the burst to be dialing', () => sim.stats().accepted >= 10)

    const stopping = Date.now()
    expect(await first.stop()).toBe(0)
    expect(Date.now() - stopping).toBeLessThan(10_000)

    // no claim is left half-recorded: every CLAIMED attempt of the stopped process has a dial result
    const { rows: orphans } = await sql<{ n: number }>`
      select count(*)::int as n from call_events c
       where c.kind = 'CLAIMED'
         and not exists (select 1 from call_events d where d.call_id = c.call_id and d.attempt = c.attempt
                          and d.kind in ('DIAL_ACCEPTED', 'DIAL_FAILED', 'DIAL_REJECTED', 'DIAL_THROTTLED', 'WEBHOOK'))`.execute(
      t.db,
    )
    expect(orphans[0]?.n).toBe(0)

    const second = await start()
    const rows = await waitAllFinal(t.db, 40_000)
    expect(rows).toHaveLength(200)
    const dials = dialsPerCall(sim)
    for (const c of rows) {
      expect(['COMPLETED', 'FAILED']).toContain(c.status)
      const keys = dials.get(c.id) ?? []
      expect(new Set(keys).size).toBe(keys.length)
    }
    expect(sim.stats().duplicates).toBe(0)
    await second.stop()
  }, 90_000)
})
