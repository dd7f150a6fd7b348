import { createHash } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { type ColumnType, type Generated, Kysely, PostgresDialect, type Selectable } from 'kysely'
import { FileMigrationProvider, Migrator } from 'kysely/migration'
import pg from 'pg'
import type { CallStatus, EventKind, ProviderFinal } from '../dispatch/call-state.ts'

// timestamptz and bigint arrive as strings by default; bigint ids of call_events stay strings (they exceed 2^53
// only in theory), counts are cast to int in SQL.

type Timestamp = ColumnType<Date, Date | string, Date | string>
/** A timestamp with a database default. */
type DefaultTimestamp = ColumnType<Date, Date | string | undefined, Date | string>

export interface CallsTable {
  id: Generated<string>
  to_phone: string
  script_id: string
  metadata: ColumnType<Record<string, unknown>, string | Record<string, unknown>, string | Record<string, unknown>>
  status: Generated<CallStatus>
  attempts: Generated<number>
  last_error: { code: string; message: string } | null
  last_outcome: Generated<ProviderFinal | null>
  reported_attempt: Generated<number | null>
  last_result: Generated<Record<string, unknown> | null>
  reconciled_at: Generated<Date | null>
  throttles: Generated<number>
  throttled_since: Timestamp | null
  provider_call_id: string | null
  next_attempt_at: DefaultTimestamp
  created_at: DefaultTimestamp
  updated_at: DefaultTimestamp
  started_at: Timestamp | null
  ended_at: Timestamp | null
  expires_at: Timestamp
  duration_sec: number | null
  idempotency_key: string | null
  request_hash: string | null
  campaign_id: Generated<string | null>
  time_zones: Generated<string[] | null>
  scheduled_at: Generated<Date | null>
  /** When the last retry delay ends, before the window moves it (migration 0043). */
  retry_at: Generated<Date | null>
}

export interface CampaignsTable {
  id: Generated<string>
  name: string
  status: Generated<'ACTIVE' | 'PAUSED' | 'CANCELED'>
  priority: Generated<number>
  max_concurrent_calls: number | null
  calling_window: ColumnType<Record<string, unknown> | null, string | null, string | null>
  retry_policy: ColumnType<Record<string, unknown> | null, string | null, string | null>
  starts_at: Timestamp | null
  ends_at: Timestamp | null
  max_dials_per_phone_per_day: number | null
  metadata: ColumnType<Record<string, unknown>, string, string>
  created_at: DefaultTimestamp
  updated_at: DefaultTimestamp
  canceled_at: Timestamp | null
}

export interface SuppressionsTable {
  phone: string
  campaign_id: string | null
  reason: string | null
  expires_at: Timestamp | null
  created_at: DefaultTimestamp
}

export interface CallEventsTable {
  id: Generated<string>
  call_id: string
  attempt: number
  kind: EventKind
  status: string | null
  detail: ColumnType<Record<string, unknown>, string | Record<string, unknown> | undefined, never>
  created_at: DefaultTimestamp
}

export interface WebhookEndpointsTable {
  id: Generated<string>
  url: string
  events: string[] | null
  campaign_id: string | null
  description: string | null
  enabled: Generated<boolean>
  disabled_reason: string | null
  disabled_at: Timestamp | null
  secret: string
  previous_secret: string | null
  previous_secret_expires_at: Timestamp | null
  failing_since: Timestamp | null
  last_success_at: Timestamp | null
  created_at: DefaultTimestamp
  updated_at: DefaultTimestamp
}

export interface WebhookEventsTable {
  id: Generated<string>
  type: string
  call_id: string | null
  campaign_id: string | null
  endpoint_id: string | null
  sequence: number | null
  attempt: number | null
  outcome: string | null
  call_snapshot: Record<string, unknown> | null
  detail: ColumnType<Record<string, unknown>, string | undefined, never>
  published: Generated<boolean>
  created_at: DefaultTimestamp
}

export interface WebhookDeliveriesTable {
  endpoint_id: string
  event_id: string
  line_id: string
  sequence: number
  state: 'waiting' | 'queued' | 'delivered' | 'failed'
  generation: Generated<number>
  attempts: Generated<number>
  next_attempt_at: DefaultTimestamp
  leased_until: Timestamp | null
  last_status: number | null
  last_error: string | null
  delivered_at: Timestamp | null
  created_at: DefaultTimestamp
  updated_at: DefaultTimestamp
}

