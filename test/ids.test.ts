import { sql } from 'kysely'
import { describe, expect, it } from 'vitest'
import { uuidv7 } from '../src/ids.ts'
import { insertCallsForIds } from '../src/sql/calls.ts'
import { phone } from './helpers.ts'
import { useTestDb } from './kit.ts'
import { plainCall } from './seed.ts'

describe('uuidv7', () => {
  it('is a version 7, variant 10 UUID carrying its millisecond', () => {
    const ms = Date.UTC(2026, 11, 2, 12, 0, 0, 123)
    const id = uuidv7(ms)
    expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
    expect(Number.parseInt(id.replace(/-/g, '').slice(0, 12), 16)).toBe(ms)
  })

  it('sorts the ids of a later millisecond after those of an earlier one, and never repeats', () => {
    const ids = Array.from({ length: 1000 }, (_, i) => uuidv7(1_764_000_000_000 + Math.floor(i / 10)))
    for (let i = 10; i < ids.length; i++) expect((ids[i] as string) > (ids[i - 10] as string)).toBe(true)
    expect(new Set(ids).size).toBe(ids.length)
  })
})

describe('call ids', () => {
  const t = useTestDb()

  const call = (n: number) => plainCall(phone(n))

  it('are time-ordered, so a new call keys onto the right edge of calls_pkey and call_events_by_call', async () => {
    const first = await insertCallsForIds(t.db, [call(1)], 3_600_000)
    await new Promise((r) => setTimeout(r, 5)) // the next millisecond at least
    const second = await insertCallsForIds(t.db, [call(2)], 3_600_000)
    const { rows } = await sql<{ id: string }>`select id from calls order by id`.execute(t.db)
    expect(rows.map((r) => r.id)).toEqual([...first, ...second])
    expect(first[0]).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7/)
  })
})
