import { type Static, Type } from 'typebox'
import { Value } from 'typebox/value'

// The only place the environment is read. Names match the older Express implementation so a deployment can switch
// without renaming anything. Every value is validated once, at start-up; a bad one stops the process (main.ts).

const Int = (def: number, min: number, max: number, description: string) =>
  Type.Integer({ default: def, minimum: min, maximum: max, description })
const Text = (description: string) => Type.Optional(Type.String({ minLength: 1, description }))
const Url = (description: string) => Type.Optional(Type.String({ pattern: '^https?://[^\\s]+$', description }))

const SIM_OUTCOME = '(COMPLETED|FAILED|BUSY|NO_ANSWER|VOICEMAIL|NO_WEBHOOK)'
const MINUTE = 60_000
const HOUR = 60 * MINUTE

export const EnvSchema = Type.Object({
  NODE_ENV: Type.Enum(['development', 'production', 'test'], { default: 'development' }),
  PORT: Int(3000, 0, 65535, 'HTTP port'),
  HOST: Type.String({ default: '0.0.0.0', minLength: 1 }),
  ROLE: Type.Enum(['all', 'api', 'worker'], { default: 'all' }),
  LOG_LEVEL: Type.Enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], { default: 'info' }),
  LOG_FORMAT: Type.Enum(['auto', 'json', 'pretty'], {
    default: 'auto',
    description: 'auto: readable lines when stdout is a terminal, JSON lines otherwise',
  }),
  DATABASE_URL: Type.Optional(Type.String({ pattern: '^postgres(ql)?://', description: 'PostgreSQL URL' })),
  DB_HOST: Text('legacy: host, used when DATABASE_URL is unset'),
  DB_PORT: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535 })),
  DB_USERNAME: Text('legacy: user'),
  DB_PASSWORD: Type.Optional(Type.String()),
  DB_DATABASE: Text('legacy: database name'),
  DB_POOL_MAX: Int(10, 2, 200, 'connections in the service pool'),
  DATABASE_DIRECT_URL: Type.Optional(
    Type.String({
      pattern: '^postgres(ql)?://',
      description: 'direct PostgreSQL URL for what needs a session (migrations, LISTEN) when DATABASE_URL is a pooler',
    }),
  ),
  DATABASE_POOLER: Type.Enum(['none', 'pgbouncer'], {
    default: 'none',
    description: 'pgbouncer: DATABASE_URL is a transaction pooler (no named prepared statements, no LISTEN through it)',
  }),
  RETENTION_DAYS: Int(90, 0, 36_500, 'finished calls older than this are deleted with their history; 0 keeps all'),
  EMBEDDED_PG_PORT: Int(54329, 1, 65535, 'port of the embedded PostgreSQL'),
  EMBEDDED_PG_DIR: Type.String({ default: '.data/postgres', minLength: 1 }),
  AI_CALL_PROVIDER: Type.Enum(['generic', 'vapi', 'retell'], { default: 'generic' }),
  AI_CALL_API_URL: Url("provider base URL; unset: the platform's public endpoint with a key, else the simulator"),
  AI_CALL_API_KEY: Text('provider bearer token (Retell: also the key its webhooks are signed with)'),
  VAPI_PHONE_NUMBER_ID: Text('Vapi: the phoneNumberId calls are placed from'),
  RETELL_FROM_NUMBER: Text('Retell: the from_number (E.164) calls are placed from'),
  PROVIDER_SCRIPT_MAP: Type.Optional(
    Type.String({ pattern: '^[^=,\\s]+=[^=,\\s]+(,[^=,\\s]+=[^=,\\s]+)*$', description: 'ours=theirs,...' }),
  ),
  RECONCILE_INTERVAL_MS: Int(MINUTE, 50, 24 * HOUR, 'how often silent calls are looked up at the provider'),
  RECONCILE_AFTER_MS: Int(5 * MINUTE, 0, 7 * 24 * HOUR, 'a call in progress this long is looked up'),
  RECONCILE_MAX_PER_MINUTE: Int(120, 0, 100_000, 'provider look-ups per minute, all instances together'),
  WEBHOOK_BASE_URL: Url('public base URL the provider calls back; default http://localhost:$PORT'),
  WEBHOOK_SECRET: Text('HMAC secret of provider webhooks'),
  MAX_CONCURRENT_CALLS: Int(30, 1, 10_000, 'global cap of IN_PROGRESS calls'),
  MAX_RETRY_ATTEMPTS: Int(3, 1, 100, 'dials per call, the first included'),
  RETRY_BASE_DELAY_MS: Int(30_000, 0, 24 * HOUR, 'first retry delay'),
  RETRY_MAX_DELAY_MS: Int(10 * MINUTE, 0, 7 * 24 * HOUR, 'retry delay ceiling'),
  CALL_TIMEOUT_MS: Int(15 * MINUTE, 1000, 7 * 24 * HOUR, 'longest IN_PROGRESS without a final webhook'),
  CALL_EXPIRY_MS: Int(24 * HOUR, 1000, 365 * 24 * HOUR, 'default time a call may wait PENDING'),
  PROVIDER_TIMEOUT_MS: Int(10_000, 100, 10 * MINUTE, 'dial request timeout'),
  THROTTLE_MAX_MS: Int(
    15 * MINUTE,
    0,
    7 * 24 * HOUR,
    'how long a call may stay throttled (429) before 429s spend attempts',
  ),
  DB_STATEMENT_TIMEOUT_MS: Int(30_000, 1000, HOUR, 'longest statement; a stalled connection is dropped a little later'),
  SWEEP_INTERVAL_MS: Int(1000, 50, HOUR, 'how often a worker expires and times out calls'),
  API_KEYS: Text('comma-separated client API keys'),
  RATE_LIMIT_READS_PER_SEC: Int(500, 1, 1_000_000, 'GET requests a second per API key, sustained'),
  RATE_LIMIT_READ_BURST: Int(5000, 1, 10_000_000, 'GET requests per API key at once, above the rate'),
  RATE_LIMIT_WRITES_PER_SEC: Int(200, 1, 1_000_000, 'POST/PATCH/DELETE requests a second per API key, sustained'),
  RATE_LIMIT_WRITE_BURST: Int(5000, 1, 10_000_000, 'POST/PATCH/DELETE requests per API key at once'),
  RATE_LIMIT_MAX: Type.Optional(
    Type.Integer({
      minimum: 1,
      maximum: 10_000_000,
      description: 'older form: requests per window, reads and writes each',
    }),
  ),
  RATE_LIMIT_WINDOW_MS: Int(MINUTE, 1000, HOUR, 'older form: the window of RATE_LIMIT_MAX'),
  // Client webhooks (src/notify): events we send to our API clients. Not to be confused with WEBHOOK_SECRET and
  // WEBHOOK_BASE_URL above, which are about the provider's webhooks to us.
  WEBHOOK_RETRY_BASE_DELAY_MS: Int(5000, 1, HOUR, 'client webhooks: first retry delay (schedule x1, x6, x24, ...)'),
  WEBHOOK_RETRY_MAX_DELAY_MS: Int(HOUR, 1, 24 * HOUR, 'client webhooks: retry delay ceiling'),
  WEBHOOK_RETRY_FOR_MS: Int(24 * HOUR, 1000, 30 * 24 * HOUR, 'client webhooks: give an event up after this long'),
  WEBHOOK_DISABLE_AFTER_MS: Int(
    72 * HOUR,
    1000,
    365 * 24 * HOUR,
    'client webhooks: disable an endpoint failing this long',
  ),
  WEBHOOK_TIMEOUT_MS: Int(10_000, 100, MINUTE, 'client webhooks: one delivery request, connect to last byte'),
  WEBHOOK_DELIVERY_CONCURRENCY: Int(
    20,
    1,
    1000,
    'client webhooks: requests in flight per process (and jobs per fetch)',
  ),
  WEBHOOK_ALLOW_HTTP: Type.Optional(
    Type.Boolean({ description: 'client webhooks: accept http:// URLs (default: outside production)' }),
  ),
  WEBHOOK_ALLOW_PRIVATE_NETWORKS: Type.Optional(
    Type.Boolean({
      description: 'client webhooks: deliver to loopback/private addresses (default: outside production)',
    }),
  ),
  SIM_CALL_DURATION_MS: Int(3000, 0, HOUR, 'built-in simulator: call length'),
  SIM_OUTCOMES: Type.String({ default: 'COMPLETED=1', pattern: `^${SIM_OUTCOME}=\\d+(,${SIM_OUTCOME}=\\d+)*$` }),
})
type Env = Static<typeof EnvSchema>

