import { type Static, Type } from 'typebox'
import { iso } from './calls-json.ts'
import { DAYS } from './campaigns/windows.ts'
import type { Campaign } from './db/database.ts'
import type { CampaignStats } from './sql/campaigns.ts'

// A campaign as the API shows it: GET /campaigns/:id (src/http) and the `data.campaign` of campaign events
// (src/notify) are the same object, so both import it from here (as calls-json.ts does for calls).

export const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(t: T) => Type.Union([t, Type.Null()])
export const Timestamp = Type.String({ format: 'date-time' })
const HHMM = Type.String({ description: 'HH:MM, 00:00-23:59' })

export const CallingWindow = Type.Object(
  {
    timezone: Type.String({ description: '"recipient" (the zones of each number) or an IANA zone, e.g. Asia/Riyadh' }),
    fallbackTimezone: Type.Optional(Type.String({ description: 'With "recipient": for numbers of unknown zone' })),
    days: Type.Optional(Type.Array(Type.String({ enum: [...DAYS] }), { description: 'Default: every day' })),
    start: HHMM,
    end: Type.String({ description: 'HH:MM, exclusive; earlier than start: an overnight window' }),
  },
  { additionalProperties: false },
)
const OutcomeRule = Type.Object(
  {
    retry: Type.Boolean(),
    delayMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 7 * 86_400_000 })),
    backoffMultiplier: Type.Optional(Type.Number({ minimum: 1, maximum: 10 })),
    maxDelayMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 7 * 86_400_000 })),
  },
  { additionalProperties: false },
)
export const RetryPolicy = Type.Object(
  {
    maxAttempts: Type.Optional(Type.Integer({ minimum: 1, maximum: 20 })),
    outcomes: Type.Optional(
      Type.Object(
        {
          BUSY: Type.Optional(OutcomeRule),
          NO_ANSWER: Type.Optional(OutcomeRule),
          FAILED: Type.Optional(OutcomeRule),
          VOICEMAIL: Type.Optional(OutcomeRule),
          PROVIDER_ERROR: Type.Optional(OutcomeRule),
        },
        { additionalProperties: false },
      ),
    ),
  },
  { additionalProperties: false },
)
const StatsJson = Type.Object({
  byStatus: Type.Record(Type.String(), Type.Integer(), { description: 'Calls by status' }),
  inProgress: Type.Integer(),
  maxConcurrentCalls: Type.Integer({ description: "The campaign's cap in effect" }),
  dueNow: Type.Integer({ description: 'PENDING calls that may be dialed now' }),
  waiting: Type.Integer({
    description: 'PENDING calls not yet due: outside their calling window, scheduled later, or waiting for a retry',
  }),
  nextEligibleAt: Nullable(Timestamp),
  completedLastHour: Type.Integer(),
  estimatedSecondsToFinish: Nullable(Type.Integer()),
})
export const CampaignJson = Type.Object({
  id: Type.String({ format: 'uuid' }),
  name: Type.String(),
  status: Type.Enum(['ACTIVE', 'PAUSED', 'CANCELED']),
  priority: Type.Integer(),
  maxConcurrentCalls: Nullable(Type.Integer()),
  callingWindow: Nullable(CallingWindow),
  retryPolicy: Nullable(RetryPolicy),
  startsAt: Nullable(Timestamp),
  endsAt: Nullable(Timestamp),
  maxDialsPerPhonePerDay: Nullable(Type.Integer()),
  metadata: Type.Record(Type.String(), Type.Unknown()),
  createdAt: Timestamp,
  updatedAt: Timestamp,
  canceledAt: Nullable(Timestamp),
  stats: Type.Optional(StatsJson),
})

export type CampaignJsonValue = Static<typeof CampaignJson>

export function toCampaignJson(k: Campaign, stats?: CampaignStats): CampaignJsonValue {
  return {
    id: k.id,
    name: k.name,
    status: k.status,
    priority: k.priority,
    maxConcurrentCalls: k.max_concurrent_calls,
    callingWindow: k.calling_window as Static<typeof CallingWindow> | null,
    retryPolicy: k.retry_policy as Static<typeof RetryPolicy> | null,
    startsAt: iso(k.starts_at),
    endsAt: iso(k.ends_at),
    maxDialsPerPhonePerDay: k.max_dials_per_phone_per_day,
    metadata: k.metadata,
    createdAt: iso(k.created_at) as string,
    updatedAt: iso(k.updated_at) as string,
    canceledAt: iso(k.canceled_at),
    ...(stats ? { stats: { ...stats, nextEligibleAt: iso(stats.nextEligibleAt) } } : {}),
  }
}
