import { type Kysely, sql } from 'kysely'
import type { DB } from '../db/database.ts'

// The statements behind client webhook delivery. Deliveries of one (endpoint, call) form a line, delivered in
// sequence: only the line's first undone delivery is 'queued' (has a pg-boss job, or is leased to the process that
// delivered the one before it: promoteNext with a lease), later ones are 'waiting'.
//
// Two writers meet on a line, and each must publish the next head exactly when the other does not:
// - the relay (one at a time, under the advisory lock RELAY_LOCK) appends deliveries; it makes the first new one of
//   a line 'queued' only when the line has no undone delivery, and reads that with FOR UPDATE: if a worker is
//   finishing the head, the relay waits for its commit and, in READ COMMITTED, re-reads the row (now done) and
//   publishes; if the relay locked the head first, the worker's UPDATE waits for the relay's commit and its next
//   statement (a new snapshot) sees the appended deliveries and promotes one.
// - the worker finishes a head (recordResults) and then, in a second statement of the same transaction so that it
//   sees everything committed meanwhile, promotes the line's next 'waiting' delivery (promoteNext).
// Every job carries the delivery's generation; a job whose generation is no longer the delivery's (a lease that
// lapsed and was published again, a redelivery) finds no row and does nothing, so duplicates of a job are harmless.
//
// Lock order: the relay, the lease and the recorder each lock many deliveries in one statement, and they used to take
// those row locks in whatever order their plans met the rows; two of them holding one row each and wanting the
// other's deadlocked (seen in the benchmark: the relay against a recorder, the relay against a lease; PostgreSQL
// broke each after deadlock_timeout, 1 s, and failed one side). Each now locks the rows it will change, before
// changing any, in the order of the line index: (endpoint_id, line_id, sequence). Within a line that puts the head
// first, which also covers the rows a recorder's second statement promotes: they come after the head it holds in
// the same line, so a relay that wants them waits at that head first (a relay that committed between the recorder's
// two statements can have appended them, so the recorder cannot lock them in advance).
//
// Plans: these statements find their rows by key (`= any(array(select ...))`), not by a join to the batch. Joined
// to a jsonb batch (estimated at 100 rows) with the table's statistics a burst behind, the planner hashed every
// undone delivery for each statement (about 1,000 rows read to change 10, in the benchmark's burst).

/** Key ('CALL', 2) in pg_advisory_xact_lock's two-integer space; ('CALL', 1) is the dispatch lock. */
const RELAY_LOCK = sql`1128352844, 2`

export interface DeliveryJob {
  endpointId: string
  eventId: string
  generation: number
  /** The event's place in its call's life (1 = call.created): the job's priority, see publisher(). */
  sequence: number
  /** Not before this time (a retry). */
  startAfter?: Date
}

/** Takes the relay lock for this transaction; false when another relay holds it. */
export async function tryRelayLock(trx: Kysely<DB>): Promise<boolean> {
  const { rows } = await sql<{ got: boolean }>`select pg_try_advisory_xact_lock(${RELAY_LOCK}) as got`.execute(trx)
  return rows[0]?.got === true
}

/**
 * Turns up to `limit` unpublished events into deliveries (one per enabled endpoint that wants the event) and marks
 * them published. Returns how many events it took and the jobs to publish, in the events' order: the deliveries
 * that are now the head of their line, and a second job for each head still waiting for a worker whose line just
 * got a later event. That job carries the later event's priority (see publisher()): a call.created queued behind a
 * burst of others would otherwise hold up the call's started and final events, which wait in its line. Both jobs
 * name the same generation; whichever is fetched first leases the delivery, the other finds it leased and does
 * nothing. Under the relay lock.
 */
