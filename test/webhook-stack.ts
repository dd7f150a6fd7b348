import { afterAll, afterEach, beforeAll, expect } from 'vitest'
import { deleteEndpoint } from '../src/notify/endpoints.ts'
import type { TestDb } from './db.ts'
import { useTestDb } from './kit.ts'
import { type Receiver, type Respond, startReceiver } from './receiver.ts'
import { resetTables, type Stack, startStack } from './stack.ts'

// The set-up of the client webhook tests: the service in-process on a database of the file's own, retry delays of a
// few hundred milliseconds, real HTTP receivers on 127.0.0.1 closed after each test, and no endpoint or call left
// over from one test to the next.

export const WEBHOOK_ENV = {
  WEBHOOK_RETRY_BASE_DELAY_MS: '100',
  WEBHOOK_RETRY_MAX_DELAY_MS: '400',
  WEBHOOK_TIMEOUT_MS: '1000',
  WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true',
  RATE_LIMIT_MAX: '1000000',
}

export interface WebhookStack {
  t: TestDb
  /** Filled by beforeAll; restart() swaps the service under it. */
  s: Stack
  restart(env?: Record<string, string>): Promise<void>
  receiver(respond?: Respond, port?: number): Promise<Receiver>
  endpoint(body: object, stack?: Stack): Promise<{ id: string; secret: string }>
}

export function useWebhookStack(afterEachTest?: (t: TestDb) => Promise<void>): WebhookStack {
  const t = useTestDb()
  const s = {} as Stack
  const receivers: Receiver[] = []
  beforeAll(async () => {
    Object.assign(s, await startStack(t, WEBHOOK_ENV))
  })
  afterEach(async () => {
    for (const r of receivers.splice(0)) await r.close()
    for (const { id } of await t.db.selectFrom('webhook_endpoints').select('id').execute())
      await deleteEndpoint(t.db, id)
    await resetTables(t)
    await afterEachTest?.(t)
  })
  afterAll(async () => {
    await s.stop?.()
  })
  return {
    t,
    s,
    async restart(env = WEBHOOK_ENV) {
      Object.assign(s, await startStack(t, env))
    },
    async receiver(respond, port) {
      const r = await startReceiver(respond, port)
      receivers.push(r)
      return r
    },
    async endpoint(body, stack = s) {
      const res = await stack.api('POST', '/api/v1/webhook-endpoints', body)
      expect(res.statusCode).toBe(201)
      return res.body.data
    },
  }
}
