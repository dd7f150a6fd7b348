import { type CallJsonValue, toCallJson } from '../calls-json.ts'
import type { Call } from '../db/database.ts'

// The body of a client event, the same bytes on every attempt (the signature covers them; only the headers'
// timestamp changes per attempt).

export interface EventBody {
  type: string
  timestamp: string
  data: { call: CallJsonValue; attempt: number; outcome?: string; sequence: number }
}

export interface EventRow {
  id: string
  type: string
  call_snapshot: Record<string, unknown> | null
  call_attempt: number | null
  outcome: string | null
  sequence: number | null
  event_created_at: Date | string
}

export function eventBody(e: EventRow): EventBody {
  return {
    type: e.type,
    timestamp: new Date(e.event_created_at).toISOString(),
    data: {
      call: toCallJson(e.call_snapshot as unknown as Call),
      attempt: e.call_attempt ?? 0,
      ...(e.outcome ? { outcome: e.outcome } : {}),
      sequence: e.sequence ?? 0,
    },
  }
}
