import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { iso } from '../../calls-json.ts'
import {
  createEndpoint,
  deleteEndpoint,
  type EndpointRow,
  EVENT_TYPES,
  getEndpoint,
  listAttempts,
  listEndpoints,
  rotateSecret,
  updateEndpoint,
} from '../../notify/endpoints.ts'
import { refuseEndpointUrl } from '../../notify/ssrf.ts'
import type { AppDeps } from '../deps.ts'
import { apiError, errorBody, errorRef } from '../errors.ts'

// ---- schemas ----
const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(t: T) => Type.Union([t, Type.Null()])
const Timestamp = Type.String({ format: 'date-time' })
const Url = Type.String({ minLength: 1, maxLength: 2000, description: 'https URL that receives the events' })
const Events = Type.Array(Type.Enum(EVENT_TYPES), {
  minItems: 1,
  uniqueItems: true,
  description: 'Event types sent here; omitted or null: all',
})
const Description = Type.String({ maxLength: 500 })

const CreateBody = Type.Object(
  {
    url: Url,
    events: Type.Optional(Nullable(Events)),
    campaignId: Type.Optional(
      Nullable(Type.String({ format: 'uuid', description: "Only this campaign's calls and its campaign events" })),
    ),
    description: Type.Optional(Nullable(Description)),
  },
  { additionalProperties: false },
)
const PatchBody = Type.Object(
  {
    url: Type.Optional(Url),
    events: Type.Optional(Nullable(Events)),
    enabled: Type.Optional(Type.Boolean()),
    description: Type.Optional(Nullable(Description)),
  },
  { additionalProperties: false, minProperties: 1 },
)
const IdParams = Type.Object({ id: Type.String({ format: 'uuid' }) })
const AttemptQuery = Type.Object(
  {
    status: Type.Optional(Type.Enum(['delivered', 'retrying', 'failed'])),
    page: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 1 }),
    limit: Type.Integer({ minimum: 1, maximum: 100, default: 50 }),
  },
  { additionalProperties: false },
)

const EndpointJson = Type.Object({
  id: Type.String({ format: 'uuid' }),
  url: Type.String(),
  events: Nullable(Type.Array(Type.String())),
  campaignId: Nullable(Type.String()),
  description: Nullable(Type.String()),
  enabled: Type.Boolean(),
  disabledReason: Nullable(Type.String({ description: 'Why the service disabled it (410 Gone, failing for days)' })),
  disabledAt: Nullable(Timestamp),
  failingSince: Nullable(Timestamp),
  lastSuccessAt: Nullable(Timestamp),
  previousSecretExpiresAt: Nullable(Timestamp),
  createdAt: Timestamp,
  updatedAt: Timestamp,
})
const Secret = Type.String({ pattern: '^whsec_', description: 'Signing secret: shown only in this response' })
const EndpointEnvelope = Type.Object({ success: Type.Literal(true), data: EndpointJson })
const AttemptJson = Type.Object({
  eventId: Type.String(),
  type: Type.String(),
  callId: Nullable(Type.String()),
  attempt: Type.Integer(),
  result: Type.Enum(['delivered', 'retrying', 'failed']),
  httpStatus: Nullable(Type.Integer()),
  latencyMs: Nullable(Type.Integer()),
  error: Nullable(Type.String()),
  nextAttemptAt: Nullable(Timestamp),
  createdAt: Timestamp,
})

function toEndpointJson(e: EndpointRow) {
  return {
    id: e.id,
    url: e.url,
    events: e.events,
    campaignId: e.campaign_id,
    description: e.description,
    enabled: e.enabled,
    disabledReason: e.disabled_reason,
    disabledAt: iso(e.disabled_at),
    failingSince: iso(e.failing_since),
    lastSuccessAt: iso(e.last_success_at),
    previousSecretExpiresAt: iso(e.previous_secret_expires_at),
    createdAt: iso(e.created_at) as string,
    updatedAt: iso(e.updated_at) as string,
  }
}

const errors = { 400: errorRef, 404: errorRef }
const notFound = (id: string) => errorBody(apiError(404, 'WEBHOOK_ENDPOINT_NOT_FOUND', `no webhook endpoint ${id}`))

