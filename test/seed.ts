import { sql } from 'kysely'
import type { CallStatus } from '../src/dispatch/call-state.ts'
import { insertCalls } from '../src/sql/calls.ts'
import type { TestDb } from './db.ts'
import { phone } from './helpers.ts'

/** The input sql/calls.ts takes for a plain call (no campaign, schedule or idempotency key) to `to`. */
export const plainCall = (to: string = phone()) => ({
  toPhone: to,
  scriptId: 's',
  metadata: {},
  expiresAt: null,
  idempotencyKey: null,
  requestHash: null,
  campaignId: null,
  scheduledAt: null,
  timeZones: null,
})

/**
 * A call created through sql/calls.ts, then put straight into `status` (test set-up only: the service never writes
 * like this). ageSec moves its creation, next attempt and start that far into the past.
 */
export async function callIn(
  t: TestDb,
  status: CallStatus,
  o: { to?: string; attempts?: number; ageSec?: number; expiresInSec?: number } = {},
): Promise<string> {
  const [created] = await insertCalls(t.db, [plainCall(o.to)], 3600_000)
  const id = created?.call.id as string
  const ago = `${o.ageSec ?? 0} seconds`
  await sql`
    update calls
       set status = ${status}, attempts = ${o.attempts ?? (status === 'PENDING' ? 0 : 1)}::int,
           created_at = now() - ${ago}::interval, next_attempt_at = now() - ${ago}::interval,
           started_at = case when ${status} = 'PENDING' then null else now() - ${ago}::interval end,
           ended_at = case when ${status} in ('PENDING', 'IN_PROGRESS') then null else now() end,
           expires_at = now() + make_interval(secs => ${o.expiresInSec ?? 3600}::float8)
     where id = ${id}::uuid`.execute(t.db)
  return id
}
