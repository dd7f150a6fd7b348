import { type Kysely, sql } from 'kysely'

// Client webhooks (src/notify). Three guarantees live here, in the database:
// - no status change without its event: an AFTER trigger on calls writes the webhook_events row in the statement
//   that changes the status, whatever statement that is (API, claim function, batched attempt ends, sweeps, operator
//   functions, and any added later). It writes nothing while no endpoint is enabled (the hot path pays one index probe).
// - no event without its delivery job: the relay (src/notify/relay.ts) turns unpublished events into deliveries and
//   pg-boss jobs in one transaction that also marks them published; a crash before its commit leaves them unpublished.
// - order per call and endpoint: deliveries of one (endpoint, call) form a line; only its head has a job ('queued'),
//   the rest wait ('waiting') until the head is delivered or given up (src/notify/sql.ts explains the locking).

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table webhook_endpoints (
      id                          uuid primary key default gen_random_uuid(),
      url                         text not null check (url ~ '^https?://' and length(url) <= 2000),
      events                      text[] check (events is null or cardinality(events) > 0),
      campaign_id                 uuid,
      description                 text check (length(description) <= 500),
      enabled                     boolean not null default true,
      disabled_reason             text,
      disabled_at                 timestamptz,
      secret                      text not null check (secret ~ '^whsec_'),
      previous_secret             text check (previous_secret ~ '^whsec_'),
      previous_secret_expires_at  timestamptz,
      failing_since               timestamptz,
      last_success_at             timestamptz,
      created_at                  timestamptz not null default now(),
      updated_at                  timestamptz not null default now()
    )
  `.execute(db)
  await sql`create index webhook_endpoints_enabled on webhook_endpoints (id) where enabled`.execute(db)

  await sql`
    create table webhook_events (
      id            uuid primary key default gen_random_uuid(),
      type          text not null check (type ~ '^[a-z_]+[.][a-z_]+$'),
      call_id       uuid references calls (id) on delete cascade,
      campaign_id   uuid,
      endpoint_id   uuid references webhook_endpoints (id) on delete cascade,
      sequence      integer check (sequence > 0),
      attempt       integer,
      outcome       text,
      call_snapshot jsonb,
      detail        jsonb not null default '{}',
      published     boolean not null default false,
      created_at    timestamptz not null default clock_timestamp(),
      constraint webhook_events_call_has_sequence check ((call_id is null) = (sequence is null))
    )
  `.execute(db)
  await sql`create unique index webhook_events_call_sequence on webhook_events (call_id, sequence)`.execute(db)
  await sql`create index webhook_events_unpublished on webhook_events (created_at, id) where not published`.execute(db)
  await sql`create index webhook_events_newest on webhook_events (created_at desc, id desc)`.execute(db)

  await sql`
    create table webhook_deliveries (
      endpoint_id     uuid not null references webhook_endpoints (id) on delete cascade,
      event_id        uuid not null references webhook_events (id) on delete cascade,
      line_id         uuid not null,
      sequence        integer not null,
      state           text not null check (state in ('waiting', 'queued', 'delivered', 'failed')),
      generation      integer not null default 1,
      attempts        integer not null default 0,
      next_attempt_at timestamptz not null default now(),
      leased_until    timestamptz,
      last_status     integer,
      last_error      text,
      delivered_at    timestamptz,
      created_at      timestamptz not null default now(),
      updated_at      timestamptz not null default now(),
      primary key (endpoint_id, event_id)
    )
  `.execute(db)
  await sql`create index webhook_deliveries_line on webhook_deliveries (endpoint_id, line_id, sequence) where state in ('waiting', 'queued')`.execute(
    db,
  )
  await sql`create index webhook_deliveries_by_event on webhook_deliveries (event_id)`.execute(db)
  await sql`create index webhook_deliveries_leased on webhook_deliveries (leased_until) where state = 'queued'`.execute(
    db,
  )

  await sql`
    create table webhook_delivery_attempts (
      id              bigint generated always as identity primary key,
      endpoint_id     uuid not null references webhook_endpoints (id) on delete cascade,
      event_id        uuid not null references webhook_events (id) on delete cascade,
      attempt         integer not null,
      result          text not null check (result in ('delivered', 'retrying', 'failed')),
      http_status     integer,
      latency_ms      integer,
      error           text,
      next_attempt_at timestamptz,
      created_at      timestamptz not null default now()
    )
  `.execute(db)
  await sql`create index webhook_delivery_attempts_by_endpoint on webhook_delivery_attempts (endpoint_id, id desc)`.execute(
    db,
  )

  // The event writer. Types: INSERT -> call.created; a status change -> call.<final status> or call.retry_scheduled
  // (back to PENDING: a retry, or retry_call); the claim (PENDING -> IN_PROGRESS) writes none: call.started comes
  // when the provider accepted the dial (provider_call_id set while IN_PROGRESS). The sequence is the call's last
  // plus one: the calls row stays locked by this transaction until commit, so a second writer of the same call waits
  // and then, in READ COMMITTED, reads this one's row (each statement of a PL/pgSQL function takes a new snapshot);
  // the unique index (call_id, sequence) holds it regardless.
  await sql`
    create function calls_webhook_event() returns trigger language plpgsql as $$
    declare
      event_type text;
    begin
      if not exists (select 1 from webhook_endpoints where enabled) then
        return null;
      end if;
      if tg_op = 'INSERT' then
        event_type := 'call.created';
      elsif new.status is distinct from old.status then
        event_type := case new.status
                        when 'COMPLETED' then 'call.completed'
                        when 'FAILED' then 'call.failed'
                        when 'EXPIRED' then 'call.expired'
                        when 'CANCELED' then 'call.canceled'
                        when 'PENDING' then 'call.retry_scheduled'
                      end;
      elsif new.status = 'IN_PROGRESS' and new.provider_call_id is not null then
        event_type := 'call.started';
      end if;
      if event_type is null then
        return null;
      end if;
      insert into webhook_events (type, call_id, campaign_id, sequence, attempt, outcome, call_snapshot)
      values (event_type, new.id, (to_jsonb(new) ->> 'campaign_id')::uuid,
              coalesce((select max(e.sequence) from webhook_events e where e.call_id = new.id), 0) + 1,
              new.attempts,
              case when event_type in ('call.completed', 'call.failed', 'call.retry_scheduled') then new.last_outcome end,
              to_jsonb(new) - 'request_hash' - 'idempotency_key');
      perform pg_notify('client_webhook_events', '');
      return null;
    end $$
  `.execute(db)
  await sql`
    create trigger calls_webhook_event_created after insert on calls
    for each row execute function calls_webhook_event()
  `.execute(db)
  await sql`
    create trigger calls_webhook_event_changed after update of status, provider_call_id on calls
    for each row
    when (old.status is distinct from new.status or old.provider_call_id is distinct from new.provider_call_id)
    execute function calls_webhook_event()
  `.execute(db)

  await sql`
    create view webhook_delivery_overview as
    select ep.id as endpoint_id, ep.url, ep.enabled,
           case when not ep.enabled then 'disabled' when ep.failing_since is not null then 'failing' else 'healthy' end
             as health,
           ep.disabled_reason, ep.failing_since, ep.last_success_at,
           coalesce(d.undelivered, 0) as undelivered,
           coalesce(d.retrying, 0) as retrying,
           coalesce(d.failed, 0) as failed,
           coalesce(d.delivered, 0) as delivered,
           date_trunc('second', now() - d.oldest_undelivered) as oldest_undelivered_age
      from webhook_endpoints ep
      left join lateral (
        select count(*) filter (where state in ('waiting', 'queued'))::int                  as undelivered,
               count(*) filter (where state = 'queued' and attempts > 0)::int               as retrying,
               count(*) filter (where state = 'failed')::int                                as failed,
               count(*) filter (where state = 'delivered')::int                             as delivered,
               min(created_at) filter (where state in ('waiting', 'queued'))                as oldest_undelivered
          from webhook_deliveries where endpoint_id = ep.id
      ) d on true
     order by ep.created_at, ep.id
  `.execute(db)

  // For operators (scripts/calls.ts redeliver): the API's redelivery without pg-boss at hand. Each delivery is left
  // queued with a lapsed lease, so the relay's sweep (src/notify/sql.ts sweepLapsedLeases) publishes its job within
  // about a second. The relay lock is taken because the relay is the other writer that inserts deliveries.
  await sql`
    create function redeliver_event(event_id uuid) returns integer
    language plpgsql volatile as $$
    declare
      n integer;
    begin
      perform pg_advisory_xact_lock(1128352844, 2);
      with again as (
        update webhook_deliveries d
           set state = 'queued', generation = d.generation + 1, leased_until = now() - interval '1 second',
               next_attempt_at = now(), updated_at = now()
         where d.event_id = redeliver_event.event_id
           and exists (select 1 from webhook_endpoints ep where ep.id = d.endpoint_id and ep.enabled)
        returning 1
      ), added as (
        insert into webhook_deliveries (endpoint_id, event_id, line_id, sequence, state, leased_until)
        select ep.id, e.id, e.call_id, e.sequence, 'queued', now() - interval '1 second'
          from webhook_events e
          join webhook_endpoints ep
            on ep.enabled and (ep.events is null or e.type = any(ep.events))
           and (ep.campaign_id is null or ep.campaign_id = e.campaign_id)
         where e.id = redeliver_event.event_id and e.call_id is not null
           and not exists (select 1 from webhook_deliveries d where d.event_id = e.id and d.endpoint_id = ep.id)
        returning 1
      )
      select (select count(*) from again) + (select count(*) from added) into n;
      return n;
    end $$
  `.execute(db)

  const comments: [string, string][] = [
    [
      'table webhook_endpoints',
      'Client webhook endpoints (API /api/v1/webhook-endpoints). secret signs deliveries (Standard Webhooks); previous_secret also signs until previous_secret_expires_at, after a rotation. Never shown after creation or rotation.',
    ],
    ['column webhook_endpoints.events', 'Event types delivered here; null: all.'],
    ['column webhook_endpoints.campaign_id', "Only events of this campaign's calls; null: every call."],
    [
      'column webhook_endpoints.failing_since',
      'First failed delivery since the last success; null while healthy. Failing for WEBHOOK_DISABLE_AFTER_MS disables the endpoint.',
    ],
    [
      'column webhook_endpoints.disabled_reason',
      'Why the service disabled the endpoint (410 Gone, failing for days); null when a client did or it is enabled.',
    ],
    [
      'table webhook_events',
      'Client events (the outbox): written by trigger calls_webhook_event in the transaction that changed the call. Append-only except published.',
    ],
    [
      'column webhook_events.sequence',
      "The call's events counted from 1 with no gaps (while any endpoint is enabled).",
    ],
    [
      'column webhook_events.call_snapshot',
      'The calls row as it was after the change (without request_hash and idempotency_key); the payload shows it as GET /calls/:id does.',
    ],
    ['column webhook_events.published', 'The relay made its deliveries and jobs (src/notify/relay.ts).'],
    [
      'column webhook_events.endpoint_id',
      'For endpoint events (endpoint.disabled): the endpoint concerned. Not delivered.',
    ],
    [
      'table webhook_deliveries',
      'One event to one endpoint. Deliveries of one (endpoint_id, line_id) go in sequence order: only the first undone one is queued (has a pg-boss job), the rest are waiting.',
    ],
    ['column webhook_deliveries.line_id', 'What orders deliveries: the call id.'],
    [
      'column webhook_deliveries.generation',
      'Grows with each job published for the delivery; a job carrying an older one is stale and does nothing.',
    ],
    [
      'column webhook_deliveries.leased_until',
      'A worker is sending it until then; a queued delivery past its lease lost its worker and is published again.',
    ],
    [
      'table webhook_delivery_attempts',
      'Every delivery attempt: HTTP status, latency, error, and when the next one is due.',
    ],
    [
      'function calls_webhook_event()',
      'Trigger on calls: writes the client event of a status change (or of the provider accepting the dial) when any webhook endpoint is enabled, and notifies channel client_webhook_events.',
    ],
    [
      'view webhook_delivery_overview',
      'One row per client webhook endpoint: health (healthy, failing, disabled), undelivered backlog and the age of its oldest event, retrying, failed and delivered counts.',
    ],
  ]
  for (const [target, text] of comments) {
    await sql`comment on ${sql.raw(target)} is ${sql.lit(text)}`.execute(db)
  }
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop function redeliver_event(uuid)`.execute(db)
  await sql`drop view webhook_delivery_overview`.execute(db)
  await sql`drop trigger calls_webhook_event_changed on calls`.execute(db)
  await sql`drop trigger calls_webhook_event_created on calls`.execute(db)
  await sql`drop function calls_webhook_event()`.execute(db)
  await sql`drop table webhook_delivery_attempts`.execute(db)
  await sql`drop table webhook_deliveries`.execute(db)
  await sql`drop table webhook_events`.execute(db)
  await sql`drop table webhook_endpoints`.execute(db)
}
