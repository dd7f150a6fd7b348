import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyInstance, FastifyReply, FastifyRequest, FastifySchema, RouteOptions } from 'fastify'
import helmet from 'helmet'
import type { Config } from '../config.ts'
import { apiError, errorBody } from './errors.ts'
import { createRateLimiter, type RateClass } from './rate-limit.ts'

// Who may use the client API, and how fast. Every route is client API unless its schema says `security: []`: it
// needs `Authorization: Bearer <key>` when API_KEYS is set. Open routes: /health, /metrics, /docs, the dashboard's
// files and the provider webhook, which carries its own signature. Every request takes a token from its key's
// bucket (its address's without a valid key), reads and writes apart, unless the route says `config: {rateLimit:
// false}` (the webhook). Both checks are hooks of the matched route, attached when the route is registered; nothing
// tests the URL, which the router decodes first (`/%61pi/v1/calls` reached /api/v1/calls past a test on the string).

export const isOpenRoute = (schema: FastifySchema | undefined): boolean =>
  Array.isArray(schema?.security) && schema.security.length === 0

declare module 'fastify' {
  interface FastifyContextConfig {
    /** false: no rate limit on this route (the provider webhook: a provider's bursts must never be refused). */
    rateLimit?: false
  }
}

const READS = new Set(['GET', 'HEAD', 'OPTIONS'])
const digest = (s: string) => createHash('sha256').update(s).digest()

export async function installAuth(app: FastifyInstance, config: Config): Promise<void> {
  // Comparing fixed-length digests in constant time leaks neither a key's content nor its length. A key's bucket
  // is named by a prefix of its digest, never by the key.
  const keys = config.apiKeys.map((k) => {
    const d = digest(k)
    return { digest: d, bucket: `key:${d.toString('hex', 0, 12)}` }
  })
  const limiter = createRateLimiter(config.rateLimit)

  function keyOf(req: FastifyRequest): string | undefined {
    const header = req.headers.authorization
    if (!header?.startsWith('Bearer ')) return undefined
    const candidate = digest(header.slice(7).trim())
    let match: string | undefined
    for (const k of keys) if (timingSafeEqual(k.digest, candidate)) match = k.bucket
    return match
  }

  function guard(route: RouteOptions, cls: RateClass) {
    let open: boolean | undefined
    const limited = route.config?.rateLimit !== false
    return async (req: FastifyRequest, reply: FastifyReply) => {
      // Decided at the first request: a scope's own onRoute hook (the docs') may open the route after this one ran.
      open ??= isOpenRoute(route.schema)
      const key = !open && keys.length > 0 ? keyOf(req) : undefined
      // Without a valid key the bucket is the client address's: guessing keys is limited too.
      const taken = limited ? limiter.take(cls, key ?? `ip:${req.ip}`) : undefined
      if (taken && !taken.ok) {
        const { perSec, burst } = limiter.limits[cls]
        const seconds = Math.max(1, Math.ceil(taken.retryAfterMs / 1000))
        reply.header('retry-after', seconds)
        return reply
          .code(429)
          .send(
            errorBody(
              apiError(
                429,
                'RATE_LIMITED',
                `more than ${Number(perSec.toPrecision(3))} ${cls}s a second (bursts of ${burst}); retry in ${seconds} s`,
              ),
            ),
          )
      }
      if (taken) reply.header('x-ratelimit-remaining', taken.remaining)
      if (!open && keys.length > 0 && !key) {
        reply.header('www-authenticate', 'Bearer')
        return reply
          .code(401)
          .send(errorBody(apiError(401, 'UNAUTHORIZED', 'a valid API key is required: Authorization: Bearer <key>')))
      }
    }
  }

  app.addHook('onRoute', (route) => {
    if (route.schema?.security === undefined) route.schema = { ...route.schema, security: [{ bearer: [] }] }
    const methods = [route.method].flat()
    const cls: RateClass = methods.every((m) => READS.has(m)) ? 'read' : 'write'
    route.onRequest = [guard(route, cls), ...[route.onRequest ?? []].flat()]
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
