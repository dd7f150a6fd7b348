import type { Kysely } from 'kysely'
import type { Logger } from 'pino'
import type { Config } from '../config.ts'
import type { DB } from '../db/database.ts'
import type { Recorder } from '../dispatch/recorder.ts'
import type { Wakeup } from '../dispatch/wakeup.ts'
import type { DeliveryJob } from '../notify/sql.ts'
import type { Metrics } from '../ops/metrics.ts'

// What buildApp and every route plugin receive: the composition root (service.ts) or a test builds it.

export interface AppDeps {
  config: Config
  db: Kysely<DB>
  log: Logger
  wakeup: Wakeup
  /** Ends attempts from provider reports; shared with the dispatcher (service.ts). buildApp makes one when none is given. */
  recorder?: Recorder
  /** False on ROLE=worker: only health, metrics and webhooks are served. */
  clientApi?: boolean
  /** Prometheus registry and event observer; buildApp makes its own when none is given. */
  metrics?: Metrics
  /** Publishes client webhook delivery jobs inside the caller's transaction (src/notify/delivery.ts publisher). */
  publishDeliveries?: (trx: Kysely<DB>, jobs: readonly DeliveryJob[]) => Promise<void>
}
