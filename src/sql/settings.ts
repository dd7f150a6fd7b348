import { type Kysely, sql } from 'kysely'
import type { DB } from '../db/database.ts'

// dispatch_settings (migration 0003) holds the runtime settings SQL needs to read: the cap, for call_overview and
// the metrics. Each process that dispatches writes its own configuration at start-up; the last one started wins,
// which is right as long as every dispatcher runs with the same MAX_CONCURRENT_CALLS. Each claim keeps the cap of
// the process that runs it, so instances with different caps let the largest win: service.ts warns at start-up
// and the dispatcher's sweep warns while it lasts.

export interface DispatchSettings {
  maxConcurrentCalls: number
}

/** Saves this process's settings and returns the ones it replaced (undefined on a fresh database). */
export async function saveDispatchSettings(db: Kysely<DB>, s: DispatchSettings): Promise<DispatchSettings | undefined> {
  const { rows } = await sql<{ previous: number | null }>`
    with previous as (select max_concurrent_calls from dispatch_settings)
    insert into dispatch_settings (singleton, max_concurrent_calls) values (true, ${s.maxConcurrentCalls}::int)
    on conflict (singleton) do update
      set max_concurrent_calls = excluded.max_concurrent_calls, updated_at = now()
    returning (select max_concurrent_calls from previous) as previous
  `.execute(db)
  const previous = rows[0]?.previous
  return previous === null || previous === undefined ? undefined : { maxConcurrentCalls: previous }
}

export async function readDispatchSettings(db: Kysely<DB>): Promise<DispatchSettings | undefined> {
  const { rows } = await sql<{ max_concurrent_calls: number }>`
    select max_concurrent_calls from dispatch_settings`.execute(db)
  return rows[0] ? { maxConcurrentCalls: rows[0].max_concurrent_calls } : undefined
}
