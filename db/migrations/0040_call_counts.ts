import { type Kysely, sql } from 'kysely'

// Counts of calls by (status, attempts), kept exact in the transactions that change calls, so the metrics, the
// Prometheus scrape, GET /calls's total, the dashboard and call_overview stop counting the whole table (627 ms per
// scrape at 3 million calls on PostgreSQL 15, issue 14). Attempt statistics over finished calls (count, average,
// max, retried) come from the same rows: (status, attempts) -> n is a histogram, so they stay exact when rows are
// deleted (retention), which a stored max could not.
//
// Why deltas and not one counter row per status: a counter row updated by every claim and every webhook batch is a
// hot row; concurrent transactions would queue on its row lock until each commits, and two statements that touch
// two counter rows in opposite orders deadlock. Each statement that changes calls instead appends its net change,
// aggregated per statement through transition tables (a claim of 30 or a batch of 200 ended attempts is one insert
// of a row or two), and takes no lock but its own insert. compact_call_counts() folds the deltas into call_counts
// in one transaction; a reader sums call_counts and the deltas in one snapshot (call_counts_current), so it never
// sees a delta twice or not at all.

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table call_counts (
      status   text    not null,
      attempts integer not null,
      n        bigint  not null,
      primary key (status, attempts)
    )
  `.execute(db)
  await sql`create table call_count_deltas (status text not null, attempts integer not null, n bigint not null)`.execute(
    db,
  )
  // The deltas table is emptied every second or so: vacuum it often, so the reader's scan of it stays a few pages.
  await sql`
    alter table call_count_deltas set (
      autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_scale_factor = 0,
      autovacuum_vacuum_insert_threshold = 1000, autovacuum_vacuum_insert_scale_factor = 0)
  `.execute(db)

  await sql`
    create function call_counts_on_insert() returns trigger language plpgsql as $$
    begin
      insert into call_count_deltas (status, attempts, n)
      select status, attempts, count(*) from inserted_calls group by status, attempts;
      return null;
    end $$
  `.execute(db)
  // An UPDATE maps each old row to one new row, so the net change per (status, attempts) is the new rows' count
  // minus the old rows' count; rows whose status and attempts did not change cancel out without a join.
  await sql`
    create function call_counts_on_update() returns trigger language plpgsql as $$
    begin
      insert into call_count_deltas (status, attempts, n)
      select status, attempts, sum(n) from (
        select status, attempts, 1::bigint as n from updated_new
        union all
        select status, attempts, -1::bigint from updated_old
      ) d
      group by status, attempts
      having sum(n) <> 0;
      return null;
    end $$
  `.execute(db)
  await sql`
    create function call_counts_on_delete() returns trigger language plpgsql as $$
    begin
      insert into call_count_deltas (status, attempts, n)
      select status, attempts, -count(*) from deleted_calls group by status, attempts;
      return null;
    end $$
  `.execute(db)
  await sql`
    create function call_counts_on_truncate() returns trigger language plpgsql as $$
    begin
      delete from call_count_deltas;
      delete from call_counts;
      return null;
    end $$
  `.execute(db)
  // Transition tables are not allowed on a trigger with a column list (UPDATE OF status), so every UPDATE statement
  // runs the function; one that changes no status or attempts inserts nothing.
  await sql`
    create trigger call_counts_insert after insert on calls referencing new table as inserted_calls
    for each statement execute function call_counts_on_insert()
  `.execute(db)
  await sql`
    create trigger call_counts_update after update on calls referencing old table as updated_old new table as updated_new
    for each statement execute function call_counts_on_update()
  `.execute(db)
  await sql`
    create trigger call_counts_delete after delete on calls referencing old table as deleted_calls
    for each statement execute function call_counts_on_delete()
  `.execute(db)
  await sql`
    create trigger call_counts_truncate after truncate on calls
    for each statement execute function call_counts_on_truncate()
  `.execute(db)

  // The rows that exist now. SHARE mode lets readers in but no writer until this migration commits, so no change
  // falls between the count and the triggers.
  await sql`lock table calls in share mode`.execute(db)
  await sql`
    insert into call_counts (status, attempts, n)
    select status, attempts, count(*) from calls group by status, attempts
  `.execute(db)

  await sql`
    create view call_counts_current as
    select status, attempts, sum(n)::bigint as n
      from (select status, attempts, n from call_counts
            union all
            select status, attempts, n from call_count_deltas) c
     group by status, attempts
    having sum(n) <> 0
  `.execute(db)

  // One compactor at a time (a transaction-scoped advisory lock; the others skip): two compactors could otherwise
  // upsert the same call_counts rows in opposite orders and deadlock. Deltas a concurrent transaction has not yet
  // committed are not in this snapshot; the next run folds them.
  await sql`
    create function compact_call_counts() returns integer language plpgsql volatile as $$
    declare
      moved integer;
    begin
      -- key ('CALL', 40) in the two-integer advisory key space, next to the dispatch lock ('CALL', 1)
      if not pg_try_advisory_xact_lock(1128352844, 40) then
        return 0;
      end if;
      with gone as (
        delete from call_count_deltas returning status, attempts, n
      ), summed as (
        select status, attempts, sum(n)::bigint as n from gone group by status, attempts
      ), folded as (
        insert into call_counts (status, attempts, n)
        select status, attempts, n from summed order by status, attempts
        on conflict (status, attempts) do update set n = call_counts.n + excluded.n
        returning 1
      )
      select count(*)::int into moved from gone;
      delete from call_counts where n = 0;
      return moved;
    end $$
  `.execute(db)

  await sql`comment on table call_counts is ${sql.lit(
    'Calls by (status, attempts), as of the last compact_call_counts(); add call_count_deltas for the exact count now, or read call_counts_current. Kept by triggers on calls; do not edit.',
  )}`.execute(db)
  await sql`comment on table call_count_deltas is ${sql.lit(
    'Net changes of call_counts not yet folded in: one row per (status, attempts) per statement that changed calls. Appended by triggers on calls, emptied by compact_call_counts() (the service runs it every second).',
  )}`.execute(db)
  await sql`comment on view call_counts_current is ${sql.lit(
    'Calls by (status, attempts), exact in the reader snapshot: call_counts plus the deltas not yet compacted. Costs a few hundred rows, whatever the size of calls.',
  )}`.execute(db)
  await sql`comment on function compact_call_counts() is ${sql.lit(
    'Folds call_count_deltas into call_counts in one transaction and returns how many deltas it moved; 0 when another session is compacting. Safe to run at any time from anywhere.',
  )}`.execute(db)

  // call_overview (0003) read every row of calls; the same columns now come from the counts and from the partial
  // indexes of the backlog (calls_dispatch_queue, calls_by_status_newest), so its cost follows the backlog, not the
  // history.
  await sql`
    create or replace view call_overview as
    select a.pending, a.due_now, a.in_progress, s.max_concurrent_calls,
           s.max_concurrent_calls - least(a.in_progress, s.max_concurrent_calls) as free_slots,
           a.completed, a.failed, a.expired, a.canceled, a.total,
           a.oldest_pending_age, a.oldest_due_wait, a.longest_in_progress
      from (
        select coalesce(sum(c.n) filter (where c.status = 'PENDING'), 0)::int     as pending,
               (select count(*)::int from calls
                 where status = 'PENDING' and next_attempt_at <= now() and expires_at > now()) as due_now,
               coalesce(sum(c.n) filter (where c.status = 'IN_PROGRESS'), 0)::int as in_progress,
               coalesce(sum(c.n) filter (where c.status = 'COMPLETED'), 0)::int   as completed,
               coalesce(sum(c.n) filter (where c.status = 'FAILED'), 0)::int      as failed,
               coalesce(sum(c.n) filter (where c.status = 'EXPIRED'), 0)::int     as expired,
               coalesce(sum(c.n) filter (where c.status = 'CANCELED'), 0)::int    as canceled,
               coalesce(sum(c.n), 0)::int                                         as total,
               (select date_trunc('second', now() - min(created_at)) from calls where status = 'PENDING')
                                                                                  as oldest_pending_age,
               (select date_trunc('second', now() - min(next_attempt_at)) from calls
                 where status = 'PENDING' and next_attempt_at <= now() and expires_at > now()) as oldest_due_wait,
               (select date_trunc('second', now() - min(started_at)) from calls where status = 'IN_PROGRESS')
                                                                                  as longest_in_progress
          from call_counts_current c
      ) a
      left join dispatch_settings s on true
  `.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop trigger call_counts_insert on calls`.execute(db)
  await sql`drop trigger call_counts_update on calls`.execute(db)
  await sql`drop trigger call_counts_delete on calls`.execute(db)
  await sql`drop trigger call_counts_truncate on calls`.execute(db)
  await sql`drop function compact_call_counts()`.execute(db)
  await sql`drop function call_counts_on_insert(), call_counts_on_update(), call_counts_on_delete(), call_counts_on_truncate()`.execute(
    db,
  )
  // call_overview keeps reading call_counts_current: 0003's definition is not restored.
}
