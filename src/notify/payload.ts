import { type CallJsonValue, toCallJson } from '../calls-json.ts'
import { type CampaignJsonValue, toCampaignJson } from '../campaigns-json.ts'
import type { Call, Campaign } from '../db/database.ts'

// The body of a client event, the same bytes on every attempt (the signature covers them; only the headers'
// timestamp changes per attempt).

export interface CallEventBody {
  type: string
  timestamp: string
  data: { call: CallJsonValue; attempt: number; outcome?: string; sequence: number }
}

/** campaign.*: the campaign as GET /campaigns/:id shows it (without stats) right after the change. */
export interface CampaignEventBody {
  type: string
  timestamp: string
  data: { campaign: CampaignJsonValue; sequence: number }
}

export type EventBody = CallEventBody | CampaignEventBody

export interface EventRow {
  id: string
  type: string
  call_snapshot: Record<string, unknown> | null
  call_attempt: number | null
  outcome: string | null
  sequence: number | null
  detail?: Record<string, unknown>
  event_created_at: Date | string
}

export function eventBody(e: EventRow): EventBody {
  const timestamp = new Date(e.event_created_at).toISOString()
  if (e.call_snapshot === null && e.detail?.campaign) {
    return {
      type: e.type,
      timestamp,
      data: { campaign: toCampaignJson(e.detail.campaign as Campaign), sequence: e.sequence ?? 0 },
    }
  }
  return {
    type: e.type,
    timestamp,
    data: {
      call: toCallJson(e.call_snapshot as unknown as Call),
      attempt: e.call_attempt ?? 0,
      ...(e.outcome ? { outcome: e.outcome } : {}),
      sequence: e.sequence ?? 0,
    },
  }
}