export interface Config {
  env: Env['NODE_ENV']
  port: number
  host: string
  role: Env['ROLE']
  logLevel: string
  /** auto: pretty when stdout is a TTY (decided in main.ts, which owns stdout). */
  logFormat: Env['LOG_FORMAT']
  /** Undefined: start the embedded PostgreSQL. */
  databaseUrl: string | undefined
  dbPoolMax: number
  /** For sessions (migrations, pg-boss's LISTEN); equals databaseUrl unless DATABASE_DIRECT_URL is set. */
  databaseDirectUrl: string | undefined
  /** 'pgbouncer': databaseUrl is a transaction pooler. */
  pooler: Env['DATABASE_POOLER']
  retentionDays: number
  dbStatementTimeoutMs: number
  embeddedPg: { port: number; dir: string }
  provider: {
    name: Env['AI_CALL_PROVIDER']
    url: string | undefined
    apiKey: string | undefined
    timeoutMs: number
    vapiPhoneNumberId: string | undefined
    retellFromNumber: string | undefined
    /** PROVIDER_SCRIPT_MAP: our scriptId -> the platform's assistant or agent id. */
    scriptMap: Record<string, string>
  }
  reconcile: { intervalMs: number; afterMs: number; maxPerMinute: number }
  /** baseUrl undefined: http://localhost:<the port the server got>. */
  webhook: { baseUrl: string | undefined; secret: string | undefined }
  dispatch: {
    maxConcurrentCalls: number
    maxAttempts: number
    retryBaseDelayMs: number
    retryMaxDelayMs: number
    callTimeoutMs: number
    callExpiryMs: number
    sweepIntervalMs: number
    throttleMaxMs: number
  }
  /** How long SIGTERM waits for dials in flight to answer and be recorded before the process closes. */
  shutdownGraceMs: number
  /** Webhooks we send to API clients (src/notify); `webhook` above is the provider's webhooks to us. */
  clientWebhooks: ClientWebhookConfig
  apiKeys: string[]
  /** Token buckets per API key (per client address without keys), reads and writes apart; per instance. */
  rateLimit: { read: { perSec: number; burst: number }; write: { perSec: number; burst: number } }
  simulator: { callDurationMs: number; outcomes: Record<string, number> }
}

