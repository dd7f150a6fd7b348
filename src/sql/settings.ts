import { type Kysely, sql } from 'kysely'
import type { DB } from '../db/database.ts'

// dispatch_settings (migration 0003) holds the runtime settings SQL needs to read: the cap, for call_overview and
// the metrics. Each process that dispatches writes its own configuration at start-up; the last one started wins,
// which is right as long as every dispatcher runs with the same MAX_CONCURRENT_CALLS (they should).

export interface DispatchSettings {
  maxConcurrentCalls: number
}

export async function saveDispatchSettings(db: Kysely<DB>, s: DispatchSettings): Promise<void> {
  await sql`
    insert into dispatch_settings (singleton, max_concurrent_calls) values (true, ${s.maxConcurrentCalls}::int)
    on conflict (singleton) do update
      set max_concurrent_calls = excluded.max_concurrent_calls, updated_at = now()
  `.execute(db)
}

export async function readDispatchSettings(db: Kysely<DB>): Promise<DispatchSettings | undefined> {
  const { rows } = await sql<{ max_concurrent_calls: number }>`
    select max_concurrent_calls from dispatch_settings`.execute(db)
  return rows[0] ? { maxConcurrentCalls: rows[0].max_concurrent_calls } : undefined
}
