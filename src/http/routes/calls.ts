import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { CallJson, iso, toCallJson } from '../../calls-json.ts'
import { admitCalls, admitNewNumber } from '../../campaigns/admission.ts'
import { coalesce } from '../../db/coalesce.ts'
import { STATUSES } from '../../dispatch/call-state.ts'
import { withDueNow } from '../../dispatch/wakeup.ts'
import { normalizePhone } from '../../phone.ts'
import {
  cancelPendingCall,
  getCall,
  insertCalls,
  insertCallsForIds,
  type ListPosition,
  listCalls,
  listEvents,
  type NewCall,
  type PendingChange,
  updatePendingCall,
} from '../../sql/calls.ts'
import { CampaignId, CreateCallBody, checkMetadata, Metadata, Phone, ScriptId, toNewCall } from '../call-input.ts'
import type { AppDeps } from '../deps.ts'
import { type ApiError, apiError, errorBody, errorResponse } from '../errors.ts'

// ---- schemas ----
export const BATCH_MAX = 1000

const Status = Type.Enum(STATUSES)
const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(t: T) => Type.Union([t, Type.Null()])
const Timestamp = Type.String({ format: 'date-time' })

const PatchCallBody = Type.Object(
  { to: Type.Optional(Phone), scriptId: Type.Optional(ScriptId), metadata: Type.Optional(Metadata) },
  { additionalProperties: false, minProperties: 1 },
)
const BatchBody = Type.Object(
  {
    campaignId: Type.Optional(CampaignId),
    calls: Type.Array(CreateCallBody, { minItems: 1, maxItems: BATCH_MAX }),
  },
  { additionalProperties: false },
)
const IdParams = Type.Object({ id: Type.String({ format: 'uuid' }) })
const ListQuery = Type.Object(
  {
    status: Type.Optional(Status),
    campaignId: Type.Optional(CampaignId),
    page: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 1 }),
    limit: Type.Integer({ minimum: 1, maximum: 100, default: 20 }),
    cursor: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 200,
        description: 'pagination.nextCursor of the previous page: the calls after it, however many were created since',
      }),
    ),
  },
  { additionalProperties: false },
)
const CreateHeaders = Type.Object({ 'idempotency-key': Type.Optional(Type.String({ minLength: 1, maxLength: 255 })) })

const CallEnvelope = Type.Object({ success: Type.Literal(true), data: CallJson })
const EventJson = Type.Object({
  id: Type.String(),
  attempt: Type.Integer(),
  kind: Type.String(),
  status: Nullable(Type.String()),
  detail: Type.Record(Type.String(), Type.Unknown()),
  createdAt: Timestamp,
})

// A cursor is the position of the last call of a page (its created_at text and id), opaque to clients.
const encodeCursor = (p: ListPosition) => Buffer.from(JSON.stringify([p.createdAt, p.id])).toString('base64url')
const CURSOR_AT = /^\d{4,}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{1,6})?[+-]\d\d(:\d\d){0,2}$/
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

function decodeCursor(cursor: string): ListPosition | undefined {
  try {
    const v = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as unknown
    if (!Array.isArray(v) || v.length !== 2) return undefined
    const [createdAt, id] = v as unknown[]
    if (typeof createdAt !== 'string' || typeof id !== 'string' || !CURSOR_AT.test(createdAt) || !UUID.test(id))
      return undefined
    return { createdAt, id }
  } catch {
    return undefined
  }
}

function pendingChangeError(r: Exclude<PendingChange, { kind: 'changed' }>, id: string): ApiError {
  return r.kind === 'not_found'
    ? apiError(404, 'CALL_NOT_FOUND', `no call ${id}`)
    : apiError(409, 'CALL_NOT_PENDING', `call is ${r.status}; only PENDING calls can be changed`, { status: r.status })
}

// The statuses each route adds to those every client route has (src/http/openapi.ts: 400, 401, 429, 500, ...).
const invalid = errorResponse('VALIDATION_ERROR, INVALID_PHONE, METADATA_TOO_LARGE or INVALID_EXPIRES_AT')
const notFound = errorResponse('CALL_NOT_FOUND')
const notPending = errorResponse('CALL_NOT_PENDING: the call is dialing or done; details.status says which')

