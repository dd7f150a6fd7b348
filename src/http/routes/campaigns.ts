import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { type Static, Type } from 'typebox'
import { knownZones } from '../../campaigns/timezones.ts'
import { validateWindow } from '../../campaigns/windows.ts'
import { CallingWindow, CampaignJson, Nullable, RetryPolicy, Timestamp, toCampaignJson } from '../../campaigns-json.ts'
import type { Campaign } from '../../db/database.ts'
import {
  type CampaignSettings,
  campaignStats,
  cancelCampaign,
  getCampaign,
  insertCampaign,
  listCampaigns,
  setCampaignPaused,
  updateCampaign,
} from '../../sql/campaigns.ts'
import type { AppDeps } from '../deps.ts'
import { type ApiError, apiError, errorBody, errorResponse } from '../errors.ts'

// ---- schemas ----
const settings = {
  maxConcurrentCalls: Type.Integer({ minimum: 1, description: 'At most MAX_CONCURRENT_CALLS (the default)' }),
  priority: Type.Integer({ minimum: 0, maximum: 100, description: 'Higher is dialed first; default 50' }),
  callingWindow: CallingWindow,
  retryPolicy: RetryPolicy,
  startsAt: Timestamp,
  endsAt: Timestamp,
  maxDialsPerPhonePerDay: Type.Integer({ minimum: 1, maximum: 100 }),
  metadata: Type.Record(Type.String(), Type.Unknown()),
}
const CreateBody = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 200 }),
    maxConcurrentCalls: Type.Optional(settings.maxConcurrentCalls),
    priority: Type.Optional(settings.priority),
    callingWindow: Type.Optional(settings.callingWindow),
    retryPolicy: Type.Optional(settings.retryPolicy),
    startsAt: Type.Optional(settings.startsAt),
    endsAt: Type.Optional(settings.endsAt),
    maxDialsPerPhonePerDay: Type.Optional(settings.maxDialsPerPhonePerDay),
    metadata: Type.Optional(settings.metadata),
  },
  { additionalProperties: false },
)
const PatchBody = Type.Object(
  {
    name: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
    maxConcurrentCalls: Type.Optional(Nullable(settings.maxConcurrentCalls)),
    priority: Type.Optional(settings.priority),
    callingWindow: Type.Optional(Nullable(settings.callingWindow)),
    retryPolicy: Type.Optional(Nullable(settings.retryPolicy)),
    startsAt: Type.Optional(Nullable(settings.startsAt)),
    endsAt: Type.Optional(Nullable(settings.endsAt)),
    maxDialsPerPhonePerDay: Type.Optional(Nullable(settings.maxDialsPerPhonePerDay)),
    metadata: Type.Optional(settings.metadata),
  },
  { additionalProperties: false, minProperties: 1, description: 'Keys present are set; null clears' },
)
const IdParams = Type.Object({ id: Type.String({ format: 'uuid' }) })
const ListQuery = Type.Object(
  {
    status: Type.Optional(Type.Enum(['ACTIVE', 'PAUSED', 'CANCELED'])),
    page: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 1 }),
    limit: Type.Integer({ minimum: 1, maximum: 100, default: 20 }),
  },
  { additionalProperties: false },
)

const CampaignEnvelope = Type.Object({ success: Type.Literal(true), data: CampaignJson })
const errors = {
  400: errorResponse('VALIDATION_ERROR naming each field (details: [{field, message}])'),
  404: errorResponse('CAMPAIGN_NOT_FOUND'),
  409: errorResponse('CAMPAIGN_CANCELED: a canceled campaign cannot change'),
}

type SettingsInput = Partial<Static<typeof PatchBody>>

