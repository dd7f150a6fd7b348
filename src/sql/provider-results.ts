import { type Kysely, sql } from 'kysely'
import type { DB } from '../db/database.ts'

/**
 * Keeps what the platform reported about attempt `attempt` on the call, for the API's `result`. Fenced on the
 * attempt, so a late report for an earlier attempt cannot overwrite the latest one; not on the status, so a richer
 * second report of the same attempt (Vapi's end-of-call-report after its status-update "ended") replaces the first.
 * Written after the attempt ends, outside its statement: the attempt's call_events row already holds the same result
 * (detail.result), committed with the end itself.
 */
export async function recordAttemptResult(
  db: Kysely<DB>,
  callId: string,
  attempt: number,
  result: Record<string, unknown>,
): Promise<boolean> {
  const r = await sql`
    update calls set last_result = ${JSON.stringify(result)}::jsonb
     where id = ${callId}::uuid and attempts = ${attempt}::int
  `.execute(db)
  return Number(r.numAffectedRows ?? 0) > 0
}
