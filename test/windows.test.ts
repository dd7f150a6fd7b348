import { sql } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { validateWindow } from '../src/campaigns/windows.ts'
import { createTestDb, type TestDb } from './db.ts'

// window_open() and window_next_open() (migration 0010) at fixed instants: the one place "open" and "next opening"
// are computed, checked across DST changes and overnight windows. validateWindow() is pure.

let t: TestDb
beforeAll(async () => {
  t = await createTestDb()
})
afterAll(async () => {
  await t?.drop()
})

const win = (w: object) => ({
  timezone: 'recipient',
  fallbackTimezone: 'UTC',
  days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'],
  ...w,
})

async function open(w: object, zones: string[], at: string): Promise<boolean> {
  const { rows } = await sql<{ open: boolean }>`
    select window_open(${JSON.stringify(w)}::jsonb, ${zones}::text[], ${at}::timestamptz) as open`.execute(t.db)
  return rows[0]?.open as boolean
}

async function nextOpen(w: object, zones: string[], from: string): Promise<string | null> {
  const { rows } = await sql<{ at: Date | null }>`
    select window_next_open(${JSON.stringify(w)}::jsonb, ${zones}::text[], ${from}::timestamptz) as at`.execute(t.db)
  const at = rows[0]?.at
  return at ? new Date(at).toISOString() : null
}

describe('window_open', () => {
  it('is open from start (inclusive) to end (exclusive) in the zone', async () => {
    const w = win({ start: '09:00', end: '17:00' })
    // 2026-03-02 is a Monday; New York is UTC-5 in early March
    expect(await open(w, ['America/New_York'], '2026-03-02T13:59:59Z')).toBe(false)
    expect(await open(w, ['America/New_York'], '2026-03-02T14:00:00Z')).toBe(true)
    expect(await open(w, ['America/New_York'], '2026-03-02T21:59:59Z')).toBe(true)
    expect(await open(w, ['America/New_York'], '2026-03-02T22:00:00Z')).toBe(false)
  })

  it('keeps to the listed days, in local time', async () => {
    const w = win({ days: ['mon'], start: '00:00', end: '12:00' })
    // Monday 01:00 in Riyadh is Sunday 22:00 UTC
    expect(await open(w, ['Asia/Riyadh'], '2026-03-01T22:00:00Z')).toBe(true)
    expect(await open(w, ['UTC'], '2026-03-01T22:00:00Z')).toBe(false)
  })

  it('treats an overnight window as belonging to the day it starts', async () => {
    const w = win({ days: ['fri'], start: '22:00', end: '06:00' })
    expect(await open(w, ['UTC'], '2026-03-06T23:00:00Z')).toBe(true) // Friday 23:00
    expect(await open(w, ['UTC'], '2026-03-07T05:59:00Z')).toBe(true) // Saturday 05:59, Friday's night
    expect(await open(w, ['UTC'], '2026-03-07T06:00:00Z')).toBe(false)
    expect(await open(w, ['UTC'], '2026-03-06T05:00:00Z')).toBe(false) // Friday 05:00 belongs to Thursday's night
    expect(await open(w, ['UTC'], '2026-03-07T23:00:00Z')).toBe(false) // Saturday 22:00+ is not listed
  })

  it('needs every zone of a multi-zone number to be open', async () => {
    const w = win({ start: '09:00', end: '17:00' })
    const zones = ['America/New_York', 'America/Los_Angeles']
    expect(await open(w, zones, '2026-03-02T15:00:00Z')).toBe(false) // 10:00 NY, 07:00 LA
    expect(await open(w, zones, '2026-03-02T18:00:00Z')).toBe(true) // 13:00 NY, 10:00 LA
    expect(await open(w, zones, '2026-03-02T22:30:00Z')).toBe(false) // 17:30 NY
  })
})

