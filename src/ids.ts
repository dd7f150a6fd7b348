import { randomBytes } from 'node:crypto'

// Call ids are UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits. A new call's key then lands at
// the right edge of calls_pkey and call_events_by_call instead of on a random leaf of them: with a year of history
// (10 million calls, both indexes far larger than shared_buffers) a random leaf is a page read and, the first time
// it changes after a checkpoint, a full-page image in the WAL. Measured on PostgreSQL 15 with 10M calls / 40M history
// rows: a create wrote 22.5 KB of WAL with random (v4) ids and 1.4 KB on a fresh database (docs/scaling.md).
// The random bits keep ids unguessable; the time they reveal is the call's created_at, which the API shows anyway.

/** A UUIDv7 for the time `ms` (default now). Ids of one millisecond are ordered at random among themselves. */
export function uuidv7(ms = Date.now()): string {
  const b = randomBytes(16)
  b.writeUIntBE(ms, 0, 6)
  b[6] = 0x70 | ((b[6] as number) & 0x0f) // version 7
  b[8] = 0x80 | ((b[8] as number) & 0x3f) // variant 10
  const h = b.toString('hex')
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`
}
