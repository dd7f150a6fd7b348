import { createHash } from 'node:crypto'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { type Static, Type } from 'typebox'
import { CallJson, iso, Metadata, toCallJson } from '../../calls-json.ts'
import { coalesce } from '../../db/coalesce.ts'
import { STATUSES } from '../../dispatch/call-state.ts'
import { withDueNow } from '../../dispatch/wakeup.ts'
import { normalizePhone } from '../../phone.ts'
import {
  cancelPendingCall,
  getCall,
  insertCalls,
  insertCallsForIds,
  listCalls,
  listEvents,
  type NewCall,
  type PendingChange,
  updatePendingCall,
} from '../../sql/calls.ts'
import type { AppDeps } from '../deps.ts'
import { type ApiError, apiError, errorBody, errorResponse } from '../errors.ts'

// ---- schemas ----
const METADATA_MAX_BYTES = 16 * 1024
export const BATCH_MAX = 1000

const Phone = Type.String({
  minLength: 1,
  maxLength: 32,
  description: 'Phone number with country code, e.g. +966501234567',
})
const ScriptId = Type.String({ pattern: '^[A-Za-z0-9_.-]{1,100}$', description: '1-100 of A-Z a-z 0-9 _ . -' })
const Status = Type.Enum(STATUSES)
const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(t: T) => Type.Union([t, Type.Null()])
const Timestamp = Type.String({ format: 'date-time' })

const CreateCallBody = Type.Object(
  {
    to: Phone,
    scriptId: ScriptId,
    metadata: Type.Optional(Metadata),
    expiresAt: Type.Optional(
      Type.String({ format: 'date-time', description: 'Not dialed after this; default now + CALL_EXPIRY_MS' }),
    ),
  },
  { additionalProperties: false },
)
const PatchCallBody = Type.Object(
  { to: Type.Optional(Phone), scriptId: Type.Optional(ScriptId), metadata: Type.Optional(Metadata) },
  { additionalProperties: false, minProperties: 1 },
)
const BatchBody = Type.Object(
  { calls: Type.Array(CreateCallBody, { minItems: 1, maxItems: BATCH_MAX }) },
  { additionalProperties: false },
)
const IdParams = Type.Object({ id: Type.String({ format: 'uuid' }) })
const ListQuery = Type.Object(
  {
    status: Type.Optional(Status),
    page: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 1 }),
    limit: Type.Integer({ minimum: 1, maximum: 100, default: 20 }),
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

type CreateCallInput = Static<typeof CreateCallBody>

/** Checks what a schema cannot (a real phone number, metadata size, a future expiry) and normalizes. */
function toNewCall(
  body: CreateCallInput,
  idempotencyKey: string | null,
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
  const requestHash = idempotencyKey
    ? createHash('sha256')
        .update(
          canonicalJson({ toPhone, scriptId: body.scriptId, metadata, expiresAt: expiresAt?.toISOString() ?? null }),
        )
        .digest('hex')
    : null
  return { ok: true, call: { toPhone, scriptId: body.scriptId, metadata, expiresAt, idempotencyKey, requestHash } }
}

function checkMetadata(metadata: Record<string, unknown>): ApiError | undefined {
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
          422: errorResponse('IDEMPOTENCY_KEY_REUSED: the key was used with another body; details.callId'),
        },
      },
    },
    async (req, reply) => {
      const input = toNewCall(req.body, req.headers['idempotency-key'] ?? null)
      if (!input.ok) return reply.code(input.error.status as 400).send(errorBody(input.error))
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
        summary: `Queue up to ${BATCH_MAX} calls at once, all or none`,
        body: BatchBody,
        response: {
          201: Type.Object({
            success: Type.Literal(true),
            data: Type.Object({ count: Type.Integer(), ids: Type.Array(Type.String({ format: 'uuid' })) }),
          }),
          400: errorResponse('VALIDATION_ERROR: details lists each invalid call by index; none was queued'),
        },
      },
    },
    async (req, reply) => {
      const calls: NewCall[] = []
      const problems: { index: number; code: string; message: string }[] = []
      req.body.calls.forEach((body, index) => {
        const r = toNewCall(body, null)
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
      const ids = await withDueNow(
        db,
        wakeup,
        (tx) => insertCallsForIds(tx, calls, expiryMs),
        () => true,
      )
      return reply.code(201).send({ success: true, data: { count: ids.length, ids } })
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
        response: { 200: CallEnvelope, 400: invalid, 404: notFound, 409: notPending },
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
      const r = await updatePendingCall(db, req.params.id, {
        ...(toPhone ? { toPhone } : {}),
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
        querystring: ListQuery,
        response: {
          200: Type.Object({
            success: Type.Literal(true),
            data: Type.Array(CallJson),
            pagination: Type.Object({ page: Type.Integer(), limit: Type.Integer(), total: Type.Integer() }),
          }),
        },
      },
    },
    async (req) => {
      const { page, limit, status } = req.query
      const { calls, total } = await listCalls(db, { page, limit, ...(status ? { status } : {}) })
      return { success: true as const, data: calls.map(toCallJson), pagination: { page, limit, total } }
    },
  )
}
