import { type ChildProcess, spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { sql } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type Simulator, startSimulator } from '../src/providers/simulator.ts'
import { createTestDb, type TestDb } from './db.ts'
import { phone, waitFor } from './helpers.ts'
import { dialsPerCall } from './stack.ts'

// [pgbouncer] Six service processes (3 ROLE=api, 3 ROLE=worker) whose DATABASE_URL is PgBouncer in transaction
// pooling mode (Debian's 1.18: no protocol-level prepared statements), with DATABASE_DIRECT_URL for pg-boss's
// LISTEN connection and the migrations, as docs/scaling.md and compose.yaml deploy them. Over 1,000 short calls,
// with PgBouncer restarted in the middle: the global cap holds, no phone has two calls at once, and the provider
// received exactly one dial per attempt. Skipped, saying why, only where no pgbouncer binary exists
// (.ci/run installs Debian's package when it runs as root).

const PGBOUNCER = ['/usr/sbin/pgbouncer', '/usr/bin/pgbouncer'].find((p) => existsSync(p))
const CAP = 30
const CALLS = 1000

let t: TestDb
let sim: Simulator | undefined
let bouncer: ChildProcess | undefined
let dir: string | undefined
const procs: ChildProcess[] = []

afterAll(async () => {
  for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL')
  if (bouncer?.exitCode === null) bouncer.kill('SIGKILL')
  await sim?.close()
  await t?.drop()
  if (dir) await rm(dir, { recursive: true, force: true })
})

