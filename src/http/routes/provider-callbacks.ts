import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { Vapi } from '@vapi-ai/server-sdk'
import type Retell from 'retell-sdk'
import { verify as verifyRetell } from 'retell-sdk'
import { Type } from 'typebox'
import { applyFinalReport, type EndAttempt } from '../../dispatch/final-report.ts'
import type { Recorder } from '../../dispatch/recorder.ts'
import { retellReport } from '../../providers/retell.ts'
import { correlationOf, type FinalReport } from '../../providers/types.ts'
import { vapiReport } from '../../providers/vapi.ts'
import { verifyVapi } from '../../providers/vapi-signature.ts'
import { findByProviderCallId, recordProgress } from '../../sql/attempts.ts'
import type { AppDeps } from '../deps.ts'
import { apiError, errorBody, errorResponse } from '../errors.ts'

// The Vapi and Retell webhooks, each verified the platform's way before its body is looked at: Retell signs with
// the account's API key (x-retell-signature, checked by the SDK's verify), Vapi with WEBHOOK_SECRET
// (providers/vapi-signature.ts). A call's end settles its attempt through dispatch/final-report.ts, the path
// reconciliation takes too; any other event is acknowledged and kept in the call's history.
// These platforms send every call of the account (Retell) or of the assistant (Vapi) to one URL, including calls
// this service did not place: a webhook that names no call of ours is acknowledged with outcome "ignored", so the
// platform does not retry it.

const VapiBody = Type.Object({
  message: Type.Object(
    {
      type: Type.String({ minLength: 1, maxLength: 100 }),
      status: Type.Optional(Type.String({ maxLength: 100 })),
      endedReason: Type.Optional(Type.String({ maxLength: 300 })),
      call: Type.Optional(Type.Object({ id: Type.String({ minLength: 1, maxLength: 255 }) })),
    },
    { description: 'A Vapi server message: status-update, end-of-call-report, transcript, ...' },
  ),
})
const RetellBody = Type.Object({
  event: Type.String({ minLength: 1, maxLength: 100 }),
  call: Type.Object({ call_id: Type.String({ minLength: 1, maxLength: 255 }) }),
})
const Ack = Type.Object({
  success: Type.Literal(true),
  data: Type.Object({
    outcome: Type.Enum(['applied', 'late', 'duplicate', 'stale', 'mismatch', 'progress', 'ignored']),
  }),
})
const responses = {
  200: Ack,
  400: errorResponse('VALIDATION_ERROR or INVALID_JSON'),
  401: errorResponse('INVALID_SIGNATURE: the signature is missing, malformed, stale or wrong'),
}

/** The parts of a Vapi server message this route reads (the SDK's ServerMessage* types, all optional here). */
type VapiMessage = {
  type: string
  status?: string
  endedReason?: string
  call?: Partial<Vapi.Call> & { id: string }
  artifact?: Partial<Vapi.Artifact>
  cost?: number
  startedAt?: string
  endedAt?: string
  durationSeconds?: number
}
type RetellCall = Partial<Retell.Call.PhoneCallResponse> & { call_id: string }

type Outcome = 'applied' | 'late' | 'duplicate' | 'stale' | 'mismatch' | 'progress' | 'ignored'

