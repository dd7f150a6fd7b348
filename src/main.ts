import closeWithGrace from 'close-with-grace'
import { ConfigError, loadConfig } from './config.ts'
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

const log = createLogger(config.logLevel)
if (config.apiKeys.length === 0) log.warn('API_KEYS is not set: the client API accepts requests without a key')
if (!config.webhook.secret) log.warn('WEBHOOK_SECRET is not set: webhooks are accepted unsigned')

let service: Awaited<ReturnType<typeof startService>>
try {
  service = await startService(config, log)
} catch (err) {
  log.fatal({ err }, 'could not start')
  process.exit(1)
}

// The grace covers the dispatcher's drain (config.shutdownGraceMs) and the closing of the server and pools after it.
closeWithGrace({ delay: config.shutdownGraceMs + 10_000 }, async ({ signal, err }) => {
  if (err) log.error({ err }, 'shutting down after an error')
  else log.info({ signal }, 'shutting down')
  await service.stop()
  log.info('stopped')
})
