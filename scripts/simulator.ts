import pino from 'pino'
import { type SimOutcome, startSimulator } from '../src/simulator.ts'

// `npm run simulator`: the provider simulator on its own, configured from the environment.
const env = process.env
const log = pino({ name: 'simulator', level: env.LOG_LEVEL ?? 'info' })

const outcomes = Object.fromEntries(
  (env.SIM_OUTCOMES ?? 'COMPLETED=80,FAILED=5,BUSY=5,NO_ANSWER=5,NO_WEBHOOK=5').split(',').map((pair) => {
    const [name, weight] = pair.split('=')
    return [name as SimOutcome, Number(weight)]
  }),
)

const sim = await startSimulator({
  port: Number(env.SIM_PORT ?? 4010),
  host: env.SIM_HOST ?? '127.0.0.1',
  callDurationMs: Number(env.SIM_CALL_DURATION_MS ?? 3000),
  outcomes,
  ...(env.WEBHOOK_SECRET ? { webhookSecret: env.WEBHOOK_SECRET } : {}),
  ...(env.AI_CALL_API_KEY ? { apiKey: env.AI_CALL_API_KEY } : {}),
  logger: log,
})
log.info({ url: sim.url, outcomes, signed: Boolean(env.WEBHOOK_SECRET) }, 'simulator ready')

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, async () => {
    await sim.close()
    process.exit(0)
  })
}
