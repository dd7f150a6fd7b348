import { type Kysely, sql } from 'kysely'

// Campaign events for client webhooks (docs/webhooks.md): campaign.paused, campaign.resumed, campaign.canceled and
// campaign.finished. Numbered after 0041, not 0021: Kysely's Migrator refuses a migration that sorts before one a
// database has already run.
//
// - Written in the transaction of the change, like call events, by two triggers: one on campaigns (a status change)
//   and one on calls (a campaign's last open call reaching a final status: campaign.finished). Both are constraint
//   triggers deferred to commit. Why deferred: the sequence of a campaign's events needs one writer at a time, and
//   the writers are statements that lock many calls rows (the cancel of a campaign, the sweep's expiry, a batch of
//   ended attempts). A lock taken in the middle of such a transaction, with calls rows still to lock after it,
//   deadlocks against one that locked calls first; at commit every row lock is already held, and the lock taken
//   there (CAMPAIGN_EVENTS_LOCK, one for all campaigns, held until the commit a few statements later) is waited on
//   only by other commits, never while their holder waits for anything else.
// - campaign.finished: the campaign has at least one call and none PENDING or IN_PROGRESS. It is written by the
//   transaction whose change made that so (the last open call completed, failed, expired or was canceled, the cancel
//   of the campaign included), at most once per transaction. A campaign that gets open calls again (an ACTIVE one
//   takes new calls, retry_call() reopens one) finishes again when they are done.
// - Ordered per campaign: a campaign's events carry their own sequence (1, 2, ... with no gaps), unique per campaign
//   among events without a call, and the relay makes the campaign id their line (webhook_deliveries.line_id).

const CAMPAIGN_EVENTS_LOCK = '1128352844, 3' // ('CALL', 3); 1 is the dispatch lock, 2 the relay's

