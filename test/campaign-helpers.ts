import type { DialRecord } from '../src/providers/simulator.ts'

// Windows relative to the current time in a zone, so tests need no fake clock: open() holds now, closed() opens in
// two hours. Every day is listed, so a window that crosses midnight (overnight) behaves the same.

export function localHHMM(zone: string, offsetMin: number): string {
  const at = new Date(Date.now() + offsetMin * 60_000)
  return new Intl.DateTimeFormat('en-GB', {
    timeZone: zone,
    hour: '2-digit',
    minute: '2-digit',
    hourCycle: 'h23',
  }).format(at)
}

export const openWindow = (zone: string, timezone = 'recipient') => ({
  timezone,
  fallbackTimezone: 'UTC',
  start: localHHMM(zone, -60),
  end: localHHMM(zone, 60),
})

export const closedWindow = (zone: string, timezone = 'recipient') => ({
  timezone,
  fallbackTimezone: 'UTC',
  start: localHHMM(zone, 120),
  end: localHHMM(zone, 180),
})

/** Numbers whose libphonenumber zone is known: one zone each. */
export const NUMBERS = {
  riyadh: (i: number) => `+96650${String(1_000_000 + i).padStart(7, '0')}`,
  sydney: (i: number) => `+6141234${String(5000 + i).padStart(4, '0')}`,
  london: (i: number) => `+4479111${String(20_000 + i).padStart(5, '0')}`,
  newYork: (i: number) => `+1212736${String(1000 + i).padStart(4, '0')}`,
  /** A US toll-free number: 42 zones, Guam to Newfoundland and Pago Pago. */
  tollFree: '+18002752273',
}

export const callIdOf = (d: DialRecord) => d.idempotencyKey.split(':')[0] as string

/** The most calls of `ids` the simulator had active at once (from dial to final webhook). */
export function maxOverlap(dials: DialRecord[], ids: Set<string>): number {
  const edges: [number, number][] = []
  for (const d of dials) {
    if (!ids.has(callIdOf(d)) || d.finalSentAt === undefined) continue
    edges.push([d.receivedAt, 1], [d.finalSentAt, -1])
  }
  edges.sort((a, b) => a[0] - b[0] || a[1] - b[1])
  let live = 0
  let max = 0
  for (const [, delta] of edges) {
    live += delta
    max = Math.max(max, live)
  }
  return max
}
