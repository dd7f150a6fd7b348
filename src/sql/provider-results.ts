import { type Kysely, sql } from 'kysely'
import type { DB } from '../db/database.ts'

/**
 * Keeps what the platform reported about attempt `attempt` on the call, for the API's `result`. Fenced on the
 * attempt, so a report for an earlier attempt cannot overwrite the latest one's. `applied`: the report ended the
 * attempt, its result replaces the call's. Otherwise (a duplicate) it only adds fields to a result with the same end
 * reason (Vapi's end-of-call-report, with cost and recording, after its status-update "ended"); a contradicting
 * duplicate changes nothing. Written after the attempt ends, outside its statement: the attempt's call_events row
 * already holds the same result (detail.result), committed with the end itself.
 */
export async function recordAttemptResult(
  db: Kysely<DB>,
  callId: string,
  attempt: number,
  result: Record<string, unknown>,
  applied: boolean,
): Promise<boolean> {
  const json = JSON.stringify(result)
  const r = applied
    ? await sql`
        update calls set last_result = ${json}::jsonb
         where id = ${callId}::uuid and attempts = ${attempt}::int`.execute(db)
    : await sql`
        update calls set last_result = ${json}::jsonb || last_result
         where id = ${callId}::uuid and attempts = ${attempt}::int
           and last_result ->> 'endReason' = ${json}::jsonb ->> 'endReason'
           and not (last_result @> ${json}::jsonb)`.execute(db)
  return Number(r.numAffectedRows ?? 0) > 0
}
