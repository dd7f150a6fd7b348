import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import {
  endAttempt as decideEnd,
  isFinalProviderStatus,
  PROVIDER_FINAL,
  PROVIDER_PROGRESS,
  webhookError,
} from '../../dispatch/call-state.ts'
import { settleAttempt } from '../../dispatch/settle.ts'
import { SIGNATURE_HEADER, verify } from '../../providers/signature.ts'
import { findByProviderCallId, recordProgress } from '../../sql/attempts.ts'
import { recordAttemptResult } from '../../sql/provider-results.ts'
import type { AppDeps } from '../deps.ts'
import { apiError, errorBody, errorRef } from '../errors.ts'

// The provider's webhook. Registered as its own plugin so that its JSON parser, which keeps the raw bytes for the
// signature, applies to this route only.

// Extra fields are accepted: a provider that adds one must not have its outcomes refused (it would retry forever).
const WebhookBody = Type.Object({
  callId: Type.String({ minLength: 1, maxLength: 255, description: "The provider's call id" }),
  status: Type.Enum([...PROVIDER_FINAL, ...PROVIDER_PROGRESS]),
  durationSec: Type.Optional(Type.Integer({ minimum: 0, maximum: 7 * 24 * 3600 })),
  completedAt: Type.Optional(Type.String({ format: 'date-time' })),
  error: Type.Optional(Type.String({ maxLength: 2000 })),
})
const WebhookQuery = Type.Object({
  call: Type.Optional(Type.String({ format: 'uuid', description: 'Our call id, put in the webhookUrl at dial time' })),
  attempt: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
})
const Ack = Type.Object({
  success: Type.Literal(true),
  data: Type.Object({ outcome: Type.Enum(['applied', 'late', 'duplicate', 'stale', 'progress']) }),
})

declare module 'fastify' {
  interface FastifyRequest {
    rawBody?: Buffer
  }
}

export const callbackRoutes: FastifyPluginAsyncTypebox<AppDeps> = async (app, { db, config, wakeup, metrics }) => {
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (req, body, done) => {
    req.rawBody = body as Buffer
    try {
      done(null, JSON.parse((body as Buffer).toString('utf8')))
    } catch {
      const err = Object.assign(new Error('request body is not valid JSON'), {
        statusCode: 400,
        code: 'FST_ERR_CTP_INVALID_JSON_BODY',
      })
      done(err, undefined)
    }
  })

  const secret = config.webhook.secret
  const policy = config.dispatch

  app.post(
    '/api/v1/callbacks/call-status',
    {
      schema: {
        tags: ['callbacks'],
        summary: 'Provider webhook: the status of a call attempt',
        description:
          'With WEBHOOK_SECRET set, requires X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>.',
        querystring: WebhookQuery,
        body: WebhookBody,
        response: { 200: Ack, 400: errorRef, 401: errorRef, 404: errorRef },
      },
      // Before validation: an unsigned request is refused as such, whatever its body.
      preValidation: async (req, reply) => {
        if (!secret) return
        const header = req.headers[SIGNATURE_HEADER]
        const check = verify(secret, req.rawBody ?? '', Array.isArray(header) ? header[0] : header)
        if (!check.ok) {
          req.log.warn({ reason: check.reason }, 'webhook signature refused')
          metrics?.webhook('unverified', 'bad_signature')
          return reply
            .code(401)
            .send(errorBody(apiError(401, 'INVALID_SIGNATURE', `webhook signature ${check.reason}`)))
        }
      },
    },
    async (req, reply) => {
      const body = req.body
      let callId = req.query.call
      let attempt = req.query.attempt
      if (!callId || !attempt) {
        const found = await findByProviderCallId(db, body.callId)
        callId = found?.id
        attempt = found?.attempts
      }
      const notFound = () => {
        metrics?.webhook(body.status, 'unknown')
        return reply.code(404).send(errorBody(apiError(404, 'CALL_NOT_FOUND', 'no call matches this webhook')))
      }
      if (!callId || !attempt) return notFound()

      const detail = {
        providerCallId: body.callId,
        ...(body.error ? { error: body.error } : {}),
        ...(body.completedAt ? { completedAt: body.completedAt } : {}),
      }
      if (!isFinalProviderStatus(body.status)) {
        if (!(await recordProgress(db, callId, attempt, body.status, detail))) return notFound()
        metrics?.webhook(body.status, 'progress')
        return { success: true as const, data: { outcome: 'progress' as const } }
      }
      const end = decideEnd(
        policy,
        attempt,
        body.status === 'COMPLETED'
          ? { kind: 'completed' }
          : { kind: 'failed', error: webhookError(body.status, body.error) },
      )
      const result = await settleAttempt(db, wakeup, {
        callId,
        attempt,
        end,
        eventKind: 'WEBHOOK',
        eventStatus: body.status,
        outcome: body.status,
        detail,
        durationSec: body.durationSec ?? null,
      })
      if (result.outcome === 'unknown_call') return notFound()
      // what the provider reported, for the call's `result` (issue 13); a duplicate changes nothing
      if (result.outcome === 'applied' || result.outcome === 'late') {
        await recordAttemptResult(
          db,
          callId,
          attempt,
          {
            provider: 'generic',
            providerCallId: body.callId,
            endReason: body.status,
            ...(body.durationSec !== undefined ? { durationSec: body.durationSec } : {}),
            ...(body.completedAt ? { endedAt: body.completedAt } : {}),
          },
          true,
        )
      }
      metrics?.webhook(body.status, result.outcome, body.callId)
      metrics?.attemptEnded(end, result)
      req.log.info(
        { callId, attempt, providerStatus: body.status, outcome: result.outcome, status: result.status },
        'webhook',
      )
      return { success: true as const, data: { outcome: result.outcome } }
    },
  )
}
