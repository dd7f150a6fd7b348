import { createHash } from 'node:crypto'
import { type Static, Type } from 'typebox'
import { Metadata } from '../calls-json.ts'
import { normalizePhone } from '../phone.ts'
import type { NewCall } from '../sql/calls.ts'
import { type ApiError, apiError } from './errors.ts'

// A call as a client sends it, checked and normalized into what sql/calls.ts inserts: what a schema cannot check
// (a real phone number, metadata size, times in the future) and the request hash behind Idempotency-Key. Checks
// that need the database (the campaign, suppression, the calling window) are routes/calls.ts's.

const METADATA_MAX_BYTES = 16 * 1024

export const Phone = Type.String({
  minLength: 1,
  maxLength: 32,
  description: 'Phone number with country code, e.g. +966501234567',
})
export const ScriptId = Type.String({ pattern: '^[A-Za-z0-9_.-]{1,100}$', description: '1-100 of A-Z a-z 0-9 _ . -' })
export { Metadata }
export const CampaignId = Type.String({ format: 'uuid', description: 'The campaign whose rules the call obeys' })

export const CreateCallBody = Type.Object(
  {
    to: Phone,
    scriptId: ScriptId,
    metadata: Type.Optional(Metadata),
    expiresAt: Type.Optional(
      Type.String({ format: 'date-time', description: 'Not dialed after this; default now + CALL_EXPIRY_MS' }),
    ),
    scheduledAt: Type.Optional(Type.String({ format: 'date-time', description: 'Not dialed before this' })),
    campaignId: Type.Optional(CampaignId),
  },
  { additionalProperties: false },
)
export type CreateCallInput = Static<typeof CreateCallBody>

/** Checks what a schema cannot and normalizes; `campaignId` of a batch applies to every item. */
export function toNewCall(
  body: CreateCallInput,
  idempotencyKey: string | null,
  batchCampaignId?: string,
): { ok: true; call: NewCall } | { ok: false; error: ApiError } {
  const toPhone = normalizePhone(body.to)
  if (!toPhone)
    return {
      ok: false,
      error: apiError(400, 'INVALID_PHONE', 'to must be a valid phone number with country code, e.g. +966501234567'),
    }
  const metadata = body.metadata ?? {}
  const metaError = checkMetadata(metadata)
  if (metaError) return { ok: false, error: metaError }
  let expiresAt: Date | null = null
  if (body.expiresAt !== undefined) {
    expiresAt = new Date(body.expiresAt)
    if (!(expiresAt.getTime() > Date.now()))
      return { ok: false, error: apiError(400, 'INVALID_EXPIRES_AT', 'expiresAt must be in the future') }
  }
  const scheduledAt = body.scheduledAt === undefined ? null : new Date(body.scheduledAt)
  if (scheduledAt && expiresAt && scheduledAt >= expiresAt)
    return { ok: false, error: apiError(400, 'INVALID_SCHEDULED_AT', 'scheduledAt must be before expiresAt') }
  if (body.campaignId !== undefined && batchCampaignId !== undefined && body.campaignId !== batchCampaignId)
    return {
      ok: false,
      error: apiError(400, 'VALIDATION_ERROR', 'campaignId of an item must match the batch campaignId'),
    }
  const campaignId = body.campaignId ?? batchCampaignId ?? null
  const requestHash = idempotencyKey
    ? createHash('sha256')
        .update(
          canonicalJson({
            toPhone,
            scriptId: body.scriptId,
            metadata,
            expiresAt: expiresAt?.toISOString() ?? null,
            // absent keys keep the hash of requests made before campaigns existed
            ...(scheduledAt ? { scheduledAt: scheduledAt.toISOString() } : {}),
            ...(campaignId ? { campaignId } : {}),
          }),
        )
        .digest('hex')
    : null
  return {
    ok: true,
    call: {
      toPhone,
      scriptId: body.scriptId,
      metadata,
      expiresAt,
      idempotencyKey,
      requestHash,
      campaignId,
      scheduledAt,
      timeZones: null,
    },
  }
}

export function checkMetadata(metadata: Record<string, unknown>): ApiError | undefined {
  return Buffer.byteLength(JSON.stringify(metadata)) > METADATA_MAX_BYTES
    ? apiError(400, 'METADATA_TOO_LARGE', `metadata must be at most ${METADATA_MAX_BYTES} bytes of JSON`)
    : undefined
}

/** JSON with sorted keys, so the same request hashes the same whatever its key order. */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`
  if (value && typeof value === 'object') {
    const entries = Object.entries(value).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`
  }
  return JSON.stringify(value)
}
