import { type Static, Type } from 'typebox'
import type { Call } from './db/database.ts'
import { PROVIDER_FINAL, STATUSES } from './dispatch/call-state.ts'

// A call as the API shows it: GET /calls/:id (src/http) and the `data.call` of client webhook events (src/notify)
// are the same object, so both import it from here.

const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(t: T) => Type.Union([t, Type.Null()])
const Timestamp = Type.String({ format: 'date-time' })

export const Metadata = Type.Record(Type.String(), Type.Unknown(), {
  description: 'JSON object passed to the provider, at most 16 KiB',
})

export const CallJson = Type.Object({
  id: Type.String({ format: 'uuid' }),
  payload: Type.Object({ to: Type.String(), scriptId: Type.String(), metadata: Metadata }),
  status: Type.Enum(STATUSES),
  attempts: Type.Integer(),
  lastError: Nullable(Type.Object({ code: Type.String(), message: Type.String() })),
  lastOutcome: Nullable(
    Type.Enum(PROVIDER_FINAL, { description: "The provider's outcome of the last attempt that reported one" }),
  ),
  result: Nullable(
    Type.Record(Type.String(), Type.Unknown(), {
      description:
        'What the platform reported about the last attempt: provider, endReason, durationSec, recordingUrl, logUrl, transcript, cost, costUnit, startedAt, endedAt (each when reported)',
    }),
  ),
  providerCallId: Nullable(Type.String()),
  durationSec: Nullable(Type.Integer()),
  createdAt: Timestamp,
  updatedAt: Timestamp,
  nextAttemptAt: Timestamp,
  startedAt: Nullable(Timestamp),
  endedAt: Nullable(Timestamp),
  expiresAt: Timestamp,
  campaignId: Nullable(Type.String({ format: 'uuid' })),
  scheduledAt: Nullable(Timestamp),
})
export type CallJsonValue = Static<typeof CallJson>

export const iso = (d: Date | string | null) => (d === null ? null : new Date(d).toISOString())

/** A calls row (or its to_jsonb snapshot, whose timestamps are strings) as the API shows it. */
export function toCallJson(c: Call): CallJsonValue {
  return {
    id: c.id,
    payload: { to: c.to_phone, scriptId: c.script_id, metadata: c.metadata },
    status: c.status,
    attempts: c.attempts,
    lastError: c.last_error,
    lastOutcome: c.last_outcome,
    result: c.last_result ?? null,
    providerCallId: c.provider_call_id,
    durationSec: c.duration_sec,
    createdAt: iso(c.created_at) as string,
    updatedAt: iso(c.updated_at) as string,
    nextAttemptAt: iso(c.next_attempt_at) as string,
    startedAt: iso(c.started_at),
    endedAt: iso(c.ended_at),
    expiresAt: iso(c.expires_at) as string,
    campaignId: c.campaign_id,
    scheduledAt: iso(c.scheduled_at),
  }
}
