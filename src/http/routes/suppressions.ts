import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { type Static, Type } from 'typebox'
import type { Suppression } from '../../db/database.ts'
import { normalizePhone } from '../../phone.ts'
import { addSuppressions, deleteSuppression, listSuppressions, type NewSuppression } from '../../sql/suppressions.ts'
import { Phone } from '../call-input.ts'
import type { AppDeps } from '../deps.ts'
import { type ApiError, apiError, errorBody, errorResponse } from '../errors.ts'

// ---- schemas ----
export const SUPPRESSION_BATCH_MAX = 10_000
const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(t: T) => Type.Union([t, Type.Null()])
const Timestamp = Type.String({ format: 'date-time' })

const SuppressionBody = Type.Object(
  {
    phone: Phone,
    reason: Type.Optional(Type.String({ maxLength: 500 })),
    expiresAt: Type.Optional(Type.String({ format: 'date-time', description: 'Suppressed until; default forever' })),
    campaignId: Type.Optional(
      Type.String({ format: 'uuid', description: 'Only for this campaign; default every call' }),
    ),
  },
  { additionalProperties: false },
)
const BatchBody = Type.Object(
  { suppressions: Type.Array(SuppressionBody, { minItems: 1, maxItems: SUPPRESSION_BATCH_MAX }) },
  { additionalProperties: false },
)
const SuppressionJson = Type.Object({
  phone: Type.String(),
  campaignId: Nullable(Type.String({ format: 'uuid' })),
  reason: Nullable(Type.String()),
  expiresAt: Nullable(Timestamp),
  createdAt: Timestamp,
})
const Saved = Type.Object({
  success: Type.Literal(true),
  data: Type.Object({
    count: Type.Integer(),
    canceledCalls: Type.Integer({ description: 'PENDING calls to these phones that were canceled' }),
  }),
})
const ListQuery = Type.Object(
  {
    phone: Type.Optional(Phone),
    page: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 1 }),
    limit: Type.Integer({ minimum: 1, maximum: 100, default: 20 }),
  },
  { additionalProperties: false },
)
const PhoneParams = Type.Object({ phone: Phone })
const DeleteQuery = Type.Object(
  { campaignId: Type.Optional(Type.String({ format: 'uuid' })) },
  { additionalProperties: false },
)

const iso = (d: Date | string | null) => (d === null ? null : new Date(d).toISOString())

function toJson(s: Suppression): Static<typeof SuppressionJson> {
  return {
    phone: s.phone,
    campaignId: s.campaign_id,
    reason: s.reason,
    expiresAt: iso(s.expires_at),
    createdAt: iso(s.created_at) as string,
  }
}

function toNewSuppression(
  b: Static<typeof SuppressionBody>,
): { ok: true; s: NewSuppression } | { ok: false; error: ApiError } {
  const phone = normalizePhone(b.phone)
  if (!phone)
    return { ok: false, error: apiError(400, 'INVALID_PHONE', 'phone must be a valid number with country code') }
  return {
    ok: true,
    s: {
      phone,
      reason: b.reason ?? null,
      expiresAt: b.expiresAt ? new Date(b.expiresAt) : null,
      campaignId: b.campaignId ?? null,
    },
  }
}

// A campaignId that names no campaign fails the foreign key: 404 rather than a 500.
async function saving<T>(run: () => Promise<T>): Promise<T | ApiError> {
  try {
    return await run()
  } catch (err) {
    if ((err as { code?: string }).code === '23503') return apiError(404, 'CAMPAIGN_NOT_FOUND', 'no such campaign')
    throw err
  }
}
const isError = (v: unknown): v is ApiError => typeof v === 'object' && v !== null && 'code' in v && 'status' in v

