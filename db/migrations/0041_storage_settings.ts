import { type Kysely, sql } from 'kysely'

// Storage settings for a table that is updated in place all day (calls) and one that only grows (call_events).
// - calls: every status change touches an indexed column (status is in calls_by_status_newest and in the partial
//   indexes' predicates), so those updates are never HOT; leaving 15 % of each page free still lets PostgreSQL put
//   the new row version on the same page, which keeps a call's versions together and its page count flat. Vacuum
//   after 1 % of the rows changed instead of 20 %: at 10 million rows the default would wait for 2 million dead
//   versions, and the claim walks calls_dispatch_queue past the dead entries of claimed calls until vacuum runs.
// - call_events: insert-only; vacuum (for the visibility map, so index-only scans stay index-only) and analyze
//   after 2 % new rows instead of 20 %.
// Retention (src/sql/retention.ts) deletes in batches; these thresholds let vacuum reclaim the space between runs.

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    alter table calls set (
      fillfactor = 85,
      autovacuum_vacuum_scale_factor = 0.01,
      autovacuum_analyze_scale_factor = 0.02,
      autovacuum_vacuum_insert_scale_factor = 0.02)
  `.execute(db)
  await sql`
    alter table call_events set (
      autovacuum_vacuum_scale_factor = 0.02,
      autovacuum_analyze_scale_factor = 0.02,
      autovacuum_vacuum_insert_scale_factor = 0.02)
  `.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`
    alter table calls reset (fillfactor, autovacuum_vacuum_scale_factor, autovacuum_analyze_scale_factor,
                             autovacuum_vacuum_insert_scale_factor)`.execute(db)
  await sql`
    alter table call_events reset (autovacuum_vacuum_scale_factor, autovacuum_analyze_scale_factor,
                                   autovacuum_vacuum_insert_scale_factor)`.execute(db)
}