export async function relayEvents(trx: Kysely<DB>, limit: number): Promise<{ events: number; jobs: DeliveryJob[] }> {
  const { rows } = await sql<{ events: number; jobs: DeliveryJob[] }>`
    with batch as (
      select e.id, e.type, e.call_id, e.campaign_id, e.sequence, e.created_at
        from webhook_events e
       where not e.published
       order by e.created_at, e.id
       limit ${limit}::int
         for update skip locked
    ), published as (
      update webhook_events e set published = true where e.id = any(array(select id from batch)) returning e.id
    ), targets as (
      -- a call's events form its line; a campaign's own events (call_id null) form the campaign's (migration 0050)
      select b.id as event_id, coalesce(b.call_id, b.campaign_id) as line_id, b.sequence, b.created_at,
             ep.id as endpoint_id
        from batch b
        join webhook_endpoints ep
          on ep.enabled and b.sequence is not null and webhook_endpoint_takes(ep, b.type, b.campaign_id)
    ), busy as (
      select d.endpoint_id, d.line_id, d.event_id, d.generation, d.state, d.leased_until, d.next_attempt_at
        from webhook_deliveries d
       where d.state in ('waiting', 'queued')
         and d.endpoint_id = any(array(select endpoint_id from targets))
         and d.line_id = any(array(select line_id from targets))
         and (d.endpoint_id, d.line_id) in (select endpoint_id, line_id from targets)
       order by d.endpoint_id, d.line_id, d.sequence -- the lock order (top of this file)
         for update
    ), ranked as (
      select t.*, row_number() over (partition by t.endpoint_id, t.line_id order by t.sequence) as rn from targets t
    ), inserted as (
      insert into webhook_deliveries (endpoint_id, event_id, line_id, sequence, state)
      select r.endpoint_id, r.event_id, r.line_id, r.sequence,
             case when r.rn = 1 and not exists (
                    select 1 from busy where busy.endpoint_id = r.endpoint_id and busy.line_id = r.line_id)
                  then 'queued' else 'waiting' end
        from ranked r
      returning endpoint_id, event_id, state, generation, sequence
    ), jobs as (
      select i.endpoint_id, i.event_id, i.generation, i.sequence, t.created_at
        from inserted i
        join targets t on t.endpoint_id = i.endpoint_id and t.event_id = i.event_id
       where i.state = 'queued'
      union all
      select h.endpoint_id, h.event_id, h.generation, max(t.sequence), min(t.created_at)
        from busy h
        join targets t on t.endpoint_id = h.endpoint_id and t.line_id = h.line_id
       where h.state = 'queued' and h.leased_until is null and h.next_attempt_at <= now() -- not a retry's wait
       group by h.endpoint_id, h.event_id, h.generation
    )
    select (select count(*)::int from published) as events,
           coalesce((select jsonb_agg(jsonb_build_object(
                       'endpointId', endpoint_id, 'eventId', event_id, 'generation', generation,
                       'sequence', sequence) order by created_at, sequence)
                       from jobs), '[]'::jsonb) as jobs
  `.execute(trx)
  return rows[0] ?? { events: 0, jobs: [] }
}

export interface LeasedDelivery {
  endpoint_id: string
  event_id: string
  line_id: string
  generation: number
  attempts: number
  type: string
  call_id: string | null
  sequence: number | null
  call_attempt: number | null
  outcome: string | null
  call_snapshot: Record<string, unknown> | null
  detail: Record<string, unknown>
  event_created_at: Date
  url: string
  enabled: boolean
  secrets: string[]
}

/**
 * What a worker needs to send the deliveries of the CTE `from` (endpoint_id, event_id, line_id, generation, attempts):
 * the event and the endpoint, with its signing secrets.
 */
const sendable = (from: string) => sql`
    select l.endpoint_id, l.event_id, l.line_id, l.generation, l.attempts,
           e.type, e.call_id, e.sequence, e.attempt as call_attempt, e.outcome, e.call_snapshot, e.detail,
           e.created_at as event_created_at, ep.url, ep.enabled,
           array_remove(array[ep.secret,
                              case when ep.previous_secret_expires_at > now() then ep.previous_secret end], null)
             as secrets
      from ${sql.table(from)} l
      join webhook_events e on e.id = l.event_id
      join webhook_endpoints ep on ep.id = l.endpoint_id`

