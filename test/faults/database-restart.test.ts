import { chmod, mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { createDb, createPool } from '../../src/db/database.ts'
import { type EmbeddedDb, freePort, startEmbeddedDb } from '../../src/db/embedded.ts'
import { type Simulator, startSimulator } from '../../src/providers/simulator.ts'
import { type Service, startService } from '../../src/service.ts'
import { log, phone, testConfig, waitFor } from '../helpers.ts'
import { waitAllFinal } from '../kit.ts'
import { dialsPerCall, FAST } from '../stack.ts'

// PostgreSQL stops in the middle of a run and comes back: /health says 503 meanwhile, the service recovers by
// itself, and every call still reaches a final status with the cap and the one-dial-per-attempt rule intact.

let dir: string | undefined
let pg: EmbeddedDb | undefined
let svc: Service | undefined
let sim: Simulator | undefined

afterAll(async () => {
  await svc?.stop().catch(() => {})
  await sim?.close()
  await pg?.stop()
  if (dir) await rm(dir, { recursive: true, force: true })
})

describe('a PostgreSQL restart', () => {
  it('is survived without losing a call', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'orchestrator-restart-'))
    await chmod(dir, 0o755) // reachable by the `postgres` user when run as root
    const port = await freePort()
    const start = () =>
      startEmbeddedDb({ dir: path.join(dir as string, 'pg'), port, database: 'restart', persistent: true })
    pg = await start()
    sim = await startSimulator({ callDurationMs: 300 })
    svc = await startService(
      testConfig({ DATABASE_URL: pg.url, AI_CALL_API_URL: sim.url, ...FAST, CALL_TIMEOUT_MS: '4000' }),
      log,
    )
    const calls = Array.from({ length: 40 }, (_, i) => ({ to: phone(9000 + i), scriptId: 'restart' }))
    const created = await svc.app.inject({ method: 'POST', url: '/api/v1/calls/batch', payload: { calls } })
    expect(created.statusCode).toBe(201)
    await waitFor('calls in flight', () => (sim as Simulator).stats().accepted >= 5)

    await pg.stop()
    const down = await svc.app.inject({ method: 'GET', url: '/health' })
    expect(down.statusCode).toBe(503)
    await new Promise((r) => setTimeout(r, 1500)) // webhooks and claims fail meanwhile; the simulator retries
    pg = await start()
    await waitFor(
      'health to recover',
      async () => (await (svc as Service).app.inject({ method: 'GET', url: '/health' })).statusCode === 200,
      20_000,
    )

    const db = createDb(createPool(pg.url, 2))
    try {
      const rows = await waitAllFinal(db, 40_000)
      expect(rows).toHaveLength(40)
      const dials = dialsPerCall(sim)
      for (const c of rows) {
        expect(['COMPLETED', 'FAILED']).toContain(c.status)
        const keys = dials.get(c.id) ?? []
        expect(new Set(keys).size).toBe(keys.length)
        if (c.status === 'FAILED') expect(c.last_error?.code).toMatch(/CALL_TIMEOUT|DIAL_ERROR/)
      }
      expect(sim.stats().maxActive).toBeLessThanOrEqual(5)
      expect(sim.stats().phoneOverlaps).toBe(0)
      expect(rows.filter((c) => c.status === 'COMPLETED').length).toBeGreaterThan(20)
    } finally {
      await db.destroy()
    }
  }, 90_000)
})