export interface ClientWebhookConfig {
  retryBaseDelayMs: number
  retryMaxDelayMs: number
  retryForMs: number
  disableAfterMs: number
  timeoutMs: number
  concurrency: number
  allowHttp: boolean
  allowPrivateNetworks: boolean
}

export class ConfigError extends Error {
  readonly problems: string[]
  constructor(problems: string[]) {
    super(`invalid configuration:\n  ${problems.join('\n  ')}`)
    this.problems = problems
  }
}

export function loadConfig(source: Record<string, string | undefined>): Config {
  // Empty strings count as unset, as they do in most .env tooling.
  const raw: Record<string, unknown> = {}
  for (const key of Object.keys(EnvSchema.properties)) {
    const value = source[key]
    if (value !== undefined && value.trim() !== '') raw[key] = value.trim()
  }
  // Convert would quietly turn "1.5" into 1; integers must be written as integers.
  const notIntegers = Object.entries(EnvSchema.properties)
    .filter(
      ([key, schema]) => schemaType(schema) === 'integer' && raw[key] !== undefined && !/^\d+$/.test(String(raw[key])),
    )
    .map(([key]) => `${key}: must be a whole number (got ${JSON.stringify(raw[key])})`)
  const env = Value.Default(EnvSchema, Value.Convert(EnvSchema, raw)) as Env
  const problems = [...Value.Errors(EnvSchema, env)].map(
    (e) => `${e.instancePath.slice(1) || '(root)'}: ${e.message} (got ${JSON.stringify(raw[e.instancePath.slice(1)])})`,
  )
  problems.unshift(...notIntegers)
  if (env.WEBHOOK_RETRY_MAX_DELAY_MS < env.WEBHOOK_RETRY_BASE_DELAY_MS) {
    problems.push('WEBHOOK_RETRY_MAX_DELAY_MS: must be >= WEBHOOK_RETRY_BASE_DELAY_MS')
  }
  if (env.RETRY_MAX_DELAY_MS < env.RETRY_BASE_DELAY_MS) {
    problems.push('RETRY_MAX_DELAY_MS: must be >= RETRY_BASE_DELAY_MS')
  }
  // A call whose dial is still waiting for the provider's answer would be timed out before the answer could come.
  if (env.CALL_TIMEOUT_MS <= env.PROVIDER_TIMEOUT_MS) {
    problems.push(
      `CALL_TIMEOUT_MS: must be greater than PROVIDER_TIMEOUT_MS (got ${env.CALL_TIMEOUT_MS} <= ${env.PROVIDER_TIMEOUT_MS})`,
    )
  }
  const apiKeys = (env.API_KEYS ?? '')
    .split(',')
    .map((k) => k.trim())
    .filter(Boolean)
  if (env.NODE_ENV === 'production') {
    if (apiKeys.length === 0) problems.push('API_KEYS: required when NODE_ENV=production')
    if (!env.WEBHOOK_SECRET) problems.push('WEBHOOK_SECRET: required when NODE_ENV=production')
  }
  // With a key and no URL the service dials the platform itself, which needs the caller identity.
  const realPlatform = env.AI_CALL_API_KEY !== undefined && env.AI_CALL_API_URL === undefined
  if (realPlatform && env.AI_CALL_PROVIDER === 'vapi' && !env.VAPI_PHONE_NUMBER_ID) {
    problems.push('VAPI_PHONE_NUMBER_ID: required with AI_CALL_PROVIDER=vapi and AI_CALL_API_KEY')
  }
  if (realPlatform && env.AI_CALL_PROVIDER === 'retell' && !env.RETELL_FROM_NUMBER) {
    problems.push('RETELL_FROM_NUMBER: required with AI_CALL_PROVIDER=retell and AI_CALL_API_KEY')
  }
  if (env.AI_CALL_PROVIDER !== 'generic' && env.AI_CALL_API_URL && !env.AI_CALL_API_KEY) {
    problems.push(`AI_CALL_API_KEY: required with AI_CALL_PROVIDER=${env.AI_CALL_PROVIDER} and AI_CALL_API_URL`)
  }
  const newRateNames = Object.keys(EnvSchema.properties).filter((k) => /^RATE_LIMIT_(READ|WRITE)/.test(k))
  if (env.RATE_LIMIT_MAX !== undefined && newRateNames.some((k) => source[k]?.trim())) {
    problems.push(`RATE_LIMIT_MAX: set either it (the older form) or ${newRateNames.join(', ')}, not both`)
  }
  if (problems.length > 0) throw new ConfigError(problems)

  return {
    env: env.NODE_ENV,
    port: env.PORT,
    host: env.HOST,
    role: env.ROLE,
    logLevel: env.LOG_LEVEL,
    logFormat: env.LOG_FORMAT,
    databaseUrl: env.DATABASE_URL ?? legacyDatabaseUrl(env),
    dbPoolMax: env.DB_POOL_MAX,
    databaseDirectUrl: env.DATABASE_DIRECT_URL ?? env.DATABASE_URL ?? legacyDatabaseUrl(env),
    pooler: env.DATABASE_POOLER,
    retentionDays: env.RETENTION_DAYS,
    dbStatementTimeoutMs: env.DB_STATEMENT_TIMEOUT_MS,
    embeddedPg: { port: env.EMBEDDED_PG_PORT, dir: env.EMBEDDED_PG_DIR },
    provider: {
      url: env.AI_CALL_API_URL?.replace(/\/+$/, ''),
      apiKey: env.AI_CALL_API_KEY,
      timeoutMs: env.PROVIDER_TIMEOUT_MS,
      name: env.AI_CALL_PROVIDER,
      vapiPhoneNumberId: env.VAPI_PHONE_NUMBER_ID,
      retellFromNumber: env.RETELL_FROM_NUMBER,
      scriptMap: Object.fromEntries(
        (env.PROVIDER_SCRIPT_MAP ?? '')
          .split(',')
          .filter(Boolean)
          .map((pair) => pair.split('=') as [string, string]),
      ),
    },
    reconcile: {
      intervalMs: env.RECONCILE_INTERVAL_MS,
      afterMs: env.RECONCILE_AFTER_MS,
      maxPerMinute: env.RECONCILE_MAX_PER_MINUTE,
    },
    webhook: {
      baseUrl: env.WEBHOOK_BASE_URL?.replace(/\/+$/, ''),
      secret: env.WEBHOOK_SECRET,
    },
    dispatch: {
      maxConcurrentCalls: env.MAX_CONCURRENT_CALLS,
      maxAttempts: env.MAX_RETRY_ATTEMPTS,
      retryBaseDelayMs: env.RETRY_BASE_DELAY_MS,
      retryMaxDelayMs: env.RETRY_MAX_DELAY_MS,
      callTimeoutMs: env.CALL_TIMEOUT_MS,
      callExpiryMs: env.CALL_EXPIRY_MS,
      sweepIntervalMs: env.SWEEP_INTERVAL_MS,
      throttleMaxMs: env.THROTTLE_MAX_MS,
    },
    // The provider's answer, then a few seconds to record it (the recorder retries while the database blinks).
    shutdownGraceMs: env.PROVIDER_TIMEOUT_MS + 5000,
    clientWebhooks: {
      retryBaseDelayMs: env.WEBHOOK_RETRY_BASE_DELAY_MS,
      retryMaxDelayMs: env.WEBHOOK_RETRY_MAX_DELAY_MS,
      retryForMs: env.WEBHOOK_RETRY_FOR_MS,
      disableAfterMs: env.WEBHOOK_DISABLE_AFTER_MS,
      timeoutMs: env.WEBHOOK_TIMEOUT_MS,
      concurrency: env.WEBHOOK_DELIVERY_CONCURRENCY,
      allowHttp: env.WEBHOOK_ALLOW_HTTP ?? env.NODE_ENV !== 'production',
      allowPrivateNetworks: env.WEBHOOK_ALLOW_PRIVATE_NETWORKS ?? env.NODE_ENV !== 'production',
    },
    apiKeys,
    rateLimit: rateLimits(env),
    simulator: {
      callDurationMs: env.SIM_CALL_DURATION_MS,
      outcomes: Object.fromEntries(
        env.SIM_OUTCOMES.split(',').map((pair) => {
          const [name, weight] = pair.split('=')
          return [name, Number(weight)]
        }),
      ),
    },
  }
}