// ---- routes ----
export const webhookEndpointRoutes: FastifyPluginAsyncTypebox<AppDeps> = async (app, { db, config }) => {
  const urlRule = config.clientWebhooks
  const tags = ['webhooks']

  app.post(
    '/api/v1/webhook-endpoints',
    {
      schema: {
        operationId: 'createWebhookEndpoint',
        tags,
        summary: 'Register a URL for call and campaign events; the signing secret is in this response only',
        body: CreateBody,
        response: {
          201: Type.Object({
            success: Type.Literal(true),
            data: Type.Intersect([EndpointJson, Type.Object({ secret: Secret })]),
          }),
          ...errors,
        },
      },
    },
    async (req, reply) => {
      const refused = refuseEndpointUrl(req.body.url, urlRule)
      if (refused) return reply.code(400).send(errorBody(apiError(400, refused.code, refused.message)))
      const { endpoint, secret } = await createEndpoint(db, {
        url: req.body.url,
        events: req.body.events ?? null,
        campaignId: req.body.campaignId ?? null,
        description: req.body.description ?? null,
      })
      return reply.code(201).send({ success: true, data: { ...toEndpointJson(endpoint), secret } })
    },
  )

  app.get(
    '/api/v1/webhook-endpoints',
    {
      schema: {
        operationId: 'listWebhookEndpoints',
        tags,
        summary: 'List webhook endpoints (never their secrets)',
        response: { 200: Type.Object({ success: Type.Literal(true), data: Type.Array(EndpointJson) }) },
      },
    },
    async () => ({ success: true as const, data: (await listEndpoints(db)).map(toEndpointJson) }),
  )

  app.get(
    '/api/v1/webhook-endpoints/:id',
    {
      schema: {
        operationId: 'getWebhookEndpoint',
        tags,
        summary: 'Get a webhook endpoint (never its secret)',
        params: IdParams,
        response: { 200: EndpointEnvelope, ...errors },
      },
    },
    async (req, reply) => {
      const e = await getEndpoint(db, req.params.id)
      if (!e) return reply.code(404).send(notFound(req.params.id))
      return { success: true as const, data: toEndpointJson(e) }
    },
  )

  app.patch(
    '/api/v1/webhook-endpoints/:id',
    {
      schema: {
        operationId: 'updateWebhookEndpoint',
        tags,
        summary: 'Change url, events or description; enable (clears the failure record) or disable',
        description: "Disabling fails the endpoint's undelivered events; POST /events/:id/redeliver sends them again.",
        params: IdParams,
        body: PatchBody,
        response: { 200: EndpointEnvelope, ...errors },
      },
    },
    async (req, reply) => {
      if (req.body.url !== undefined) {
        const refused = refuseEndpointUrl(req.body.url, urlRule)
        if (refused) return reply.code(400).send(errorBody(apiError(400, refused.code, refused.message)))
      }
      const { url, events, enabled, description } = req.body
      const e = await updateEndpoint(db, req.params.id, {
        ...(url !== undefined ? { url } : {}),
        ...(events !== undefined ? { events } : {}),
        ...(enabled !== undefined ? { enabled } : {}),
        ...(description !== undefined ? { description } : {}),
      })
      if (!e) return reply.code(404).send(notFound(req.params.id))
      return { success: true as const, data: toEndpointJson(e) }
    },
  )

  app.delete(
    '/api/v1/webhook-endpoints/:id',
    {
      schema: {
        operationId: 'deleteWebhookEndpoint',
        tags,
        summary: 'Delete a webhook endpoint and its delivery log',
        params: IdParams,
        response: {
          200: Type.Object({ success: Type.Literal(true), data: Type.Object({ id: Type.String() }) }),
          ...errors,
        },
      },
    },
    async (req, reply) => {
      if (!(await deleteEndpoint(db, req.params.id))) return reply.code(404).send(notFound(req.params.id))
      return { success: true as const, data: { id: req.params.id } }
    },
  )

  app.post(
    '/api/v1/webhook-endpoints/:id/rotate-secret',
    {
      schema: {
        operationId: 'rotateWebhookEndpointSecret',
        tags,
        summary: 'New signing secret; for 24 hours deliveries carry signatures by both the old and the new one',
        params: IdParams,
        response: {
          200: Type.Object({
            success: Type.Literal(true),
            data: Type.Object({ secret: Secret, previousSecretExpiresAt: Timestamp }),
          }),
          ...errors,
        },
      },
    },
    async (req, reply) => {
      const r = await rotateSecret(db, req.params.id)
      if (!r) return reply.code(404).send(notFound(req.params.id))
      return {
        success: true as const,
        data: { secret: r.secret, previousSecretExpiresAt: iso(r.previousSecretExpiresAt) as string },
      }
    },
  )

  app.get(
    '/api/v1/webhook-endpoints/:id/deliveries',
    {
      schema: {
        operationId: 'listWebhookDeliveries',
        tags,
        summary: "The endpoint's delivery attempts, newest first",
        params: IdParams,
        querystring: AttemptQuery,
        response: { 200: Type.Object({ success: Type.Literal(true), data: Type.Array(AttemptJson) }), ...errors },
      },
    },
    async (req, reply) => {
      if (!(await getEndpoint(db, req.params.id))) return reply.code(404).send(notFound(req.params.id))
      const rows = await listAttempts(db, req.params.id, req.query)
      const data = rows.map((a) => ({
        eventId: a.event_id,
        type: a.type,
        callId: a.call_id,
        attempt: a.attempt,
        result: a.result,
        httpStatus: a.http_status,
        latencyMs: a.latency_ms,
        error: a.error,
        nextAttemptAt: iso(a.next_attempt_at),
        createdAt: iso(a.created_at) as string,
      }))
      return { success: true as const, data }
    },
  )
}
