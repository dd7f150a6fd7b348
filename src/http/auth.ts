import { createHash, timingSafeEqual } from 'node:crypto'
import rateLimit from '@fastify/rate-limit'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import helmet from 'helmet'
import type { Config } from '../config.ts'
import { apiError, errorBody } from './errors.ts'

// Who may use the client API, and how fast. Every /api/v1 route needs `Authorization: Bearer <key>` when API_KEYS
// is set, except the provider webhook, which carries its own signature. /health, /metrics and /docs stay open.

const isClientApi = (url: string) => url.startsWith('/api/v1/') && !url.startsWith('/api/v1/callbacks/')

const digest = (s: string) => createHash('sha256').update(s).digest()

export async function installAuth(app: FastifyInstance, config: Config): Promise<void> {
  // Comparing fixed-length digests in constant time leaks neither a key's content nor its length.
  const keys = config.apiKeys.map(digest)

  function keyOf(req: FastifyRequest): Buffer | undefined {
    const header = req.headers.authorization
    if (!header?.startsWith('Bearer ')) return undefined
    const candidate = digest(header.slice(7).trim())
    let match: Buffer | undefined
    for (const k of keys) if (timingSafeEqual(k, candidate)) match = k
    return match
  }

  if (keys.length > 0) {
    app.addHook('onRequest', async (req, reply) => {
      if (!isClientApi(req.url)) return
      if (!keyOf(req)) {
        reply.header('www-authenticate', 'Bearer')
        return reply
          .code(401)
          .send(errorBody(apiError(401, 'UNAUTHORIZED', 'a valid API key is required: Authorization: Bearer <key>')))
      }
    })
  }

  await app.register(rateLimit, {
    max: config.rateLimit.max,
    timeWindow: config.rateLimit.windowMs,
    hook: 'onRequest',
    // Per API key (its digest, never the key itself); per client address when keys are off.
    keyGenerator: (req) => {
      const k = keys.length > 0 ? keyOf(req) : undefined
      return k ? `key:${k.toString('hex', 0, 12)}` : `ip:${req.ip}`
    },
    allowList: (req) => !isClientApi(req.url),
    errorResponseBuilder: (_req, ctx) =>
      Object.assign(new Error(`rate limit of ${ctx.max} requests per ${ctx.after} exceeded`), {
        statusCode: ctx.statusCode,
        code: 'RATE_LIMITED',
      }),
  })

  // Security headers everywhere; the Swagger UI page needs inline styles and scripts of its own. The middleware is
  // built once: @fastify/helmet built it anew for every request, which cost as much CPU as all of Fastify's own code.
  const securityHeaders = helmet({
    contentSecurityPolicy: {
      directives: {
        defaultSrc: ["'self'"],
        scriptSrc: ["'self'", "'unsafe-inline'"],
        styleSrc: ["'self'", "'unsafe-inline'"],
        imgSrc: ["'self'", 'data:', 'validator.swagger.io'],
      },
    },
  })
  app.addHook('onRequest', (req, reply, done) => securityHeaders(req.raw, reply.raw, (err) => done(err as Error)))
}