export async function up(db: Kysely<any>): Promise<void> {
  await sql`alter table webhook_events drop constraint webhook_events_call_has_sequence`.execute(db)
  await sql`
    alter table webhook_events add constraint webhook_events_sequenced
      check ((sequence is null) = (call_id is null and type not like 'campaign.%'))
  `.execute(db)
  await sql`
    alter table webhook_events add constraint webhook_events_campaign_event_has_campaign
      check (type not like 'campaign.%' or (campaign_id is not null and call_id is null))
  `.execute(db)
  await sql`
    create unique index webhook_events_campaign_sequence on webhook_events (campaign_id, sequence)
     where call_id is null and campaign_id is not null
  `.execute(db)

  // The one writer of campaign events, called by both triggers at commit. Under the lock, each statement takes a new
  // snapshot (READ COMMITTED, a VOLATILE function), so it reads the last commit's event and sequence.
  await sql`
    create function write_campaign_event(p_campaign uuid, p_type text, p_campaign_row jsonb) returns void
    language plpgsql volatile as $$
    begin
      perform pg_advisory_xact_lock(${sql.raw(CAMPAIGN_EVENTS_LOCK)});
      insert into webhook_events (type, campaign_id, sequence, detail)
      values (p_type, p_campaign,
              coalesce((select max(e.sequence) from webhook_events e
                         where e.campaign_id = p_campaign and e.call_id is null), 0) + 1,
              jsonb_build_object('campaign', p_campaign_row));
      perform pg_notify('client_webhook_events', '');
    end $$
  `.execute(db)

  await sql`
    create function campaigns_webhook_event() returns trigger language plpgsql as $$
    begin
      if not exists (select 1 from webhook_endpoints where enabled) then
        return null;
      end if;
      perform write_campaign_event(new.id,
        case new.status when 'PAUSED' then 'campaign.paused'
                        when 'CANCELED' then 'campaign.canceled'
                        else 'campaign.resumed' end,
        to_jsonb(new));
      return null;
    end $$
  `.execute(db)
  await sql`
    create constraint trigger campaigns_webhook_event after update of status on campaigns
    deferrable initially deferred
    for each row when (old.status is distinct from new.status)
    execute function campaigns_webhook_event()
  `.execute(db)

  // Fires once per call that became final, but checks each campaign once per transaction: the firings all run at
  // commit, after the transaction's last statement, so the first one of a campaign sees what the others would. The
  // checked campaigns are kept in a transaction-local setting. Checking on every firing cost a cancel of 10,000
  // calls with an endpoint enabled 16.7 s instead of 2.0-2.6 s: each probe of calls_by_campaign_status walked the
  // 10,000 entries of the rows this transaction had just moved out of PENDING, which stay in the index until vacuum.
  await sql`
    create function calls_campaign_finished() returns trigger language plpgsql as $$
    declare
      checked text := coalesce(current_setting('orchestrator.finished_checked', true), '');
      k campaigns;
    begin
      if position(new.campaign_id::text in checked) > 0 then
        return null;
      end if;
      perform set_config('orchestrator.finished_checked', checked || new.campaign_id::text || ',', true);
      if not exists (select 1 from webhook_endpoints where enabled) then
        return null;
      end if;
      perform pg_advisory_xact_lock(${sql.raw(CAMPAIGN_EVENTS_LOCK)});
      if exists (select 1 from calls c
                  where c.campaign_id = new.campaign_id and c.status in ('PENDING', 'IN_PROGRESS')) then
        return null;
      end if;
      select * into k from campaigns where id = new.campaign_id;
      perform write_campaign_event(k.id, 'campaign.finished', to_jsonb(k));
      return null;
    end $$
  `.execute(db)
  await sql`
    create constraint trigger calls_campaign_finished after update of status on calls
    deferrable initially deferred
    for each row
    when (new.campaign_id is not null and old.status in ('PENDING', 'IN_PROGRESS')
          and new.status in ('COMPLETED', 'FAILED', 'EXPIRED', 'CANCELED'))
    execute function calls_campaign_finished()
  `.execute(db)

  // The operators' redelivery (0020) for campaign events too: their line is the campaign.
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
          join webhook_endpoints ep
            on ep.enabled and (ep.events is null or e.type = any(ep.events))
           and (ep.campaign_id is null or ep.campaign_id = e.campaign_id)
         where e.id = redeliver_event.event_id and e.sequence is not null
           and not exists (select 1 from webhook_deliveries d where d.event_id = e.id and d.endpoint_id = ep.id)
        returning 1
      )
      select (select count(*) from again) + (select count(*) from added) into n;
      return n;
    end $$
  `.execute(db)

  const comments: [string, string][] = [
    [
      'function write_campaign_event(uuid, text, jsonb)',
      "Appends a campaign event (the campaign's next sequence, detail.campaign = the campaigns row) under the campaign events lock; called at commit by the triggers of migration 0050.",
    ],
    [
      'function campaigns_webhook_event()',
      'Deferred trigger on campaigns: a status change writes campaign.paused, campaign.resumed or campaign.canceled when any webhook endpoint is enabled.',
    ],
    [
      'function calls_campaign_finished()',
      'Deferred trigger on calls: when a call of a campaign became final and the campaign has no call PENDING or IN_PROGRESS left, writes campaign.finished (at most once per transaction) when any webhook endpoint is enabled.',
    ],
    [
      'column webhook_events.sequence',
      "Call events: the call's events counted from 1 with no gaps; campaign events: the campaign's. Null for endpoint events.",
    ],
    [
      'column webhook_deliveries.line_id',
      'What orders deliveries: the call id, or the campaign id for campaign events.',
    ],
  ]
  for (const [target, text] of comments) {
    await sql`comment on ${sql.raw(target)} is ${sql.lit(text)}`.execute(db)
  }
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop trigger calls_campaign_finished on calls`.execute(db)
  await sql`drop trigger campaigns_webhook_event on campaigns`.execute(db)
  await sql`drop function calls_campaign_finished()`.execute(db)
  await sql`drop function campaigns_webhook_event()`.execute(db)
  await sql`drop function write_campaign_event(uuid, text, jsonb)`.execute(db)
  await sql`drop index webhook_events_campaign_sequence`.execute(db)
  await sql`delete from webhook_events where type like 'campaign.%'`.execute(db)
  await sql`alter table webhook_events drop constraint webhook_events_campaign_event_has_campaign`.execute(db)
  await sql`alter table webhook_events drop constraint webhook_events_sequenced`.execute(db)
  await sql`
    alter table webhook_events add constraint webhook_events_call_has_sequence
      check ((call_id is null) = (sequence is null))
  `.execute(db)
}
