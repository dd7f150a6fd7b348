import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { sql } from 'kysely'
import { Type } from 'typebox'
import { STATUSES } from '../../dispatch/call-state.ts'
import type { Metrics as PromMetrics } from '../../ops/metrics.ts'
import { callSnapshot } from '../../sql/metrics.ts'
import type { AppDeps } from '../deps.ts'

const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(t: T) => Type.Union([t, Type.Null()])

const Health = Type.Object({ status: Type.Enum(['ok', 'unavailable']), database: Type.Enum(['up', 'down']) })
const Metrics = Type.Object({
  success: Type.Literal(true),
  data: Type.Object({
    byStatus: Type.Object(Object.fromEntries(STATUSES.map((s) => [s, Type.Integer()]))),
    inProgress: Type.Integer(),
    maxConcurrentCalls: Type.Integer(),
    utilization: Type.Number({ description: 'inProgress / maxConcurrentCalls' }),
    pending: Type.Integer(),
    dueNow: Type.Integer({ description: 'PENDING calls that could be dialed now if a slot were free' }),
    oldestPendingSec: Nullable(Type.Number()),
    attempts: Type.Object({
      finished: Type.Integer({ description: 'COMPLETED + FAILED calls' }),
      average: Nullable(Type.Number()),
      max: Nullable(Type.Integer()),
      retried: Type.Integer({ description: 'finished calls that needed more than one attempt' }),
    }),
  }),
})

export const opsRoutes: FastifyPluginAsyncTypebox<AppDeps & { metrics: PromMetrics }> = async (
  app,
  { db, config, metrics },
) => {
  app.get(
    '/health',
    {
      schema: {
        operationId: 'getHealth',
        tags: ['ops'],
        security: [],
        summary: '200 when the database answers, 503 otherwise',
        response: { 200: Health, 503: { ...Health, description: 'The database did not answer within 2 s' } },
      },
    },
    async (_req, reply) => {
      try {
        await withTimeout(sql`select 1`.execute(db), 2000)
        return { status: 'ok' as const, database: 'up' as const }
      } catch {
        return reply.code(503).send({ status: 'unavailable' as const, database: 'down' as const })
      }
    },
  )

  app.get(
    '/metrics',
    {
      schema: {
        operationId: 'getPrometheusMetrics',
        tags: ['ops'],
        security: [],
        summary: 'Prometheus exposition: calls by status, slots, backlog (from the database); dials, webhooks, retries',
        response: {
          200: {
            description: 'Prometheus text format 0.0.4',
            content: { 'text/plain': { schema: { type: 'string' } } },
          },
        },
      },
    },
    async (_req, reply) => reply.type(metrics.contentType).send(await metrics.render()),
  )

  app.get(
    '/api/v1/metrics',
    {
      schema: {
        operationId: 'getMetrics',
        tags: ['ops'],
        summary: 'Counts by status, slots in use, backlog age, attempts',
        response: { 200: Metrics },
      },
    },
    async () => {
      const s = await callSnapshot(db)
      const cap = config.dispatch.maxConcurrentCalls
      return {
        success: true as const,
        data: {
          byStatus: Object.fromEntries(STATUSES.map((st) => [st, s.byStatus[st] ?? 0])) as Record<
            (typeof STATUSES)[number],
            number
          >,
          inProgress: s.inProgress,
          maxConcurrentCalls: cap,
          utilization: s.inProgress / cap,
          pending: s.pending,
          dueNow: s.dueNow,
          oldestPendingSec: s.oldestPendingSec,
          attempts: s.attempts,
        },
      }
    },
  )
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}
