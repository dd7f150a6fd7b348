import closeWithGrace from 'close-with-grace'
import { ConfigError, loadConfig } from './config.ts'
import { EmbeddedDbError } from './db/embedded.ts'
import { createLogger } from './log.ts'
import { startService } from './service.ts'

// The entry point: the only module that reads process.env. Exits 1 on a bad configuration.

let config: ReturnType<typeof loadConfig>
try {
  config = loadConfig(process.env)
} catch (err) {
  if (!(err instanceof ConfigError)) throw err
  console.error(err.message)
  process.exit(1)
}

const pretty = config.logFormat === 'pretty' || (config.logFormat === 'auto' && process.stdout.isTTY === true)
const log = createLogger(config.logLevel, undefined, undefined, pretty ? 'pretty' : 'json')
if (config.apiKeys.length === 0) log.warn('API_KEYS is not set: the client API accepts requests without a key')
if (!config.webhook.secret) log.warn('WEBHOOK_SECRET is not set: webhooks are accepted unsigned')

let service: Awaited<ReturnType<typeof startService>>
try {
  service = await startService(config, log)
} catch (err) {
  // A failure the operator can act on is one sentence on stderr; anything else is a bug and keeps its stack.
  const problem = startupProblem(err)
  if (problem) console.error(`could not start: ${problem}`)
  else log.fatal({ err }, 'could not start')
  process.exit(1)
}

// The grace covers the dispatcher's drain (config.shutdownGraceMs) and the closing of the server and pools after it.
closeWithGrace({ delay: config.shutdownGraceMs + 10_000 }, async ({ signal, err }) => {
  if (err) log.error({ err }, 'shutting down after an error')
  else log.info({ signal }, 'shutting down')
  await service.stop()
  log.info('stopped')
})

function startupProblem(err: unknown): string | undefined {
  if (err instanceof EmbeddedDbError) return err.message
  const code = (err as NodeJS.ErrnoException)?.code ?? ''
  const message = String((err as Error)?.message).split('\n')[0]
  if (code === 'EADDRINUSE') return `port ${config.port} is in use; set PORT to a free port.`
  const unreachable = ['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EHOSTUNREACH', 'ECONNRESET']
  // 28P01/28000: authentication refused; 3D000: no such database.
  if (config.databaseUrl && [...unreachable, '28P01', '28000', '3D000'].includes(code)) {
    const url = new URL(config.databaseUrl)
    return `the database at DATABASE_URL (${url.host}${url.pathname}) cannot be used: ${message}.`
  }
  return undefined
}
