import { sql } from 'kysely'
import pg from 'pg'
import { Webhook } from 'standardwebhooks'
import { describe, expect, it } from 'vitest'
import { sweepCampaignCalls } from '../src/sql/sweep.ts'
import { closedWindow, NUMBERS } from './campaign-helpers.ts'
import { phone, waitFor } from './helpers.ts'
import { useWebhookStack } from './webhook-stack.ts'

// Campaign events (migration 0050, docs/webhooks.md): written in the transaction of the change, delivered signed to
// the endpoints that want them, in the campaign's own order. The service in-process on a real database, dialing the
// simulator, delivering to real HTTP receivers on 127.0.0.1.

const { t, s, receiver, endpoint } = useWebhookStack(async (t) => {
  await sql`delete from webhook_events`.execute(t.db)
})

async function campaign(body: object = {}): Promise<string> {
  const res = await s.api('POST', '/api/v1/campaigns', { name: 'events', ...body })
  expect(res.statusCode).toBe(201)
  return res.body.data.id
}

async function post(url: string) {
  const res = await s.api('POST', url)
  expect(res.statusCode).toBe(200)
  return res.body.data
}

async function callsOf(campaignId: string, n: number, to: (i: number) => string) {
  const res = await s.api('POST', '/api/v1/calls/batch', {
    campaignId,
    calls: Array.from({ length: n }, (_, i) => ({ to: to(i), scriptId: 'test' })),
  })
  expect(res.statusCode).toBe(201)
  return res.body.data.ids as string[]
}

const campaignEvents = async (campaignId: string) =>
  (
    await sql<{ type: string; sequence: number }>`
      select type, sequence from webhook_events
       where campaign_id = ${campaignId}::uuid and call_id is null order by sequence`.execute(t.db)
  ).rows

const CAMPAIGN_TYPES = ['campaign.paused', 'campaign.resumed', 'campaign.canceled', 'campaign.finished']

