import { type Kysely, sql } from 'kysely'
import type { Call, DB } from '../db/database.ts'

// Invariant: at most `cap` calls are IN_PROGRESS, across every process that shares the database.
//
// Every claim runs under one transaction-scoped advisory lock, so claims happen one at a time. The claim statement
// takes its snapshot after the lock is granted, and under READ COMMITTED it therefore sees every earlier claimer's
// committed rows: count(IN_PROGRESS) is exact and the cap cannot be overshot (measured when the design was chosen:
// pg-boss's unlocked groupConcurrency overshot a cap of 30 by up to 20 with 8 instances; under this lock it was exact
// every round; docs/design.md). Freeing a slot needs no lock: it only lowers the count.
//
// Invariant: never two IN_PROGRESS calls to one phone. The claim skips phones that have one and takes one call per
// phone; the partial unique index calls_one_live_call_per_phone enforces it regardless of this code.
//
// Lock and claim are the function claim_due_calls (db/migrations/0004), called in one round trip; as a transaction
// (begin, lock, claim, commit) a claim took four, each a socket write and a wake-up on both sides.

// Both invariants need READ COMMITTED: the function's statements must each see what committed before the lock was
// granted. Under a database whose default_transaction_isolation is REPEATABLE READ or SERIALIZABLE the whole claim
// would share one snapshot taken before the lock, and most claims failed with serialization errors. Such a database
// gets the claim inside an explicit READ COMMITTED transaction (three round trips instead of one).

export async function claimDueCalls(db: Kysely<DB>, cap: number, max: number): Promise<Call[]> {
  if (max <= 0) return []
  const claim = (q: Kysely<DB>) => sql<Call>`select * from claim_due_calls(${cap}::int, ${max}::int)`.execute(q)
  if (await defaultIsReadCommitted(db)) return (await claim(db)).rows
  return db
    .transaction()
    .setIsolationLevel('read committed')
    .execute(async (trx) => (await claim(trx)).rows)
}

const readCommittedByDefault = new WeakMap<Kysely<DB>, Promise<boolean>>()

export function defaultIsReadCommitted(db: Kysely<DB>): Promise<boolean> {
  let known = readCommittedByDefault.get(db)
  if (!known) {
    known = sql<{ level: string }>`select current_setting('default_transaction_isolation') as level`
      .execute(db)
      .then(({ rows }) => rows[0]?.level === 'read committed')
    known.catch(() => readCommittedByDefault.delete(db))
    readCommittedByDefault.set(db, known)
  }
  return known
}

/** The columns of calls that pg returns as Date; to_jsonb() writes them as ISO strings. */
const TIMESTAMPS = [
  'next_attempt_at',
  'created_at',
  'updated_at',
  'started_at',
  'ended_at',
  'expires_at',
  'throttled_since',
  'reconciled_at',
  'scheduled_at',
  'retry_at',
] as const satisfies readonly (keyof Call)[]

/** A calls row claimed inside another function (end_attempts_and_claim, migration 0082), as to_jsonb() wrote it. */
export function callFromJson(json: Record<string, unknown>): Call {
  const call: Record<string, unknown> = { ...json }
  for (const k of TIMESTAMPS) if (typeof call[k] === 'string') call[k] = new Date(call[k] as string)
  return call as unknown as Call
}

/**
 * Milliseconds until the next PENDING call becomes due (a retry's backoff) if that is within `horizonMs`, else
 * undefined. Lets an idle dispatcher wake when a retry is due instead of at its next poll. Reads calls_dispatch_queue.
 * (The parameter also makes it a prepared statement, planned once per connection: src/db/database.ts prepares only statements
 * with parameters.)
 */
export async function msUntilNextDue(db: Kysely<DB>, horizonMs: number): Promise<number | undefined> {
  const { rows } = await sql<{ ms: number | null }>`
    select extract(epoch from min(next_attempt_at) - now())::float8 * 1000 as ms
      from calls
     where status = 'PENDING' and next_attempt_at > now()
       and next_attempt_at <= now() + make_interval(secs => ${horizonMs / 1000}::float8)
  `.execute(db)
  const ms = rows[0]?.ms
  return ms === null || ms === undefined ? undefined : Math.max(0, ms)
}
