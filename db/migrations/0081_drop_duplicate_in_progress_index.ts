import { type Kysely, sql } from 'kysely'

// calls_in_progress_started (migration 0030, for reconciliation) is the same index as calls_in_progress_by_started_at
// (migration 0001): (started_at) where status = 'IN_PROGRESS'. Every claim and every ended attempt wrote both.
// Reconciliation's scan uses the older one.

export async function up(db: Kysely<any>): Promise<void> {
  await sql`drop index calls_in_progress_started`.execute(db)
  await sql`comment on index calls_in_progress_by_started_at is ${sql.lit(
    'Calls in progress by start: the count the claim caps, the timeout sweep, and reconciliation (oldest first).',
  )}`.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`create index calls_in_progress_started on calls (started_at) where status = 'IN_PROGRESS'`.execute(db)
  await sql`comment on index calls_in_progress_started is ${sql.lit('Reconciliation: calls in progress, oldest first.')}`.execute(
    db,
  )
  await sql`comment on index calls_in_progress_by_started_at is null`.execute(db)
}
