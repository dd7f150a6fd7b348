import { type Kysely, sql } from 'kysely'

// Issue 13: what a platform reported about a call's last attempt (calls.last_result), when reconciliation last asked
// the provider about a call (calls.reconciled_at), and the log of reconcile requests that bounds them across all
// instances (reconcile_requests: at most RECONCILE_MAX_PER_MINUTE rows in any minute, taken under an advisory lock).

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    insert into call_event_kinds (kind, description) values
      ('RECONCILED', ${sql.lit('Reconciliation asked the provider about a silent call; detail.outcome says whether its answer ended the attempt (a lost call: last_error PROVIDER_LOST_CALL).')})
  `.execute(db)
  await sql`
    alter table calls
      add column last_result jsonb,
      add column reconciled_at timestamptz
  `.execute(db)
  await sql`comment on column calls.last_result is ${sql.lit("What the platform reported about the last attempt that reported an end: duration, its own end reason, recording and log URLs, transcript, cost. Each attempt's report is also in its call_events row (detail.result).")}`.execute(
    db,
  )
  await sql`comment on column calls.reconciled_at is ${sql.lit('When reconciliation last asked the provider about this call; calls are asked again after RECONCILE_INTERVAL_MS, least recently asked first.')}`.execute(
    db,
  )
  // Silent calls are found in started_at order among IN_PROGRESS rows only; the partial index stays as small as the
  // number of calls in progress.
  await sql`create index calls_in_progress_started on calls (started_at) where status = 'IN_PROGRESS'`.execute(db)
  await sql`comment on index calls_in_progress_started is ${sql.lit('Reconciliation: calls in progress, oldest first.')}`.execute(
    db,
  )

  await sql`
    create table reconcile_requests (
      id bigint generated always as identity primary key,
      at timestamptz not null default now()
    )
  `.execute(db)
  await sql`create index reconcile_requests_at on reconcile_requests (at)`.execute(db)
  await sql`comment on table reconcile_requests is ${sql.lit('One row per get-call request reconciliation made to the provider, by any instance; rows older than a minute are deleted as new ones are taken.')}`.execute(
    db,
  )
  await sql`comment on column reconcile_requests.at is ${sql.lit('When the request was granted (database clock).')}`.execute(
    db,
  )
  await sql`comment on index reconcile_requests_at is ${sql.lit('Counting the requests of the last minute.')}`.execute(
    db,
  )
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop table reconcile_requests`.execute(db)
  await sql`drop index calls_in_progress_started`.execute(db)
  await sql`alter table calls drop column last_result, drop column reconciled_at`.execute(db)
  await sql`delete from call_event_kinds where kind = 'RECONCILED'`.execute(db)
}
