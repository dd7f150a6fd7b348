import { type ChildProcess, spawn } from 'node:child_process'
import { once } from 'node:events'
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import pg from 'pg'
import { type EmbeddedDb, freePort, startEmbeddedDb } from '../../src/db/embedded.ts'
import { sleep } from './stats.ts'

// What every benchmark stands on: a PostgreSQL server with a database per phase, and the service as a real child
// process, started as `npm start` does. The server is an embedded PostgreSQL with default durability settings (fsync
// and synchronous_commit on), thrown away after the run, or an existing server named by an admin URL (--pg-url=),
// where the bench creates its own databases (all named bench_*) and drops them when it ends, except those it keeps.

export interface BenchDb {
  adminUrl: string
  version: string
  /** 'embedded' or the admin URL's host:port. */
  server: string
  /** The server's settings that bear on the figures (durability, memory, JIT, preloaded libraries). */
  settings: Record<string, string>
  /**
   * Creates an empty database and returns its URL; the service migrates it on start. `reuse`: the database must
   * exist already and is kept as it is (a filled history database from an earlier run).
   */
  createDatabase(name: string, o?: { reuse?: boolean }): Promise<string>
  /** Leaves the database on the server when the run ends (an external server only; an embedded one is deleted). */
  keepDatabase(name: string): void
  stop(): Promise<void>
}

const REPORTED_SETTINGS = [
  'fsync',
  'synchronous_commit',
  'full_page_writes',
  'shared_buffers',
  'work_mem',
  'effective_cache_size',
  'max_connections',
  'jit',
  'shared_preload_libraries',
]

async function serverFacts(admin: pg.Client) {
  const { rows } = await admin.query<{ name: string; setting: string }>(
    `select name, current_setting(name) as setting from unnest($1::text[]) name
     union all select 'server_version', current_setting('server_version')`,
    [REPORTED_SETTINGS],
  )
  const settings = Object.fromEntries(rows.map((r) => [r.name, r.setting]))
  const version = settings.server_version ?? 'unknown'
  delete settings.server_version
  return { version, settings }
}

/** The bench's databases on `adminUrl`'s server; names must be plain identifiers starting with bench_. */
function databasesOn(admin: pg.Client, adminUrl: string) {
  const created = new Set<string>()
  const kept = new Set<string>()
  const check = (name: string) => {
    if (!/^bench_[a-z0-9_]+$/.test(name)) throw new Error(`not a bench database name: ${name}`)
  }
  return {
    async create(name: string, o: { reuse?: boolean } = {}) {
      check(name)
      if (o.reuse) {
        const { rowCount } = await admin.query('select 1 from pg_database where datname = $1', [name])
        if (!rowCount) throw new Error(`database ${name} does not exist: fill it first (--history-fill)`)
        kept.add(name)
      } else {
        await admin.query(`drop database if exists ${name} with (force)`)
        await admin.query(`create database ${name}`)
        created.add(name)
      }
      const u = new URL(adminUrl)
      u.pathname = `/${name}`
      return u.toString()
    },
    keep(name: string) {
      check(name)
      kept.add(name)
    },
    async dropCreated() {
      for (const name of created) if (!kept.has(name)) await admin.query(`drop database if exists ${name} with (force)`)
    },
  }
}

export async function startBenchDb(settings: Record<string, string> = {}): Promise<BenchDb> {
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'orchestrator-bench-'))
  await chmod(tmp, 0o755) // reachable by the `postgres` user when run as root
  let embedded: EmbeddedDb
  try {
    embedded = await startEmbeddedDb({
      dir: path.join(tmp, 'pg'),
      port: await freePort(),
      database: 'postgres',
      persistent: false,
      settings,
    })
  } catch (err) {
    await rm(tmp, { recursive: true, force: true })
    throw err
  }
  const admin = new pg.Client({ connectionString: embedded.url })
  await admin.connect()
  const facts = await serverFacts(admin)
  const dbs = databasesOn(admin, embedded.url)
  return {
    adminUrl: embedded.url,
    server: 'embedded',
    ...facts,
    createDatabase: dbs.create,
    keepDatabase() {
      throw new Error('an embedded server is deleted after the run: keep a database on a --pg-url= server')
    },
    async stop() {
      await admin.end()
      await embedded.stop()
      await rm(tmp, { recursive: true, force: true })
    },
  }
}

/** An existing server (`adminUrl` connects as a role that may create databases); its bench_* databases are dropped. */
export async function connectBenchDb(adminUrl: string): Promise<BenchDb> {
  const admin = new pg.Client({ connectionString: adminUrl })
  await admin.connect()
  const facts = await serverFacts(admin)
  const dbs = databasesOn(admin, adminUrl)
  const u = new URL(adminUrl)
  return {
    adminUrl,
    server: `${u.hostname}:${u.port || 5432}`,
    ...facts,
    createDatabase: dbs.create,
    keepDatabase: dbs.keep,
    async stop() {
      try {
        await dbs.dropCreated()
      } finally {
        await admin.end()
      }
    },
  }
}