// ---- routes ----
export const suppressionRoutes: FastifyPluginAsyncTypebox<AppDeps> = async (app, { db }) => {
  app.post(
    '/api/v1/suppressions',
    {
      schema: {
        operationId: 'addSuppression',
        tags: ['suppressions'],
        summary: 'Put a phone on the do-not-call list (repeating it is not an error); its PENDING calls are canceled',
        body: SuppressionBody,
        response: {
          200: Saved,
          400: errorResponse('VALIDATION_ERROR or INVALID_PHONE'),
          404: errorResponse('CAMPAIGN_NOT_FOUND'),
        },
      },
    },
    async (req, reply) => {
      const input = toNewSuppression(req.body)
      if (!input.ok) return reply.code(400).send(errorBody(input.error))
      const r = await saving(() => addSuppressions(db, [input.s]))
      if (isError(r)) return reply.code(404).send(errorBody(r))
      return { success: true as const, data: r }
    },
  )

  app.post(
    '/api/v1/suppressions/batch',
    {
      // 10,000 phones are about 400 KiB of JSON, over the app's 64 KiB limit
      bodyLimit: 1024 * 1024,
      schema: {
        operationId: 'addSuppressions',
        tags: ['suppressions'],
        summary: `Put up to ${SUPPRESSION_BATCH_MAX} phones on the do-not-call list, all or none`,
        body: BatchBody,
        response: {
          200: Saved,
          400: errorResponse('VALIDATION_ERROR or INVALID_PHONE'),
          404: errorResponse('CAMPAIGN_NOT_FOUND'),
        },
      },
    },
    async (req, reply) => {
      const entries: NewSuppression[] = []
      const problems: { index: number; code: string; message: string }[] = []
      req.body.suppressions.forEach((b, index) => {
        const r = toNewSuppression(b)
        if (r.ok) entries.push(r.s)
        else problems.push({ index, code: r.error.code, message: r.error.message })
      })
      if (problems.length > 0)
        return reply
          .code(400)
          .send(
            errorBody(
              apiError(400, 'VALIDATION_ERROR', `${problems.length} phones are invalid; none was saved`, problems),
            ),
          )
      const r = await saving(() => addSuppressions(db, entries))
      if (isError(r)) return reply.code(404).send(errorBody(r))
      return { success: true as const, data: r }
    },
  )

  app.get(
    '/api/v1/suppressions',
    {
      schema: {
        operationId: 'listSuppressions',
        tags: ['suppressions'],
        summary: 'List the do-not-call list, newest first',
        querystring: ListQuery,
        response: {
          200: Type.Object({
            success: Type.Literal(true),
            data: Type.Array(SuppressionJson),
            pagination: Type.Object({ page: Type.Integer(), limit: Type.Integer(), total: Type.Integer() }),
          }),
          400: errorResponse('VALIDATION_ERROR or INVALID_PHONE'),
        },
      },
    },
    async (req, reply) => {
      const { page, limit } = req.query
      const phone = req.query.phone === undefined ? undefined : normalizePhone(req.query.phone)
      if (req.query.phone !== undefined && !phone)
        return reply.code(400).send(errorBody(apiError(400, 'INVALID_PHONE', 'phone must be a valid number')))
      const { suppressions, total } = await listSuppressions(db, { page, limit, ...(phone ? { phone } : {}) })
      return { success: true as const, data: suppressions.map(toJson), pagination: { page, limit, total } }
    },
  )

  app.delete(
    '/api/v1/suppressions/:phone',
    {
      schema: {
        operationId: 'deleteSuppression',
        tags: ['suppressions'],
        summary: "Take a phone off the do-not-call list (every scope, or one campaign's with ?campaignId=)",
        params: PhoneParams,
        querystring: DeleteQuery,
        response: {
          200: Type.Object({ success: Type.Literal(true), data: Type.Object({ deleted: Type.Integer() }) }),
          400: errorResponse('INVALID_PHONE'),
          404: errorResponse('SUPPRESSION_NOT_FOUND: the phone is not on the list'),
        },
      },
    },
    async (req, reply) => {
      const phone = normalizePhone(req.params.phone)
      if (!phone) return reply.code(400).send(errorBody(apiError(400, 'INVALID_PHONE', 'phone must be a valid number')))
      const deleted = await deleteSuppression(db, phone, req.query.campaignId)
      if (deleted === 0)
        return reply.code(404).send(errorBody(apiError(404, 'SUPPRESSION_NOT_FOUND', 'the phone is not on the list')))
      return { success: true as const, data: { deleted } }
    },
  )
}
