import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Ajv } from 'ajv'
import ajvFormats from 'ajv-formats'
import Fastify, { type FastifyBaseLogger, type FastifyError, type FastifyInstance, LogController } from 'fastify'
import { createRecorder } from '../dispatch/recorder.ts'
import { createMetrics } from '../ops/metrics.ts'
import { installAuth } from './auth.ts'
import type { AppDeps } from './deps.ts'
import { apiError, ErrorResponse, errorBody, FRAMEWORK_ERRORS } from './errors.ts'
import { documentRoutes, swaggerOptions } from './openapi.ts'
import { callbackRoutes } from './routes/callbacks.ts'
import { callRoutes } from './routes/calls.ts'
import { campaignRoutes } from './routes/campaigns.ts'
import { dashboardRoutes } from './routes/dashboard.ts'
import { eventRoutes } from './routes/events.ts'
import { opsRoutes } from './routes/ops.ts'
import { providerCallbackRoutes } from './routes/provider-callbacks.ts'
import { suppressionRoutes } from './routes/suppressions.ts'
import { webhookEndpointRoutes } from './routes/webhook-endpoints.ts'

export const BODY_LIMIT = 64 * 1024

// ajv-formats is CommonJS; under Node's ESM interop its default import is the plugin function itself.
const addFormats = ajvFormats as unknown as (ajv: Ajv) => Ajv

/** The HTTP app for production and tests alike; it never listens (main.ts does). */
export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: deps.log as FastifyBaseLogger,
    bodyLimit: BODY_LIMIT,
    requestIdHeader: 'x-request-id',
    // One line per request at debug level (below) instead of Fastify's two at info: the hot paths run thousands a second.
    logController: new LogController({ disableRequestLogging: true }),
  }).withTypeProvider<TypeBoxTypeProvider>()

  // Query strings, params and headers arrive as text and are coerced ("20" -> 20); JSON bodies are not, so
  // {"to": 966501234567} is a 400 rather than a number quietly turned into a string.
  const coercing = addFormats(
    new Ajv({ coerceTypes: 'array', useDefaults: true, removeAdditional: false, allErrors: true }),
  )
  const strict = addFormats(
    new Ajv({ coerceTypes: false, useDefaults: true, removeAdditional: false, allErrors: true }),
  )
  app.setValidatorCompiler(({ schema, httpPart }) => (httpPart === 'body' ? strict : coercing).compile(schema))

  app.addSchema(ErrorResponse)
  app.addHook('onResponse', async (req, reply) => {
    const level = reply.statusCode >= 500 ? 'error' : 'debug'
    req.log[level](
      {
        method: req.method,
        url: req.routeOptions.url ?? req.url.split('?')[0],
        statusCode: reply.statusCode,
        ms: Math.round(reply.elapsedTime),
      },
      'request',
    )
  })

  app.setErrorHandler((err: FastifyError, req, reply) => {
    if (err.validation) {
      const details = err.validation.map((v) => ({
        field: `${err.validationContext ?? ''}${v.instancePath}`.replace(/\//g, '.'),
        message: v.message,
        ...(v.params && 'additionalProperty' in v.params ? { property: v.params.additionalProperty } : {}),
      }))
      return reply
        .code(400)
        .send(errorBody(apiError(400, 'VALIDATION_ERROR', `invalid ${err.validationContext ?? 'request'}`, details)))
    }
    const status = err.statusCode ?? 500
    if (status < 500) {
      const known = err.code ? FRAMEWORK_ERRORS[err.code] : undefined
      return reply
        .code(status)
        .send(errorBody(apiError(status, known?.code ?? err.code ?? 'BAD_REQUEST', known?.message ?? err.message)))
    }
    req.log.error({ err }, 'unhandled error')
    return reply.code(500).send(errorBody(apiError(500, 'INTERNAL_ERROR', 'internal error')))
  })
  app.setNotFoundHandler((req, reply) =>
    reply
      .code(404)
      .send(errorBody(apiError(404, 'ROUTE_NOT_FOUND', `no route ${req.method} ${req.url.split('?')[0]}`))),
  )

  await installAuth(app, deps.config)

  // After installAuth's own onRoute hook, which gives a route without `security` the bearer one this documents.
  app.addHook('onRoute', documentRoutes())
  await app.register(swagger, swaggerOptions(deps.config))
  // The docs page and its files are open; they are registered in a scope of their own to say so.
  await app.register(async (docs) => {
    docs.addHook('onRoute', (route) => {
      route.schema = { ...route.schema, security: [] }
    })
    await docs.register(swaggerUi, { routePrefix: '/docs' })
  })

  const routeDeps = {
    ...deps,
    metrics:
      deps.metrics ?? createMetrics({ db: deps.db, maxConcurrentCalls: deps.config.dispatch.maxConcurrentCalls }),
    recorder:
      deps.recorder ??
      createRecorder({
        db: deps.db,
        wakeup: deps.wakeup,
        log: deps.log,
        patienceMs: deps.config.dispatch.callTimeoutMs,
      }),
  }
  if (deps.clientApi !== false) {
    await app.register(callRoutes, routeDeps)
    await app.register(campaignRoutes, routeDeps)
    await app.register(suppressionRoutes, routeDeps)
    await app.register(dashboardRoutes, routeDeps)
    await app.register(webhookEndpointRoutes, routeDeps)
    await app.register(eventRoutes, routeDeps)
  }
  await app.register(callbackRoutes, routeDeps)
  await app.register(providerCallbackRoutes, routeDeps)
  await app.register(opsRoutes, routeDeps)
  return app
}