// ---- routes ----
export const callRoutes: FastifyPluginAsyncTypebox<AppDeps> = async (app, { db, config, wakeup }) => {
  const expiryMs = config.dispatch.callExpiryMs
  // Creates that arrive while one is being written go together in the next statement (sql/calls.ts insertCalls).
  // A failed batch fails each of its creates: retried alone, a create without a key could be inserted twice.
  const createOne = coalesce(
    (calls: NewCall[]) =>
      withDueNow(
        db,
        wakeup,
        (tx) => insertCalls(tx, calls, expiryMs),
        (results) => results.some((r) => r.kind === 'created'),
      ),
    { keyOf: (call) => call.idempotencyKey ?? undefined, maxBatch: 200 },
  )

  app.post(
    '/api/v1/calls',
    {
      schema: {
        operationId: 'createCall',
        tags: ['calls'],
        summary: 'Queue a call',
        description:
          'An Idempotency-Key header makes a retried request return the first call (200) instead of creating another.',
        headers: CreateHeaders,
        body: CreateCallBody,
        response: {
          200: { ...CallEnvelope, description: 'Replayed: the call this Idempotency-Key created before' },
          201: { ...CallEnvelope, description: 'Queued' },
          400: invalid,
          404: errorResponse('CAMPAIGN_NOT_FOUND'),
          409: errorResponse('CAMPAIGN_CANCELED'),
          422: errorResponse(
            'IDEMPOTENCY_KEY_REUSED (details.callId), PHONE_SUPPRESSED, or NO_CALLING_WINDOW (details.timeZones)',
          ),
        },
      },
    },
    async (req, reply) => {
      const input = toNewCall(req.body, req.headers['idempotency-key'] ?? null)
      if (!input.ok) return reply.code(input.error.status as 400).send(errorBody(input.error))
      const admission = await admitCalls(db, [input.call])
      const refused =
        admission.campaignError ?? (admission.results[0]?.ok === false ? admission.results[0].error : undefined)
      if (refused) return reply.code(refused.status as 404 | 409 | 422).send(errorBody(refused))
      const result = await createOne(input.call)
      if (result.kind === 'key_reused') {
        const e = apiError(
          422,
          'IDEMPOTENCY_KEY_REUSED',
          'this Idempotency-Key was used with a different request body',
          { callId: result.call.id },
        )
        return reply.code(422).send(errorBody(e))
      }
      return reply.code(result.kind === 'created' ? 201 : 200).send({ success: true, data: toCallJson(result.call) })
    },
  )

  app.post(
    '/api/v1/calls/batch',
    {
      schema: {
        operationId: 'createCallBatch',
        tags: ['calls'],
        summary: `Queue up to ${BATCH_MAX} calls at once: all or none, except suppressed numbers and numbers without a calling window, which are skipped`,
        body: BatchBody,
        response: {
          201: Type.Object({
            success: Type.Literal(true),
            data: Type.Object({
              count: Type.Integer(),
              ids: Type.Array(Nullable(Type.String({ format: 'uuid' })), {
                description: 'In request order; null where skipped',
              }),
              skipped: Type.Array(Type.Object({ index: Type.Integer(), code: Type.String() }), {
                description: 'Items left out: PHONE_SUPPRESSED or NO_CALLING_WINDOW',
              }),
            }),
          }),
          400: errorResponse('VALIDATION_ERROR: details lists each invalid call by index; none was queued'),
          404: errorResponse('CAMPAIGN_NOT_FOUND'),
          409: errorResponse('CAMPAIGN_CANCELED'),
        },
      },
    },
    async (req, reply) => {
      const calls: NewCall[] = []
      const problems: { index: number; code: string; message: string }[] = []
      req.body.calls.forEach((body, index) => {
        const r = toNewCall(body, null, req.body.campaignId)
        if (r.ok) calls.push(r.call)
        else problems.push({ index, code: r.error.code, message: r.error.message })
      })
      if (problems.length > 0) {
        return reply
          .code(400)
          .send(
            errorBody(
              apiError(
                400,
                'VALIDATION_ERROR',
                `${problems.length} of ${req.body.calls.length} calls are invalid; none was queued`,
                problems,
              ),
            ),
          )
      }
      // Items with a campaignId of their own and no batch campaignId: every item must name the same one.
      if (new Set(calls.map((c) => c.campaignId)).size > 1)
        return reply
          .code(400)
          .send(errorBody(apiError(400, 'VALIDATION_ERROR', 'all calls of a batch belong to one campaign (or none)')))
      const admission = await admitCalls(db, calls)
      if (admission.campaignError)
        return reply.code(admission.campaignError.status as 404 | 409).send(errorBody(admission.campaignError))
      const skipped: { index: number; code: string }[] = []
      const admitted = calls.filter((_, index) => {
        const a = admission.results[index]
        if (a?.ok === false) skipped.push({ index, code: a.error.code })
        return a?.ok !== false
      })
      const inserted =
        admitted.length === 0
          ? []
          : await withDueNow(
              db,
              wakeup,
              (tx) => insertCallsForIds(tx, admitted, expiryMs),
              () => true,
            )
      const skippedAt = new Set(skipped.map((s) => s.index))
      let next = 0
      const ids = calls.map((_, index) => (skippedAt.has(index) ? null : (inserted[next++] as string)))
      return reply.code(201).send({ success: true, data: { count: inserted.length, ids, skipped } })
    },
  )

  app.get(
    '/api/v1/calls/:id',
    {
      schema: {
        operationId: 'getCall',
        tags: ['calls'],
        summary: 'Get a call',
        params: IdParams,
        response: { 200: CallEnvelope, 404: notFound },
      },
    },
    async (req, reply) => {
      const call = await getCall(db, req.params.id)
      if (!call) return reply.code(404).send(errorBody(apiError(404, 'CALL_NOT_FOUND', `no call ${req.params.id}`)))
      return { success: true as const, data: toCallJson(call) }
    },
  )

  app.get(
    '/api/v1/calls/:id/events',
    {
      schema: {
        operationId: 'listCallEvents',
        tags: ['calls'],
        summary: "A call's history: status changes, dial results and webhooks, oldest first",
        params: IdParams,
        response: { 200: Type.Object({ success: Type.Literal(true), data: Type.Array(EventJson) }), 404: notFound },
      },
    },
    async (req, reply) => {
      const events = await listEvents(db, req.params.id)
      if (events.length === 0 && !(await getCall(db, req.params.id))) {
        return reply.code(404).send(errorBody(apiError(404, 'CALL_NOT_FOUND', `no call ${req.params.id}`)))
      }
      const data = events.map((e) => ({
        id: e.id,
        attempt: e.attempt,
        kind: e.kind,
        status: e.status,
        detail: e.detail,
        createdAt: iso(e.created_at) as string,
      }))
      return { success: true as const, data }
    },
  )

  app.patch(
    '/api/v1/calls/:id',
    {
      schema: {
        operationId: 'updateCall',
        tags: ['calls'],
        summary: 'Change a PENDING call (409 once it is dialing or done)',
        params: IdParams,
        body: PatchCallBody,
        response: {
          200: CallEnvelope,
          400: invalid,
          404: notFound,
          409: notPending,
          422: errorResponse(
            'a new `to` that a create would refuse: PHONE_SUPPRESSED, or NO_CALLING_WINDOW (details.timeZones)',
          ),
        },
      },
    },
    async (req, reply) => {
      const { to, scriptId, metadata } = req.body
      const toPhone = to === undefined ? undefined : normalizePhone(to)
      if (to !== undefined && !toPhone)
        return reply
          .code(400)
          .send(errorBody(apiError(400, 'INVALID_PHONE', 'to must be a valid phone number with country code')))
      const metaError = metadata ? checkMetadata(metadata) : undefined
      if (metaError) return reply.code(400).send(errorBody(metaError))
      // a new number is checked as a create checks it (suppression, the campaign's window in its zones)
      const current = toPhone ? await getCall(db, req.params.id) : undefined
      const number =
        toPhone && current?.status === 'PENDING' ? await admitNewNumber(db, current.campaign_id, toPhone) : undefined
      if (number?.error) return reply.code(422).send(errorBody(number.error))
      const r = await updatePendingCall(db, req.params.id, {
        ...(toPhone && number ? { toPhone, timeZones: number.timeZones } : {}),
        ...(scriptId ? { scriptId } : {}),
        ...(metadata ? { metadata } : {}),
      })
      if (r.kind !== 'changed') {
        const e = pendingChangeError(r, req.params.id)
        return reply.code(e.status as 404 | 409).send(errorBody(e))
      }
      return { success: true as const, data: toCallJson(r.call) }
    },
  )

  app.post(
    '/api/v1/calls/:id/cancel',
    {
      schema: {
        operationId: 'cancelCall',
        tags: ['calls'],
        summary: 'Cancel a PENDING call (409 once it is dialing or done)',
        params: IdParams,
        response: { 200: CallEnvelope, 404: notFound, 409: notPending },
      },
    },
    async (req, reply) => {
      const r = await cancelPendingCall(db, req.params.id)
      if (r.kind !== 'changed') {
        const e = pendingChangeError(r, req.params.id)
        return reply.code(e.status as 404 | 409).send(errorBody(e))
      }
      return { success: true as const, data: toCallJson(r.call) }
    },
  )

  app.get(
    '/api/v1/calls',
    {
      schema: {
        operationId: 'listCalls',
        tags: ['calls'],
        summary: 'List calls, newest first',
        description:
          'Page through with cursor=pagination.nextCursor (stable while calls are created; each call once) or with page. total comes from counters kept with every status change.',
        querystring: ListQuery,
        response: {
          200: Type.Object({
            success: Type.Literal(true),
            data: Type.Array(CallJson),
            pagination: Type.Object({
              page: Type.Integer(),
              limit: Type.Integer(),
              total: Type.Integer(),
              nextCursor: Nullable(Type.String({ description: 'Pass as cursor for the next page; null on the last' })),
            }),
          }),
          400: errorResponse('VALIDATION_ERROR, INVALID_CURSOR or CURSOR_WITH_PAGE (cursor and page together)'),
        },
      },
    },
    async (req, reply) => {
      const { page, limit, status, campaignId, cursor } = req.query
      const after = cursor === undefined ? undefined : decodeCursor(cursor)
      if (cursor !== undefined && !after)
        return reply
          .code(400)
          .send(errorBody(apiError(400, 'INVALID_CURSOR', 'cursor must be a pagination.nextCursor this API returned')))
      if (after && page !== 1)
        return reply.code(400).send(errorBody(apiError(400, 'CURSOR_WITH_PAGE', 'use either cursor or page, not both')))
      const r = await listCalls(db, {
        page,
        limit,
        ...(status ? { status } : {}),
        ...(campaignId ? { campaignId } : {}),
        ...(after ? { after } : {}),
      })
      return {
        success: true as const,
        data: r.calls.map(toCallJson),
        pagination: { page, limit, total: r.total, nextCursor: r.next ? encodeCursor(r.next) : null },
      }
    },
  )
}
