import { type Kysely, sql } from 'kysely'

// The claim of 0010 with four costs removed; every rule of 0010 is kept as it was (docs/campaigns.md).
// - The calls without a campaign were walked through calls_dispatch_queue (next_attempt_at, id), which holds every
//   campaign's due calls too: each claim stepped over all of them (970 rows on the benchmark's backlog, 20,000
//   while a large campaign has a due backlog). They are now walked through calls_campaign_queue's null prefix.
// - window_open() ran once per walked call; it is a SQL function with a subquery, never inlined, and is now judged
//   once per campaign and zone set among the walked calls.
// - Each active campaign counted its calls in progress by scanning all of them, and each claimed call looked for
//   its campaign's daily limit by scanning every active campaign: both grew with the number of campaigns.
// Measured on the benchmark's backlog (100,000 PENDING over 100 campaigns, 99,000 outside their window, 30 claimed;
// scripts/bench/campaigns.ts), 0010's claim and this one alternating in one session, 380 rounds each, on the shared
// 2-core machine at load average 2.5: median 3.69 -> 2.55 ms (p99 9.77 -> 5.24); with 900 more campaigns whose
// calls are not due, 7.76 -> 3.73 ms. Writing the 30 claims alone (their update and CLAIMED rows, no walk) took a
// median of 2.05 ms in the same run: that, not the campaigns, is most of the claim now. What still grows with the
// campaigns is one index probe of calls_campaign_queue per active campaign, about 1.3 us each.

export async function up(db: Kysely<any>): Promise<void> {
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
        ), busy as (
          select live.campaign_id, count(*)::int as n from live where live.campaign_id is not null group by 1
        ), groups as (
          -- busy has a row per campaign with calls in progress (at most the cap), so each campaign reads a few rows
          -- instead of scanning every call in progress
          select k.id, k.priority, k.calling_window, k.max_dials_per_phone_per_day as daily_limit,
                 coalesce(b.n, 0) as busy,
                 least(coalesce(k.max_concurrent_calls, slot_cap) - coalesce(b.n, 0), (select slots from free)) as room
            from campaigns k
            left join busy b on b.campaign_id = k.id
           where k.status = 'ACTIVE' and (k.starts_at is null or k.starts_at <= now())
             and (k.ends_at is null or k.ends_at > now())
        ), walked as (
          select w.id, w.to_phone, w.next_attempt_at, g.id as campaign_id, g.priority, g.busy, g.room,
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
          select w.id, w.to_phone, w.next_attempt_at, null, 50, n.busy, (select slots from free), null, null, null
            from (select count(*)::int as busy from live where live.campaign_id is null) n
            cross join lateral (
              select c.id, c.to_phone, c.next_attempt_at
                from calls c
               where c.campaign_id is null and c.status = 'PENDING'
                 and c.next_attempt_at <= now() and c.expires_at > now()
               -- campaign_id first, so the walk takes calls_campaign_queue's (null, due order) prefix: ordered by
               -- (next_attempt_at, id) it took calls_dispatch_queue and stepped over every due campaign call
               order by c.campaign_id, c.next_attempt_at, c.id
               limit (select case when slots = 0 then 0 else slots * 2 + 8 end from free)
                 for update of c skip locked
            ) w
        ), windows as (
          -- once per campaign and zone set, not per walked call: window_open is a SQL function with a subquery,
          -- never inlined, about 15-40 us a call; per call it was 2.6 ms of a 4.3 ms claim (68 walked calls)
          select v.campaign_id, v.zones, window_open(k.calling_window, v.zones, now()) as open
            from (select distinct e.campaign_id, e.zones from walked e where e.calling_window is not null) v
            join campaigns k on k.id = v.campaign_id
        ), judged as (
          select e.*, coalesce(x.open, true) as open
            from walked e
            left join windows x on x.campaign_id = e.campaign_id and x.zones = e.zones
        ), eligible as (
          select e.* from judged e
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
            from judged e
           where c.id = e.id and c.status = 'PENDING' and (not e.open or e.limit_until is not null)
        ), claimed as (
          update calls c
             set status = 'IN_PROGRESS', attempts = c.attempts + 1, started_at = now(), provider_call_id = null
            from chosen
           where c.id = chosen.id and c.status = 'PENDING'
          returning c.*
        ), counted as (
          insert into campaign_dials (campaign_id, to_phone)
          select claimed.campaign_id, claimed.to_phone
            from claimed join campaigns k on k.id = claimed.campaign_id
           where k.max_dials_per_phone_per_day is not null
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

// 0010's claim, as it was.
export async function down(db: Kysely<any>): Promise<void> {
  const previous = await import('./0010_campaigns.ts')
  await previous.createClaim(db)
}
