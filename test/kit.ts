import { type ChildProcess, spawn } from 'node:child_process'
import { once } from 'node:events'
import { sql } from 'kysely'
import { afterAll, beforeAll } from 'vitest'
import type { Call, Database } from '../src/db/database.ts'
import { createTestDb, type TestDb } from './db.ts'
import { waitFor } from './helpers.ts'

// The test kit: a database per file, the service as a real process, and the wait every end-to-end test ends with.

/**
 * A database cloned from the migrated template for this file, dropped after its last test. The handle is filled in
 * by beforeAll, so read its fields inside hooks and tests, not at the top of the file.
 */
export function useTestDb(): TestDb {
  const handle = {} as TestDb
  beforeAll(async () => {
    Object.assign(handle, await createTestDb())
  })
  afterAll(async () => {
    await handle.drop?.()
  })
  return handle
}

/** Waits until no call is PENDING or IN_PROGRESS, then returns every call. */
export async function waitAllFinal(db: Database, timeoutMs = 20_000): Promise<Call[]> {
  await waitFor(
    'every call to reach a final status',
    async () => {
      const { rows } = await sql<{ n: number }>`
        select count(*)::int as n from calls where status in ('PENDING', 'IN_PROGRESS')`.execute(db)
      return rows[0]?.n === 0
    },
    timeoutMs,
    100,
  )
  return db.selectFrom('calls').selectAll().execute()
}

export interface ServiceProcess {
  child: ChildProcess
  /** http://127.0.0.1:<port the process listens on> */
  url: string
  /** stdout and stderr so far, in arrival order. */
  output: string[]
  /** SIGTERM (or the given signal), then the exit code once the process has exited. */
  stop(signal?: NodeJS.Signals): Promise<number | null>
  kill(): Promise<void>
}

const running = new Set<ChildProcess>()
afterAll(() => {
  for (const c of running) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
})

/**
 * `node src/main.ts` as a child process with PORT=0 on loopback and the given environment (nothing is inherited but
 * PATH), resolved once it logs that it is ready. Killed with SIGKILL after the file's tests if still running.
 */
export async function startServiceProcess(
  env: Record<string, string>,
  readyWithinMs = 60_000,
  cwd = process.cwd(),
): Promise<ServiceProcess> {
  const child = spawn(process.execPath, ['src/main.ts'], {
    cwd,
    env: { PATH: process.env.PATH, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', LOG_FORMAT: 'json', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  running.add(child)
  child.on('exit', () => running.delete(child))
  const output: string[] = []
  child.stderr?.on('data', (chunk: Buffer) => output.push(chunk.toString()))
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`not ready within ${readyWithinMs} ms:\n${output.join('')}`)),
      readyWithinMs,
    )
    child.on('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`process exited (${code}) before it was ready:\n${output.join('')}`))
    })
    let pending = ''
    child.stdout?.on('data', (chunk: Buffer) => {
      output.push(chunk.toString())
      pending += chunk.toString()
      const lines = pending.split('\n')
      pending = lines.pop() ?? ''
      for (const line of lines) {
        const m = /"port":(\d+).*call orchestrator ready/.exec(line)
        if (m) {
          clearTimeout(timer)
          resolve(Number(m[1]))
        }
      }
    })
  })
  const exited = once(child, 'exit').then(([code]) => code as number | null)
  return {
    child,
    url: `http://127.0.0.1:${port}`,
    output,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal)
      return exited
    },
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
      await exited
    },
  }
}

/** Runs `node src/main.ts` to its end (for start-up failures): exit code and everything it printed. */
export async function runServiceProcess(
  env: Record<string, string>,
  withinMs = 60_000,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['src/main.ts'], {
    env: { PATH: process.env.PATH, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  running.add(child)
  let stdout = ''
  let stderr = ''
  child.stdout?.on('data', (c: Buffer) => {
    stdout += c.toString()
  })
  child.stderr?.on('data', (c: Buffer) => {
    stderr += c.toString()
  })
  const timer = setTimeout(() => child.kill('SIGKILL'), withinMs)
  const [code] = await once(child, 'exit')
  clearTimeout(timer)
  running.delete(child)
  return { code: code as number | null, stdout, stderr }
}
