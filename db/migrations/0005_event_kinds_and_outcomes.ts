import { type Kysely, sql } from 'kysely'

// History kinds become rows of call_event_kinds instead of a CHECK list, so each later migration adds the kinds it
// needs with one insert (a CHECK would have to be rewritten whole by each, and two branches rewriting it would drop
// each other's kinds), and an operator reads what a kind means with `table call_event_kinds`. src/dispatch/
// call-state.ts EVENT_KINDS lists the same kinds; a test compares them.
//
// calls.last_outcome keeps the provider's outcome of the last attempt in our vocabulary (COMPLETED, BUSY, NO_ANSWER,
// VOICEMAIL, FAILED), so a call that ends FAILED after a voicemail says so. calls.reported_attempt is the attempt
// whose final outcome was applied: a late report for the latest attempt settles the call once, whatever state an
// unknown dial or a timeout left it in, and a repeat of it is a duplicate.

const KINDS: Record<string, string> = {
  CREATED: 'The call was queued.',
  UPDATED: 'A client changed a PENDING call.',
  CANCELED: 'A client canceled a PENDING call.',
  CLAIMED: 'A dispatcher took a slot for the call; attempt is the attempt about to be dialed.',
  DIAL_ACCEPTED: 'The provider accepted the dial and named its call id.',
  DIAL_FAILED: 'The dial failed before the provider could have placed the call (5xx, connection refused); retried.',
  DIAL_REJECTED: 'The provider refused the call for good (a 4xx other than 401, 403, 429).',
  DIAL_THROTTLED: 'The provider was at capacity (429); no attempt spent, retried after a delay.',
  DIAL_UNKNOWN:
    'The dial may have placed a call (timeout after sending, 2xx without a call id): the slot is kept until a webhook, reconciliation or CALL_TIMEOUT settles it; never re-dialed.',
  DIAL_UNAUTHORIZED: 'The provider refused our credentials (401/403): a provider outage, no attempt spent.',
  WEBHOOK: 'A provider webhook for the call (detail.outcome says whether it applied).',
  EXPIRED: 'The call was still PENDING at its expires_at.',
  TIMED_OUT: 'No final webhook within CALL_TIMEOUT_MS: the call ended FAILED (CALL_TIMEOUT).',
  RETRY_REQUESTED: 'An operator put the call back to PENDING (retry_call).',
}

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table call_event_kinds (
      kind        text primary key check (kind ~ '^[A-Z][A-Z_]*$'),
      description text not null
    )
  `.execute(db)
  await sql`comment on table call_event_kinds is ${sql.lit('What each call_events.kind means. Migrations add kinds; src/dispatch/call-state.ts EVENT_KINDS lists the same.')}`.execute(
    db,
  )
  for (const [kind, description] of Object.entries(KINDS)) {
    await sql`insert into call_event_kinds (kind, description) values (${sql.lit(kind)}, ${sql.lit(description)})`.execute(
      db,
    )
  }
  await sql`alter table call_events drop constraint call_events_kind_check`.execute(db)
  await sql`alter table call_events add constraint call_events_kind_known foreign key (kind) references call_event_kinds (kind)`.execute(
    db,
  )

  await sql`
    alter table calls
      add column last_outcome text check (last_outcome in ('COMPLETED', 'BUSY', 'NO_ANSWER', 'VOICEMAIL', 'FAILED')),
      add column reported_attempt integer
  `.execute(db)
  await sql`comment on column calls.last_outcome is ${sql.lit("The provider's outcome of the last attempt that reported one: COMPLETED, BUSY, NO_ANSWER, VOICEMAIL or FAILED. A call FAILED after a voicemail says VOICEMAIL here.")}`.execute(
    db,
  )
  await sql`comment on column calls.reported_attempt is ${sql.lit('The attempt whose final outcome (webhook or reconciliation) was applied; a repeat report of it changes nothing.')}`.execute(
    db,
  )
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`alter table calls drop column last_outcome, drop column reported_attempt`.execute(db)
  await sql`alter table call_events drop constraint call_events_kind_known`.execute(db)
  await sql`drop table call_event_kinds`.execute(db)
}
