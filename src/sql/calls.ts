import { type Kysely, type RawBuilder, sql } from 'kysely'
import type { Call, DB } from '../db/database.ts'
import type { CallStatus } from '../dispatch/call-state.ts'
import { uuidv7 } from '../ids.ts'
import { countCalls } from './counts.ts'

// Client-facing statements on calls. Each state change is one statement fenced on the status it leaves (so a call
// the dispatcher claims between a client's read and write is never changed) and writes its call_events row in the
// same statement.

export interface NewCall {
  toPhone: string
  scriptId: string
  metadata: Record<string, unknown>
  /** Absolute expiry; null means now() + expiryMs, computed by the database clock. */
  expiresAt: Date | null
  idempotencyKey: string | null
  requestHash: string | null
  /** The campaign whose rules the call obeys, or null. */
  campaignId: string | null
  /** Not dialed before this; null: now. */
  scheduledAt: Date | null
  /** The recipient's IANA zones (campaign calls; src/campaigns/timezones.ts); null when not looked up. */
  timeZones: string[] | null
}

export type CreateResult =
  | { kind: 'created'; call: Call }
  | { kind: 'replayed'; call: Call }
  | { kind: 'key_reused'; call: Call }

/**
 * Inserts calls and their CREATED history rows in one statement, and says of each what became of it: created, or,
 * for an Idempotency-Key already taken, the earlier call (replayed when the request was the same, key_reused when
 * not). At most one call per idempotency key in one statement. Results are in input order.
 *
 * Single creates that arrive together share a statement (routes/calls.ts): with 50 clients, one round trip and one
 * commit served about 20 creates (54,123 in 2,668 statements, `npm run bench -- --only=create --profile`).
 */
export async function insertCalls(
  db: Kysely<DB>,
  calls: readonly NewCall[],
  expiryMs: number,
): Promise<CreateResult[]> {
  const input = toInsertRows(calls)
  const rows = await insertStatement<Call>(db, input, expiryMs, sql`*`)
  const created = new Map(rows.map((r) => [r.id, r]))
  const taken = input.filter((i) => !created.has(i.id)).map((i) => i.idempotency_key as string)
  // Keys already taken: ON CONFLICT waited for the other insert to commit, so those rows are visible now.
  const existing =
    taken.length === 0
      ? new Map<string, Call>()
      : new Map(
          (await db.selectFrom('calls').selectAll().where('idempotency_key', 'in', taken).execute()).map((r) => [
            r.idempotency_key as string,
            r,
          ]),
        )
  return input.map((i): CreateResult => {
    const row = created.get(i.id)
    if (row) return { kind: 'created', call: row }
    const call = existing.get(i.idempotency_key as string)
    if (!call) throw new Error(`call with idempotency key ${i.idempotency_key} was neither inserted nor found`)
    return call.request_hash === i.request_hash ? { kind: 'replayed', call } : { kind: 'key_reused', call }
  })
}

/**
 * The batch endpoint's insert: calls without idempotency keys, all or none, answered with their ids in input order.
 * Only the ids come back: reading 1,000 whole rows back (dates, JSON) took the benchmark from 26-29k to 22k calls/s.
 */
export async function insertCallsForIds(
  db: Kysely<DB>,
  calls: readonly NewCall[],
  expiryMs: number,
): Promise<string[]> {
  const input = toInsertRows(calls)
  await insertStatement<{ id: string }>(db, input, expiryMs, sql`id`)
  return input.map((i) => i.id)
}

// Ids are chosen here, so each input finds its row without relying on the order of RETURNING; time-ordered (ids.ts).
function toInsertRows(calls: readonly NewCall[]) {
  return calls.map((c) => ({
    id: uuidv7(),
    to_phone: c.toPhone,
    script_id: c.scriptId,
    metadata: c.metadata,
    expires_at: c.expiresAt,
    idempotency_key: c.idempotencyKey,
    request_hash: c.requestHash,
    campaign_id: c.campaignId,
    scheduled_at: c.scheduledAt,
    time_zones: c.timeZones,
  }))
}

