import { type Kysely, sql } from 'kysely'

// A retry keeps its backoff when the campaign's window changes. calls.next_attempt_at of a retry is its due time
// moved to the window's next opening, so a PATCH of the window, which recomputes next_attempt_at for the new window,
// could not tell when the backoff itself ends and restarted from now: a BUSY retry due in 5 minutes rang at once
// when the new window was open. calls.retry_at keeps that time (written by sql/attempts.ts from the due_at that
// campaign_end_attempt now returns), and src/sql/campaigns.ts reschedules from max(now, scheduledAt, startsAt,
// retry_at). campaign_end_attempt is 0010's with that one output more.

export async function up(db: Kysely<any>): Promise<void> {
  await sql`alter table calls add column retry_at timestamptz`.execute(db)
  await sql`comment on column calls.retry_at is ${sql.lit(
    "When the last failed attempt's retry delay ends, before the calling window moves it (next_attempt_at); a change of the campaign's window or a call's number reschedules from here. Null: never retried.",
  )}`.execute(db)
  await sql`
    drop function campaign_end_attempt(uuid, text[], text, boolean, float8, text, text, integer, text)
  `.execute(db)
  await sql`
    create function campaign_end_attempt(
      p_campaign uuid, p_zones text[], p_next text, p_spends boolean, p_delay_sec float8,
      p_outcome text, p_event_kind text, p_attempt integer, p_error_code text)
    returns table (next text, next_at timestamptz, due_at timestamptz)
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
        return query select p_next, now() + make_interval(secs => p_delay_sec), now() + make_interval(secs => p_delay_sec);
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
             else now() end,
        now() + make_interval(secs => delay);
    end
    $$
  `.execute(db)
  await sql`comment on function campaign_end_attempt(uuid, text[], text, boolean, float8, text, text, integer, text) is ${sql.lit(
    "How an attempt of a campaign's call ends (sql/attempts.ts): the campaign's retryPolicy per outcome overrides the environment's decision, a retry waits for the window's next opening, and a retry of a canceled campaign's call ends CANCELED. Returns the status and, for PENDING, the next attempt time (next_at) and when the retry delay alone ends (due_at, before the window moves it).",
  )}`.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`
    drop function campaign_end_attempt(uuid, text[], text, boolean, float8, text, text, integer, text)
  `.execute(db)
  const previous = await import('./0010_campaigns.ts')
  await previous.createEndAttempt(db)
  await sql`alter table calls drop column retry_at`.execute(db)
}
