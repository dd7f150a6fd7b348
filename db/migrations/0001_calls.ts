import { type Kysely, sql } from 'kysely'

// The calls table is the single source of truth for a call's status. Two invariants live here, in the database:
// - one IN_PROGRESS call per phone: the partial unique index calls_one_live_call_per_phone;
// - the global cap is kept by src/sql/claim.ts (it counts IN_PROGRESS rows under an advisory lock); the partial index
//   calls_in_progress_by_started_at makes that count an index-only scan of at most MAX_CONCURRENT_CALLS entries.

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table calls (
      id               uuid primary key default gen_random_uuid(),
      to_phone         text not null check (to_phone ~ '^\\+[1-9][0-9]{6,14}$'),
      script_id        text not null check (script_id ~ '^[A-Za-z0-9_.-]{1,100}$'),
      metadata         jsonb not null default '{}' check (jsonb_typeof(metadata) = 'object'),
      status           text not null default 'PENDING'
                       check (status in ('PENDING', 'IN_PROGRESS', 'COMPLETED', 'FAILED', 'EXPIRED', 'CANCELED')),
      attempts         integer not null default 0 check (attempts >= 0),
      last_error       jsonb,
      provider_call_id text,
      next_attempt_at  timestamptz not null default now(),
      created_at       timestamptz not null default now(),
      updated_at       timestamptz not null default now(),
      started_at       timestamptz,
      ended_at         timestamptz,
      expires_at       timestamptz not null,
      duration_sec     integer check (duration_sec >= 0),
      idempotency_key  text check (length(idempotency_key) between 1 and 255),
      request_hash     text,
      constraint calls_in_progress_has_started_at check (status <> 'IN_PROGRESS' or started_at is not null)
    )
  `.execute(db)

  await sql`create unique index calls_one_live_call_per_phone on calls (to_phone) where status = 'IN_PROGRESS'`.execute(
    db,
  )
  await sql`create index calls_in_progress_by_started_at on calls (started_at) where status = 'IN_PROGRESS'`.execute(db)
  await sql`create index calls_dispatch_queue on calls (next_attempt_at, id) where status = 'PENDING'`.execute(db)
  await sql`create index calls_pending_expiry on calls (expires_at) where status = 'PENDING'`.execute(db)
  await sql`create index calls_by_status_newest on calls (status, created_at desc, id desc)`.execute(db)
  await sql`create index calls_newest on calls (created_at desc, id desc)`.execute(db)
  await sql`create unique index calls_idempotency_key on calls (idempotency_key) where idempotency_key is not null`.execute(
    db,
  )
  await sql`create index calls_provider_call_id on calls (provider_call_id) where provider_call_id is not null`.execute(
    db,
  )

  await sql`
    create function calls_touch_updated_at() returns trigger language plpgsql as $$
    begin
      new.updated_at := now();
      return new;
    end $$
  `.execute(db)
  await sql`
    create trigger calls_touch_updated_at before update on calls
    for each row execute function calls_touch_updated_at()
  `.execute(db)

  for (const [column, text] of Object.entries(COLUMN_COMMENTS)) {
    await sql`comment on column calls.${sql.ref(column)} is ${sql.lit(text)}`.execute(db)
  }
  await sql`comment on table calls is ${sql.lit(
    'One outbound AI call request. status moves PENDING -> IN_PROGRESS -> COMPLETED | FAILED (or back to PENDING for a retry); PENDING -> EXPIRED | CANCELED. Change it through the API or scripts/calls.ts, not by hand: the dispatcher relies on these rows for the concurrency cap.',
  )}`.execute(db)
  await sql`comment on index calls_one_live_call_per_phone is ${sql.lit('Never two IN_PROGRESS calls to one phone.')}`.execute(
    db,
  )
  await sql`comment on index calls_dispatch_queue is ${sql.lit('Dispatch order of PENDING calls (src/sql/claim.ts).')}`.execute(
    db,
  )
}

const COLUMN_COMMENTS: Record<string, string> = {
  id: 'Call id given to API clients.',
  to_phone: 'Destination in E.164, e.g. +966501234567.',
  script_id: 'Which AI agent script the provider runs.',
  metadata: 'Client data passed to the provider unchanged (JSON object, at most 16 KiB).',
  status: 'PENDING | IN_PROGRESS | COMPLETED | FAILED | EXPIRED | CANCELED (src/dispatch/call-state.ts).',
  attempts: 'Dials the provider accepted or failed so far; a 429 does not count.',
  last_error: 'Why the last attempt failed: {"code", "message"}; null when none failed.',
  provider_call_id: "The provider's id for the current attempt.",
  next_attempt_at: 'A PENDING call is not dialed before this time (retry backoff).',
  started_at: 'When the current (or last) attempt took its slot.',
  ended_at: 'When the call reached a final status.',
  expires_at: 'A call still PENDING after this time becomes EXPIRED instead of being dialed.',
  duration_sec: 'Length of the completed call, as the provider reported it.',
  idempotency_key: 'Idempotency-Key header of the create request; a retried create returns this call.',
  request_hash: 'sha256 of the normalized create request, to refuse a reused Idempotency-Key with another body.',
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop table calls`.execute(db)
  await sql`drop function calls_touch_updated_at()`.execute(db)
}
