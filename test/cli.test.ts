import { spawn } from 'node:child_process'
import { sql } from 'kysely'
import pg from 'pg'
import { beforeEach, describe, expect, inject, it } from 'vitest'
import { freePort } from '../src/db/embedded.ts'
import { saveDispatchSettings } from '../src/sql/settings.ts'
import { withDatabase } from './global-setup.ts'
import { useTestDb } from './kit.ts'
import { callIn } from './seed.ts'
import { resetTables } from './stack.ts'

// scripts/calls.ts as an operator runs it: `node scripts/calls.ts ...` in its own process, against the test database.

const t = useTestDb()

beforeEach(async () => {
  await resetTables(t)
  await sql`delete from dispatch_settings`.execute(t.db)
})

interface Run {
  code: number | null
  stdout: string
  stderr: string
}

function run(script: string, args: string[], env: Record<string, string>): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, ...args], {
      env: { PATH: process.env.PATH, ...env },
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

const calls = (args: string[], databaseUrl = t.url) => run('scripts/calls.ts', args, { DATABASE_URL: databaseUrl })

const json = async (args: string[]) => {
  const r = await calls([...args, '--json'])
  expect(r.stderr).toBe('')
  expect(r.code).toBe(0)
  return JSON.parse(r.stdout)
}
const statusOf = async (id: string) =>
  (await t.db.selectFrom('calls').select('status').where('id', '=', id).executeTakeFirstOrThrow()).status

describe('npm run calls -- status', () => {
  it('shows slots against the cap, the backlog and the calls in progress', async () => {
    await saveDispatchSettings(t.db, { maxConcurrentCalls: 10 })
    for (let i = 0; i < 3; i++) await callIn(t, 'PENDING', { ageSec: 65 })
    const live = [
      await callIn(t, 'IN_PROGRESS', { to: '+966501234567', ageSec: 20 }),
      await callIn(t, 'IN_PROGRESS', { ageSec: 5 }),
    ]
    await callIn(t, 'COMPLETED')

    const text = await calls(['status'])
    expect(text.code).toBe(0)
    expect(text.stdout).toContain('Slots     2 of 10 in progress, 8 free; longest 00:00:2')
    expect(text.stdout).toContain('Backlog   3 pending, 3 due now; oldest 00:01:0')
    expect(text.stdout).toContain('Ended     1 completed, 0 failed, 0 expired, 0 canceled (6 calls in all)')
    expect(text.stdout).toMatch(/CALL_ID\s+PHONE\s+ATTEMPT\s+AGE\s+PROVIDER_CALL_ID\s+STARTED_AT/)
    expect(text.stdout).toContain('+********4567')
    expect(text.stdout).not.toContain('+966501234567')

    const { overview, inProgress } = await json(['status'])
    expect(overview).toMatchObject({ pending: 3, in_progress: 2, max_concurrent_calls: 10, free_slots: 8, total: 6 })
    expect(inProgress.map((c: { call_id: string }) => c.call_id)).toEqual(live)
  })
})

describe('npm run calls -- list', () => {
  it('lists the newest calls first, filtered by status and limited', async () => {
    const a = await callIn(t, 'FAILED', { ageSec: 30 })
    await callIn(t, 'COMPLETED', { ageSec: 20 })
    const c = await callIn(t, 'FAILED', { ageSec: 10 })
    expect((await json(['list', '--status', 'failed'])).map((r: { id: string }) => r.id)).toEqual([c, a])
    expect(await json(['list', '--limit', '1'])).toHaveLength(1)
    const text = await calls(['list'])
    expect(text.stdout.split('\n')[0]).toMatch(/^ID\s+STATUS\s+ATTEMPTS\s+PHONE\s+SCRIPT_ID\s+CREATED_AT/)
    expect(text.stdout.trim().split('\n')).toHaveLength(4)
  })

  it.each([
    ['an unknown status', ['list', '--status', 'DONE']],
    ['a limit of 0', ['list', '--limit', '0']],
    ['an unknown option', ['list', '--colour']],
    ['an unknown command', ['frobnicate']],
  ])('refuses %s with exit code 2 and the usage', async (_what, args) => {
    const r = await calls(args)
    expect(r.code).toBe(2)
    expect(r.stderr).toContain('Usage: npm run calls --')
  })
})

describe('npm run calls -- show', () => {
  it('prints the call and its timeline in order', async () => {
    const id = await callIn(t, 'PENDING')
    await sql`
      insert into call_events (call_id, attempt, kind, status, detail)
      values (${id}::uuid, 1, 'CLAIMED', 'IN_PROGRESS', '{}'),
             (${id}::uuid, 1, 'WEBHOOK', 'BUSY', '{"outcome": "applied", "next": "PENDING"}')`.execute(t.db)
    const { call, timeline } = await json(['show', id])
    expect(call).toMatchObject({ id, status: 'PENDING' })
    expect(timeline.map((e: { kind: string }) => e.kind)).toEqual(['CREATED', 'CLAIMED', 'WEBHOOK'])
    const text = await calls(['show', id])
    expect(text.stdout).toContain('Timeline:')
    expect(text.stdout).toMatch(/WEBHOOK\s+BUSY\s+applied\s+\{"next":"PENDING"\}/)
  })

  it('answers an unknown call with exit code 1', async () => {
    const r = await calls(['show', '7b0c2f7e-0000-4000-8000-000000000000'])
    expect(r.code).toBe(1)
    expect(r.stderr).toContain('no call 7b0c2f7e-0000-4000-8000-000000000000')
  })
})

describe('npm run calls -- retry', () => {
  it('puts a FAILED call back to PENDING through retry_call, and says so', async () => {
    const id = await callIn(t, 'FAILED', { attempts: 3 })
    const r = await calls(['retry', id])
    expect(r.code).toBe(0)
    expect(r.stdout).toContain('is PENDING again; its next dial is attempt 4')
    expect(await statusOf(id)).toBe('PENDING')
    const event = await t.db
      .selectFrom('call_events')
      .select('detail')
      .where('call_id', '=', id)
      .where('kind', '=', 'RETRY_REQUESTED')
      .executeTakeFirstOrThrow()
    expect(event.detail).toMatchObject({ from: 'FAILED', via: 'calls-cli' })
  })

  it('refuses a COMPLETED call with exit code 1, changing nothing', async () => {
    const id = await callIn(t, 'COMPLETED')
    const r = await calls(['retry', id])
    expect(r.code).toBe(1)
    expect(r.stderr).toContain('is COMPLETED: only FAILED, EXPIRED or CANCELED calls can be retried')
    expect(await statusOf(id)).toBe('COMPLETED')
  })

  it('refuses something that is not a call id', async () => {
    expect((await calls(['retry', 'not-a-uuid'])).code).toBe(2)
  })
})

describe('npm run calls -- cancel', () => {
  it('cancels every PENDING call with --all-pending and leaves calls in progress alone', async () => {
    const pending = [await callIn(t, 'PENDING'), await callIn(t, 'PENDING')]
    const live = await callIn(t, 'IN_PROGRESS')
    expect(await json(['cancel', '--all-pending'])).toEqual({ canceled: 2 })
    for (const id of pending) expect(await statusOf(id)).toBe('CANCELED')
    expect(await statusOf(live)).toBe('IN_PROGRESS')
    expect((await calls(['cancel', '--all-pending'])).stdout).toContain('canceled 0 PENDING calls')
  })

  it('cancels nothing without --all-pending', async () => {
    const id = await callIn(t, 'PENDING')
    const r = await calls(['cancel'])
    expect(r.code).toBe(2)
    expect(r.stderr).toContain('cancel needs --all-pending')
    expect(await statusOf(id)).toBe('PENDING')
  })
})

describe('connecting', () => {
  it('says which database it could not reach, without its password', async () => {
    const r = await calls(['status'], `postgres://postgres:s3cret@127.0.0.1:${await freePort()}/orchestrator`)
    expect(r.code).toBe(1)
    expect(r.stderr).toContain('cannot reach the database at postgres://postgres:***@127.0.0.1:')
    expect(r.stderr).not.toContain('s3cret')
  })

  it('prints the usage with --help', async () => {
    const r = await calls(['--help'])
    expect(r.code).toBe(0)
    expect(r.stdout).toContain('cancel --all-pending')
  })
})

describe('npm run migrate', () => {
  it('migrates an empty database once, then finds it up to date; without DATABASE_URL it refuses', async () => {
    const adminUrl = inject('adminUrl')
    const name = `t_migrate_${process.pid}`
    const admin = new pg.Client({ connectionString: adminUrl })
    await admin.connect()
    try {
      await admin.query(`drop database if exists ${name}`)
      await admin.query(`create database ${name}`)
      const env = { DATABASE_URL: withDatabase(adminUrl, name) }
      const first = await run('scripts/migrate.ts', [], env)
      expect(first).toMatchObject({ code: 0, stderr: '' })
      expect(first.stdout).toContain('applied: 0001_calls')
      const again = await run('scripts/migrate.ts', [], env)
      expect(again).toMatchObject({ code: 0, stdout: 'the database is up to date\n' })
      const check = new pg.Client({ connectionString: env.DATABASE_URL })
      await check.connect()
      const { rows } = await check.query("select to_regclass('calls') is not null as has_calls")
      await check.end()
      expect(rows[0].has_calls).toBe(true)
    } finally {
      await admin.query(`drop database if exists ${name} with (force)`)
      await admin.end()
    }
    const refused = await run('scripts/migrate.ts', [], {})
    expect(refused.code).toBe(2)
    expect(refused.stderr).toContain('DATABASE_URL is not set')
  })
})
