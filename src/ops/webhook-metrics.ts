import { type Kysely, sql } from 'kysely'
import { Counter, Gauge, Histogram, type Registry } from 'prom-client'
import type { DB } from '../db/database.ts'
import type { DeliveryLabel, DeliveryObserver } from '../notify/delivery.ts'
import { cachedFor } from './cached.ts'

// Client webhook metrics. Per-endpoint gauges come from the database (the same on every instance: max() them) and
// carry the endpoint id for the ENDPOINT_LABELS endpoints with the largest backlog; the rest add up under
// endpoint="other", so a client with thousands of endpoints cannot blow up the series count.

const RESULTS: readonly DeliveryLabel[] = ['delivered', 'retrying', 'failed', 'refused', 'stale']
export const ENDPOINT_LABELS = 10

interface Backlog {
  endpoint: string
  undelivered: number
  oldest_sec: number
}

export function registerWebhookMetrics(registers: Registry[], db: Kysely<DB>): DeliveryObserver {
  const attempts = new Counter({
    name: 'orchestrator_client_webhook_deliveries_total',
    help: 'Client webhook delivery attempts by this instance, by result (stale: a superseded job, nothing sent).',
    labelNames: ['result'],
    registers,
  })
  for (const result of RESULTS) attempts.inc({ result }, 0)
  const lag = new Histogram({
    name: 'orchestrator_client_webhook_delivery_lag_seconds',
    help: 'From a client event being written to a receiver acknowledging it (2xx), retries included.',
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 120, 600, 3600, 86_400],
    registers,
  })
  const read = cachedFor(1000, async () => {
    const { rows } = await sql<Backlog>`
      with per as (
        select endpoint_id::text as endpoint, count(*)::int as undelivered,
               extract(epoch from now() - min(created_at))::float8 as oldest_sec
          from webhook_deliveries where state in ('waiting', 'queued') group by endpoint_id
      ), ranked as (
        select per.*, row_number() over (order by undelivered desc, endpoint) as rn from per
      )
      select case when rn <= ${ENDPOINT_LABELS}::int then endpoint else 'other' end as endpoint,
             sum(undelivered)::int as undelivered, max(oldest_sec)::float8 as oldest_sec
        from ranked group by 1
    `.execute(db)
    return rows
  })
  const gauge = (name: string, help: string, pick: (b: Backlog) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ['endpoint'],
      registers,
      async collect() {
        this.reset()
        try {
          const rows = await read()
          for (const b of rows) this.set({ endpoint: b.endpoint }, pick(b))
          if (rows.length === 0) this.set({ endpoint: 'all' }, 0)
        } catch {
          // the calls gauges report the database as down
        }
      },
    })
  gauge(
    'orchestrator_client_webhook_undelivered',
    'Client events not yet delivered or given up, per endpoint (the largest backlogs; the rest as "other").',
    (b) => b.undelivered,
  )
  gauge(
    'orchestrator_client_webhook_oldest_undelivered_seconds',
    'Age of the oldest undelivered client event, per endpoint.',
    (b) => b.oldest_sec,
  )
  return {
    attempt(result, lagMs) {
      attempts.inc({ result })
      if (lagMs !== undefined) lag.observe(lagMs / 1000)
    },
  }
}
