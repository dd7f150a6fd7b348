import { readFile } from 'node:fs/promises'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { cachedFor } from '../../ops/cached.ts'
import {
  DASHBOARD_MINUTES,
  dashboardCampaigns,
  dashboardState,
  dashboardWebhooks,
  recentCalls,
} from '../../sql/dashboard.ts'
import type { AppDeps } from '../deps.ts'

// The live dashboard: a static page (src/ops/dashboard/, no build step) that polls GET /api/v1/dashboard. The JSON is
// computed at most once a second whatever the number of open pages. The page is open; its data is client API (an
// API key when API_KEYS is set: the page asks for one and keeps it for the browser tab).

const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(t: T) => Type.Union([t, Type.Null()])
const Timestamp = Type.String({ format: 'date-time' })

const Dashboard = Type.Object({
  success: Type.Literal(true),
  data: Type.Object({
    now: Timestamp,
    maxConcurrentCalls: Type.Integer({ description: 'dispatch_settings, else this instance MAX_CONCURRENT_CALLS' }),
    callTimeoutSec: Type.Number(),
    slots: Type.Array(
      Type.Object({
        callId: Type.String({ format: 'uuid' }),
        phone: Type.String({ description: 'last 4 digits only' }),
        attempt: Type.Integer(),
        startedAt: Timestamp,
        seconds: Type.Number(),
      }),
    ),
    backlog: Type.Object({
      pending: Type.Integer(),
      dueNow: Type.Integer(),
      retrying: Type.Integer({ description: 'PENDING calls waiting for a retry' }),
      oldestPendingSec: Nullable(Type.Number()),
    }),
    perMinute: Type.Array(
      Type.Object({
        minute: Timestamp,
        completed: Type.Integer(),
        failed: Type.Integer(),
        retries: Type.Integer(),
        expired: Type.Integer(),
      }),
      { description: `the last ${DASHBOARD_MINUTES} minutes, oldest first; the last one is still running` },
    ),
    campaigns: Type.Array(
      Type.Object({
        id: Type.String({ format: 'uuid' }),
        name: Type.String(),
        status: Type.String(),
        priority: Type.Integer(),
        inProgress: Type.Integer(),
        maxConcurrentCalls: Nullable(Type.Integer()),
        pending: Type.Integer(),
        dueNow: Type.Integer(),
        waiting: Type.Integer({ description: 'PENDING, not yet due: outside the calling window, scheduled, retrying' }),
        nextEligibleAt: Nullable(Timestamp),
        completed: Type.Integer(),
        total: Type.Integer(),
        donePercent: Nullable(Type.Number()),
      }),
      { description: 'Campaigns not canceled (or with calls still open), newest first, at most 20' },
    ),
    webhooks: Type.Object(
      {
        healthy: Type.Integer(),
        failing: Type.Integer({ description: 'Enabled, with a failed delivery since the last success' }),
        disabled: Type.Integer(),
        endpoints: Type.Array(
          Type.Object({
            id: Type.String({ format: 'uuid' }),
            url: Type.String({ description: 'scheme, host and path; no query string' }),
            health: Type.Enum(['healthy', 'failing', 'disabled']),
            disabledReason: Nullable(Type.String()),
            failingSince: Nullable(Timestamp),
            lastSuccessAt: Nullable(Timestamp),
            backlog: Type.Integer({ description: 'Deliveries not yet delivered or given up' }),
            retrying: Type.Integer({ description: 'Of the backlog: deliveries waiting for a retry' }),
            oldestUndeliveredSec: Nullable(Type.Number()),
          }),
          { description: 'Failing endpoints first, then by backlog; at most 20' },
        ),
      },
      { description: 'Client webhook endpoints: health counts, backlog and the age of the oldest undelivered event' },
    ),
    recent: Type.Array(
      Type.Object({
        id: Type.String({ format: 'uuid' }),
        phone: Type.String(),
        scriptId: Type.String(),
        status: Type.String(),
        attempts: Type.Integer(),
        updatedAt: Timestamp,
        lastError: Nullable(Type.Object({ code: Type.String(), message: Type.String() })),
        events: Type.Array(
          Type.Object({
            at: Timestamp,
            attempt: Type.Integer(),
            kind: Type.String(),
            status: Nullable(Type.String()),
            outcome: Nullable(Type.String()),
          }),
        ),
      }),
    ),
  }),
})

const ASSETS = {
  '/dashboard': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/dashboard/dashboard.css': { file: 'dashboard.css', type: 'text/css; charset=utf-8' },
  '/dashboard/dashboard.js': { file: 'dashboard.js', type: 'text/javascript; charset=utf-8' },
} as const

export const dashboardRoutes: FastifyPluginAsyncTypebox<AppDeps> = async (app, { db, config }) => {
  const dir = new URL('../../ops/dashboard/', import.meta.url)
  for (const [url, asset] of Object.entries(ASSETS)) {
    const body = await readFile(new URL(asset.file, dir))
    app.get(url, { schema: { hide: true, security: [] } }, async (_req, reply) =>
      reply.type(asset.type).header('cache-control', 'no-cache').send(body),
    )
  }

  const load = cachedFor(1000, async () => {
    const [state, recent, campaigns, webhooks] = await Promise.all([
      dashboardState(db),
      recentCalls(db, 20),
      dashboardCampaigns(db),
      dashboardWebhooks(db),
    ])
    return {
      ...state,
      campaigns,
      webhooks,
      maxConcurrentCalls: state.maxConcurrentCalls ?? config.dispatch.maxConcurrentCalls,
      callTimeoutSec: config.dispatch.callTimeoutMs / 1000,
      recent,
    }
  })

  app.get(
    '/api/v1/dashboard',
    {
      schema: {
        operationId: 'getDashboard',
        tags: ['ops'],
        summary:
          'What the dashboard shows: slots, backlog, calls per minute, campaigns, webhook endpoints, the latest 20 calls with their history',
        response: { 200: Dashboard },
      },
    },
    async () => ({ success: true as const, data: await load() }),
  )
}
