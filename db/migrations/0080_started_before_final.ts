import { type Kysely, sql } from 'kysely'

// A call's client events start with call.started even when the provider's final report is applied before the dial's
// 202 is recorded (a very short call: the report and the 202 race, and the report may win). The end of the attempt
// then sets provider_call_id in the same statement that changes the status, so the trigger of migration 0020 saw
// only the status change and wrote call.completed alone; the 202 recorded after it changed nothing. Now a status
// change out of IN_PROGRESS that also brings the provider's id first writes call.started, with the call as it was
// while in progress. The same holds for a dial whose answer was never read (DIAL_UNKNOWN) and that the report shows
// to have been accepted.

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create or replace function calls_webhook_event() returns trigger language plpgsql as $$
    declare
      event_type text;
      next_sequence integer;
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
          next_sequence := coalesce((select max(e.sequence) from webhook_events e where e.call_id = new.id), 0) + 1;
          insert into webhook_events (type, call_id, campaign_id, sequence, attempt, outcome, call_snapshot)
          values ('call.started', new.id, (to_jsonb(old) ->> 'campaign_id')::uuid, next_sequence, old.attempts, null,
                  to_jsonb(old) - 'request_hash' - 'idempotency_key'
                    || jsonb_build_object('provider_call_id', new.provider_call_id));
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
      -- read here, after the call.started above (a later statement of this function sees what it wrote)
      next_sequence := coalesce((select max(e.sequence) from webhook_events e where e.call_id = new.id), 0) + 1;
      insert into webhook_events (type, call_id, campaign_id, sequence, attempt, outcome, call_snapshot)
      values (event_type, new.id, (to_jsonb(new) ->> 'campaign_id')::uuid, next_sequence, new.attempts,
              case when event_type in ('call.completed', 'call.failed', 'call.retry_scheduled') then new.last_outcome end,
              to_jsonb(new) - 'request_hash' - 'idempotency_key');
      perform pg_notify('client_webhook_events', '');
      return null;
    end $$
  `.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`
    create or replace function calls_webhook_event() returns trigger language plpgsql as $$
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
}