async function insertStatement<R>(
  db: Kysely<DB>,
  input: ReturnType<typeof toInsertRows>,
  expiryMs: number,
  returning: RawBuilder<unknown>,
): Promise<R[]> {
  // A campaign call's next_attempt_at starts at its window's next opening (window_next_open, migration 0010), so a
  // call queued at night is not in the due prefix the claim walks until morning. The opening is computed once per
  // (campaign, zones, scheduledAt): the calls of a batch share a few.
  const { rows } = await sql<R>`
    with input as (
      select * from jsonb_to_recordset(${JSON.stringify(input)}::jsonb) as t(
        id uuid, to_phone text, script_id text, metadata jsonb, expires_at timestamptz,
        idempotency_key text, request_hash text, campaign_id uuid, scheduled_at timestamptz, time_zones text[])
    ), opening as (
      select g.campaign_id, g.time_zones, g.scheduled_at,
             window_next_open(k.calling_window, window_zones(k.calling_window, g.time_zones),
                              greatest(now(), g.scheduled_at, k.starts_at)) as at
        from (select distinct campaign_id, time_zones, scheduled_at from input where campaign_id is not null) g
        join campaigns k on k.id = g.campaign_id
    ), inserted as (
      insert into calls (id, to_phone, script_id, metadata, expires_at, idempotency_key, request_hash,
                         campaign_id, scheduled_at, time_zones, next_attempt_at)
      select i.id, i.to_phone, i.script_id, i.metadata,
             coalesce(i.expires_at, now() + make_interval(secs => ${expiryMs / 1000}::float8)), i.idempotency_key,
             i.request_hash, i.campaign_id, i.scheduled_at, i.time_zones,
             case when i.campaign_id is null then greatest(now(), i.scheduled_at) else coalesce(o.at, now()) end
        from input i
        left join opening o on o.campaign_id = i.campaign_id and o.time_zones is not distinct from i.time_zones
                           and o.scheduled_at is not distinct from i.scheduled_at
      on conflict (idempotency_key) where idempotency_key is not null do nothing
      returning *
    ), history as (
      insert into call_events (call_id, attempt, kind, status)
      select id, 0, 'CREATED', 'PENDING' from inserted
    )
    select ${returning} from inserted
  `.execute(db)
  return rows
}

export async function getCall(db: Kysely<DB>, id: string): Promise<Call | undefined> {
  return db.selectFrom('calls').selectAll().where('id', '=', id).executeTakeFirst()
}

export type PendingChange =
  | { kind: 'changed'; call: Call }
  | { kind: 'not_found' }
  | { kind: 'not_pending'; status: CallStatus }

export interface CallPatch {
  toPhone?: string
  scriptId?: string
  metadata?: Record<string, unknown>
  /** The new number's zones, with toPhone. */
  timeZones?: string[]
}

/**
 * A new number of a campaign's call brings new zones, so its next eligible time is recomputed as a create and a
 * window change compute it: the window's next opening in the new zones from max(now, scheduledAt, startsAt, the end
 * of a retry's delay). Left as it was, a call moved from a closed zone to an open one waited for the old opening.
 */
export async function updatePendingCall(db: Kysely<DB>, id: string, patch: CallPatch): Promise<PendingChange> {
  const zones = patch.timeZones ?? null
  const { rows } = await sql<Call>`
    with changed as (
      update calls c
         set to_phone   = coalesce(${patch.toPhone ?? null}, c.to_phone),
             script_id  = coalesce(${patch.scriptId ?? null}, c.script_id),
             metadata   = coalesce(${patch.metadata ? JSON.stringify(patch.metadata) : null}::jsonb, c.metadata),
             time_zones = coalesce(${zones}::text[], c.time_zones),
             next_attempt_at = coalesce((
               select coalesce(window_next_open(k.calling_window, window_zones(k.calling_window, ${zones}::text[]),
                                                greatest(now(), c.scheduled_at, k.starts_at, c.retry_at)),
                               now() + interval '1 day')
                 from campaigns k where k.id = c.campaign_id and ${zones}::text[] is not null), c.next_attempt_at)
       where c.id = ${id}::uuid and c.status = 'PENDING'
      returning c.*
    ), history as (
      insert into call_events (call_id, attempt, kind, status, detail)
      select id, attempts, 'UPDATED', status, ${JSON.stringify({ fields: Object.keys(patch).filter((k) => k !== 'timeZones') })}::jsonb from changed
    )
    select * from changed
  `.execute(db)
  return rows[0] ? { kind: 'changed', call: rows[0] } : whyNotPending(db, id)
}