/** The job that sends a delivery (a head of its line). */
export const jobOf = (
  d: Pick<LeasedDelivery, 'endpoint_id' | 'event_id' | 'generation'> & { sequence: number | null },
) =>
  ({
    endpointId: d.endpoint_id,
    eventId: d.event_id,
    generation: d.generation,
    sequence: d.sequence ?? 1,
  }) satisfies DeliveryJob

/**
 * Leases the deliveries the jobs name, for `leaseMs`: the jobs whose generation is still current and whose delivery
 * is queued. A lease that lapses (the worker died mid-send) is published again by sweepLapsedLeases.
 */
export async function leaseDeliveries(
  db: Kysely<DB>,
  jobs: readonly Pick<DeliveryJob, 'endpointId' | 'eventId' | 'generation'>[],
  leaseMs: number,
): Promise<LeasedDelivery[]> {
  if (jobs.length === 0) return []
  const { rows } = await sql<LeasedDelivery>`
    with job as (
      select * from jsonb_to_recordset(${JSON.stringify(jobs)}::jsonb)
        as j("endpointId" uuid, "eventId" uuid, generation int)
    ), target as materialized (
      select d.endpoint_id, d.event_id
        from webhook_deliveries d
        join job j on j."endpointId" = d.endpoint_id and j."eventId" = d.event_id and j.generation = d.generation
       where d.event_id = any(array(select "eventId" from job))
         and d.state = 'queued'
         -- a head can have two jobs (relayEvents): the second finds it leased and leaves it to the first
         and d.leased_until is null
       order by d.endpoint_id, d.line_id, d.sequence -- the lock order (top of this file)
         for update of d
    ), leased as (
      update webhook_deliveries d set leased_until = now() + make_interval(secs => ${leaseMs / 1000}::float8)
        from target t
       where d.endpoint_id = t.endpoint_id and d.event_id = t.event_id
      returning d.endpoint_id, d.event_id, d.line_id, d.generation, d.attempts
    )
    ${sendable('leased')}
  `.execute(db)
  return rows
}

export interface AttemptResult {
  endpointId: string
  eventId: string
  generation: number
  ok: boolean
  /** 410 Gone: disable the endpoint. */
  gone: boolean
  /** Do not retry (the endpoint is disabled). */
  final: boolean
  httpStatus: number | null
  latencyMs: number | null
  error: string | null
  /** Delay before the next attempt, when this one failed. */
  delayMs: number
}

export interface RecordedAttempt {
  endpoint_id: string
  event_id: string
  line_id: string
  state: 'queued' | 'delivered' | 'failed'
  generation: number
  sequence: number
  next_attempt_at: Date
  event_created_at: Date
}

export interface RecordOptions {
  retryForMs: number
  disableAfterMs: number
}

/**
 * Records attempts: each delivery becomes delivered, failed (given up after retryForMs, or its endpoint disabled) or
 * stays queued for a retry under a new generation; an attempt log row each; the endpoints' health (a success clears
 * failing_since; 410, or failing for disableAfterMs, disables the endpoint with an endpoint.disabled event).
 * Fenced on (generation, queued): a stale report changes nothing and is not returned.
 */