/** What a schema cannot check: zones, times, the cap against the global one, startsAt before endsAt. */
function toSettings(
  body: SettingsInput,
  zones: Set<string>,
  globalCap: number,
  current?: Campaign,
): { ok: true; settings: CampaignSettings } | { ok: false; error: ApiError } {
  const problems: { field: string; message: string }[] = []
  const s: CampaignSettings = {}
  if (body.name !== undefined) s.name = body.name
  if (body.priority !== undefined) s.priority = body.priority
  if (body.maxConcurrentCalls !== undefined) {
    if (body.maxConcurrentCalls !== null && body.maxConcurrentCalls > globalCap)
      problems.push({ field: 'maxConcurrentCalls', message: `must be at most MAX_CONCURRENT_CALLS (${globalCap})` })
    s.maxConcurrentCalls = body.maxConcurrentCalls
  }
  if (body.callingWindow !== undefined) {
    if (body.callingWindow === null) s.callingWindow = null
    else {
      const w = validateWindow(body.callingWindow, (z) => zones.has(z))
      if (w.ok) s.callingWindow = { ...w.window }
      else problems.push(...w.problems)
    }
  }
  if (body.retryPolicy !== undefined) {
    s.retryPolicy = body.retryPolicy
    for (const [outcome, rule] of Object.entries(body.retryPolicy?.outcomes ?? {})) {
      if (rule?.maxDelayMs !== undefined && rule.delayMs !== undefined && rule.maxDelayMs < rule.delayMs)
        problems.push({ field: `retryPolicy.outcomes.${outcome}.maxDelayMs`, message: 'must be at least delayMs' })
    }
  }
  if (body.startsAt !== undefined) s.startsAt = body.startsAt === null ? null : new Date(body.startsAt)
  if (body.endsAt !== undefined) {
    s.endsAt = body.endsAt === null ? null : new Date(body.endsAt)
    if (s.endsAt && s.endsAt.getTime() <= Date.now())
      problems.push({ field: 'endsAt', message: 'must be in the future' })
  }
  const startsAt = s.startsAt !== undefined ? s.startsAt : (current?.starts_at ?? null)
  const endsAt = s.endsAt !== undefined ? s.endsAt : (current?.ends_at ?? null)
  if (startsAt && endsAt && new Date(endsAt) <= new Date(startsAt))
    problems.push({ field: 'endsAt', message: 'must be after startsAt' })
  if (body.maxDialsPerPhonePerDay !== undefined) s.maxDialsPerPhonePerDay = body.maxDialsPerPhonePerDay
  if (body.metadata !== undefined) {
    if (Buffer.byteLength(JSON.stringify(body.metadata)) > 16 * 1024)
      problems.push({ field: 'metadata', message: 'must be at most 16384 bytes of JSON' })
    s.metadata = body.metadata
  }
  if (problems.length > 0)
    return {
      ok: false,
      error: apiError(400, 'VALIDATION_ERROR', problems.map((p) => `${p.field}: ${p.message}`).join('; '), problems),
    }
  return { ok: true, settings: s }
}

const notFound = (id: string) => apiError(404, 'CAMPAIGN_NOT_FOUND', `no campaign ${id}`)
const canceled = () => apiError(409, 'CAMPAIGN_CANCELED', 'the campaign is canceled; it cannot change')