export async function cancelPendingCall(db: Kysely<DB>, id: string): Promise<PendingChange> {
  const { rows } = await sql<Call>`
    with changed as (
      update calls set status = 'CANCELED', ended_at = now()
       where id = ${id}::uuid and status = 'PENDING'
      returning *
    ), history as (
      insert into call_events (call_id, attempt, kind, status)
      select id, attempts, 'CANCELED', 'CANCELED' from changed
    )
    select * from changed
  `.execute(db)
  return rows[0] ? { kind: 'changed', call: rows[0] } : whyNotPending(db, id)
}

async function whyNotPending(db: Kysely<DB>, id: string): Promise<PendingChange> {
  const row = await db.selectFrom('calls').select('status').where('id', '=', id).executeTakeFirst()
  return row ? { kind: 'not_pending', status: row.status } : { kind: 'not_found' }
}

export interface ListQuery {
  status?: CallStatus
  campaignId?: string
  page: number
  limit: number
  /** Keyset position: the calls strictly older (created_at, id) than this; page is then not used. */
  after?: ListPosition
}

/** A place in the newest-first order. createdAt is PostgreSQL's text of the timestamp, exact to the microsecond. */
export interface ListPosition {
  createdAt: string
  id: string
}

/**
 * A page of calls, newest first, and the position after its last call when more follow. Both forms read only the
 * rows they return plus `limit + 1`: the keyset form seeks calls_newest or calls_by_status_newest to the position;
 * the page form walks the same index for the offset (an index-only scan of ids) and fetches whole rows for the page
 * only. `total` comes from call_counts_current (0040), not from a count of the table.
 */
export async function listCalls(
  db: Kysely<DB>,
  q: ListQuery,
): Promise<{ calls: Call[]; total: number; next: ListPosition | null }> {
  let query = db.selectFrom('calls').selectAll().select(sql<string>`created_at::text`.as('position_at'))
  if (q.after) {
    const at = q.after
    if (q.status) query = query.where('status', '=', q.status)
    if (q.campaignId) query = query.where('campaign_id', '=', q.campaignId)
    query = query.where(sql<boolean>`(created_at, id) < (${at.createdAt}::timestamptz, ${at.id}::uuid)`)
  } else {
    query = query.where('id', 'in', (eb) => {
      let ids = eb.selectFrom('calls').select('id')
      if (q.status) ids = ids.where('status', '=', q.status)
      if (q.campaignId) ids = ids.where('campaign_id', '=', q.campaignId)
      return ids
        .orderBy('created_at', 'desc')
        .orderBy('id', 'desc')
        .limit(q.limit + 1)
        .offset((q.page - 1) * q.limit)
    })
  }
  const [rows, total] = await Promise.all([
    query
      .orderBy('created_at', 'desc')
      .orderBy('id', 'desc')
      .limit(q.limit + 1)
      .execute(),
    // A campaign's total is counted from its own index (a campaign is bounded); the whole table's from the counters.
    q.campaignId ? countCampaignCalls(db, q.campaignId, q.status) : countCalls(db, q.status),
  ])
  const page = rows.slice(0, q.limit)
  const last = page.at(-1)
  const next = rows.length > q.limit && last ? { createdAt: last.position_at, id: last.id } : null
  return { calls: page.map(({ position_at: _, ...call }) => call), total, next }
}

export async function listEvents(db: Kysely<DB>, callId: string) {
  return db.selectFrom('call_events').selectAll().where('call_id', '=', callId).orderBy('id').execute()
}

async function countCampaignCalls(db: Kysely<DB>, campaignId: string, status: CallStatus | undefined): Promise<number> {
  let query = db.selectFrom('calls').where('campaign_id', '=', campaignId)
  if (status) query = query.where('status', '=', status)
  const row = await query.select(sql<number>`count(*)::int`.as('n')).executeTakeFirstOrThrow()
  return row.n
}