/** RATE_LIMIT_MAX per RATE_LIMIT_WINDOW_MS (the older form) is a bucket of that size refilled over the window. */
function rateLimits(env: Env): Config['rateLimit'] {
  if (env.RATE_LIMIT_MAX === undefined) {
    return {
      read: { perSec: env.RATE_LIMIT_READS_PER_SEC, burst: env.RATE_LIMIT_READ_BURST },
      write: { perSec: env.RATE_LIMIT_WRITES_PER_SEC, burst: env.RATE_LIMIT_WRITE_BURST },
    }
  }
  const legacy = { perSec: (env.RATE_LIMIT_MAX * 1000) / env.RATE_LIMIT_WINDOW_MS, burst: env.RATE_LIMIT_MAX }
  return { read: legacy, write: legacy }
}

function schemaType(schema: unknown): unknown {
  const s = schema as { type?: unknown; anyOf?: { type?: unknown }[] }
  return s.type ?? s.anyOf?.[0]?.type
}

/** The older deployment's DB_* variables, used only when DATABASE_URL is unset and DB_HOST is given. */
function legacyDatabaseUrl(env: Env): string | undefined {
  if (!env.DB_HOST) return undefined
  const user = encodeURIComponent(env.DB_USERNAME ?? 'postgres')
  const password = env.DB_PASSWORD ? `:${encodeURIComponent(env.DB_PASSWORD)}` : ''
  return `postgres://${user}${password}@${env.DB_HOST}:${env.DB_PORT ?? 5432}/${encodeURIComponent(env.DB_DATABASE ?? 'postgres')}`
}