export interface WebhookDeliveryAttemptsTable {
  id: Generated<string>
  endpoint_id: string
  event_id: string
  attempt: number
  result: 'delivered' | 'retrying' | 'failed'
  http_status: number | null
  latency_ms: number | null
  error: string | null
  next_attempt_at: Timestamp | null
  created_at: DefaultTimestamp
}

export interface DB {
  calls: CallsTable
  call_events: CallEventsTable
  campaigns: CampaignsTable
  suppressions: SuppressionsTable
  webhook_endpoints: WebhookEndpointsTable
  webhook_events: WebhookEventsTable
  webhook_deliveries: WebhookDeliveriesTable
  webhook_delivery_attempts: WebhookDeliveryAttemptsTable
}

export type Call = Selectable<CallsTable>
export type CallEvent = Selectable<CallEventsTable>
export type Campaign = Selectable<CampaignsTable>
export type Suppression = Selectable<SuppressionsTable>
export type Database = Kysely<DB>

/**
 * A pg client that prepares each statement with parameters once per connection, under a name derived from its text,
 * so later runs skip parsing and, after five runs, planning. The hot statements spent about as long in the planner
 * as in execution: ending an attempt took 0.80 ms of PostgreSQL CPU unprepared and 0.37 ms prepared, claiming 30
 * calls 0.5 ms less (scripts/bench). At most MAX_PREPARED texts get a name, so queries built with varying text cannot
 * fill the server's memory. After a migration changes a table's columns, PostgreSQL refuses a prepared `select *`
 * once ("cached plan must not change result type", 0A000); the text then gets a new name and is prepared afresh.
 */
/**
 * A half-open connection (the server or the network gone without a reset) answers nothing, and TCP keep-alive
 * notices only after minutes. statement_timeout bounds every statement on the server; a query still unanswered a
 * little after it means nobody is there, so the socket is destroyed: the query fails with "Connection terminated"
 * (callers that write retry it), the pool drops the client, and the next query opens a fresh connection.
 */
export class GuardedClient extends pg.Client {
  stallMs = 0

  // biome-ignore lint/suspicious/noExplicitAny: pg.Client's constructor config
  constructor(config?: any) {
    super(config)
    // A connection lost while a client is checked out (a restart, a dropped stall) fails its query, and pg then also
    // emits 'error' on the client, which pg-pool listens to only while the client is idle: without this listener
    // that second report would crash the process.
    this.on('error', () => {})
  }

  // biome-ignore lint/suspicious/noExplicitAny: pg.Client.query's overloads
  override query(config: any, values?: any, callback?: any): any {
    return this.guard(super.query(config, values, callback))
  }