export const BENCH_API_KEY = 'bench-api-key'
export const BENCH_WEBHOOK_SECRET = 'bench-webhook-secret'

export interface ServiceProcess {
  url: string
  pid: number
  /** stderr and warn+ log lines, for a failure message. */
  logs: string[]
  stop(): Promise<void>
}

/**
 * The service as `npm start` runs it: the Node flags of package.json's start script (its V8 heap sizes), then
 * `extraNodeArgs`, then src/main.ts.
 */
async function startCommandFlags(): Promise<string[]> {
  const pkg = JSON.parse(await readFile('package.json', 'utf8')) as { scripts: { start: string } }
  const words = pkg.scripts.start.split(/\s+/)
  if (words[0] !== 'node' || words.at(-1) !== 'src/main.ts')
    throw new Error(`package.json start script is not "node [flags] src/main.ts": ${pkg.scripts.start}`)
  return words.slice(1, -1)
}

/** The service (`npm start`'s command) with `env` on a free port; resolves once /health answers 200. */
export async function startServiceProcess(
  env: Record<string, string>,
  extraNodeArgs: string[] = [],
): Promise<ServiceProcess> {
  const port = await freePort()
  const args = [...(await startCommandFlags()), ...extraNodeArgs, 'src/main.ts']
  const child: ChildProcess = spawn(process.execPath, args, {
    env: {
      PATH: process.env.PATH,
      // Production settings: client API keys and signed webhooks, as a deployment runs them.
      NODE_ENV: 'production',
      API_KEYS: BENCH_API_KEY,
      WEBHOOK_SECRET: BENCH_WEBHOOK_SECRET,
      PORT: String(port),
      HOST: '127.0.0.1',
      WEBHOOK_BASE_URL: `http://127.0.0.1:${port}`,
      LOG_LEVEL: 'warn',
      RATE_LIMIT_MAX: '1000000',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const logs: string[] = []
  const keep = (chunk: Buffer) => {
    logs.push(chunk.toString())
    if (logs.length > 200) logs.shift()
  }
  child.stdout?.on('data', keep)
  child.stderr?.on('data', keep)
  const url = `http://127.0.0.1:${port}`
  const deadline = Date.now() + 60_000
  for (;;) {
    if (child.exitCode !== null)
      throw new Error(`service exited (${child.exitCode}) before it was ready:\n${logs.join('')}`)
    try {
      const res = await fetch(`${url}/health`)
      if (res.status === 200) break
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL')
      throw new Error(`service not ready after 60 s:\n${logs.join('')}`)
    }
    await sleep(50)
  }
  return {
    url,
    pid: child.pid as number,
    logs,
    async stop() {
      if (child.exitCode !== null) return
      const exited = once(child, 'exit')
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000)
      await exited
      clearTimeout(timer)
    },
  }
}

/**
 * Peak resident memory of a process over a window: VmHWM after resetting it through /proc/<pid>/clear_refs (Linux),
 * and the largest VmRSS sampled every 50 ms as a fallback where the reset is not allowed.
 */
export function watchRss(pid: number) {
  let maxRssKb = 0
  let resetOk = false
  const statusFile = `/proc/${pid}/status`
  const kb = (text: string, field: string) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(text)?.[1] ?? 0)
  const sample = async () => {
    try {
      maxRssKb = Math.max(maxRssKb, kb(await readFile(statusFile, 'utf8'), 'VmRSS'))
    } catch {
      // the process is gone
    }
  }
  const started = (async () => {
    try {
      await writeFile(`/proc/${pid}/clear_refs`, '5')
      resetOk = true
    } catch {
      resetOk = false
    }
    await sample()
  })()
  const timer = setInterval(() => void sample(), 50)
  return {
    /** Stops sampling; the peak in MB, and how it was measured. */
    async stop(): Promise<{ peakMb: number; method: string }> {
      clearInterval(timer)
      await started
      await sample()
      let hwmKb = 0
      if (resetOk) hwmKb = kb(await readFile(statusFile, 'utf8').catch(() => ''), 'VmHWM')
      const peakKb = Math.max(hwmKb, maxRssKb)
      return {
        peakMb: Math.round((peakKb / 1024) * 10) / 10,
        method: resetOk ? 'VmHWM (reset via clear_refs) and VmRSS every 50 ms' : 'VmRSS every 50 ms',
      }
    },
  }
}
