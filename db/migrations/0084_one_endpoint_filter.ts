import { type Kysely, type RawBuilder, sql } from 'kysely'

// Which events an endpoint takes (its `events` types, its `campaignId`) was written out in four places: the relay
// (src/notify/sql.ts relayEvents), the API's redelivery (redeliverEvent), the operators' redeliver_event() (migration
// 0050) and client_event_wanted() (migration 0083). It now lives in webhook_endpoint_takes(), and the four call it. A
// one-expression SQL function is inlined by the planner, so the relay's plan is the one it had.

const BEFORE = {
  clientEventWanted: sql`(ep.events is null or event_type = any(ep.events))
                        and (ep.campaign_id is null or ep.campaign_id = campaign)`,
  redeliver: sql`(ep.events is null or e.type = any(ep.events))
           and (ep.campaign_id is null or ep.campaign_id = e.campaign_id)`,
}
const AFTER = {
  clientEventWanted: sql`webhook_endpoint_takes(ep, event_type, campaign)`,
  redeliver: sql`webhook_endpoint_takes(ep, e.type, e.campaign_id)`,
}

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create function webhook_endpoint_takes(ep webhook_endpoints, event_type text, event_campaign uuid)
      returns boolean
    language sql immutable
    as $$
      select (ep.events is null or event_type = any(ep.events))
         and (ep.campaign_id is null or ep.campaign_id = event_campaign)
    $$
  `.execute(db)
  await sql`comment on function webhook_endpoint_takes(webhook_endpoints, text, uuid) is ${sql.lit(
    "True when the endpoint takes an event of this type and campaign (its events filter and its campaignId); whether it is enabled is the caller's test. The one home of this rule: the relay, redelivery and client_event_wanted() use it.",
  )}`.execute(db)
  await define(db, AFTER)
}

export async function down(db: Kysely<any>): Promise<void> {
  await define(db, BEFORE)
  await sql`drop function webhook_endpoint_takes(webhook_endpoints, text, uuid)`.execute(db)
}

async function define(
  db: Kysely<any>,
  takes: { clientEventWanted: RawBuilder<unknown>; redeliver: RawBuilder<unknown> },
) {
  await sql`
    create or replace function client_event_wanted(event_type text, campaign uuid) returns boolean
    language sql stable
    as $$
      select exists (select 1 from webhook_endpoints ep where ep.enabled and ${takes.clientEventWanted})
    $$
  `.execute(db)
  // redeliver_event() of migration 0050, with the filter replaced
  await sql`
    create or replace function redeliver_event(event_id uuid) returns integer
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
        select ep.id, e.id, coalesce(e.call_id, e.campaign_id), e.sequence, 'queued', now() - interval '1 second'
          from webhook_events e
          join webhook_endpoints ep on ep.enabled and ${takes.redeliver}
         where e.id = redeliver_event.event_id and e.sequence is not null
           and not exists (select 1 from webhook_deliveries d where d.event_id = e.id and d.endpoint_id = ep.id)
        returning 1
      )
      select (select count(*) from again) + (select count(*) from added) into n;
      return n;
    end $$
  `.execute(db)
}