describe('campaign events', () => {
  it('sends paused, resumed, finished and canceled, signed, in the campaign order, only where they are wanted', {
    timeout: 60_000,
  }, async () => {
    const r = await receiver()
    const callsOnly = await receiver()
    const elsewhere = await receiver()
    const k = await campaign()
    const other = await campaign()
    const ep = await endpoint({ url: r.url, events: CAMPAIGN_TYPES, campaignId: k })
    await endpoint({ url: callsOnly.url, events: ['call.completed'] })
    await endpoint({ url: elsewhere.url, campaignId: other })

    await post(`/api/v1/campaigns/${k}/pause`)
    await post(`/api/v1/campaigns/${k}/resume`)
    const ids = await callsOf(k, 3, (i) => phone(12_000 + i))
    await s.waitAllFinal()
    await waitFor('campaign.finished written', async () =>
      (await campaignEvents(k)).some((e) => e.type === 'campaign.finished'),
    )
    const canceled = await post(`/api/v1/campaigns/${k}/cancel`)
    await waitFor('four campaign events acknowledged', () => r.acknowledged().length >= 4)

    const got = r.acknowledged()
    expect(got.map((x) => [x.json.type, x.json.data.sequence])).toEqual([
      ['campaign.paused', 1],
      ['campaign.resumed', 2],
      ['campaign.finished', 3],
      ['campaign.canceled', 4],
    ])
    const wh = new Webhook(ep.secret)
    for (const x of r.received) expect(() => wh.verify(x.body, x.headers as Record<string, string>)).not.toThrow()
    // data.campaign is the campaign as GET /campaigns/:id shows it (without stats) right after the change
    const bodies = got.map((x) => JSON.parse(x.body) as { data: { campaign: Record<string, unknown> } })
    expect(bodies.map((b) => b.data.campaign.status)).toEqual(['PAUSED', 'ACTIVE', 'ACTIVE', 'CANCELED'])
    expect(bodies[3]?.data.campaign).toEqual(canceled)
    const { stats: _stats, ...shown } = (await s.api('GET', `/api/v1/campaigns/${k}`)).body.data
    expect(bodies[3]?.data.campaign).toEqual(shown)

    // an endpoint that asked for call.completed gets no campaign event; one of another campaign gets nothing
    await waitFor('the call events', () => callsOnly.acknowledged().length >= ids.length)
    expect(callsOnly.received.every((x) => x.json.type === 'call.completed')).toBe(true)
    expect(elsewhere.received).toHaveLength(0)

    // the event log filters by the new types
    const log = await s.api('GET', '/api/v1/events?type=campaign.finished')
    expect(log.statusCode).toBe(200)
    expect(log.body.data.map((e: { campaignId: string; callId: string | null }) => [e.campaignId, e.callId])).toEqual([
      [k, null],
    ])
  })

  it('writes canceled then one finished when a cancel ends the last open calls', async () => {
    const r = await receiver()
    await endpoint({ url: r.url, events: ['campaign.canceled', 'campaign.finished'] })
    // a window that opens in two hours: the calls stay PENDING until the cancel
    const k = await campaign({ callingWindow: closedWindow('Asia/Riyadh') })
    await callsOf(k, 5, (i) => NUMBERS.riyadh(300 + i))
    await post(`/api/v1/campaigns/${k}/cancel`)
    expect(await campaignEvents(k)).toEqual([
      { type: 'campaign.canceled', sequence: 1 },
      { type: 'campaign.finished', sequence: 2 },
    ])
    await waitFor('both delivered', () => r.acknowledged().length >= 2)
    expect(r.acknowledged().map((x) => x.json.type)).toEqual(['campaign.canceled', 'campaign.finished'])
    // redelivery works for a campaign event as for a call's
    const [finished] = (await s.api('GET', '/api/v1/events?type=campaign.finished')).body.data
    expect((await s.api('POST', `/api/v1/events/${finished.id}/redeliver`)).statusCode).toBe(202)
    await waitFor('the redelivery', () => r.received.length >= 3)
    expect(r.received[2]?.headers['webhook-id']).toBe(finished.id)
  })

  it('writes no campaign.finished while a call of the campaign is still open, nor for a campaign without calls', async () => {
    await endpoint({ url: (await receiver()).url })
    const k = await campaign({ callingWindow: closedWindow('Asia/Riyadh') })
    const [a, b] = await callsOf(k, 2, (i) => NUMBERS.riyadh(400 + i))
    expect((await s.api('POST', `/api/v1/calls/${a}/cancel`)).statusCode).toBe(200)
    expect(await campaignEvents(k)).toEqual([])
    expect((await s.api('POST', `/api/v1/calls/${b}/cancel`)).statusCode).toBe(200)
    expect(await campaignEvents(k)).toEqual([{ type: 'campaign.finished', sequence: 1 }])
    // a pause of a paused campaign changes nothing and writes nothing; a campaign without calls never finishes
    const empty = await campaign()
    await post(`/api/v1/campaigns/${empty}/pause`)
    await post(`/api/v1/campaigns/${empty}/pause`)
    await post(`/api/v1/campaigns/${empty}/cancel`)
    expect(await campaignEvents(empty)).toEqual([
      { type: 'campaign.paused', sequence: 1 },
      { type: 'campaign.canceled', sequence: 2 },
    ])
  })

  // Two transactions end the campaign's last two calls and commit at once: each alone sees the other's call still
  // open. Both must queue on the campaign events lock at commit, and the second must read the first's commit after
  // it (a check made before the lock would see both calls open, twice, and write nothing).
  it('writes exactly one campaign.finished when its last two calls end in concurrent transactions', async () => {
    await endpoint({ url: (await receiver()).url })
    const k = await campaign({ callingWindow: closedWindow('Asia/Riyadh') })
    const [a, b] = await callsOf(k, 2, (i) => NUMBERS.riyadh(500 + i))
    const clients = [new pg.Client(t.url), new pg.Client(t.url), new pg.Client(t.url)]
    const [c1, c2, holder] = clients as [pg.Client, pg.Client, pg.Client]
    for (const c of clients) await c.connect()
    try {
      // hold the lock so that both commits reach it before either can write
      await holder.query('begin')
      await holder.query('select pg_advisory_xact_lock(1128352844, 3)')
      for (const [c, id] of [
        [c1, a],
        [c2, b],
      ] as const) {
        await c.query('begin')
        await c.query(`update calls set status = 'CANCELED', ended_at = now() where id = $1`, [id])
      }
      const commits = Promise.all([c1.query('commit'), c2.query('commit')])
      commits.catch(() => undefined) // awaited below; a failure before that ends the clients
      await waitFor('both commits waiting for the lock', async () => {
        const { rows } = await holder.query(
          `select count(*)::int as n from pg_locks where locktype = 'advisory' and objid = 3 and not granted`,
        )
        return rows[0].n === 2
      })
      await holder.query('commit')
      await commits
    } finally {
      for (const c of clients) await c.end()
    }
    expect(await campaignEvents(k)).toEqual([{ type: 'campaign.finished', sequence: 1 }])
  })

  it('writes campaign.finished when the sweep expires the last calls of a campaign past its endsAt', async () => {
    await endpoint({ url: (await receiver()).url })
    const k = await campaign({
      callingWindow: closedWindow('Asia/Riyadh'),
      endsAt: new Date(Date.now() + 3_600_000).toISOString(),
    })
    await callsOf(k, 3, (i) => NUMBERS.riyadh(600 + i))
    await sql`update campaigns set ends_at = now() - interval '1 second' where id = ${k}::uuid`.execute(t.db)
    // the service's own sweep runs too (every 100 ms): whichever ends the last call writes the event
    await waitFor('the calls expired', async () => {
      await sweepCampaignCalls(t.db)
      const { rows } = await sql<{ status: string; n: number }>`
        select status, count(*)::int as n from calls where campaign_id = ${k}::uuid group by status`.execute(t.db)
      return rows.length === 1 && rows[0]?.status === 'EXPIRED' && rows[0].n === 3
    })
    expect(await campaignEvents(k)).toEqual([{ type: 'campaign.finished', sequence: 1 }])
  })

  it('lists the campaign event types in the OpenAPI document', async () => {
    const doc = (await s.svc.app.inject({ method: 'GET', url: '/docs/json' })).json()
    const create = doc.paths['/api/v1/webhook-endpoints'].post.requestBody.content['application/json'].schema
    expect(JSON.stringify(create.properties.events)).toContain('"campaign.finished"')
    const listEvents = doc.paths['/api/v1/events'].get.parameters.find((p: { name: string }) => p.name === 'type')
    for (const type of CAMPAIGN_TYPES) expect(JSON.stringify(listEvents.schema)).toContain(`"${type}"`)
  })

  it('refuses an unknown event type with a machine-readable 400', async () => {
    const res = await s.api('POST', '/api/v1/webhook-endpoints', {
      url: 'http://127.0.0.1:9/hooks',
      events: ['campaign.started'],
    })
    expect(res.statusCode).toBe(400)
    expect(res.body.error.code).toBe('VALIDATION_ERROR')
    expect((await s.api('GET', '/api/v1/events?type=campaign.paused')).statusCode).toBe(200)
  })
})
