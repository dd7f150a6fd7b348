import type { FastifyDynamicSwaggerOptions } from '@fastify/swagger'
import type { RouteOptions } from 'fastify'
import type { Config } from '../config.ts'
import { isOpenRoute } from './auth.ts'
import { errorResponse } from './errors.ts'

// The OpenAPI document (served at /docs/json) is what client generators and the docs page read. Each route says what
// only it knows next to its schema: an `operationId`, its `tags`, its own statuses (404, 409, 422, ...) and, when it
// is open, `security: []`. Everything that follows from the app's own rules is added here when the route is
// registered, so that no route can forget it: the bearer scheme and 401 on client API routes (auth.ts), 429 where
// the rate limit applies, 400/413/415 where a request has parts to validate or a body to parse, 500 everywhere.

/** Every tag a route may use, with what it groups (a new tag is added here first). */
export const TAGS = [
  { name: 'calls', description: 'Queue calls, follow them, change or cancel them while they are PENDING' },
  {
    name: 'campaigns',
    description: 'Sets of calls under shared rules: calling window, cap, priority, retry rules (docs/campaigns.md)',
  },
  { name: 'suppressions', description: 'The do-not-call list: a suppressed phone is never dialed' },
  { name: 'ops', description: 'Health, metrics and the dashboard data' },
  {
    name: 'webhooks',
    description:
      'Client webhooks: endpoints that receive signed call events, the event log, redelivery (docs/webhooks.md)',
  },
  {
    name: 'callbacks',
    description: 'Called by the voice provider, not by clients: signed with WEBHOOK_SECRET instead of an API key',
  },
]

export function swaggerOptions(config: Config): FastifyDynamicSwaggerOptions {
  return {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'AI Call Orchestrator',
        version: '0.1.0',
        description:
          'Queue outbound AI calls; the service dials them under a global concurrency cap and settles them from ' +
          'provider webhooks. Client API routes need `Authorization: Bearer <key>` when the service runs with ' +
          'API_KEYS, and are rate-limited per key (reads and writes apart); a refused request is 429 RATE_LIMITED ' +
          'with Retry-After.',
        license: { name: 'MIT', identifier: 'MIT' },
      },
      // WEBHOOK_BASE_URL is the service's public address; without it, the host that served the document.
      servers: [
        config.webhook.baseUrl
          ? { url: config.webhook.baseUrl, description: 'this service (WEBHOOK_BASE_URL)' }
          : { url: '/', description: 'the host serving this document' },
      ],
      tags: TAGS,
      components: {
        securitySchemes: {
          bearer: { type: 'http', scheme: 'bearer', description: 'One of the API_KEYS: Authorization: Bearer <key>' },
        },
      },
    },
    // A query field with a default is validated as required (the default fills it first), but a client may omit it.
    transform: ({ schema, url }) => ({
      schema: schema?.querystring ? { ...schema, querystring: clientRequired(schema.querystring) } : schema,
      url,
    }),
    // Shared schemas (ErrorResponse) keep their own names under components.schemas.
    refResolver: { buildLocalReference: (json, _base, _fragment, i) => (json.$id as string) ?? `def-${i}` },
  }
}

function clientRequired(schema: unknown): unknown {
  const s = schema as { required?: string[]; properties?: Record<string, { default?: unknown }> }
  if (!s.required || !s.properties) return schema
  const properties = s.properties
  return { ...s, required: s.required.filter((k) => properties[k]?.default === undefined) }
}

const OPERATION_ID = /^[a-z][A-Za-z0-9]*$/
const BODY_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE'])

/** An onRoute hook: checks what a route must declare and adds the statuses the app's rules give it. */
export function documentRoutes() {
  const operationIds = new Map<string, string>()
  const tags = new Set(TAGS.map((t) => t.name))

  return (route: RouteOptions) => {
    const schema = route.schema
    const methods = [route.method].flat()
    // HEAD routes are Fastify's copies of GET ones, left out of the document.
    if (!schema || schema.hide || methods.every((m) => m === 'HEAD')) return
    const where = `${methods.join(',')} ${route.url}`
    const id = schema.operationId
    if (typeof id !== 'string' || !OPERATION_ID.test(id)) {
      throw new Error(`${where}: schema.operationId must be a camelCase name, e.g. createCall (got ${id})`)
    }
    const other = operationIds.get(id)
    if (other && other !== where) throw new Error(`${where}: operationId ${id} is already used by ${other}`)
    operationIds.set(id, where)
    if (!schema.tags?.length || schema.tags.some((t) => !tags.has(t))) {
      throw new Error(`${where}: schema.tags must name tags of src/http/openapi.ts TAGS (got ${schema.tags})`)
    }

    const hasBody = methods.some((m) => BODY_METHODS.has(m))
    const implied: Record<number, unknown> = {}
    if (hasBody || schema.body || schema.querystring || schema.params || schema.headers) {
      implied[400] = errorResponse('VALIDATION_ERROR or INVALID_JSON: the request does not match this schema')
    }
    if (!isOpenRoute(schema)) {
      implied[401] = errorResponse('UNAUTHORIZED: no valid API key (sent with WWW-Authenticate: Bearer)')
    }
    if (hasBody) {
      implied[413] = errorResponse('PAYLOAD_TOO_LARGE: the body is larger than 64 KiB')
      implied[415] = errorResponse('UNSUPPORTED_MEDIA_TYPE: the body is not application/json')
    }
    if (route.config?.rateLimit !== false) {
      implied[429] = {
        ...(errorResponse('RATE_LIMITED: over the rate limit of this client') as object),
        headers: { 'retry-after': { type: 'integer', minimum: 1, description: 'Seconds until a request is accepted' } },
      }
    }
    implied[500] = errorResponse('INTERNAL_ERROR: logged on the server; nothing about it is returned')
    route.schema = { ...schema, response: { ...implied, ...(schema.response as object) } }
  }
}
