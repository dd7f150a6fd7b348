import { sql } from 'kysely'
import { describe, expect, it } from 'vitest'
import { createEndpoint } from '../src/notify/endpoints.ts'
import { leaseDeliveries, relayEvents } from '../src/notify/sql.ts'
import { phone } from './helpers.ts'
import { useTestDb } from './kit.ts'

// A line's head that no worker has taken yet gets a second job when a later event of its call arrives, carrying that
// event's priority; the two jobs name one generation, and only one of them may lease (and so send) the delivery.

const t = useTestDb()

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

    const leasedTwice = await leaseDeliveries(t.db, [head, second.jobs[0] as typeof head], 5000)
    expect(leasedTwice).toHaveLength(1)
    expect(await leaseDeliveries(t.db, [head], 5000)).toHaveLength(0)

    // once the head is leased, a later event queues behind it without another job for it
    await sql`update calls set status = 'COMPLETED', ended_at = now() where id = ${callId}::uuid`.execute(t.db)
    expect((await relay()).jobs).toEqual([])
  })
})
