import type { FastifyInstance } from 'fastify'
import { type Config, loadConfig } from '../src/config.ts'
import { createWakeup } from '../src/dispatch/wakeup.ts'
import { buildApp } from '../src/http/app.ts'
import { createLogger } from '../src/log.ts'
import type { TestDb } from './db.ts'

export const log = createLogger(process.env.TEST_LOG_LEVEL ?? 'silent', 'test')

export function testConfig(env: Record<string, string> = {}): Config {
  return loadConfig({ NODE_ENV: 'test', PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'silent', ...env })
}

/** The HTTP app alone, on a test database, with no dispatcher: calls stay where the API puts them. */
export async function apiOnly(t: TestDb, env: Record<string, string> = {}): Promise<FastifyInstance> {
  const config = testConfig({ DATABASE_URL: t.url, ...env })
  const app = await buildApp({ config, db: t.db, log, wakeup: createWakeup(undefined, undefined) })
  await app.ready()
  return app
}

export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 15_000,
  everyMs = 25,
): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await probe()
    if (v !== undefined && v !== false) return v
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, everyMs))
  }
}

let phoneSeq = 0
/** Distinct valid Saudi mobile numbers. */
export function phone(n = phoneSeq++): string {
  return `+9665${String(10_000_000 + (n % 89_999_999)).padStart(8, '0')}`
}
