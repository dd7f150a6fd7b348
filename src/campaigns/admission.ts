import { type Kysely, sql } from 'kysely'
import type { Campaign, DB } from '../db/database.ts'
import { type ApiError, apiError } from '../http/errors.ts'
import type { NewCall } from '../sql/calls.ts'
import { suppressedAmong } from '../sql/suppressions.ts'
import { knownZones, zonesOfPhone } from './timezones.ts'

// What a create must know from the database before it queues calls: the campaign exists and is not canceled, the
// phone is not suppressed (422 PHONE_SUPPRESSED), and the window has a common open time in every zone of the number
// (422 NO_CALLING_WINDOW: a US toll-free number spans Guam to Newfoundland, no 09:00-20:00 window holds there). It
// also fills in each campaign call's time zones. A suppression added between this check and the insert is caught
// by the claim and the sweep (sql/suppressions.ts).

export type Admission = { ok: true } | { ok: false; error: ApiError }

/** Checks `calls` (all of one campaign or none) and sets their timeZones; one result per call, in order. */
export async function admitCalls(
  db: Kysely<DB>,
  calls: NewCall[],
): Promise<{ campaignError?: ApiError; results: Admission[] }> {
  const campaignId = calls[0]?.campaignId ?? null
  let campaign: Campaign | undefined
  if (campaignId) {
    campaign = await db.selectFrom('campaigns').selectAll().where('id', '=', campaignId).executeTakeFirst()
    if (!campaign)
      return { campaignError: apiError(404, 'CAMPAIGN_NOT_FOUND', `no campaign ${campaignId}`), results: [] }
    if (campaign.status === 'CANCELED')
      return { campaignError: apiError(409, 'CAMPAIGN_CANCELED', 'the campaign is canceled'), results: [] }
    const zones = await knownZones(db)
    for (const c of calls) c.timeZones = zonesOfPhone(c.toPhone, zones)
  }
  const suppressed = await suppressedAmong(
    db,
    calls.map((c) => c.toPhone),
    campaignId,
  )
  const closed = campaign?.calling_window ? await zoneSetsWithoutWindow(db, campaign, calls) : new Set<string>()
  const results = calls.map((c): Admission => {
    if (suppressed.has(c.toPhone))
      return { ok: false, error: apiError(422, 'PHONE_SUPPRESSED', 'the phone is on the do-not-call list') }
    if (closed.has(zoneKey(c)))
      return {
        ok: false,
        error: apiError(
          422,
          'NO_CALLING_WINDOW',
          "the campaign's calling window has no time open in every time zone of this number",
          { timeZones: c.timeZones },
        ),
      }
    return { ok: true }
  })
  return { results }
}

const zoneKey = (c: NewCall) => (c.timeZones ?? []).join(',')

/** Zone sets (as zoneKey) for which the campaign's window never opens within the 8 days window_next_open looks at. */
async function zoneSetsWithoutWindow(db: Kysely<DB>, campaign: Campaign, calls: NewCall[]): Promise<Set<string>> {
  const keys = [...new Set(calls.map(zoneKey))]
  const { rows } = await sql<{ key: string }>`
    select k.key from unnest(${keys}::text[]) k(key)
     where window_next_open(${JSON.stringify(campaign.calling_window)}::jsonb,
                            window_zones(${JSON.stringify(campaign.calling_window)}::jsonb,
                                         coalesce(string_to_array(nullif(k.key, ''), ','), '{}')),
                            now()) is null
  `.execute(db)
  return new Set(rows.map((r) => r.key))
}

/**
 * A PENDING call's new number passes the checks of a create: not suppressed, and a common open time in its zones
 * (the call's campaign, if any). Returns the number's zones to store, or the 422 a create would answer. A canceled or
 * missing campaign is left to the update, which finds no PENDING call of it.
 */
export async function admitNewNumber(
  db: Kysely<DB>,
  campaignId: string | null,
  toPhone: string,
): Promise<{ timeZones: string[]; error?: ApiError }> {
  const call: NewCall = {
    toPhone,
    scriptId: '',
    metadata: {},
    expiresAt: null,
    idempotencyKey: null,
    requestHash: null,
    campaignId,
    scheduledAt: null,
    timeZones: null,
  }
  const admission = await admitCalls(db, [call])
  const timeZones = call.timeZones ?? zonesOfPhone(toPhone, await knownZones(db))
  const result = admission.results[0]
  return result?.ok === false ? { timeZones, error: result.error } : { timeZones }
}