// ---- routes ----
export const campaignRoutes: FastifyPluginAsyncTypebox<AppDeps> = async (app, { db, config, wakeup }) => {
  const globalCap = config.dispatch.maxConcurrentCalls

  app.post(
    '/api/v1/campaigns',
    {
      schema: {
        operationId: 'createCampaign',
        tags: ['campaigns'],
        summary: 'Create a campaign',
        body: CreateBody,
        response: { 201: { ...CampaignEnvelope, description: 'Created' }, 400: errors[400] },
      },
    },
    async (req, reply) => {
      const input = toSettings(req.body, await knownZones(db), globalCap)
      if (!input.ok) return reply.code(400).send(errorBody(input.error))
      const campaign = await insertCampaign(db, { ...input.settings, name: req.body.name })
      return reply.code(201).send({ success: true, data: toCampaignJson(campaign) })
    },
  )

  app.get(
    '/api/v1/campaigns',
    {
      schema: {
        operationId: 'listCampaigns',
        tags: ['campaigns'],
        summary: 'List campaigns, newest first',
        querystring: ListQuery,
        response: {
          200: Type.Object({
            success: Type.Literal(true),
            data: Type.Array(CampaignJson),
            pagination: Type.Object({ page: Type.Integer(), limit: Type.Integer(), total: Type.Integer() }),
          }),
          400: errors[400],
        },
      },
    },
    async (req) => {
      const { page, limit, status } = req.query
      const { campaigns, total } = await listCampaigns(db, { page, limit, ...(status ? { status } : {}) })
      return {
        success: true as const,
        data: campaigns.map((k) => toCampaignJson(k)),
        pagination: { page, limit, total },
      }
    },
  )

  app.get(
    '/api/v1/campaigns/:id',
    {
      schema: {
        operationId: 'getCampaign',
        tags: ['campaigns'],
        summary: 'Get a campaign with its stats',
        params: IdParams,
        response: { 200: CampaignEnvelope, ...errors },
      },
    },
    async (req, reply) => {
      const campaign = await getCampaign(db, req.params.id)
      if (!campaign) return reply.code(404).send(errorBody(notFound(req.params.id)))
      const stats = await campaignStats(db, campaign.id, globalCap)
      return { success: true as const, data: toCampaignJson(campaign, stats) }
    },
  )

  app.patch(
    '/api/v1/campaigns/:id',
    {
      schema: {
        operationId: 'updateCampaign',
        tags: ['campaigns'],
        summary: "Change a campaign's settings; the next claim uses them",
        params: IdParams,
        body: PatchBody,
        response: { 200: CampaignEnvelope, ...errors },
      },
    },
    async (req, reply) => {
      const current = await getCampaign(db, req.params.id)
      if (!current) return reply.code(404).send(errorBody(notFound(req.params.id)))
      const input = toSettings(req.body, await knownZones(db), globalCap, current)
      if (!input.ok) return reply.code(400).send(errorBody(input.error))
      const r = await updateCampaign(db, req.params.id, input.settings)
      if (r.kind === 'not_found') return reply.code(404).send(errorBody(notFound(req.params.id)))
      if (r.kind === 'canceled') return reply.code(409).send(errorBody(canceled()))
      wakeup.nudge()
      return { success: true as const, data: toCampaignJson(r.campaign) }
    },
  )

  for (const action of ['pause', 'resume'] as const) {
    app.post(
      `/api/v1/campaigns/:id/${action}`,
      {
        schema: {
          operationId: `${action}Campaign`,
          tags: ['campaigns'],
          summary:
            action === 'pause'
              ? 'Pause: no new dial of the campaign starts once this returns; calls in progress finish'
              : 'Resume a paused campaign',
          params: IdParams,
          response: { 200: CampaignEnvelope, ...errors },
        },
      },
      async (req, reply) => {
        const r = await setCampaignPaused(db, req.params.id, action === 'pause')
        if (r.kind === 'not_found') return reply.code(404).send(errorBody(notFound(req.params.id)))
        if (r.kind === 'canceled') return reply.code(409).send(errorBody(canceled()))
        if (action === 'resume') wakeup.nudge()
        return { success: true as const, data: toCampaignJson(r.campaign) }
      },
    )
  }

  app.post(
    '/api/v1/campaigns/:id/cancel',
    {
      schema: {
        operationId: 'cancelCampaign',
        tags: ['campaigns'],
        summary: 'Cancel: every PENDING call of the campaign becomes CANCELED; none is dialed again',
        params: IdParams,
        response: { 200: CampaignEnvelope, ...errors },
      },
    },
    async (req, reply) => {
      const r = await cancelCampaign(db, req.params.id)
      if (r.kind === 'not_found') return reply.code(404).send(errorBody(notFound(req.params.id)))
      req.log.info({ campaignId: r.campaign.id, canceledCalls: r.canceledCalls }, 'campaign canceled')
      return { success: true as const, data: toCampaignJson(r.campaign) }
    },
  )
}
