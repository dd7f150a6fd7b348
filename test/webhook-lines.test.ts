import { sql } from 'kysely'
import pg from 'pg'
import { afterEach, describe, expect, it } from 'vitest'
import { createEndpoint, deleteEndpoint } from '../src/notify/endpoints.ts'
import { type DeliveryJob, leaseDeliveries, promoteNext, recordResults, relayEvents } from '../src/notify/sql.ts'
import { endAttempts } from '../src/sql/attempts.ts'
import { phone, waitFor } from './helpers.ts'
import { useTestDb } from './kit.ts'

// A line's head that no worker has taken yet gets a second job when a later event of its call arrives, carrying that
// event's priority; the two jobs name one generation, and only one of them may lease (and so send) the delivery.

const t = useTestDb()

afterEach(async () => {
  for (const { id } of await t.db.selectFrom('webhook_endpoints').select('id').execute()) await deleteEndpoint(t.db, id)
})

/** Transactions waiting for another's row lock (a transaction id lock not yet granted), seen from `client`. */
async function waitersOnRows(client: pg.Client): Promise<number> {
  const { rows } = await client.query<{ n: number }>(
    `select count(*)::int as n from pg_locks where locktype = 'transactionid' and not granted`,
  )
  return rows[0]?.n ?? 0
}

async function relay() {
  return t.db.transaction().execute((trx) => relayEvents(trx, 1000))
}