export async function recordResults(
  trx: Kysely<DB>,
  results: readonly AttemptResult[],
  o: RecordOptions,
): Promise<{ recorded: RecordedAttempt[]; disabled: string[] }> {
  const disableAfter = sql`make_interval(secs => ${o.disableAfterMs / 1000}::float8)`
  const { rows } = await sql<RecordedAttempt & { disabled: string[] | null }>`
    with r as (
      select * from jsonb_to_recordset(${JSON.stringify(results)}::jsonb) as r(
        "endpointId" uuid, "eventId" uuid, generation int, ok boolean, gone boolean, final boolean,
        "httpStatus" int, "latencyMs" int, error text, "delayMs" float8)
    ), locked as materialized (
      -- the deliveries recorded, in the lock order (top of this file), before any is changed
      select d.endpoint_id, d.event_id
        from webhook_deliveries d
       where d.event_id = any(array(select "eventId" from r))
         and (d.endpoint_id, d.event_id) in (select "endpointId", "eventId" from r)
       order by d.endpoint_id, d.line_id, d.sequence
         for update
    ), updated as (
      update webhook_deliveries d
         set attempts        = d.attempts + 1,
             generation      = d.generation + 1,
             state           = case when r.ok then 'delivered'
                                    when r.final or r.gone
                                      or now() + make_interval(secs => r."delayMs" / 1000)
                                         > d.created_at + make_interval(secs => ${o.retryForMs / 1000}::float8)
                                    then 'failed' else 'queued' end,
             next_attempt_at = case when r.ok then d.next_attempt_at
                                    else now() + make_interval(secs => r."delayMs" / 1000) end,
             leased_until    = null,
             last_status     = r."httpStatus",
             last_error      = r.error,
             delivered_at    = case when r.ok then now() end,
             updated_at      = now()
        from r
        join locked l on l.endpoint_id = r."endpointId" and l.event_id = r."eventId"
       where d.endpoint_id = l.endpoint_id and d.event_id = l.event_id and d.generation = r.generation
         and d.state = 'queued'
      returning d.endpoint_id, d.event_id, d.line_id, d.state, d.generation, d.sequence, d.attempts, d.next_attempt_at,
                r.ok, r.gone, r."httpStatus", r."latencyMs", r.error
    ), logged as (
      insert into webhook_delivery_attempts
        (endpoint_id, event_id, attempt, result, http_status, latency_ms, error, next_attempt_at)
      select endpoint_id, event_id, attempts,
             case state when 'delivered' then 'delivered' when 'queued' then 'retrying' else 'failed' end,
             "httpStatus", "latencyMs", error, case when state = 'queued' then next_attempt_at end
        from updated
    ), health as (
      select endpoint_id, bool_or(ok) as any_ok, bool_or(gone) as gone from updated group by endpoint_id
    ), endpoints as (
      -- Only a change of health writes the endpoint row: every delivery to one endpoint would otherwise update the
      -- same row, one lock and one dead tuple per batch. last_success_at is therefore accurate to a second.
      update webhook_endpoints ep
         set failing_since   = case when h.any_ok then null else coalesce(ep.failing_since, now()) end,
             last_success_at = case when h.any_ok then now() else ep.last_success_at end,
             enabled         = ep.enabled and not h.gone
                               and not (not h.any_ok and coalesce(ep.failing_since <= now() - ${disableAfter}, false)),
             disabled_reason = case when not ep.enabled then ep.disabled_reason
                                    when h.gone then 'the endpoint answered 410 Gone'
                                    when not h.any_ok and ep.failing_since <= now() - ${disableAfter}
                                    then 'every delivery failed since '
                                         || to_char(ep.failing_since at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                                    else ep.disabled_reason end,
             disabled_at     = case when ep.enabled and (h.gone or (not h.any_ok and ep.failing_since <= now() - ${disableAfter}))
                                    then now() else ep.disabled_at end,
             updated_at      = now()
        from (select * from health order by endpoint_id) h
       where ep.id = h.endpoint_id
         and (h.gone
              or (h.any_ok and (ep.failing_since is not null or ep.last_success_at is null
                                or ep.last_success_at < now() - interval '1 second'))
              or (not h.any_ok and (ep.failing_since is null or ep.failing_since <= now() - ${disableAfter})))
      returning ep.id, ep.enabled, ep.disabled_reason, h.any_ok
    ), newly_disabled as (
      select e.id, e.disabled_reason from endpoints e
       where not e.enabled and exists (select 1 from webhook_endpoints old where old.id = e.id and old.enabled)
    ), disabled_events as (
      insert into webhook_events (type, endpoint_id, detail, published)
      select 'endpoint.disabled', id, jsonb_build_object('reason', disabled_reason), true from newly_disabled
    )
    select u.endpoint_id, u.event_id, u.line_id, u.state, u.generation, u.sequence, u.next_attempt_at,
           (select array_agg(id) from newly_disabled) as disabled
      from updated u
  `.execute(trx)
  return {
    recorded: rows.map(({ disabled: _d, ...r }) => r),
    disabled: rows[0]?.disabled ?? [],
  }
}

