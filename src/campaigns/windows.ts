// Calling windows: the validation of a window as the API receives it, and its SQL. Whether a window is open NOW is
// decided only in PostgreSQL (window_open() in migration 0010, from now() and the database's tz data), so every
// instance agrees; its next opening is computed only by window_next_open() (same migration): for stats, retries,
// the claim's skip-ahead and the dispatcher's sleep. This module imports nothing of ours.

export const DAYS = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'] as const
export type Day = (typeof DAYS)[number]

export interface CallingWindow {
  /** 'recipient': the zones of the called number; otherwise one IANA zone for every call. */
  timezone: string
  /** Required with 'recipient': used when a number's zone is unknown. */
  fallbackTimezone?: string
  days: Day[]
  /** "HH:MM", inclusive. */
  start: string
  /** "HH:MM", exclusive; earlier than (or equal to 00:00 after) start: an overnight window. */
  end: string
}

export interface WindowProblem {
  field: string
  message: string
}

const HHMM = /^([01][0-9]|2[0-3]):[0-5][0-9]$/

/**
 * Checks a window as sent by a client (`field` prefixes the reported field names) and returns it normalized (days
 * default to every day, in week order, without repeats), or the problems, each naming its field.
 */
export function validateWindow(
  input: { timezone: string; fallbackTimezone?: string; days?: string[]; start: string; end: string },
  isKnownZone: (zone: string) => boolean,
  field = 'callingWindow',
): { ok: true; window: CallingWindow } | { ok: false; problems: WindowProblem[] } {
  const problems: WindowProblem[] = []
  if (input.timezone !== 'recipient' && !isKnownZone(input.timezone))
    problems.push({ field: `${field}.timezone`, message: `unknown time zone ${input.timezone}` })
  if (input.timezone === 'recipient' && input.fallbackTimezone === undefined)
    problems.push({ field: `${field}.fallbackTimezone`, message: 'required when timezone is "recipient"' })
  if (input.fallbackTimezone !== undefined && !isKnownZone(input.fallbackTimezone))
    problems.push({ field: `${field}.fallbackTimezone`, message: `unknown time zone ${input.fallbackTimezone}` })
  if (!HHMM.test(input.start)) problems.push({ field: `${field}.start`, message: 'must be HH:MM, 00:00-23:59' })
  if (!HHMM.test(input.end)) problems.push({ field: `${field}.end`, message: 'must be HH:MM, 00:00-23:59' })
  if (HHMM.test(input.start) && input.start === input.end)
    problems.push({ field: `${field}.end`, message: 'must differ from start (the window would be empty)' })
  const days = input.days ?? [...DAYS]
  if (days.length === 0) problems.push({ field: `${field}.days`, message: 'must name at least one day' })
  const unknown = days.filter((d) => !(DAYS as readonly string[]).includes(d))
  if (unknown.length > 0) problems.push({ field: `${field}.days`, message: `unknown day ${unknown.join(', ')}` })
  if (problems.length > 0) return { ok: false, problems }
  return {
    ok: true,
    window: {
      timezone: input.timezone,
      ...(input.fallbackTimezone === undefined ? {} : { fallbackTimezone: input.fallbackTimezone }),
      days: DAYS.filter((d) => days.includes(d)),
      start: input.start,
      end: input.end,
    },
  }
}
