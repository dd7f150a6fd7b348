import { spawn } from 'node:child_process'
import { sql } from 'kysely'
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { insertCampaign } from '../src/sql/campaigns.ts'
import { saveDispatchSettings } from '../src/sql/settings.ts'
import { NUMBERS } from './campaign-helpers.ts'
import { createTestDb, type TestDb } from './db.ts'
import { apiOnly } from './helpers.ts'
import { callIn } from './seed.ts'
import { resetTables } from './stack.ts'

// What an operator has for campaigns: the campaign_overview view in psql, and `npm run calls -- campaigns | pause |
// resume | suppress` in its own process.

let t: TestDb

beforeAll(async () => {
  t = await createTestDb()
  await saveDispatchSettings(t.db, { maxConcurrentCalls: 10 })
})
afterAll(async () => {
  await t.drop()
})
beforeEach(async () => {
  await resetTables(t)
  await sql`delete from campaigns`.execute(t.db)
})

function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['scripts/calls.ts', ...args], {
      env: { PATH: process.env.PATH, DATABASE_URL: t.url },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (c: Buffer) => {
      stdout += c.toString()
    })
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString()
    })
    child.on('error', reject)
    child.on('close', (code) => resolve({ code, stdout, stderr }))
  })
}

async function inCampaign(campaignId: string, status: Parameters<typeof callIn>[1], future = false) {
  const id = await callIn(t, status)
  await sql`update calls set campaign_id = ${campaignId}::uuid,
              next_attempt_at = case when ${future} then now() + interval '2 hours' else next_attempt_at end
             where id = ${id}::uuid`.execute(t.db)
  return id
}

describe('campaign_overview', () => {
  it('shows each campaign with its calls by status, its cap, and what waits for its window', async () => {
    const k = await insertCampaign(t.db, { name: 'spring', maxConcurrentCalls: 4 })
    const empty = await insertCampaign(t.db, { name: 'empty' })
    await inCampaign(k.id, 'PENDING')
    await inCampaign(k.id, 'PENDING', true)
    await inCampaign(k.id, 'IN_PROGRESS')
    await inCampaign(k.id, 'COMPLETED')
    const { rows } = await sql<Record<string, unknown>>`
      select * from campaign_overview order by name desc`.execute(t.db)
    expect(rows[0]).toMatchObject({
      name: 'spring',
      max_concurrent_calls: 4,
      in_progress: 1,
      pending: 2,
      due_now: 1,
      waiting: 1,
      completed: 1,
      total: 4,
      done_percent: '25.0',
      completed_last_hour: 1,
    })
    expect(new Date(rows[0]?.next_eligible_at as Date).getTime()).toBeGreaterThan(Date.now() + 3_600_000)
    expect(rows[1]).toMatchObject({ id: empty.id, max_concurrent_calls: 10, total: 0, done_percent: null })
  })

  it('is documented in the catalog', async () => {
    const { rows } = await sql<{ d: string | null }>`
      select obj_description('campaign_overview'::regclass, 'pg_class') as d`.execute(t.db)
    expect(rows[0]?.d).toContain('One row per campaign')
  })
})

describe('npm run calls -- campaigns | pause | resume | suppress', () => {
  it('lists campaigns, pauses and resumes one', async () => {
    const k = await insertCampaign(t.db, { name: 'spring' })
    await inCampaign(k.id, 'PENDING')
    const list = await cli(['campaigns'])
    expect(list.code).toBe(0)
    expect(list.stdout).toMatch(/^ID\s+NAME\s+STATUS\s+PRIORITY\s+SLOTS/)
    expect(list.stdout).toContain('spring')
    const paused = await cli(['pause', k.id])
    expect(paused.code).toBe(0)
    expect(paused.stdout).toContain('PAUSED')
    expect(
      (await t.db.selectFrom('campaigns').select('status').where('id', '=', k.id).executeTakeFirstOrThrow()).status,
    ).toBe('PAUSED')
    expect((await cli(['resume', k.id])).code).toBe(0)
    expect(
      (await t.db.selectFrom('campaigns').select('status').where('id', '=', k.id).executeTakeFirstOrThrow()).status,
    ).toBe('ACTIVE')
  })

  it('refuses an unknown campaign with exit 1 and a missing id with exit 2', async () => {
    const r = await cli(['pause', '00000000-0000-4000-8000-000000000000'])
    expect(r.code).toBe(1)
    expect(r.stderr).toContain('no campaign')
    expect((await cli(['pause'])).code).toBe(2)
  })

  it('suppresses a phone and cancels its PENDING calls', async () => {
    const phone = NUMBERS.riyadh(9)
    const id = await callIn(t, 'PENDING', { to: phone })
    const r = await cli(['suppress', phone.replace('+966', '+966 '), '--reason', 'asked', '--json'])
    expect(r.code).toBe(0)
    expect(JSON.parse(r.stdout)).toEqual({ phone, canceled: 1 })
    const row = await t.db.selectFrom('calls').selectAll().where('id', '=', id).executeTakeFirstOrThrow()
    expect(row.status).toBe('CANCELED')
    expect(row.last_error?.code).toBe('SUPPRESSED')
    const s = await t.db.selectFrom('suppressions').selectAll().where('phone', '=', phone).executeTakeFirstOrThrow()
    expect(s.reason).toBe('asked')
    expect((await cli(['suppress', '12345'])).code).toBe(2)
  })
})

describe('Prometheus and the dashboard', () => {
  it('reports in-progress and pending per campaign with at most 20 campaign labels plus "other"', async () => {
    const app = await apiOnly(t)
    try {
      const ids: string[] = []
      for (let i = 0; i < 25; i++) {
        const k = await insertCampaign(t.db, { name: `k${i}` })
        ids.push(k.id)
        for (let j = 0; j <= i % 3; j++) await inCampaign(k.id, 'PENDING')
      }
      await inCampaign(ids[24] as string, 'IN_PROGRESS')
      const text = (await app.inject({ method: 'GET', url: '/metrics' })).body
      const pending = [...text.matchAll(/^orchestrator_campaign_calls_pending\{campaign="([^"]+)"\} (\d+)$/gm)]
      expect(pending).toHaveLength(21)
      expect(pending.some((m) => m[1] === 'other')).toBe(true)
      expect(pending.reduce((sum, m) => sum + Number(m[2]), 0)).toBe(25 + 8 * (0 + 1 + 2)) // i % 3 + 1 calls for i in 0..24
      expect(text).toContain(`orchestrator_campaign_calls_in_progress{campaign="${ids[24]}"} 1`)
      const dash = (await app.inject({ method: 'GET', url: '/api/v1/dashboard' })).json()
      expect(dash.data.campaigns).toHaveLength(20)
      expect(dash.data.campaigns[0]).toMatchObject({ name: 'k24', inProgress: 1, pending: 1, status: 'ACTIVE' })
    } finally {
      await app.close()
    }
  })
})