/**
 * For each line given, the next delivery becomes the head: the first waiting one, when the line has no queued one
 * and its endpoint is enabled. Run after the statement that finished the old heads, in the same transaction.
 * With `leaseMs` the new heads are leased to the caller, which sends them itself (no job: a lease that lapses is
 * published by sweepLapsedLeases); without it the caller publishes their jobs (jobOf).
 */
export async function promoteNext(
  trx: Kysely<DB>,
  lines: readonly { endpointId: string; lineId: string }[],
  leaseMs?: number,
): Promise<LeasedDelivery[]> {
  if (lines.length === 0) return []
  const leasedUntil =
    leaseMs === undefined ? sql`null::timestamptz` : sql`now() + make_interval(secs => ${leaseMs / 1000}::float8)`
  const { rows } = await sql<LeasedDelivery>`
    with line as (
      select distinct * from jsonb_to_recordset(${JSON.stringify(lines)}::jsonb) as l("endpointId" uuid, "lineId" uuid)
    ), head as (
      select distinct on (d.endpoint_id, d.line_id) d.endpoint_id, d.event_id, d.state
        from webhook_deliveries d
        join line l on l."endpointId" = d.endpoint_id and l."lineId" = d.line_id
       where d.state in ('waiting', 'queued')
         and d.endpoint_id = any(array(select "endpointId" from line))
         and d.line_id = any(array(select "lineId" from line))
       order by d.endpoint_id, d.line_id, d.sequence
    ), promoted as (
      update webhook_deliveries d
         set state = 'queued', generation = d.generation + 1, next_attempt_at = now(), leased_until = ${leasedUntil},
             updated_at = now()
        from head h
       where d.event_id = any(array(select event_id from head where state = 'waiting'))
         and d.endpoint_id = h.endpoint_id and d.event_id = h.event_id and h.state = 'waiting' and d.state = 'waiting'
         and not exists (select 1 from webhook_deliveries q
                          where q.endpoint_id = d.endpoint_id and q.line_id = d.line_id and q.state = 'queued')
         and exists (select 1 from webhook_endpoints ep where ep.id = d.endpoint_id and ep.enabled)
      returning d.endpoint_id, d.event_id, d.line_id, d.generation, d.attempts
    )
    ${sendable('promoted')}
  `.execute(trx)
  return rows
}

/** A disabled endpoint's undone deliveries fail at once (they stay redeliverable). */
export async function failUndoneDeliveries(db: Kysely<DB>, endpointIds: readonly string[], why: string) {
  if (endpointIds.length === 0) return
  await sql`
    update webhook_deliveries
       set state = 'failed', leased_until = null, last_error = ${why}, updated_at = now()
     where endpoint_id = any(${endpointIds}::uuid[]) and state in ('waiting', 'queued')
  `.execute(db)
}

/**
 * Deliveries whose worker died mid-send (lease lapsed) get a new generation, to be published again; and lines left
 * with waiting deliveries but no head (two heads finishing at once after a redelivery) get one. Returns the jobs.
 */
