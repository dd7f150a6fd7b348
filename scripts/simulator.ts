import pino from 'pino'
import { type SimOutcome, startSimulator } from '../src/providers/simulator.ts'

// `npm run simulator`: the provider simulator on its own (compose runs it this way), configured from the environment.
// It speaks the generic, Vapi and Retell dialects at once; SIM_WEBHOOK_BASE_URL is where Vapi and Retell webhooks go.
const env = process.env
const log = pino({ name: 'simulator', level: env.LOG_LEVEL ?? 'info' })

function int(name: string, fallback: number, max: number): number {
  const raw = env[name]
  if (raw === undefined || raw === '') return fallback
  const n = Number(raw)
  if (!Number.isInteger(n) || n < 0 || n > max) throw new Error(`${name} must be an integer from 0 to ${max}: ${raw}`)
  return n
}

/** `COMPLETED=80,FAILED=5`: names and weights are checked by startSimulator. */
function weights(raw: string): Partial<Record<SimOutcome, number>> {
  return Object.fromEntries(
    raw.split(',').map((pair) => {
      const [name = '', weight = ''] = pair.split('=').map((s) => s.trim())
      if (!/^\d+(\.\d+)?$/.test(weight)) throw new Error(`SIM_OUTCOMES: expected NAME=weight, got "${pair}"`)
      return [name, Number(weight)]
    }),
  )
}

try {
  const sim = await startSimulator({
    port: int('SIM_PORT', 4010, 65_535),
    host: env.SIM_HOST || '127.0.0.1',
    callDurationMs: int('SIM_CALL_DURATION_MS', 3000, 3_600_000),
    outcomes: weights(env.SIM_OUTCOMES || 'COMPLETED=80,FAILED=5,BUSY=5,NO_ANSWER=5,NO_WEBHOOK=5'),
    ...(env.WEBHOOK_SECRET ? { webhookSecret: env.WEBHOOK_SECRET } : {}),
    ...(env.AI_CALL_API_KEY ? { apiKey: env.AI_CALL_API_KEY } : {}),
    // Vapi and Retell call back a URL set on their side; here: the orchestrator's routes for them.
    ...(env.SIM_WEBHOOK_BASE_URL
      ? {
          webhookUrls: {
            vapi: `${env.SIM_WEBHOOK_BASE_URL}/api/v1/callbacks/vapi`,
            retell: `${env.SIM_WEBHOOK_BASE_URL}/api/v1/callbacks/retell`,
          },
        }
      : {}),
    dropFinalWebhooks: int('SIM_DROP_FINAL_PERCENT', 0, 100) / 100,
    logger: log,
  })
  let stopping = false
  const stop = async (signal: NodeJS.Signals) => {
    // a second signal while closing means "now"
    if (stopping) process.exit(1)
    stopping = true
    log.info({ signal }, 'closing')
    await sim.close()
    process.exit(0)
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
} catch (err) {
  log.fatal({ err }, 'simulator did not start')
  process.exit(1)
}
