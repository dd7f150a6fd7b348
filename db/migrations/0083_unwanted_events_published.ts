import { type Kysely, sql } from 'kysely'
import { up as startedBeforeFinal } from './0080_started_before_final.ts'

// An event no enabled endpoint wants (its type is not in any endpoint's events, or its call is outside every
// endpoint's campaign) is still written, in the transaction of the change, for the event log (GET /api/v1/events,
// redeliver), but it is written published: the relay has nothing to make of it, so it is not woken for it and never
// reads it. Before, every such event cost a relay transaction that found no target (the relay ran after every commit
// that wrote events), and the transaction that wrote it took PostgreSQL's NOTIFY lock at commit. An endpoint that
// takes only final events (a common set-up) left a relay run per call.created, call.started and retry.
//
// Which endpoints want an event is judged when it is written, as before it was judged when it was relayed a few
// milliseconds later; an endpoint created or widened after that gets the event by redelivery
// (POST /api/v1/events/:id/redeliver), as it would for any earlier event.

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create function client_event_wanted(event_type text, campaign uuid) returns boolean
    language sql stable
    as $$
      select exists (select 1 from webhook_endpoints ep
                      where ep.enabled
                        and (ep.events is null or event_type = any(ep.events))
                        and (ep.campaign_id is null or ep.campaign_id = campaign))
    $$
  `.execute(db)
  await sql`
    comment on function client_event_wanted(text, uuid) is
      'True when an enabled webhook endpoint takes a call event of this type and campaign (the relay''s own test, src/notify/sql.ts relayEvents); an event nobody takes is written published.'
  `.execute(db)
  await sql`
    create or replace function calls_webhook_event() returns trigger language plpgsql as $$
    declare
      event_type text;
      next_sequence integer;
      campaign uuid;
      started_wanted boolean := false;
      event_wanted boolean;
    begin
      if not exists (select 1 from webhook_endpoints where enabled) then
        return null;
      end if;
      -- the claim (PENDING -> IN_PROGRESS) fires this trigger for every claimed call and writes nothing: the sequence
      -- is read only where an event is written
      if tg_op = 'INSERT' then
        event_type := 'call.created';
      elsif new.status is distinct from old.status then
        if old.status = 'IN_PROGRESS' and old.provider_call_id is null and new.provider_call_id is not null then
          -- migration 0080: the provider's id arrived with the end of the attempt
          campaign := (to_jsonb(old) ->> 'campaign_id')::uuid;
          next_sequence := coalesce((select max(e.sequence) from webhook_events e where e.call_id = new.id), 0) + 1;
          started_wanted := client_event_wanted('call.started', campaign);
          insert into webhook_events (type, call_id, campaign_id, sequence, attempt, outcome, call_snapshot, published)
          values ('call.started', new.id, campaign, next_sequence, old.attempts, null,
                  to_jsonb(old) - 'request_hash' - 'idempotency_key'
                    || jsonb_build_object('provider_call_id', new.provider_call_id),
                  not started_wanted);
        end if;
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
      campaign := (to_jsonb(new) ->> 'campaign_id')::uuid;
      event_wanted := client_event_wanted(event_type, campaign);
      -- read here, after the call.started above (a later statement of this function sees what it wrote)
      next_sequence := coalesce((select max(e.sequence) from webhook_events e where e.call_id = new.id), 0) + 1;
      insert into webhook_events (type, call_id, campaign_id, sequence, attempt, outcome, call_snapshot, published)
      values (event_type, new.id, campaign, next_sequence, new.attempts,
              case when event_type in ('call.completed', 'call.failed', 'call.retry_scheduled') then new.last_outcome end,
              to_jsonb(new) - 'request_hash' - 'idempotency_key',
              not event_wanted);
      -- the relay has work only for a wanted event
      if started_wanted or event_wanted then
        perform pg_notify('client_webhook_events', '');
      end if;
      return null;
    end $$
  `.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await startedBeforeFinal(db)
  await sql`drop function client_event_wanted(text, uuid)`.execute(db)
}