describe('window_next_open', () => {
  it('is the given instant when the window is open', async () => {
    expect(await nextOpen(win({ start: '09:00', end: '17:00' }), ['UTC'], '2026-03-02T10:00:00Z')).toBe(
      '2026-03-02T10:00:00.000Z',
    )
  })

  it('is the next local start, skipping days not listed', async () => {
    const w = win({ days: ['mon', 'tue', 'wed', 'thu', 'fri'], start: '09:00', end: '17:00' })
    // Friday 2026-03-06 18:00 Riyadh (UTC+3) -> Monday 09:00 Riyadh = 06:00 UTC
    expect(await nextOpen(w, ['Asia/Riyadh'], '2026-03-06T15:00:00Z')).toBe('2026-03-09T06:00:00.000Z')
  })

  it('crosses the spring-forward change in New York (UTC-5 -> UTC-4 on 2026-03-08)', async () => {
    const w = win({ start: '09:00', end: '17:00' })
    // Saturday 18:00 EST -> Sunday 09:00 EDT = 13:00 UTC (not 14:00)
    expect(await nextOpen(w, ['America/New_York'], '2026-03-07T23:00:00Z')).toBe('2026-03-08T13:00:00.000Z')
  })

  it('crosses the fall-back change in London (UTC+1 -> UTC+0 on 2026-10-25)', async () => {
    const w = win({ start: '09:00', end: '17:00' })
    // Saturday 20:00 BST -> Sunday 09:00 GMT = 09:00 UTC
    expect(await nextOpen(w, ['Europe/London'], '2026-10-24T19:00:00Z')).toBe('2026-10-25T09:00:00.000Z')
  })

  it('opens an early-morning window on the DST day at its local time (Sydney, 2026-04-05 back to UTC+10)', async () => {
    const w = win({ start: '08:00', end: '20:00' })
    // Saturday 21:00 AEDT (10:00 UTC) -> Sunday 08:00 AEST = Saturday 22:00 UTC
    expect(await nextOpen(w, ['Australia/Sydney'], '2026-04-04T10:00:00Z')).toBe('2026-04-04T22:00:00.000Z')
  })

  it('finds the common open time of several zones', async () => {
    const w = win({ start: '09:00', end: '17:00' })
    // from Monday 12:00 UTC: NY opens 14:00 UTC, LA opens 17:00 UTC; both open at 17:00 UTC
    expect(await nextOpen(w, ['America/New_York', 'America/Los_Angeles'], '2026-03-02T12:00:00Z')).toBe(
      '2026-03-02T17:00:00.000Z',
    )
  })

  it('is null when the zones share no open time (Guam and New York, 09:00-17:00)', async () => {
    expect(
      await nextOpen(
        win({ start: '09:00', end: '17:00' }),
        ['Pacific/Guam', 'America/New_York'],
        '2026-03-02T12:00:00Z',
      ),
    ).toBe(null)
  })
})

describe('validateWindow', () => {
  const zones = new Set(['UTC', 'Asia/Riyadh'])
  const known = (z: string) => zones.has(z)

  it('normalizes days into week order without repeats', () => {
    const r = validateWindow({ timezone: 'UTC', days: ['fri', 'mon', 'fri'], start: '09:00', end: '17:00' }, known)
    expect(r).toEqual({ ok: true, window: { timezone: 'UTC', days: ['mon', 'fri'], start: '09:00', end: '17:00' } })
  })

  it.each([
    [{ timezone: 'Mars/Olympus', start: '09:00', end: '17:00' }, 'callingWindow.timezone'],
    [{ timezone: 'recipient', start: '09:00', end: '17:00' }, 'callingWindow.fallbackTimezone'],
    [
      { timezone: 'recipient', fallbackTimezone: 'Nope/Nope', start: '09:00', end: '17:00' },
      'callingWindow.fallbackTimezone',
    ],
    [{ timezone: 'UTC', start: '9:00', end: '17:00' }, 'callingWindow.start'],
    [{ timezone: 'UTC', start: '09:00', end: '24:00' }, 'callingWindow.end'],
    [{ timezone: 'UTC', start: '09:00', end: '09:00' }, 'callingWindow.end'],
    [{ timezone: 'UTC', days: [], start: '09:00', end: '17:00' }, 'callingWindow.days'],
    [{ timezone: 'UTC', days: ['mon', 'someday'], start: '09:00', end: '17:00' }, 'callingWindow.days'],
  ])('refuses %o naming %s', (input, field) => {
    const r = validateWindow(input, known)
    expect(r.ok).toBe(false)
    if (!r.ok) expect(r.problems.map((p) => p.field)).toContain(field)
  })
})
