import { sql } from 'kysely'
import type { Call } from '../src/db/database.ts'
import { type Simulator, type SimulatorOptions, startSimulator } from '../src/providers/simulator.ts'
import { type Service, startService } from '../src/service.ts'
import type { TestDb } from './db.ts'
import { log, testConfig } from './helpers.ts'
import { waitAllFinal } from './kit.ts'

// The whole service in-process (HTTP app, dispatcher, pg-boss) against a test database, dialing a real simulator
// over HTTP. Defaults are scaled down so retries and timeouts happen within a test.

export interface Stack {
  sim: Simulator
  svc: Service
  t: TestDb
  api(method: 'GET' | 'POST' | 'PATCH', url: string, payload?: object): Promise<{ statusCode: number; body: any }>
  createCalls(n: number, to: (i: number) => string, extra?: object): Promise<string[]>
  waitAllFinal(timeoutMs?: number): Promise<Call[]>
  stop(): Promise<void>
}

export const FAST = {
  MAX_CONCURRENT_CALLS: '5',
  RETRY_BASE_DELAY_MS: '200',
  RETRY_MAX_DELAY_MS: '1000',
  // Long enough for a dial on a loaded two-core machine: a dial unanswered in time is 'unknown' and holds its slot.
  PROVIDER_TIMEOUT_MS: '2000',
  CALL_TIMEOUT_MS: '5000',
  SWEEP_INTERVAL_MS: '100',
}

export async function startStack(
  t: TestDb,
  env: Record<string, string> = {},
  simOptions: SimulatorOptions = {},
): Promise<Stack> {
  const sim = await startSimulator({ callDurationMs: 50, ...simOptions })
  const config = testConfig({ DATABASE_URL: t.url, AI_CALL_API_URL: sim.url, ...FAST, ...env })
  const svc = await startService(config, log)
  const api: Stack['api'] = async (method, url, payload) => {
    const res = await svc.app.inject({ method, url, ...(payload ? { payload } : {}) })
    return { statusCode: res.statusCode, body: res.json() }
  }
  return {
    sim,
    svc,
    t,
    api,
    async createCalls(n, to, extra = {}) {
      const calls = Array.from({ length: n }, (_, i) => ({ to: to(i), scriptId: 'test', ...extra }))
      const ids: string[] = []
      for (let i = 0; i < calls.length; i += 1000) {
        const res = await api('POST', '/api/v1/calls/batch', { calls: calls.slice(i, i + 1000) })
        if (res.statusCode !== 201) throw new Error(`batch create failed: ${JSON.stringify(res.body)}`)
        ids.push(...res.body.data.ids)
      }
      return ids
    },
    waitAllFinal: (timeoutMs = 20_000) => waitAllFinal(t.db, timeoutMs),
    async stop() {
      await svc.stop()
      await sim.close()
    },
  }
}

export async function resetTables(t: TestDb) {
  await sql`truncate calls cascade`.execute(t.db)
  await sql`delete from pgboss.job`.execute(t.db)
}

/** Dials the simulator received per call id (from the Idempotency-Key "<call id>:<attempt>"), 429s excluded. */
export function dialsPerCall(sim: Simulator): Map<string, string[]> {
  const m = new Map<string, string[]>()
  for (const d of sim.stats().dials) {
    if (d.status === 429) continue
    const [callId] = d.idempotencyKey.split(':')
    m.set(callId as string, [...(m.get(callId as string) ?? []), d.idempotencyKey])
  }
  return m
}
