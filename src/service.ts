import { randomBytes } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import type { Kysely } from 'kysely'
import type { PgBoss } from 'pg-boss'
import type { Logger } from 'pino'
import type { Config } from './config.ts'
import { createDb, createPool, type DB, migrateToLatest } from './db/database.ts'
import { type EmbeddedDb, startEmbeddedDb } from './db/embedded.ts'
import { createDispatcher, type Dispatcher } from './dispatch/dispatcher.ts'
import { createReconciler, type Reconciler } from './dispatch/reconcile.ts'
import { createRecorder } from './dispatch/recorder.ts'
import { createWakeup, QUEUES, startQueue } from './dispatch/wakeup.ts'
import { buildApp } from './http/app.ts'
import { createDeliveryQueue, type Notifier, publisher, startNotifier } from './notify/delivery.ts'
import { createHousekeeping } from './ops/housekeeping.ts'
import { createMetrics } from './ops/metrics.ts'
import { createCallProvider } from './providers/index.ts'
import { webhookUrlToken } from './providers/signature.ts'
import { type Simulator, startSimulator } from './providers/simulator.ts'
import { saveDispatchSettings } from './sql/settings.ts'

// The whole service from a Config: database (embedded when none is configured) -> pg-boss -> provider (the simulator
// when none is configured) -> HTTP app + dispatcher. main.ts runs it; integration tests run it in-process.

export interface Service {
  app: FastifyInstance
  db: Kysely<DB>
  boss: PgBoss
  dispatcher: Dispatcher | undefined
  reconciler: Reconciler | undefined
  simulator: Simulator | undefined
  /** Base URL the HTTP server listens on, e.g. http://127.0.0.1:3000 */
  url: string
  /** Graceful: stop claiming, let dials in flight record their result, stop accepting requests, close pools. */
  stop(): Promise<void>
}

