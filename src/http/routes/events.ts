import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { iso } from '../../calls-json.ts'
import { EVENT_TYPES, listWebhookEvents } from '../../notify/endpoints.ts'
import { redeliverEvent } from '../../notify/sql.ts'
import type { AppDeps } from '../deps.ts'
import { apiError, errorBody, errorRef } from '../errors.ts'

// ---- schemas ----
const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(t: T) => Type.Union([t, Type.Null()])
const Timestamp = Type.String({ format: 'date-time' })

const EventsQuery = Type.Object(
  {
    callId: Type.Optional(Type.String({ format: 'uuid' })),
    type: Type.Optional(Type.Enum([...EVENT_TYPES, 'endpoint.disabled'])),
    page: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 1 }),
    limit: Type.Integer({ minimum: 1, maximum: 100, default: 50 }),
  },
  { additionalProperties: false },
)
const DeliveryJson = Type.Object({
  endpointId: Type.String(),
  state: Type.Enum(['waiting', 'queued', 'delivered', 'failed']),
  attempts: Type.Integer(),
  lastStatus: Nullable(Type.Integer()),
  lastError: Nullable(Type.String()),
  nextAttemptAt: Nullable(Timestamp),
  deliveredAt: Nullable(Timestamp),
})
const EventJson = Type.Object({
  id: Type.String({ description: 'The webhook-id header of its deliveries' }),
  type: Type.String(),
  callId: Nullable(Type.String()),
  campaignId: Nullable(Type.String()),
  endpointId: Nullable(Type.String({ description: 'endpoint.disabled events: the endpoint' })),
  sequence: Nullable(Type.Integer()),
  attempt: Nullable(Type.Integer()),
  outcome: Nullable(Type.String()),
  detail: Type.Record(Type.String(), Type.Unknown()),
  createdAt: Timestamp,
  deliveries: Type.Array(DeliveryJson),
})

// ---- routes ----
export const eventRoutes: FastifyPluginAsyncTypebox<AppDeps> = async (app, { db, publishDeliveries }) => {
  const tags = ['webhooks']

  app.get(
    '/api/v1/events',
    {
      schema: {
        operationId: 'listEvents',
        tags,
        summary: "Client events, newest first (a call's in sequence order), with their delivery state per endpoint",
        querystring: EventsQuery,
        response: {
          200: Type.Object({ success: Type.Literal(true), data: Type.Array(EventJson) }),
          400: errorRef,
        },
      },
    },
    async (req) => {
      const rows = await listWebhookEvents(db, req.query)
      const data = rows.map((e) => ({
        id: e.id,
        type: e.type,
        callId: e.call_id,
        campaignId: e.campaign_id,
        endpointId: e.endpoint_id,
        sequence: e.sequence,
        attempt: e.attempt,
        outcome: e.outcome,
        detail: e.detail,
        createdAt: iso(e.created_at) as string,
        deliveries: e.deliveries.map((d) => ({
          endpointId: d.endpoint_id,
          state: d.state,
          attempts: d.attempts,
          lastStatus: d.last_status,
          lastError: d.last_error,
          nextAttemptAt: d.state === 'queued' ? iso(d.next_attempt_at) : null,
          deliveredAt: iso(d.delivered_at),
        })),
      }))
      return { success: true as const, data }
    },
  )

  app.post(
    '/api/v1/events/:id/redeliver',
    {
      schema: {
        operationId: 'redeliverEvent',
        tags,
        summary: 'Send an event again to its endpoints, whatever its delivery state',
        description:
          'Every enabled endpoint that wants the event gets it again, now, outside its call order (a replay).',
        params: Type.Object({ id: Type.String({ format: 'uuid' }) }),
        response: {
          202: Type.Object({
            success: Type.Literal(true),
            data: Type.Object({ eventId: Type.String(), deliveries: Type.Integer() }),
          }),
          404: errorRef,
          409: errorRef,
          503: errorRef,
        },
      },
    },
    async (req, reply) => {
      if (!publishDeliveries)
        return reply.code(503).send(errorBody(apiError(503, 'NOT_AVAILABLE', 'this process cannot publish deliveries')))
      const r = await redeliverEvent(db, req.params.id, publishDeliveries)
      if (r === undefined)
        return reply.code(404).send(errorBody(apiError(404, 'EVENT_NOT_FOUND', `no event ${req.params.id}`)))
      if (r === 'not_deliverable')
        return reply
          .code(409)
          .send(errorBody(apiError(409, 'EVENT_NOT_DELIVERABLE', 'endpoint events are recorded, never delivered')))
      return reply.code(202).send({ success: true, data: { eventId: req.params.id, deliveries: r.length } })
    },
  )
}
