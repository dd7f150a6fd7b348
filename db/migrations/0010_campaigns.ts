import { type Kysely, sql } from 'kysely'

// Campaigns (docs/campaigns.md). Every rule a claim must obey is decided here, in PostgreSQL, inside the one claim
// that already keeps the global cap and the one-call-per-phone rule, so every instance agrees:
// - a call is claimed only when its campaign is ACTIVE and inside [starts_at, ends_at), its phone is not suppressed,
//   the campaign has room under its own cap and its calling window is open NOW in every zone of the recipient
//   (decided by window_open() from now() and PostgreSQL's tz database);
// - calls.next_attempt_at is the call's "next eligible at": at create and whenever a claim or the sweep finds a due
//   call outside its window, it is moved to the window's next opening (window_next_open(), the one place that
//   computes it). So the calls waiting for their window are never in the due prefix the claim walks, and an idle
//   dispatcher's msUntilNextDue() reads the next opening like any retry time.
// - fair share: among campaigns of equal priority, a free slot goes to the campaign with the fewest calls in
//   progress (counting the calls this claim already chose): the claim orders candidates by
//   (priority desc, in_progress + rank within the campaign, due order).

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table campaigns (
      id                          uuid primary key default gen_random_uuid(),
      name                        text not null check (length(name) between 1 and 200),
      status                      text not null default 'ACTIVE' check (status in ('ACTIVE', 'PAUSED', 'CANCELED')),
      priority                    integer not null default 50 check (priority between 0 and 100),
      max_concurrent_calls        integer check (max_concurrent_calls >= 1),
      calling_window              jsonb check (calling_window is null or jsonb_typeof(calling_window) = 'object'),
      retry_policy                jsonb check (retry_policy is null or jsonb_typeof(retry_policy) = 'object'),
      starts_at                   timestamptz,
      ends_at                     timestamptz,
      max_dials_per_phone_per_day integer check (max_dials_per_phone_per_day >= 1),
      metadata                    jsonb not null default '{}' check (jsonb_typeof(metadata) = 'object'),
      created_at                  timestamptz not null default now(),
      updated_at                  timestamptz not null default now(),
      canceled_at                 timestamptz,
      constraint campaigns_ends_after_start check (ends_at is null or starts_at is null or ends_at > starts_at)
    )
  `.execute(db)
  await sql`create index campaigns_newest on campaigns (created_at desc, id desc)`.execute(db)
  await sql`
    create trigger campaigns_touch_updated_at before update on campaigns
    for each row execute function calls_touch_updated_at()
  `.execute(db)

  await sql`
    alter table calls
      add column campaign_id  uuid references campaigns (id),
      add column time_zones   text[],
      add column scheduled_at timestamptz
  `.execute(db)
  // The claim walks each active campaign's due calls through this index, and cancel finds a campaign's PENDING calls.
  await sql`create index calls_campaign_queue on calls (campaign_id, next_attempt_at, id) where status = 'PENDING'`.execute(
    db,
  )
  await sql`create index calls_by_campaign_status on calls (campaign_id, status) where campaign_id is not null`.execute(
    db,
  )
  await sql`create index calls_pending_by_phone on calls (to_phone) where status = 'PENDING'`.execute(db)

  await sql`
    create table suppressions (
      phone       text not null check (phone ~ '^\\+[1-9][0-9]{6,14}$'),
      campaign_id uuid references campaigns (id) on delete cascade,
      reason      text check (length(reason) <= 500),
      expires_at  timestamptz,
      created_at  timestamptz not null default now(),
      constraint suppressions_one_per_scope unique nulls not distinct (phone, campaign_id)
    )
  `.execute(db)
  await sql`create index suppressions_recent on suppressions (created_at)`.execute(db)

  await sql`
    create table campaign_dials (
      campaign_id uuid not null references campaigns (id) on delete cascade,
      to_phone    text not null,
      dialed_at   timestamptz not null default now()
    )
  `.execute(db)
  await sql`create index campaign_dials_by_phone on campaign_dials (campaign_id, to_phone, dialed_at)`.execute(db)

  // Runtime defaults the retry rules fall back to (src/sql/settings.ts writes them with the cap).
  await sql`
    alter table dispatch_settings
      add column max_retry_attempts   integer,
      add column retry_base_delay_ms  integer,
      add column retry_max_delay_ms   integer
  `.execute(db)

  // ---- calling windows: {timezone: 'recipient' | zone, fallbackTimezone?, days: ['mon'..], start, end} ----
  await sql`
    create function window_zones(w jsonb, call_zones text[]) returns text[]
    language sql immutable parallel safe as $$
      select case when w is null then null
                  when w ->> 'timezone' <> 'recipient' then array[w ->> 'timezone']
                  when cardinality(call_zones) > 0 then call_zones
                  else array[w ->> 'fallbackTimezone'] end
    $$
  `.execute(db)
  // An overnight window (end <= start) belongs to the day it starts on: mon 22:00-06:00 is open on Tuesday at 02:00.
  // One expression without FROM, so PostgreSQL inlines it into its caller (a FROM made it a function call per row,
  // and seeding 100,000 calls through window_next_open took minutes).
  await sql`
    create function window_open_in(w jsonb, zone text, at timestamptz) returns boolean
    language sql stable parallel safe as $$
      select case when (w ->> 'start')::time < (w ->> 'end')::time
                  then (w -> 'days') ? to_char(at at time zone zone, 'dy')
                       and (at at time zone zone)::time >= (w ->> 'start')::time
                       and (at at time zone zone)::time < (w ->> 'end')::time
                  else ((w -> 'days') ? to_char(at at time zone zone, 'dy')
                        and (at at time zone zone)::time >= (w ->> 'start')::time)
                    or ((w -> 'days') ? to_char((at at time zone zone) - interval '1 day', 'dy')
                        and (at at time zone zone)::time < (w ->> 'end')::time) end
    $$
  `.execute(db)
  await sql`
    create function window_open(w jsonb, zones text[], at timestamptz) returns boolean
    language sql stable parallel safe as $$
      select w is null or coalesce((select bool_and(window_open_in(w, z, at)) from unnest(zones) z), false)
    $$
  `.execute(db)
  // The intersection of the zones' open intervals starts at from_at or at the opening of one zone's interval, so
  // those are the only candidates; eight local days cover a weekly window. Null: no common open time in that span.
  await sql`
    create function window_next_open(w jsonb, zones text[], from_at timestamptz) returns timestamptz
    language sql stable parallel safe as $$
      select case when w is null then from_at else (
        select min(c) from (
          select from_at as c
          union all
          select (d::date + (w ->> 'start')::time) at time zone z
            from unnest(zones) z,
                 generate_series((from_at at time zone z)::date - 1, (from_at at time zone z)::date + 8,
                                 interval '1 day') d
        ) candidates
        where c >= from_at and window_open(w, zones, c)
      ) end
    $$
  `.execute(db)

  for (const [name, text] of Object.entries(FUNCTION_COMMENTS)) {
    await sql`comment on function ${sql.raw(name)} is ${sql.lit(text)}`.execute(db)
  }
  for (const [column, text] of Object.entries(CAMPAIGN_COLUMNS)) {
    await sql`comment on column campaigns.${sql.ref(column)} is ${sql.lit(text)}`.execute(db)
  }
  await sql`comment on table campaigns is ${sql.lit('A set of calls dialed under shared rules: calling window, cap, priority, retry rules, daily limit per phone (docs/campaigns.md). Change it through the API or scripts/calls.ts.')}`.execute(
    db,
  )
  await sql`comment on column calls.campaign_id is ${sql.lit('The campaign whose rules the call obeys; null: dialed as soon as a slot frees.')}`.execute(
    db,
  )
  await sql`comment on column calls.time_zones is ${sql.lit("The recipient's IANA zones from the number (libphonenumber), stored at create; empty: unknown, the window's fallbackTimezone applies.")}`.execute(
    db,
  )
  await sql`comment on column calls.scheduled_at is ${sql.lit('Not dialed before this time (the client asked); next_attempt_at starts here or later.')}`.execute(
    db,
  )
  await sql`comment on table suppressions is ${sql.lit('Do-not-call list: a phone here (for every call when campaign_id is null, else that campaign) is never dialed; the sweep cancels its PENDING calls (SUPPRESSED).')}`.execute(
    db,
  )
  await sql`comment on table campaign_dials is ${sql.lit("One row per dial of a campaign's call, kept 24 hours, for max_dials_per_phone_per_day.")}`.execute(
    db,
  )
  await sql`comment on index calls_campaign_queue is ${sql.lit('Due order of PENDING calls per campaign (null: calls without one); the claim walks it per active campaign.')}`.execute(
    db,
  )

  await createClaim(db)
  await createEndAttempt(db)
}

// How an attempt of a campaign's call ends, after the environment's retry rules decided p_next (sql/attempts.ts
// calls it for every report; a call without a campaign keeps p_next and p_delay_sec). The campaign's retryPolicy
// overrides that decision for the outcome (BUSY, NO_ANSWER, VOICEMAIL, FAILED webhooks; PROVIDER_ERROR for a dial
// that failed) when it has a rule for it or a maxAttempts; a rule's delay has no jitter, so it is what the client
// asked. A retry that would fall due outside the window waits for its next opening. A retry of a canceled
// campaign's call ends CANCELED instead: cancel promises that no call of it is dialed again.
export async function createEndAttempt(db: Kysely<any>) {
  await sql`
    create function campaign_end_attempt(
      p_campaign uuid, p_zones text[], p_next text, p_spends boolean, p_delay_sec float8,
      p_outcome text, p_event_kind text, p_attempt integer, p_error_code text)
    returns table (next text, next_at timestamptz)
    language plpgsql stable as $$
    declare
      k campaigns;
      s dispatch_settings;
      rule_key text;
      rule jsonb;
      max_attempts integer;
      delay float8 := p_delay_sec;
      decided text := p_next;
    begin
      if p_campaign is not null then
        select * into k from campaigns where id = p_campaign;
      end if;
      if k.id is null or p_next = 'COMPLETED' then
        return query select p_next, now() + make_interval(secs => p_delay_sec);
        return;
      end if;
      if p_next in ('PENDING', 'FAILED') and p_spends and k.retry_policy is not null
         and coalesce(p_error_code, '') <> 'DIAL_REJECTED' then
        rule_key := case when p_outcome in ('BUSY', 'NO_ANSWER', 'VOICEMAIL', 'FAILED') then p_outcome
                         when p_event_kind = 'DIAL_FAILED' then 'PROVIDER_ERROR' end;
        rule := k.retry_policy -> 'outcomes' -> rule_key;
        if rule_key is not null and (rule is not null or k.retry_policy ? 'maxAttempts') then
          select * into s from dispatch_settings limit 1;
          max_attempts := coalesce((k.retry_policy ->> 'maxAttempts')::int, s.max_retry_attempts, 3);
          if p_attempt >= max_attempts or (rule is not null and not coalesce((rule ->> 'retry')::boolean, true)) then
            decided := 'FAILED';
          else
            decided := 'PENDING';
            if rule ? 'delayMs' then
              delay := (rule ->> 'delayMs')::float8 * coalesce((rule ->> 'backoffMultiplier')::float8, 1) ^ (p_attempt - 1);
              if rule ? 'maxDelayMs' then delay := least(delay, (rule ->> 'maxDelayMs')::float8); end if;
              delay := delay / 1000;
            elsif p_next <> 'PENDING' then
              delay := least(coalesce(s.retry_max_delay_ms, 600000),
                             coalesce(s.retry_base_delay_ms, 30000) * 2 ^ (p_attempt - 1)) / 1000.0;
            end if;
          end if;
        end if;
      end if;
      if decided = 'PENDING' and k.status = 'CANCELED' then
        decided := 'CANCELED';
      end if;
      return query select decided,
        case when decided = 'PENDING'
             then coalesce(window_next_open(k.calling_window, window_zones(k.calling_window, p_zones),
                                            now() + make_interval(secs => delay)),
                           now() + make_interval(secs => delay))
             else now() end;
    end
    $$
  `.execute(db)
  await sql`comment on function campaign_end_attempt(uuid, text[], text, boolean, float8, text, text, integer, text) is ${sql.lit(
    "How an attempt of a campaign's call ends (sql/attempts.ts): the campaign's retryPolicy per outcome overrides the environment's decision, a retry waits for the window's next opening, and a retry of a canceled campaign's call ends CANCELED. Returns the status and, for PENDING, the next attempt time.",
  )}`.execute(db)
}

// The claim of 0004 with campaigns. Kept from 0004: the dispatch lock, the snapshot after it (a VOLATILE function),
// the global cap, one call per phone and none on a phone in a call, skip locked, the pinned plan settings, jit off.
// The walk is per group (each active campaign, plus the calls without one) through calls_campaign_queue, at most
// room * 2 + 8 due rows per group: paused, canceled, unstarted and ended campaigns are never walked, and calls
// waiting for their window are not due. A walked call whose window is closed (a retry that fell due at night, a
// window changed by PATCH) or whose phone reached the campaign's daily limit is moved to when it may ring.
export async function createClaim(db: Kysely<any>) {
  await sql`
    create or replace function claim_due_calls(slot_cap integer, max_claims integer) returns setof calls
    language plpgsql volatile
    set enable_bitmapscan = off
    set enable_sort = off
    set enable_hashjoin = off
    set jit = off
    as $$
    begin
      -- the dispatch lock: key ('CALL', 1) in pg_advisory_xact_lock's two-integer space, which pg-boss does not use
      perform pg_advisory_xact_lock(1128352844, 1);
      return query
        with live as (
          select c.campaign_id from calls c where c.status = 'IN_PROGRESS'
        ), free as (
          select least(greatest(slot_cap - count(*)::int, 0), max_claims) as slots from live
        ), groups as (
          select k.id, k.priority, k.calling_window, k.max_dials_per_phone_per_day as daily_limit, n.busy,
                 least(coalesce(k.max_concurrent_calls, slot_cap) - n.busy, (select slots from free)) as room
            from campaigns k
            cross join lateral (select count(*)::int as busy from live where live.campaign_id = k.id) n
           where k.status = 'ACTIVE' and (k.starts_at is null or k.starts_at <= now())
             and (k.ends_at is null or k.ends_at > now())
        ), walked as (
          select w.id, w.to_phone, w.next_attempt_at, g.id as campaign_id, g.priority, g.busy, g.room,
                 window_open(g.calling_window, window_zones(g.calling_window, w.time_zones), now()) as open,
                 g.calling_window, window_zones(g.calling_window, w.time_zones) as zones,
                 case when g.daily_limit is null then null else (
                   select case when count(*) >= g.daily_limit then min(d.dialed_at) + interval '1 day' end
                     from (select d.dialed_at from campaign_dials d
                            where d.campaign_id = g.id and d.to_phone = w.to_phone
                              and d.dialed_at > now() - interval '1 day'
                            order by d.dialed_at desc limit g.daily_limit) d
                 ) end as limit_until
            from groups g
            cross join lateral (
              select c.id, c.to_phone, c.next_attempt_at, c.time_zones
                from calls c
               where c.campaign_id = g.id and c.status = 'PENDING'
                 and c.next_attempt_at <= now() and c.expires_at > now()
               order by c.next_attempt_at, c.id
               limit case when g.room > 0 then g.room * 2 + 8 else 0 end
                 for update of c skip locked
            ) w
           union all
          select w.id, w.to_phone, w.next_attempt_at, null, 50, n.busy, (select slots from free), true, null, null, null
            from (select count(*)::int as busy from live where live.campaign_id is null) n
            cross join lateral (
              select c.id, c.to_phone, c.next_attempt_at
                from calls c
               where c.campaign_id is null and c.status = 'PENDING'
                 and c.next_attempt_at <= now() and c.expires_at > now()
               order by c.next_attempt_at, c.id
               limit (select case when slots = 0 then 0 else slots * 2 + 8 end from free)
                 for update of c skip locked
            ) w
        ), eligible as (
          select e.* from walked e
           where e.open and e.limit_until is null
             and not exists (select 1 from calls live where live.to_phone = e.to_phone and live.status = 'IN_PROGRESS')
             and not exists (select 1 from suppressions s
                              where s.phone = e.to_phone and (s.campaign_id is null or s.campaign_id = e.campaign_id)
                                and (s.expires_at is null or s.expires_at > now()))
        ), one_per_phone as (
          select distinct on (e.to_phone) e.*
            from eligible e order by e.to_phone, e.priority desc, e.next_attempt_at, e.id
        ), ranked as (
          select o.*, row_number() over (partition by o.campaign_id order by o.next_attempt_at, o.id)::int as rank
            from one_per_phone o
        ), chosen as (
          select r.id, r.campaign_id from ranked r
           where r.rank <= r.room
           order by r.priority desc, r.busy + r.rank, r.next_attempt_at, r.id
           limit (select slots from free)
        ), deferred as (
          update calls c
             set next_attempt_at = coalesce(
                   window_next_open(e.calling_window, e.zones, greatest(now(), coalesce(e.limit_until, now()))),
                   now() + interval '1 day')
            from walked e
           where c.id = e.id and c.status = 'PENDING' and (not e.open or e.limit_until is not null)
        ), claimed as (
          update calls c
             set status = 'IN_PROGRESS', attempts = c.attempts + 1, started_at = now(), provider_call_id = null
            from chosen
           where c.id = chosen.id and c.status = 'PENDING'
          returning c.*
        ), counted as (
          insert into campaign_dials (campaign_id, to_phone)
          select claimed.campaign_id, claimed.to_phone from claimed
           where claimed.campaign_id in (select id from groups where daily_limit is not null)
        ), history as (
          insert into call_events (call_id, attempt, kind, status)
          select claimed.id, claimed.attempts, 'CLAIMED', 'IN_PROGRESS' from claimed
        )
        select * from claimed order by claimed.next_attempt_at, claimed.id;
    end
    $$
  `.execute(db)
  await sql`comment on function claim_due_calls(integer, integer) is ${sql.lit(
    'The dispatcher claim (src/sql/claim.ts): under the dispatch lock, moves up to min(max_claims, slot_cap - IN_PROGRESS) due PENDING calls to IN_PROGRESS and returns them: one per phone, none on a phone in a call or suppressed, only of active campaigns with room under their cap, inside their calling window and daily limit; higher priority first, then the campaign with the fewest calls in progress. Not for hand use: a claimed call is dialed only by the process that claimed it.',
  )}`.execute(db)
}

const FUNCTION_COMMENTS: Record<string, string> = {
  'window_zones(jsonb, text[])':
    "The zones a call's window is read in: the window's own zone, else the recipient's zones, else fallbackTimezone.",
  'window_open_in(jsonb, text, timestamptz)':
    'Whether calling window w is open at `at` in one zone (start inclusive, end exclusive; an overnight window belongs to the day it starts).',
  'window_open(jsonb, text[], timestamptz)':
    'Whether calling window w is open at `at` in every one of zones (null w: always).',
  'window_next_open(jsonb, text[], timestamptz)':
    'The first instant at or after from_at when w is open in every zone, looking 8 days ahead; null when there is none.',
}

const CAMPAIGN_COLUMNS: Record<string, string> = {
  status: 'ACTIVE | PAUSED | CANCELED. Only ACTIVE campaigns are dialed; CANCELED is final.',
  priority: '0-100, higher dialed first; equal priorities share free slots by fewest calls in progress.',
  max_concurrent_calls: "The campaign's own cap (null: the global MAX_CONCURRENT_CALLS).",
  calling_window:
    '{"timezone": "recipient" | IANA zone, "fallbackTimezone", "days": ["mon",..], "start": "HH:MM", "end": "HH:MM"}; null: any time.',
  retry_policy: '{"maxAttempts", "outcomes": {"BUSY": {"retry", "delayMs", "backoffMultiplier", "maxDelayMs"}, ..}}.',
  starts_at: 'No call of the campaign is dialed before this.',
  ends_at: 'Calls still PENDING at this time end EXPIRED.',
  max_dials_per_phone_per_day: 'A phone is dialed at most this many times in any 24 hours by the campaign.',
  canceled_at: 'When the campaign was canceled.',
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop table campaign_dials, suppressions`.execute(db)
  await sql`alter table calls drop column campaign_id, drop column time_zones, drop column scheduled_at`.execute(db)
  await sql`drop table campaigns`.execute(db)
}
