import { type Kysely, sql } from 'kysely'

// Append-only history: every status change, dial result and webhook received (even duplicates and late ones),
// so an operator can replay what happened to a call without logs.

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table call_events (
      id          bigint generated always as identity primary key,
      call_id     uuid not null references calls (id) on delete cascade,
      attempt     integer not null,
      kind        text not null check (kind in (
                    'CREATED', 'UPDATED', 'CANCELED', 'CLAIMED', 'DIAL_ACCEPTED', 'DIAL_FAILED', 'DIAL_THROTTLED',
                    'DIAL_REJECTED', 'WEBHOOK', 'EXPIRED', 'TIMED_OUT', 'RETRY_REQUESTED')),
      status      text,
      detail      jsonb not null default '{}',
      created_at  timestamptz not null default clock_timestamp()
    )
  `.execute(db)
  await sql`create index call_events_by_call on call_events (call_id, id)`.execute(db)
  await sql`create index call_events_recent on call_events (created_at)`.execute(db)

  await sql`comment on table call_events is ${sql.lit(
    'Append-only history of each call: status changes, dial results and every webhook received (duplicates and late ones included). Never updated.',
  )}`.execute(db)
  const comments: Record<string, string> = {
    attempt: 'The attempt (1-based) the event belongs to; 0 before the first dial.',
    kind: 'What happened: CREATED, CLAIMED (slot taken), DIAL_*, WEBHOOK, EXPIRED, TIMED_OUT, CANCELED, ...',
    status: 'The call status after the event, or the provider status for WEBHOOK events.',
    detail: 'Event data, e.g. {"outcome": "applied" | "duplicate" | "late" | "stale" | "progress"} for webhooks.',
    created_at: 'Wall-clock time of the event (clock_timestamp, so events of one transaction stay ordered).',
  }
  for (const [column, text] of Object.entries(comments)) {
    await sql`comment on column call_events.${sql.ref(column)} is ${sql.lit(text)}`.execute(db)
  }
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop table call_events`.execute(db)
}