export async function sweepLapsedLeases(trx: Kysely<DB>, limit = 500): Promise<DeliveryJob[]> {
  const { rows } = await sql<DeliveryJob>`
    with lapsed as (
      select endpoint_id, event_id from webhook_deliveries
       where state = 'queued' and leased_until < now()
       order by leased_until
       limit ${limit}::int
         for update skip locked
    )
    update webhook_deliveries d
       set generation = d.generation + 1, leased_until = null, next_attempt_at = now(), updated_at = now()
      from lapsed l
     where d.endpoint_id = l.endpoint_id and d.event_id = l.event_id and d.state = 'queued'
    returning d.endpoint_id as "endpointId", d.event_id as "eventId", d.generation, d.sequence
  `.execute(trx)
  const { rows: orphans } = await sql<{ endpointId: string; lineId: string }>`
    select distinct w.endpoint_id as "endpointId", w.line_id as "lineId"
      from webhook_deliveries w
     where w.state = 'waiting'
       and w.updated_at < now() - interval '10 seconds'
       and not exists (select 1 from webhook_deliveries q
                        where q.endpoint_id = w.endpoint_id and q.line_id = w.line_id and q.state = 'queued')
     limit ${limit}::int
  `.execute(trx)
  // A relay that read the endpoint as enabled just before it was disabled can commit deliveries after the disabling
  // transaction failed the endpoint's undone ones.
  await sql`
    update webhook_deliveries d
       set state = 'failed', leased_until = null, last_error = 'endpoint disabled', updated_at = now()
      from webhook_endpoints ep
     where ep.id = d.endpoint_id and not ep.enabled and d.state in ('waiting', 'queued')
  `.execute(trx)
  return [...rows, ...(await promoteNext(trx, orphans)).map(jobOf)]
}

/**
 * Sends an event again to its endpoints, whatever its deliveries' state: each becomes queued with a new generation
 * (out of its line's order: a redelivery is an explicit replay), and enabled endpoints that want the event but have
 * no delivery of it get one. Under the relay lock, as the relay is the other writer that inserts deliveries.
 * undefined: no such event; 'not_deliverable': an endpoint event (endpoint.disabled), which is never sent.
 */
export async function redeliverEvent(
  db: Kysely<DB>,
  eventId: string,
  publish: (trx: Kysely<DB>, jobs: DeliveryJob[]) => Promise<void>,
): Promise<DeliveryJob[] | undefined | 'not_deliverable'> {
  const event = await db
    .selectFrom('webhook_events')
    .select(['id', 'sequence'])
    .where('id', '=', eventId)
    .executeTakeFirst()
  if (!event) return undefined
  if (event.sequence === null) return 'not_deliverable'
  return db.transaction().execute(async (trx) => {
    await sql`select pg_advisory_xact_lock(${RELAY_LOCK})`.execute(trx)
    const { rows } = await sql<DeliveryJob>`
      with again as (
        update webhook_deliveries d
           set state = 'queued', generation = d.generation + 1, next_attempt_at = now(), leased_until = null,
               updated_at = now()
         where d.event_id = ${eventId}::uuid
           and exists (select 1 from webhook_endpoints ep where ep.id = d.endpoint_id and ep.enabled)
        returning d.endpoint_id as "endpointId", d.event_id as "eventId", d.generation, d.sequence
      ), added as (
        insert into webhook_deliveries (endpoint_id, event_id, line_id, sequence, state)
        select ep.id, e.id, coalesce(e.call_id, e.campaign_id), e.sequence, 'queued'
          from webhook_events e
          join webhook_endpoints ep on ep.enabled and webhook_endpoint_takes(ep, e.type, e.campaign_id)
         where e.id = ${eventId}::uuid
           and not exists (select 1 from webhook_deliveries d where d.event_id = e.id and d.endpoint_id = ep.id)
        returning endpoint_id as "endpointId", event_id as "eventId", generation, sequence
      )
      select * from again union all select * from added
    `.execute(trx)
    await publish(trx, rows)
    return rows
  })
}
