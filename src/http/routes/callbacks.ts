import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import {
  decideAttemptEnd,
  isFinalProviderStatus,
  PROVIDER_FINAL,
  PROVIDER_PROGRESS,
  webhookError,
} from '../../dispatch/call-state.ts'
import type { Recorder } from '../../dispatch/recorder.ts'
import { SIGNATURE_HEADER, verify, verifyWebhookUrlToken } from '../../providers/signature.ts'
import { findByProviderCallId, recordProgress } from '../../sql/attempts.ts'
import { recordAttemptResult } from '../../sql/provider-results.ts'
import type { AppDeps } from '../deps.ts'
import { apiError, errorBody, errorResponse } from '../errors.ts'

// The provider's webhook. Registered as its own plugin so that its JSON parser, which keeps the raw bytes for the
// signature, applies to this route only.
//
// Everything that selects the call is authenticated: the body by X-Signature, and our `call` and `attempt` query
// parameters (which the provider's signature does not cover) by the `token` we put in the webhook URL at dial time,
// an HMAC of the two under WEBHOOK_SECRET. The body's callId must also be the provider id stored for the call, so a
// captured, validly signed webhook cannot be replayed against another call within the signature's tolerance.

/** How long a webhook waits for an unreachable database before answering 5xx, leaving the retry to the provider. */
const WEBHOOK_PATIENCE_MS = 2000

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
  token: Type.Optional(
    Type.String({ maxLength: 100, description: 'HMAC of call and attempt, put in the webhookUrl at dial time' }),
  ),
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

export const callbackRoutes: FastifyPluginAsyncTypebox<AppDeps> = async (app, { db, config, recorder, metrics }) => {
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
        operationId: 'receiveCallStatus',
        tags: ['callbacks'],
        security: [],
        summary: 'Provider webhook: the status of a call attempt',
        description:
          'With WEBHOOK_SECRET set, requires X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>.',
        querystring: WebhookQuery,
        body: WebhookBody,
        response: {
          200: Ack,
          400: errorResponse('VALIDATION_ERROR or INVALID_JSON'),
          401: errorResponse(
            'INVALID_SIGNATURE: X-Signature is missing, malformed, stale or wrong, or the URL token does not match',
          ),
          404: errorResponse('CALL_NOT_FOUND: no call matches this webhook'),
          409: errorResponse("PROVIDER_CALL_MISMATCH: the body's callId is not the provider call stored for this call"),
        },
      },
      config: { rateLimit: false },
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
      if (secret && (callId || attempt) && !verifyWebhookUrlToken(secret, callId, attempt, req.query.token)) {
        req.log.warn({ callId, attempt }, 'webhook URL token refused')
        metrics?.webhook('unverified', 'bad_signature')
        return reply
          .code(401)
          .send(errorBody(apiError(401, 'INVALID_SIGNATURE', 'the webhook URL token does not match call and attempt')))
      }
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
      const end = decideAttemptEnd(
        policy,
        attempt,
        body.status === 'COMPLETED'
          ? { kind: 'completed' }
          : { kind: 'failed', error: webhookError(body.status, body.error) },
      )
      const result = await (recorder as Recorder).settle(
        {
          callId,
          attempt,
          end,
          eventKind: 'WEBHOOK',
          eventStatus: body.status,
          outcome: body.status,
          providerCallId: body.callId,
          detail,
          durationSec: body.durationSec ?? null,
        },
        { patienceMs: WEBHOOK_PATIENCE_MS },
      )
      if (result.outcome === 'unknown_call') return notFound()
      if (result.outcome === 'mismatch') {
        req.log.warn({ callId, attempt }, 'webhook names another provider call than the one stored: refused')
        metrics?.webhook(body.status, 'mismatch')
        return reply
          .code(409)
          .send(
            errorBody(apiError(409, 'PROVIDER_CALL_MISMATCH', "the webhook's callId is not this call's provider call")),
          )
      }
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