  // biome-ignore lint/suspicious/noExplicitAny: whatever pg returned
  protected guard(result: any): any {
    if (!this.stallMs || !(result instanceof Promise)) return result
    const timer = setTimeout(() => {
      // No error object: a socket destroyed with one throws it as an uncaught exception past pg's handlers.
      ;(this as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy()
    }, this.stallMs)
    timer.unref()
    return result.finally(() => clearTimeout(timer))
  }
}

/** A GuardedClient class whose connections are dropped after `stallMs` without an answer (for pg-boss's pool). */
export function guardedClientClass(stallMs: number): typeof pg.Client {
  return class extends GuardedClient {
    override stallMs = stallMs
  }
}

class PreparingClient extends GuardedClient {
  // biome-ignore lint/suspicious/noExplicitAny: pg.Client.query's overloads
  override query(config: any, values?: any, callback?: any): any {
    if (typeof config !== 'string' || !Array.isArray(values) || values.length === 0 || callback !== undefined) {
      return super.query(config, values, callback)
    }
    const name = statementName(config)
    if (!name) return super.query(config, values)
    return (super.query({ name, text: config, values }) as Promise<unknown>).catch((err: { code?: string }) => {
      if (err.code === '0A000') statementNames.set(config, `${name.split('_')[0]}_${++renames}`)
      throw err
    })
  }
}

const MAX_PREPARED = 500
const statementNames = new Map<string, string>()
let renames = 0

function statementName(text: string): string | undefined {
  let name = statementNames.get(text)
  if (name === undefined && statementNames.size < MAX_PREPARED) {
    name = `q${createHash('sha1').update(text).digest('hex').slice(0, 24)}`
    statementNames.set(text, name)
  }
  return name
}

export interface PoolOptions {
  /** PostgreSQL's statement_timeout for this pool's sessions; a query unanswered a little longer drops its socket. */
  statementTimeoutMs?: number
}

/** Connection settings shared by the service pool and pg-boss's: they decide how a dead connection is noticed. */
export function connectionSettings(o: PoolOptions) {
  return {
    keepAlive: true,
    keepAliveInitialDelayMillis: 10_000,
    connectionTimeoutMillis: 10_000,
    ...(o.statementTimeoutMs ? { statement_timeout: o.statementTimeoutMs } : {}),
  }
}

/** pg-boss's pool: the same settings, and a client class that drops stalled connections. */
export function queueConnectionSettings(o: PoolOptions) {
  return {
    ...connectionSettings(o),
    ...(o.statementTimeoutMs ? { Client: guardedClientClass(stallMsFor(o.statementTimeoutMs)) } : {}),
  }
}

export function stallMsFor(statementTimeoutMs: number): number {
  return statementTimeoutMs + Math.min(statementTimeoutMs, 5000)
}

/**
 * The service pool. `prepare: false` behind a transaction pooler (DATABASE_POOLER=pgbouncer): PgBouncer 1.18 in
 * transaction mode hands each transaction whichever server connection is free, so a statement prepared on one is
 * missing (or already exists) on the next ("prepared statement q... already exists" at start-up). Unnamed statements
 * (parse, bind, execute in one round trip) work through it. PgBouncer also refuses statement_timeout as a startup
 * parameter: behind it, set the timeout on the role (`alter role ... set statement_timeout`), docs/scaling.md.
 */
export function createPool(
  connectionString: string,
  max: number,
  o: PoolOptions & { prepare?: boolean } = {},
): pg.Pool {
  const pool = new pg.Pool({
    connectionString,
    max,
    application_name: 'call-orchestrator',
    Client: o.prepare === false ? GuardedClient : PreparingClient,
    ...connectionSettings(o.prepare === false ? { ...o, statementTimeoutMs: undefined } : o),
  })
  if (o.statementTimeoutMs) {
    const stallMs = stallMsFor(o.statementTimeoutMs)
    pool.on('connect', (client) => {
      ;(client as unknown as GuardedClient).stallMs = stallMs
    })
  }
  // An idle client that loses its server (PostgreSQL restarted) emits 'error' on the pool; without a listener
  // Node would crash. The next query simply gets a fresh connection.
  pool.on('error', () => {})
  // A client checked out between two queries (Kysely holds one for a transaction) has no pool listener; a socket
  // reset then (PgBouncer stopped with SIGTERM cuts every connection) was an uncaught 'error' that stopped the
  // process. The query that was running, or the next one, fails instead, and the pool drops the client.
  pool.on('connect', (client) => client.on('error', () => {}))
  return pool
}

export function createDb(pool: pg.Pool): Database {
  return new Kysely<DB>({ dialect: new PostgresDialect({ pool }) })
}

export const MIGRATIONS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../db/migrations')

/**
 * Brings the schema to the latest migration. Safe when several instances start at once: Kysely's Migrator holds a
 * PostgreSQL advisory lock for the whole run, so the others wait and then find nothing to do.
 */
export async function migrateToLatest(db: Kysely<DB>): Promise<string[]> {
  const migrator = new Migrator({
    db,
    provider: new FileMigrationProvider({
      fs,
      path,
      migrationFolder: MIGRATIONS_DIR,
      import: (file: string) => import(pathToFileURL(file).href),
    }),
  })
  const { error, results } = await migrator.migrateToLatest()
  if (error) throw error instanceof Error ? error : new Error(String(error))
  return (results ?? []).filter((r) => r.status === 'Success').map((r) => r.migrationName)
}
