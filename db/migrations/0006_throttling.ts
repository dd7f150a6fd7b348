import { type Kysely, sql } from 'kysely'

// A call's run of consecutive 429s: src/dispatch/call-state.ts grows the delay with `throttles` and, once the call has
// been throttled since `throttled_since` for THROTTLE_MAX_MS, lets each further 429 spend an attempt. Both reset when
// the provider accepts a dial or the attempt ends any other way.

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    alter table calls
      add column throttles integer not null default 0 check (throttles >= 0),
      add column throttled_since timestamptz
  `.execute(db)
  await sql`comment on column calls.throttles is ${sql.lit('Consecutive dials of this call that the provider refused with 429; 0 after an accepted dial.')}`.execute(
    db,
  )
  await sql`comment on column calls.throttled_since is ${sql.lit('When the current run of 429s began; null when the call is not being throttled.')}`.execute(
    db,
  )
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`alter table calls drop column throttles, drop column throttled_since`.execute(db)
}