export const providerCallbackRoutes: FastifyPluginAsyncTypebox<AppDeps> = async (app, deps) => {
  const { db, config, recorder, metrics } = deps
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (req, body, done) => {
    req.rawBody = body as Buffer
    try {
      done(null, JSON.parse((body as Buffer).toString('utf8')))
    } catch {
      done(
        Object.assign(new Error('request body is not valid JSON'), {
          statusCode: 400,
          code: 'FST_ERR_CTP_INVALID_JSON_BODY',
        }),
        undefined,
      )
    }
  })
  const endAttempt: EndAttempt = (input) => (recorder as Recorder).settle(input, { patienceMs: 10_000 })
  const policy = config.dispatch

  const refuse = (reply: { code(n: number): { send(b: unknown): unknown } }, provider: string, reason: string) => {
    metrics?.webhook('unverified', 'bad_signature')
    return reply
      .code(401)
      .send(errorBody(apiError(401, 'INVALID_SIGNATURE', `${provider} webhook signature ${reason}`)))
  }

  /** Finds our call and attempt: from the metadata we sent, else from the platform's call id. */
  async function target(metadata: unknown, providerCallId: string) {
    const ours = correlationOf(metadata)
    if (ours) return { ...ours, providerCallId }
    const found = await findByProviderCallId(db, providerCallId)
    return found ? { callId: found.id, attempt: found.attempts, providerCallId } : undefined
  }

  async function handle(
    provider: 'vapi' | 'retell',
    t: { callId: string; attempt: number; providerCallId: string } | undefined,
    event: string,
    report: FinalReport | undefined,
  ): Promise<Outcome> {
    if (!t) {
      metrics?.webhook(event, 'unknown')
      return 'ignored'
    }
    if (!report) {
      const recorded = await recordProgress(db, t.callId, t.attempt, event, {
        providerCallId: t.providerCallId,
        provider,
      })
      return recorded ? 'progress' : 'ignored'
    }
    const result = await applyFinalReport({ db, endAttempt, policy }, t, report, {
      eventKind: 'WEBHOOK',
      eventStatus: event,
    })
    if (result.outcome === 'unknown_call') return 'ignored'
    metrics?.webhook(report.outcome, result.outcome, t.providerCallId)
    app.log.info(
      { callId: t.callId, attempt: t.attempt, provider, endReason: report.result.endReason, outcome: result.outcome },
      'provider webhook',
    )
    return result.outcome
  }

  app.post(
    '/api/v1/callbacks/vapi',
    {
      schema: {
        operationId: 'vapiWebhook',
        security: [],
        tags: ['callbacks'],
        summary: 'Vapi server messages (set this URL as the server URL of the assistant or phone number)',
        description:
          'With WEBHOOK_SECRET set, requires an HMAC credential (x-signature = hex HMAC-SHA256(secret, "{x-timestamp}.{body}")) or the server secret in x-vapi-secret. end-of-call-report and status-update "ended" settle the attempt; other messages are kept in its history.',
        body: VapiBody,
        response: responses,
      },
      // a platform's bursts of webhooks must never be refused
      config: { rateLimit: false },
      preValidation: async (req, reply) => {
        const secret = config.webhook.secret
        if (!secret) return
        const check = verifyVapi(secret, req.rawBody ?? '', req.headers)
        if (!check.ok) return refuse(reply, 'Vapi', check.reason)
      },
    },
    async (req) => {
      const m = req.body.message as VapiMessage
      const call = m.call
      const providerCallId = call?.id
      const t = providerCallId ? await target(call?.assistantOverrides?.metadata, providerCallId) : undefined
      const ends = m.type === 'end-of-call-report' || (m.type === 'status-update' && m.status === 'ended')
      const report = ends
        ? vapiReport(m.endedReason ?? call?.endedReason, call, m.artifact ?? call?.artifact, m.cost ?? call?.cost, {
            startedAt: m.startedAt,
            endedAt: m.endedAt,
            durationSeconds: typeof m.durationSeconds === 'number' ? m.durationSeconds : undefined,
          })
        : undefined
      const event = m.type === 'status-update' ? `status-update:${m.status}` : String(m.type)
      return { success: true as const, data: { outcome: await handle('vapi', t, event, report) } }
    },
  )

  app.post(
    '/api/v1/callbacks/retell',
    {
      schema: {
        operationId: 'retellWebhook',
        security: [],
        tags: ['callbacks'],
        summary: "Retell webhooks (set this URL as the agent's or the account's webhook URL)",
        description:
          'Requires x-retell-signature made with the account API key (AI_CALL_API_KEY), as the Retell SDK verifies it. call_ended and call_analyzed settle the attempt; other events are kept in its history.',
        body: RetellBody,
        response: responses,
      },
      // a platform's bursts of webhooks must never be refused
      config: { rateLimit: false },
      preValidation: async (req, reply) => {
        const key = config.provider.apiKey
        const header = req.headers['x-retell-signature']
        const signature = Array.isArray(header) ? header[0] : header
        if (!key) return refuse(reply, 'Retell', 'cannot be checked: AI_CALL_API_KEY is not set')
        if (!signature) return refuse(reply, 'Retell', 'missing')
        // The SDK checks the timestamp too: a signature more than 5 minutes old is refused (a replay).
        const ok = await verifyRetell((req.rawBody ?? Buffer.alloc(0)).toString('utf8'), key, signature).catch(
          () => false,
        )
        if (!ok) return refuse(reply, 'Retell', 'mismatch or stale')
      },
    },
    async (req) => {
      const { event } = req.body
      const call = req.body.call as RetellCall
      const t = await target(call.metadata, call.call_id)
      const report = event === 'call_ended' || event === 'call_analyzed' ? retellReport(call) : undefined
      return { success: true as const, data: { outcome: await handle('retell', t, event, report) } }
    },
  )
}