export async function startService(configIn: Config, log: Logger): Promise<Service> {
  let config = configIn
  let embedded: EmbeddedDb | undefined
  if (!config.databaseUrl) {
    embedded = await startEmbeddedDb({
      dir: config.embeddedPg.dir,
      port: config.embeddedPg.port,
      database: 'orchestrator',
    })
    log.info(
      { dir: config.embeddedPg.dir, dataDir: embedded.dataDir, port: config.embeddedPg.port },
      'DATABASE_URL is not set: started the embedded PostgreSQL',
    )
  }
  const databaseUrl = config.databaseUrl ?? (embedded as EmbeddedDb).url
  // Behind a transaction pooler (DATABASE_POOLER=pgbouncer) the service pool prepares nothing, and what needs a
  // session (pg-boss's LISTEN connection, the migrations) uses DATABASE_DIRECT_URL; without one, pg-boss polls.
  const pooled = config.pooler === 'pgbouncer'
  const directUrl = (config.databaseUrl ? config.databaseDirectUrl : undefined) ?? databaseUrl
  const directIsPooler = pooled && directUrl === databaseUrl

  const pool = createPool(databaseUrl, config.dbPoolMax, {
    prepare: !pooled,
    statementTimeoutMs: config.dbStatementTimeoutMs,
  })
  const db = createDb(pool)
  const migrationDb = directUrl === databaseUrl ? db : createDb(createPool(directUrl, 2, { prepare: false }))
  const applied = await migrateToLatest(migrationDb).finally(() =>
    migrationDb === db ? undefined : migrationDb.destroy(),
  )
  if (applied.length > 0) log.info({ migrations: applied }, 'migrated the database')
  // The cap, for call_overview and the metrics: recorded by the processes that enforce it.
  if (config.role !== 'api') {
    const previous = await saveDispatchSettings(db, {
      maxConcurrentCalls: config.dispatch.maxConcurrentCalls,
      retry: config.dispatch,
    })
    if (previous && previous.maxConcurrentCalls !== config.dispatch.maxConcurrentCalls) {
      log.warn(
        { ours: config.dispatch.maxConcurrentCalls, previous: previous.maxConcurrentCalls },
        'MAX_CONCURRENT_CALLS differs from the value the last dispatching instance saved: if that instance still runs, each claim keeps its own cap and the largest wins; give every instance the same value',
      )
    }
  }
  // PgBouncer refuses statement_timeout as a startup parameter: only a direct connection gets it.
  const boss = await startQueue(directUrl, log, {
    ...(directIsPooler ? {} : { statementTimeoutMs: config.dbStatementTimeoutMs }),
    listen: !directIsPooler,
  })
  const housekeeping = createHousekeeping({ db, log, retentionDays: config.retentionDays })
  housekeeping.start()
  await createDeliveryQueue(boss, config.clientWebhooks)

  let simulator: Simulator | undefined
  const platform = config.provider.name !== 'generic'
  // Vapi or Retell with a key and no URL: the platform's public endpoint. Without either: the simulator, in that
  // platform's dialect, with a key made up for this run (Retell signs its webhooks with the API key).
  if (platform && !config.provider.url && !config.provider.apiKey) {
    config = { ...config, provider: { ...config.provider, apiKey: `sim_${randomBytes(16).toString('hex')}` } }
  }
  if (!config.provider.url && !(platform && configIn.provider.apiKey)) {
    simulator = await startSimulator({
      callDurationMs: config.simulator.callDurationMs,
      outcomes: config.simulator.outcomes,
      ...(config.webhook.secret ? { webhookSecret: config.webhook.secret } : {}),
      ...(config.provider.apiKey ? { apiKey: config.provider.apiKey } : {}),
    })
    log.info({ url: simulator.url }, 'AI_CALL_API_URL is not set: dialing the built-in provider simulator')
  }
  const provider = createCallProvider(config, config.provider.url ?? simulator?.url)

  let dispatcher: Dispatcher | undefined
  const wakeup = createWakeup(boss, config.role === 'api' ? undefined : { notify: () => dispatcher?.notify() })
  const metrics = createMetrics({ db, maxConcurrentCalls: config.dispatch.maxConcurrentCalls })
  // The one recorder of this process: the dispatcher's dial results and the routes' webhooks share its batches.
  const recorder = createRecorder({
    db,
    wakeup,
    log,
    patienceMs: config.dispatch.callTimeoutMs,
    onSettled: metrics.attemptEnded,
  })
  const app = await buildApp({
    config,
    db,
    log,
    wakeup,
    recorder,
    clientApi: config.role !== 'worker',
    metrics,
    publishDeliveries: publisher(boss),
  })
  await app.listen({ port: config.port, host: config.host })
  const address = app.server.address()
  const port = typeof address === 'object' && address ? address.port : config.port
  // Without WEBHOOK_BASE_URL the provider calls back to this process, on the port it really got.
  const webhookBase = config.webhook.baseUrl ?? `http://localhost:${port}`
  simulator?.configure({
    webhookUrls: { vapi: `${webhookBase}/api/v1/callbacks/vapi`, retell: `${webhookBase}/api/v1/callbacks/retell` },
  })
  let reconciler: Reconciler | undefined

  // Client webhooks are delivered by the processes that dispatch; ROLE=api only writes events (by trigger).
  let notifier: Notifier | undefined
  if (config.role !== 'api') {
    notifier = await startNotifier({
      db,
      boss,
      // LISTEN needs a session: the direct URL when the pool goes through a transaction pooler
      databaseUrl: directUrl,
      log,
      config: config.clientWebhooks,
      observer: metrics.clientWebhooks,
    })
  }

  if (config.role !== 'api') {
    const d = createDispatcher({
      db,
      provider,
      recorder,
      log,
      policy: config.dispatch,
      maxConcurrentCalls: config.dispatch.maxConcurrentCalls,
      callTimeoutMs: config.dispatch.callTimeoutMs,
      sweepIntervalMs: config.dispatch.sweepIntervalMs,
      webhookUrl: (call) => {
        const url = `${webhookBase}/api/v1/callbacks/call-status?call=${call.id}&attempt=${call.attempts}`
        const secret = config.webhook.secret
        return secret ? `${url}&token=${webhookUrlToken(secret, call.id, call.attempts)}` : url
      },
      onDial: metrics.dialed,
      onSweep: metrics.swept,
    })
    dispatcher = d
    reconciler = createReconciler({
      db,
      provider,
      endAttempt: (input) => recorder.settle(input),
      policy: config.dispatch,
      log,
      ...config.reconcile,
    })
    reconciler.start()
    await boss.work(QUEUES.callReady.name, { batchSize: 100, pollingIntervalSeconds: 1 }, async () => d.notify())
    d.start()
  }
  log.info(
    { role: config.role, port, provider: provider.name, maxConcurrentCalls: config.dispatch.maxConcurrentCalls },
    'call orchestrator ready',
  )

  return {
    app,
    db,
    boss,
    dispatcher,
    reconciler,
    simulator,
    url: `http://127.0.0.1:${port}`,
    async stop() {
      // Claims stop first; dials in flight get the provider's timeout to answer and a little more to be recorded,
      // while the HTTP server still takes the webhooks of calls in progress. Then the server closes.
      await reconciler?.stop()
      await dispatcher?.stop(config.shutdownGraceMs)
      await housekeeping.stop()
      recorder.close()
      await atMost(config.clientWebhooks.timeoutMs + 2000, notifier?.stop() ?? Promise.resolve())
      // Requests in flight (webhooks of calls still in progress) get a few seconds, then every connection is closed:
      // after a slow provider's webhooks, app.close() alone was seen waiting more than 19 s (cause not found).
      await atMost(3000, app.close())
      app.server.closeAllConnections()
      // A connection that went silent can keep a pool from ending; the process is leaving, so each wait is bounded.
      await atMost(6000, boss.stop({ graceful: true, timeout: 5000 }))
      await provider.close()
      await simulator?.close()
      await atMost(3000, db.destroy())
      await embedded?.stop()
    },
  }
}

function atMost(ms: number, p: Promise<unknown>): Promise<unknown> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([p, new Promise((resolve) => (timer = setTimeout(resolve, ms)))]).finally(() =>
    clearTimeout(timer),
  )
}