describe.skipIf(!PGBOUNCER)(
  `[pgbouncer] six instances through PgBouncer in transaction mode${PGBOUNCER ? '' : ' (skipped: no pgbouncer binary; apt-get install pgbouncer)'}`,
  () => {
    let port = 0
    let ini = ''

    beforeAll(async () => {
      t = await createTestDb()
      dir = await mkdtemp(path.join(os.tmpdir(), 'scale-pgbouncer-'))
      port = await freePortIn(6432, 6440)
      const server = new URL(t.url)
      ini = path.join(dir, 'pgbouncer.ini')
      const database = server.pathname.slice(1)
      // Debian's pgbouncer refuses to run as root: as root it runs as the postgres user, which must read these files.
      await writeFile(path.join(dir, 'users.txt'), `"${decodeURIComponent(server.username)}" ""\n`)
      await writeFile(
        ini,
        [
          '[databases]',
          `${database} = host=${server.hostname} port=${server.port} dbname=${database} user=${decodeURIComponent(server.username)} password=${decodeURIComponent(server.password)}`,
          '[pgbouncer]',
          'listen_addr = 127.0.0.1',
          `listen_port = ${port}`,
          'auth_type = trust',
          `auth_file = ${path.join(dir, 'users.txt')}`,
          'pool_mode = transaction',
          'max_client_conn = 400',
          'default_pool_size = 20',
          'reserve_pool_size = 5',
          'server_reset_query =',
          'ignore_startup_parameters = extra_float_digits',
          `unix_socket_dir =`,
          `logfile = ${path.join(dir, 'pgbouncer.log')}`,
          `pidfile = ${path.join(dir, 'pgbouncer.pid')}`,
          '',
        ].join('\n'),
      )
      await chmod(dir, 0o777)
      for (const f of ['users.txt', 'pgbouncer.ini']) await chmod(path.join(dir, f), 0o644)
      await startBouncer()
    })

    async function startBouncer() {
      const asRoot = process.getuid?.() === 0
      bouncer = spawn(PGBOUNCER as string, asRoot ? ['-u', 'postgres', ini] : [ini], { stdio: 'ignore' })
      await waitFor('pgbouncer to listen', () => canConnect(port), 10_000, 50)
    }

    async function stopBouncer() {
      const b = bouncer as ChildProcess
      const exited = new Promise((r) => b.once('exit', r))
      b.kill('SIGTERM') // immediate shutdown: every client and server connection is cut
      await exited
    }

    async function startProcess(
      env: Record<string, string>,
    ): Promise<{ child: ChildProcess; url: string; logs: string[] }> {
      const pooled = new URL(t.url)
      pooled.port = String(port)
      pooled.hostname = '127.0.0.1'
      const child = spawn(process.execPath, ['src/main.ts'], {
        env: {
          PATH: process.env.PATH,
          DATABASE_URL: pooled.toString(),
          DATABASE_DIRECT_URL: t.url,
          DATABASE_POOLER: 'pgbouncer',
          AI_CALL_API_URL: (sim as Simulator).url,
          PORT: '0',
          HOST: '127.0.0.1',
          LOG_LEVEL: 'info',
          MAX_CONCURRENT_CALLS: String(CAP),
          RETRY_BASE_DELAY_MS: '200',
          RETRY_MAX_DELAY_MS: '1000',
          PROVIDER_TIMEOUT_MS: '2000',
          CALL_TIMEOUT_MS: '8000',
          SWEEP_INTERVAL_MS: '200',
          DB_POOL_MAX: '5',
          ...env,
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      })
      procs.push(child)
      const logs: string[] = []
      const url = await new Promise<string>((resolve, reject) => {
        child.on('exit', (code) => reject(new Error(`process exited (${code}) before it was ready:\n${logs.join('')}`)))
        child.stdout?.on('data', (chunk: Buffer) => {
          logs.push(chunk.toString())
          const m = /"port":(\d+).*call orchestrator ready/.exec(chunk.toString())
          if (m) resolve(`http://127.0.0.1:${m[1]}`)
        })
        child.stderr?.on('data', (chunk: Buffer) => logs.push(chunk.toString()))
      })
      return { child, url, logs }
    }

    it('keep the cap, one call per phone and one dial per attempt over 1,000 calls, across a PgBouncer restart', async () => {
      sim = await startSimulator({ callDurationMs: 400, webhookRetry: { attempts: 8, baseDelayMs: 250 } })
      const apis = await Promise.all([1, 2, 3].map(() => startProcess({ ROLE: 'api' })))
      // a worker's provider calls back to an API instance, as through a load balancer in front of the API
      const workers = await Promise.all(apis.map((api) => startProcess({ ROLE: 'worker', WEBHOOK_BASE_URL: api.url })))
      // 1,000 calls over 800 phones, created through all three API instances
      const ids: string[] = []
      for (let i = 0; i < CALLS; i += 250) {
        const api = apis[(i / 250) % 3] as { url: string }
        const calls = Array.from({ length: 250 }, (_, j) => ({ to: phone(50_000 + ((i + j) % 800)), scriptId: 'pool' }))
        const res = await fetch(`${api.url}/api/v1/calls/batch`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ calls }),
        })
        expect(res.status).toBe(201)
        ids.push(...((await res.json()) as { data: { ids: string[] } }).data.ids)
      }

      await waitFor('a third of the calls to finish', async () => (await finished()) >= CALLS / 3, 120_000, 100)
      await stopBouncer()
      await new Promise((r) => setTimeout(r, 1000))
      await startBouncer()

      try {
        await waitFor('every call to reach a final status', async () => (await finished()) === CALLS, 120_000, 200)
      } catch (err) {
        const { rows } = await sql`select status, count(*)::int as n from calls group by 1`.execute(t.db)
        console.error(
          JSON.stringify(rows),
          [...apis, ...workers].map((p) => p.logs.slice(-8).join('')).join('\n-----\n'),
        )
        throw err
      }
      // reads through the pooler work again on every API instance
      for (const api of apis) expect((await fetch(`${api.url}/api/v1/calls?limit=1`)).status).toBe(200)

      const calls = await t.db.selectFrom('calls').selectAll().execute()
      expect(calls).toHaveLength(CALLS)
      const s = sim.stats()
      expect(s.maxActive).toBeLessThanOrEqual(CAP)
      // the slots were contended, not just respected (on a machine loaded with other work the dispatchers may not fill
      // every slot of 30 with calls of 400 ms, so this asks for two thirds)
      expect(s.maxActive).toBeGreaterThanOrEqual((CAP * 2) / 3)
      expect(s.phoneOverlaps).toBe(0)
      expect(s.duplicates).toBe(0)
      const dials = dialsPerCall(sim)
      let undialedClaims = 0
      for (const c of calls) {
        const keys = dials.get(c.id) ?? []
        expect(new Set(keys).size).toBe(keys.length) // no attempt dialed twice
        // attempts == dials, except a claim whose commit PgBouncer's shutdown cut off before the worker read it: its
        // attempt is counted, never dialed, and the timeout settles it (as when a worker is killed, processes.test.ts)
        if (c.last_error?.code === 'CALL_TIMEOUT' && keys.length === c.attempts - 1) undialedClaims++
        else expect(keys.length).toBe(c.attempts)
      }
      expect(undialedClaims).toBeLessThanOrEqual(CAP)
      expect(calls.filter((c) => c.status === 'COMPLETED').length).toBeGreaterThan(CALLS * 0.9)

      for (const p of [...apis, ...workers]) p.child.kill('SIGTERM')
      await Promise.all(
        [...apis, ...workers].map(
          (p) => new Promise((r) => (p.child.exitCode === null ? p.child.once('exit', r) : r(null))),
        ),
      )
    }, 400_000)
  },
)

async function finished(): Promise<number> {
  const { rows } = await sql<{ n: number }>`
    select count(*)::int as n from calls where status not in ('PENDING', 'IN_PROGRESS')`.execute(t.db)
  return rows[0]?.n ?? 0
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1')
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
}

async function freePortIn(from: number, to: number): Promise<number> {
  for (let p = from; p <= to; p++) if (!(await canConnect(p))) return p
  throw new Error(`no free port in ${from}-${to}`)
}
