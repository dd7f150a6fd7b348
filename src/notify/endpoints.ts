import { type Kysely, sql } from 'kysely'
import type { DB } from '../db/database.ts'
import { newSecret } from './signing.ts'
import { failUndoneDeliveries } from './sql.ts'

// Client webhook endpoints and the event log: the plain statements behind the API. Secrets leave this module only
// from create and rotate (shown once); every other read selects the columns without them.

export const EVENT_TYPES = [
  'call.created',
  'call.started',
  'call.retry_scheduled',
  'call.completed',
  'call.failed',
  'call.expired',
  'call.canceled',
  'campaign.paused',
  'campaign.resumed',
  'campaign.canceled',
  'campaign.finished',
] as const
export type EventType = (typeof EVENT_TYPES)[number]

/** How long the old secret still signs after a rotation. */
export const ROTATION_OVERLAP_HOURS = 24

const PUBLIC_COLUMNS = [
  'id',
  'url',
  'events',
  'campaign_id',
  'description',
  'enabled',
  'disabled_reason',
  'disabled_at',
  'failing_since',
  'last_success_at',
  'previous_secret_expires_at',
  'created_at',
  'updated_at',
] as const

export type EndpointRow = Awaited<ReturnType<typeof getEndpoint>> & {}

export interface NewEndpoint {
  url: string
  events: string[] | null
  campaignId: string | null
  description: string | null
}

export async function createEndpoint(db: Kysely<DB>, e: NewEndpoint) {
  const secret = newSecret()
  const row = await db
    .insertInto('webhook_endpoints')
    .values({
      url: e.url,
      events: e.events,
      campaign_id: e.campaignId,
      description: e.description,
      secret,
    })
    .returning(PUBLIC_COLUMNS)
    .executeTakeFirstOrThrow()
  return { endpoint: row, secret }
}

export async function getEndpoint(db: Kysely<DB>, id: string) {
  return db.selectFrom('webhook_endpoints').select(PUBLIC_COLUMNS).where('id', '=', id).executeTakeFirst()
}

export async function listEndpoints(db: Kysely<DB>) {
  return db.selectFrom('webhook_endpoints').select(PUBLIC_COLUMNS).orderBy('created_at').orderBy('id').execute()
}

export interface EndpointPatch {
  url?: string
  events?: string[] | null
  enabled?: boolean
  description?: string | null
}

/** Enabling clears the failure record; disabling fails the endpoint's undone deliveries (still redeliverable). */
export async function updateEndpoint(db: Kysely<DB>, id: string, p: EndpointPatch) {
  return db.transaction().execute(async (trx) => {
    const row = await trx
      .updateTable('webhook_endpoints')
      .set({
        ...(p.url !== undefined ? { url: p.url } : {}),
        ...(p.events !== undefined ? { events: p.events } : {}),
        ...(p.description !== undefined ? { description: p.description } : {}),
        ...(p.enabled === true
          ? { enabled: true, disabled_reason: null, disabled_at: null, failing_since: null }
          : p.enabled === false
            ? { enabled: false, disabled_reason: null, disabled_at: sql<Date>`now()` }
            : {}),
        updated_at: sql<Date>`now()`,
      })
      .where('id', '=', id)
      .returning(PUBLIC_COLUMNS)
      .executeTakeFirst()
    if (row && p.enabled === false) await failUndoneDeliveries(trx, [id], 'endpoint disabled')
    return row
  })
}

/**
 * The delete cascades to deliveries. A recorder locks its deliveries first (in the line order, src/notify/sql.ts) and
 * the endpoint row second, so the delete does the same: the endpoint's deliveries in that order, then the row. Alone,
 * the delete locked the row first and met each recorder of that endpoint in a deadlock (seen in the benchmark's
 * clean-up; PostgreSQL broke it after deadlock_timeout, 1 s, failing one side). Deliveries a relay adds meanwhile
 * can still close a cycle; the delete, if chosen as the victim (40P01), is tried again.
 */
export async function deleteEndpoint(db: Kysely<DB>, id: string): Promise<boolean> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await db.transaction().execute(async (trx) => {
        await sql`
          select 1 from webhook_deliveries where endpoint_id = ${id}::uuid
           order by endpoint_id, line_id, sequence
             for update`.execute(trx)
        const r = await trx.deleteFrom('webhook_endpoints').where('id', '=', id).executeTakeFirst()
        return r.numDeletedRows > 0n
      })
    } catch (err) {
      if ((err as { code?: string }).code !== '40P01' || attempt >= 5) throw err
    }
  }
}

/** A new secret; the current one keeps signing (alongside) for ROTATION_OVERLAP_HOURS. */
export async function rotateSecret(db: Kysely<DB>, id: string) {
  const secret = newSecret()
  const { rows } = await sql<{ previous_secret_expires_at: Date }>`
    update webhook_endpoints
       set previous_secret = secret, secret = ${secret},
           previous_secret_expires_at = now() + make_interval(hours => ${ROTATION_OVERLAP_HOURS}::int),
           updated_at = now()
     where id = ${id}::uuid
    returning previous_secret_expires_at
  `.execute(db)
  const row = rows[0]
  return row ? { secret, previousSecretExpiresAt: row.previous_secret_expires_at } : undefined
}

export type AttemptFilter = 'delivered' | 'retrying' | 'failed'

export async function listAttempts(
  db: Kysely<DB>,
  endpointId: string,
  q: { status?: AttemptFilter; page: number; limit: number },
) {
  let query = db
    .selectFrom('webhook_delivery_attempts as a')
    .innerJoin('webhook_events as e', 'e.id', 'a.event_id')
    .select([
      'a.id',
      'a.event_id',
      'e.type',
      'e.call_id',
      'a.attempt',
      'a.result',
      'a.http_status',
      'a.latency_ms',
      'a.error',
      'a.next_attempt_at',
      'a.created_at',
    ])
    .where('a.endpoint_id', '=', endpointId)
  if (q.status) query = query.where('a.result', '=', q.status)
  return query
    .orderBy('a.id', 'desc')
    .limit(q.limit)
    .offset((q.page - 1) * q.limit)
    .execute()
}

export async function listWebhookEvents(
  db: Kysely<DB>,
  q: { callId?: string; type?: string; page: number; limit: number },
) {
  let query = db
    .selectFrom('webhook_events')
    .select([
      'id',
      'type',
      'call_id',
      'campaign_id',
      'endpoint_id',
      'sequence',
      'attempt',
      'outcome',
      'detail',
      'published',
      'created_at',
    ])
  if (q.callId) query = query.where('call_id', '=', q.callId)
  if (q.type) query = query.where('type', '=', q.type)
  const events = await (q.callId
    ? query.orderBy('sequence')
    : query.orderBy('created_at', 'desc').orderBy('id', 'desc')
  )
    .limit(q.limit)
    .offset((q.page - 1) * q.limit)
    .execute()
  const deliveries =
    events.length === 0
      ? []
      : await db
          .selectFrom('webhook_deliveries')
          .select([
            'event_id',
            'endpoint_id',
            'state',
            'attempts',
            'last_status',
            'last_error',
            'next_attempt_at',
            'delivered_at',
          ])
          .where(
            'event_id',
            'in',
            events.map((e) => e.id),
          )
          .execute()
  return events.map((e) => ({ ...e, deliveries: deliveries.filter((d) => d.event_id === e.id) }))
}