describe('client webhook lines', () => {
  it("gives a waiting head a second job with its call's later priority, and leases it once", async () => {
    const { endpoint } = await createEndpoint(t.db, {
      url: 'https://example.com/h',
      events: null,
      campaignId: null,
      description: null,
    })
    const { rows } = await sql<{ id: string }>`
      insert into calls (to_phone, script_id, expires_at) values (${phone()}, 's', now() + interval '1 hour')
      returning id`.execute(t.db)
    const callId = rows[0]?.id as string

    const first = await relay()
    expect(first.jobs).toEqual([expect.objectContaining({ endpointId: endpoint.id, sequence: 1 })])
    const head = first.jobs[0] as (typeof first.jobs)[number]

    // the call moves on (as the claim and the dial would) while its call.created is still unsent
    await sql`
      update calls set status = 'IN_PROGRESS', attempts = 1, started_at = now() where id = ${callId}::uuid`.execute(
      t.db,
    )
    await sql`update calls set provider_call_id = 'p-1' where id = ${callId}::uuid`.execute(t.db)
    const second = await relay()
    expect(second.jobs).toEqual([
      { endpointId: endpoint.id, eventId: head.eventId, generation: head.generation, sequence: 2 },
    ])

    // a head waiting out a retry gets no second job: it would be sent before its time
    await sql`update webhook_deliveries set next_attempt_at = now() + interval '1 hour' where event_id = ${head.eventId}::uuid`.execute(
      t.db,
    )
    await sql`update calls set status = 'PENDING' where id = ${callId}::uuid`.execute(t.db)
    const inRetry = await relay()
    expect(inRetry.jobs).toEqual([])
    await sql`update webhook_deliveries set next_attempt_at = now() where event_id = ${head.eventId}::uuid`.execute(
      t.db,
    )

    const leasedTwice = await leaseDeliveries(t.db, [head, second.jobs[0] as typeof head], 5000)
    expect(leasedTwice).toHaveLength(1)
    expect(await leaseDeliveries(t.db, [head], 5000)).toHaveLength(0)

    // once the head is leased, a later event queues behind it without another job for it
    await sql`update calls set status = 'COMPLETED', ended_at = now() where id = ${callId}::uuid`.execute(t.db)
    expect((await relay()).jobs).toEqual([])
  })

  it("writes call.started before the final event when the provider's report is applied before its 202", async () => {
    await createEndpoint(t.db, { url: 'https://example.com/h', events: null, campaignId: null, description: null })
    const { rows } = await sql<{ id: string }>`
      insert into calls (to_phone, script_id, expires_at) values (${phone()}, 's', now() + interval '1 hour')
      returning id`.execute(t.db)
    const callId = rows[0]?.id as string
    // claimed and dialed; the 202 is not recorded yet when the final report arrives
    await sql`update calls set status = 'IN_PROGRESS', attempts = 1, started_at = now() where id = ${callId}::uuid`.execute(
      t.db,
    )
    const result = { provider: 'generic', providerCallId: 'p-9', endReason: 'COMPLETED', durationSec: 3 }
    const [ended] = await endAttempts(t.db, [
      {
        callId,
        attempt: 1,
        end: { next: 'COMPLETED' },
        eventKind: 'WEBHOOK',
        outcome: 'COMPLETED',
        providerCallId: 'p-9',
        detail: { providerCallId: 'p-9', result },
      },
    ])
    expect(ended?.outcome).toBe('applied')

    const events = await t.db
      .selectFrom('webhook_events')
      .select(['type', 'sequence', 'call_snapshot'])
      .where('call_id', '=', callId)
      .orderBy('sequence')
      .execute()
    expect(events.map((e) => [e.type, e.sequence])).toEqual([
      ['call.created', 1],
      ['call.started', 2],
      ['call.completed', 3],
    ])
    const started = events[1]?.call_snapshot as Record<string, unknown>
    expect(started).toMatchObject({ status: 'IN_PROGRESS', provider_call_id: 'p-9' })
    // the final event's copy of the call already carries what the provider reported
    expect(events[2]?.call_snapshot).toMatchObject({ last_result: result })
  })

  // The relay locks the undone deliveries of every line it appends to; a lease and a recorder lock the heads they
  // change. Each used to lock in its plan's order (the relay: the table's; the lease and the recorder: their batch's),
  // so a relay holding A's head and waiting for C's (held here by a third transaction, as any statement might) met a
  // lease or recorder holding B's head and waiting for A's: deadlock, and PostgreSQL failed one of them after 1 s.
  for (const other of ['lease', 'recorder'] as const) {
    it(`locks deliveries in one order, so the relay and a ${other} never deadlock`, async () => {
      await createEndpoint(t.db, { url: 'https://example.com/h', events: null, campaignId: null, description: null })
      const calls: string[] = []
      for (let i = 0; i < 3; i++) {
        const { rows } = await sql<{ id: string }>`
          insert into calls (to_phone, script_id, expires_at) values (${phone()}, 's', now() + interval '1 hour')
          returning id`.execute(t.db)
        calls.push(rows[0]?.id as string)
      }
      const heads = (await relay()).jobs
      const [a, c, b] = heads as [DeliveryJob, DeliveryJob, DeliveryJob]
      // statistics taken while the table is small, as autovacuum leaves them during a burst: the plans then hash
      // the table's few rows and walk the batch, in the batch's order
      await sql`analyze webhook_deliveries`.execute(t.db)
      // every call moves on, so the next relay appends to all three lines and locks their heads
      for (const id of calls) {
        await sql`update calls set status = 'IN_PROGRESS', attempts = 1, started_at = now() where id = ${id}::uuid`.execute(
          t.db,
        )
        await sql`update calls set provider_call_id = ${`p-${id}`} where id = ${id}::uuid`.execute(t.db)
      }
      if (other === 'recorder') await leaseDeliveries(t.db, [a, b], 5000)

      const holder = new pg.Client(t.url)
      await holder.connect()
      const waiting = () => waitersOnRows(holder)
      try {
        await holder.query('begin')
        await holder.query('select 1 from webhook_deliveries where event_id = $1 for update', [c.eventId])
        const relayed = relay()
        relayed.catch(() => undefined) // awaited below
        await waitFor('the relay waiting for the held head', async () => (await waiting()) >= 1)
        // B's head before A's: the batch's order, which the old statements locked in
        let settled = false
        const changed = (
          other === 'lease'
            ? leaseDeliveries(t.db, [b, a], 5000)
            : t.db.transaction().execute((trx) =>
                recordResults(
                  trx,
                  [b, a].map((j) => ({
                    ...j,
                    ok: true,
                    gone: false,
                    final: false,
                    httpStatus: 204,
                    latencyMs: 1,
                    error: null,
                    delayMs: 0,
                  })),
                  { retryForMs: 86_400_000, disableAfterMs: 86_400_000 },
                ),
              )
        ).finally(() => {
          settled = true
        })
        changed.catch(() => undefined) // awaited below
        await waitFor(`the ${other} done or waiting`, async () => settled || (await waiting()) >= 2)
        await holder.query('commit')
        await expect(Promise.all([relayed, changed])).resolves.toBeDefined()
      } finally {
        await holder.end()
      }
    })
  }

  // A recorder locks its deliveries, then writes the endpoint's health (src/notify/sql.ts recordResults). An endpoint's
  // delete cascades to its deliveries: locking the endpoint row first, it waited for the recorder's delivery while the
  // recorder's endpoint update waited for it, a deadlock PostgreSQL broke after a second.
  it('deletes an endpoint without a deadlock against a recorder holding one of its deliveries', async () => {
    const { endpoint } = await createEndpoint(t.db, {
      url: 'https://example.com/h',
      events: null,
      campaignId: null,
      description: null,
    })
    await sql`insert into calls (to_phone, script_id, expires_at) values (${phone()}, 's', now() + interval '1 hour')`.execute(
      t.db,
    )
    const [head] = (await relay()).jobs as [DeliveryJob]
    const recorder = new pg.Client(t.url)
    await recorder.connect()
    try {
      await recorder.query('begin')
      await recorder.query('select 1 from webhook_deliveries where event_id = $1 for update', [head.eventId])
      const deleted = deleteEndpoint(t.db, endpoint.id)
      deleted.catch(() => undefined) // awaited below
      await waitFor('the delete waiting for the held delivery', async () => (await waitersOnRows(recorder)) >= 1)
      // the recorder's second step: with the endpoint row locked by the delete it would wait (and deadlock)
      await recorder.query(`set local lock_timeout = '500ms'`)
      await recorder.query('update webhook_endpoints set last_success_at = now() where id = $1', [endpoint.id])
      await recorder.query('commit')
      await expect(deleted).resolves.toBe(true)
    } finally {
      await recorder.end()
    }
  })

  // A recorder finishes a line's head in one statement and promotes the next delivery in a second; a relay that
  // committed in between (its append made the recorder's first statement wait) leaves a waiting delivery the
  // recorder could not lock in advance. The next relay must queue at the head, before that delivery: locking by
  // event id, it took the waiting delivery first (its id sorts first here) and then waited for the head, while the
  // recorder's promotion waited for the waiting delivery.
  it('lets a recorder promote the delivery a relay appended between its two statements while the next relay waits', async () => {
    await createEndpoint(t.db, { url: 'https://example.com/h', events: null, campaignId: null, description: null })
    const { rows } = await sql<{ id: string }>`
      insert into calls (to_phone, script_id, expires_at) values (${phone()}, 's', now() + interval '1 hour')
      returning id`.execute(t.db)
    const callId = rows[0]?.id as string
    const [head] = (await relay()).jobs as [DeliveryJob]
    await leaseDeliveries(t.db, [head], 5000)
    await sql`update calls set status = 'IN_PROGRESS', attempts = 1, started_at = now() where id = ${callId}::uuid`.execute(
      t.db,
    )
    await sql`update calls set provider_call_id = 'p-1' where id = ${callId}::uuid`.execute(t.db)
    // the call.started event's id sorts before the head's
    await sql`
      update webhook_events set id = '00000000-0000-4000-8000-000000000001'
       where call_id = ${callId}::uuid and type = 'call.started'`.execute(t.db)

    const gate = () => {
      let open = () => {}
      const opened = new Promise<void>((r) => {
        open = r
      })
      return { open, opened }
    }
    const holder = new pg.Client(t.url)
    await holder.connect()
    const waiting = () => waitersOnRows(holder)
    try {
      // relay 1 appends call.started behind the head and holds its transaction open
      const relay1Done = gate()
      const relay1Appended = gate()
      const relay1 = t.db.transaction().execute(async (trx) => {
        await relayEvents(trx, 1000)
        relay1Appended.open()
        await relay1Done.opened
      })
      await relay1Appended.opened
      // the recorder's first statement waits for relay 1 (it holds the head)
      const recorded = gate()
      const promote = gate()
      const recorder = t.db.transaction().execute(async (trx) => {
        const r = await recordResults(
          trx,
          [{ ...head, ok: true, gone: false, final: false, httpStatus: 204, latencyMs: 1, error: null, delayMs: 0 }],
          { retryForMs: 86_400_000, disableAfterMs: 86_400_000 },
        )
        recorded.open()
        await promote.opened
        return promoteNext(
          trx,
          r.recorded.map((x) => ({ endpointId: x.endpoint_id, lineId: x.line_id })),
        )
      })
      recorder.catch(() => undefined) // awaited below
      await waitFor('the recorder waiting for relay 1', async () => (await waiting()) >= 1)
      relay1Done.open()
      await relay1
      await recorded.opened
      // the call ends: relay 2 appends call.completed to the same line
      await sql`update calls set status = 'COMPLETED', ended_at = now() where id = ${callId}::uuid`.execute(t.db)
      const relay2 = relay()
      relay2.catch(() => undefined) // awaited below
      await waitFor('relay 2 waiting for the recorder', async () => (await waiting()) >= 1)
      promote.open()
      const [promoted] = await Promise.all([recorder, relay2])
      expect(promoted).toEqual([expect.objectContaining({ event_id: '00000000-0000-4000-8000-000000000001' })])
    } finally {
      await holder.end()
    }
  })
})
