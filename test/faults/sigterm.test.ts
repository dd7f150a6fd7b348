import { type ChildProcess, spawn } from 'node:child_process'
import { once } from 'node:events'
import { sql } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type Simulator, startSimulator } from '../../src/providers/simulator.ts'
import { phone, waitFor } from '../helpers.ts'
import { useTestDb } from '../kit.ts'
import { dialsPerCall, FAST } from '../stack.ts'

// SIGTERM in the middle of a burst: the process stops within 10 s with exit code 0, every claim it made has its
// dial result recorded, and a restarted process finishes the work.

const t = useTestDb()
let sim: Simulator
const children: ChildProcess[] = []

beforeAll(async () => {
  sim = await startSimulator({ callDurationMs: 200 })
})
afterAll(async () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL')
  await sim.close()
})

async function start(env: Record<string, string> = {}): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(process.execPath, ['src/main.ts'], {
    env: {
      PATH: process.env.PATH,
      DATABASE_URL: t.url,
      AI_CALL_API_URL: sim.url,
      PORT: '0',
      HOST: '127.0.0.1',
      LOG_LEVEL: 'info',
      ...FAST,
      MAX_CONCURRENT_CALLS: '10',
      CALL_TIMEOUT_MS: '3000',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  children.push(child)
  const url = await new Promise<string>((resolve, reject) => {
    child.on('exit', (code) => reject(new Error(`exited ${code} before ready`)))
    child.stdout?.on('data', (chunk: Buffer) => {
      const m = /"port":(\d+).*call orchestrator ready/.exec(chunk.toString())
      if (m) resolve(`http://127.0.0.1:${m[1]}`)
    })
  })
  return { child, url }
}

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
    first.child.kill('SIGTERM')
    const [code] = await once(first.child, 'exit')
    expect(code).toBe(0)
    expect(Date.now() - stopping).toBeLessThan(10_000)

    // no claim is left half-recorded: every CLAIMED attempt of the stopped process has a dial result
    const { rows: orphans } = await sql<{ n: number }>`
      select count(*)::int as n from call_events c
       where c.kind = 'CLAIMED'
         and not exists (select 1 from call_events d where d.call_id = c.call_id and d.attempt = c.attempt
                          and d.kind in ('DIAL_ACCEPTED', 'DIAL_FAILED', 'DIAL_REJECTED', 'DIAL_THROTTLED',
                                         'DIAL_UNKNOWN', 'DIAL_UNAUTHORIZED', 'WEBHOOK'))`.execute(t.db)
    expect(orphans[0]?.n).toBe(0)

    const second = await start()
    await waitFor(
      'every call to reach a final status',
      async () => {
        const { rows } = await sql<{ n: number }>`
          select count(*)::int as n from calls where status in ('PENDING', 'IN_PROGRESS')`.execute(t.db)
        return rows[0]?.n === 0
      },
      40_000,
      100,
    )
    const rows = await t.db.selectFrom('calls').selectAll().execute()
    expect(rows).toHaveLength(200)
    const dials = dialsPerCall(sim)
    for (const c of rows) {
      expect(['COMPLETED', 'FAILED']).toContain(c.status)
      const keys = dials.get(c.id) ?? []
      expect(new Set(keys).size).toBe(keys.length)
    }
    expect(sim.stats().duplicates).toBe(0)
    second.child.kill('SIGTERM')
    await once(second.child, 'exit')
  }, 90_000)
})

describe('SIGTERM while dials wait on a slow provider', () => {
  it('claims nothing more, and records dials that answer after more than 10 s before it exits', async () => {
    // reproduced before (by reading): the server closed first, the dispatcher got 10 s, and the pools closed under
    // dials still waiting for the provider, so their results were never recorded
    const slow = await startSimulator({ callDurationMs: 50 })
    slow.configure({ fault: { kind: 'slow', delayMs: 11_000 } })
    try {
      const { child, url } = await start({
        AI_CALL_API_URL: slow.url,
        PROVIDER_TIMEOUT_MS: '15000',
        CALL_TIMEOUT_MS: '60000',
        MAX_CONCURRENT_CALLS: '2',
      })
      const calls = Array.from({ length: 4 }, (_, i) => ({ to: phone(12_000 + i), scriptId: 'slow' }))
      const res = await fetch(`${url}/api/v1/calls/batch`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ calls }),
      })
      const ids = ((await res.json()) as { data: { ids: string[] } }).data.ids
      expect(res.status).toBe(201)
      await waitFor('two dials waiting on the provider', () => slow.stats().dials.length === 2)
      const signalled = performance.timeOrigin + performance.now()
      child.kill('SIGTERM')
      const [code] = await once(child, 'exit')
      expect(code).toBe(0)
      expect(slow.stats().dials.every((d) => d.receivedAt < signalled)).toBe(true)
      const { rows } = await sql<{ n: number }>`
        select count(*)::int as n from call_events where kind = 'DIAL_ACCEPTED' and call_id = any(${ids}::uuid[])`.execute(
        t.db,
      )
      expect(rows[0]?.n).toBe(2)
      const waiting = await t.db
        .selectFrom('calls')
        .select(['status', 'attempts'])
        .where('id', 'in', ids)
        .where('status', '=', 'PENDING')
        .execute()
      expect(waiting).toEqual([
        { status: 'PENDING', attempts: 0 },
        { status: 'PENDING', attempts: 0 },
      ])
    } finally {
      await slow.close()
    }
  }, 45_000)
})
