import { type Kysely, sql } from 'kysely'
import type { DB } from '../db/database.ts'

/**
 * A duplicate report of attempt `attempt` adds its fields to the call's `result` when it names the same end reason
 * (Vapi's end-of-call-report, with cost and recording, after its status-update "ended"); a contradicting duplicate
 * changes nothing. Fenced on the attempt, so a report for an earlier attempt cannot touch the latest one's. The report
 * that ended the attempt wrote the result in the ending statement itself (sql/attempts.ts, detail.result), so that
 * the final client event's copy of the call carries it.
 */
export async function mergeDuplicateResult(
  db: Kysely<DB>,
  callId: string,
  attempt: number,
  result: Record<string, unknown>,
): Promise<boolean> {
  const json = JSON.stringify(result)
  const r = await sql`
    update calls set last_result = ${json}::jsonb || last_result
     where id = ${callId}::uuid and attempts = ${attempt}::int
       and last_result ->> 'endReason' = ${json}::jsonb ->> 'endReason'
       and not (last_result @> ${json}::jsonb)`.execute(db)
  return Number(r.numAffectedRows ?? 0) > 0
}
