import { spawn } from 'node:child_process'
import { sql } from 'kysely'
import { Webhook } from 'standardwebhooks'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { expireOverdueCalls } from '../src/sql/sweep.ts'
import { phone, waitFor } from './helpers.ts'
import { type Received, type Receiver, startReceiver } from './receiver.ts'
import { type Stack, startStack } from './stack.ts'
import { useWebhookStack, WEBHOOK_ENV } from './webhook-stack.ts'

// Client webhooks end to end: the service in-process on a real database, dialing the simulator, delivering to real
// HTTP receivers on 127.0.0.1, with retry delays of a few hundred milliseconds.

const { t, s, restart, receiver, endpoint } = useWebhookStack()

/** Until the receiver acknowledged as many distinct events as the log holds (call events only). */
async function waitForAllAcknowledged(r: Receiver, timeoutMs = 30_000) {
  let last = ''
  await waitFor(
    'every event acknowledged',
    async () => {
      const { rows } = await sql<{ n: number }>`
        select count(*)::int as n from webhook_events where call_id is not null`.execute(t.db)
      last = `${r.acknowledged().length} of ${rows[0]?.n} acknowledged; deliveries: ${JSON.stringify(
        (await sql`select state, count(*)::int from webhook_deliveries group by 1`.execute(t.db)).rows,
      )}`
      return r.acknowledged().length >= (rows[0]?.n ?? 0)
    },
    timeoutMs,
  ).catch((err) => {
    throw new Error(`${err.message}: ${last}`)
  })
}

function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['scripts/calls.ts', ...args], {
      env: { PATH: process.env.PATH, DATABASE_URL: t.url },
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (c: Buffer) => {
      stdout += c.toString()
    })
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString()
    })
    child.on('exit', (code) => resolve({ code, stdout, stderr }))
  })
}

const byCall = (rs: Received[]) => {
  const m = new Map<string, Received[]>()
  for (const r of rs) m.set(r.json.data.call.id, [...(m.get(r.json.data.call.id) ?? []), r])
  return m
}

/** Every request for event n+1 of a call came after event n was acknowledged. */
function expectOrderedPerCall(all: Received[]) {
  for (const [, rs] of byCall(all)) {
    const ackedAt = new Map<number, number>()
    for (const r of rs) {
      const seq = r.json.data.sequence
      if (seq > 1) {
        const prev = ackedAt.get(seq - 1)
        expect(prev, `event ${seq} sent before ${seq - 1} was acknowledged`).toBeDefined()
        expect(r.at).toBeGreaterThanOrEqual(prev as number)
      }
      if (r.status >= 200 && r.status < 300 && !ackedAt.has(seq)) ackedAt.set(seq, r.at)
    }
  }
}

describe('client webhooks', () => {
  it('signs every event (verified with standardwebhooks) and sends each call its events in order', async () => {
    const r = await receiver()
    const ep = await endpoint({ url: r.url })
    const ids = await s.createCalls(5, (i) => phone(1000 + i))
    await s.waitAllFinal()
    await waitForAllAcknowledged(r)
    const wh = new Webhook(ep.secret)
    for (const x of r.received) {
      const verified = wh.verify(x.body, x.headers as Record<string, string>) as Received['json']
      expect(verified.type).toBe(x.json.type)
      expect(x.headers['webhook-signature']).toMatch(/^v1,[A-Za-z0-9+/=]+$/)
    }
    const calls = byCall(r.acknowledged())
    expect([...calls.keys()].sort()).toEqual([...ids].sort())
    for (const id of ids) {
      const events = calls.get(id) as Received[]
      // a dial that timed out under load adds call.retry_scheduled; a final webhook that overtakes the dial's 202
      // leaves no call.started (see docs/webhooks.md)
      expect(events[0]?.json.type).toBe('call.created')
      expect(events.at(-1)?.json.type).toBe('call.completed')
      expect(events.map((e) => e.json.data.sequence)).toEqual(events.map((_, i) => i + 1))
      // the final event's call is the call as GET /calls/:id shows it, but for the platform's `result`, which is
      // written just after the attempt's end commits (src/dispatch/final-report.ts), so after the event's snapshot
      const get = await s.api('GET', `/api/v1/calls/${id}`)
      const { result: _r, updatedAt: _u, ...shown } = get.body.data
      const { result: _er, updatedAt: _eu, ...sent } = (events.at(-1)?.json.data.call ?? {}) as Record<string, unknown>
      expect(sent).toEqual(shown)
    }
    // the secret never appears again
    const list = await s.api('GET', '/api/v1/webhook-endpoints')
    expect(JSON.stringify(list.body)).not.toContain(ep.secret)
    expect(JSON.stringify((await s.api('GET', `/api/v1/webhook-endpoints/${ep.id}`)).body)).not.toContain('whsec_')
  })

  it('gets every event at least once and in order per call to a receiver that fails half the requests', {
    timeout: 60_000,
  }, async () => {
    const r = await receiver(() => (Math.random() < 0.5 ? 500 : 200))
    await endpoint({ url: r.url })
    const ids = await s.createCalls(20, (i) => phone(2000 + i))
    await s.waitAllFinal()
    await waitForAllAcknowledged(r)
    expectOrderedPerCall(r.received)
    const acked = byCall(r.acknowledged())
    for (const id of ids) {
      const events = acked.get(id) ?? []
      expect(events[0]?.json.type).toBe('call.created')
      expect(events.at(-1)?.json.type).toBe('call.completed')
      expect(events.map((e) => e.json.data.sequence)).toEqual(events.map((_, i) => i + 1))
    }
    expect(r.received.some((x) => x.status === 500)).toBe(true)
    // a retry is the same event (webhook-id) with the same body, signed at its own time
    const failed = r.received.find((x) => x.status === 500)
    const attempts = r.received.filter((x) => x.headers['webhook-id'] === failed?.headers['webhook-id'])
    expect(attempts.length).toBeGreaterThan(1)
    expect(new Set(attempts.map((x) => x.body)).size).toBe(1)
  })

  it('delivers everything once a receiver that was down comes back', async () => {
    const first = await startReceiver(() => 200)
    const { port } = first
    await first.close()
    const ep = await endpoint({ url: `http://127.0.0.1:${port}/hooks` })
    await s.createCalls(5, (i) => phone(3000 + i))
    await s.waitAllFinal()
    await waitFor('failed attempts while down', async () => {
      const res = await s.api('GET', `/api/v1/webhook-endpoints/${ep.id}/deliveries?status=retrying`)
      return res.body.data.length >= 5
    })
    const back = await receiver(() => 200, port)
    await waitForAllAcknowledged(back)
    expectOrderedPerCall(back.received)
    const res = await s.api('GET', `/api/v1/webhook-endpoints/${ep.id}/deliveries?status=retrying`)
    expect(res.body.data[0].error).toMatch(/ECONNREFUSED/)
    expect((await s.api('GET', `/api/v1/webhook-endpoints/${ep.id}`)).body.data.failingSince).toBeNull()
  })

  it("sends a line's next events from the sending slot that delivered the one before, without a job", async () => {
    // call.created fails until the call has ended, so call.started and call.completed wait behind it in the line;
    // once it goes through, the two follow it from the same send (src/notify/delivery.ts, chaining), not as jobs
    let ended = false
    const r = await receiver((x) => (x.json.type === 'call.created' && !ended ? 500 : 200))
    await endpoint({ url: r.url })
    await s.createCalls(1, () => phone(3100))
    await s.waitAllFinal()
    await waitFor('call.started and call.completed waiting in the line', async () => {
      const { rows } = await sql<{ n: number }>`
        select count(*)::int as n from webhook_deliveries where state = 'waiting'`.execute(t.db)
      return rows[0]?.n === 2
    })
    ended = true
    await waitForAllAcknowledged(r)
    expectOrderedPerCall(r.received)
    expect(r.acknowledged().map((x) => x.json.type)).toEqual(['call.created', 'call.started', 'call.completed'])
    const { rows } = await sql<{ type: string; jobs: number }>`
      select e.type, (select count(*)::int from pgboss.job j
                       where j.name = 'client-webhook' and j.data ->> 'eventId' = e.id::text) as jobs
        from webhook_events e order by e.sequence`.execute(t.db)
    expect(rows.map((x) => x.type)).toEqual(['call.created', 'call.started', 'call.completed'])
    expect(rows[0]?.jobs).toBeGreaterThan(1) // the first attempt and its retries
    expect(rows.slice(1).map((x) => x.jobs)).toEqual([0, 0])
  })

  it("sends a call's later events from the relaying process, without a job, when nothing waits before them", async () => {
    // an endpoint that takes call.created and call.completed only: a call.completed is relayed when its line is idle
    // (or waits behind the call.created and follows it from the same slot). A call.created (sequence 1) still goes
    // through pg-boss; a later event is leased by the relay and sent from its process (src/notify/delivery.ts,
    // relayOnce). Before that change each call.completed here had one job.
    const r = await receiver()
    await endpoint({ url: r.url, events: ['call.created', 'call.completed'] })
    await s.createCalls(3, (i) => phone(3200 + i))
    await s.waitAllFinal()
    await waitFor('every event acknowledged', () => r.acknowledged().length === 6)
    for (const [, rs] of byCall(r.acknowledged()))
      expect(rs.map((x) => x.json.type)).toEqual(['call.created', 'call.completed'])
    const { rows } = await sql<{ type: string; jobs: number }>`
      select e.type, (select count(*)::int from pgboss.job j
                       where j.name = 'client-webhook' and j.data ->> 'eventId' = e.id::text) as jobs
        from webhook_events e where e.type in ('call.created', 'call.completed') order by e.type`.execute(t.db)
    expect(rows.map((x) => `${x.type}:${x.jobs}`)).toEqual([
      'call.completed:0',
      'call.completed:0',
      'call.completed:0',
      'call.created:1',
      'call.created:1',
      'call.created:1',
    ])
  })

  it('honours Retry-After on 503', async () => {
    const r = await receiver((_x, n) => (n === 0 ? { status: 503, headers: { 'retry-after': '1' } } : 200))
    await endpoint({ url: r.url, events: ['call.created'] })
    await s.createCalls(1, () => phone(4000))
    await waitFor('the retry', () => r.acknowledged().length >= 1)
    const [first, second] = r.received
    expect(first?.status).toBe(503)
    expect(second?.headers['webhook-id']).toBe(first?.headers['webhook-id'])
    // without Retry-After the first retry comes after 80-120 ms (WEBHOOK_RETRY_BASE_DELAY_MS=100)
    expect((second?.at ?? 0) - (first?.at ?? 0)).toBeGreaterThanOrEqual(950)
  })

  it('disables an endpoint that answers 410 Gone, with an event saying why', async () => {
    const r = await receiver(() => 410)
    const ep = await endpoint({ url: r.url })
    await s.createCalls(3, (i) => phone(5000 + i))
    await waitFor('disabled', async () => {
      const res = await s.api('GET', `/api/v1/webhook-endpoints/${ep.id}`)
      return res.body.data.enabled === false ? res.body.data : undefined
    })
    const got = (await s.api('GET', `/api/v1/webhook-endpoints/${ep.id}`)).body.data
    expect(got.disabledReason).toMatch(/410/)
    const events = await s.api('GET', '/api/v1/events?type=endpoint.disabled')
    expect(events.body.data).toHaveLength(1)
    expect(events.body.data[0].endpointId).toBe(ep.id)
    await s.waitAllFinal()
    // the undelivered events fail (they stay redeliverable) and nothing more is sent
    await waitFor('no undone delivery', async () => {
      const { rows } = await sql<{ n: number }>`
        select count(*)::int as n from webhook_deliveries where state in ('waiting', 'queued')`.execute(t.db)
      return rows[0]?.n === 0
    })
    const sent = r.received.length
    await new Promise((res) => setTimeout(res, 500))
    expect(r.received.length).toBe(sent)
  })

  it('signs with both secrets after a rotation', async () => {
    const r = await receiver()
    const ep = await endpoint({ url: r.url, events: ['call.created'] })
    const rotated = await s.api('POST', `/api/v1/webhook-endpoints/${ep.id}/rotate-secret`)
    expect(rotated.statusCode).toBe(200)
    const next = rotated.body.data.secret as string
    expect(next).not.toBe(ep.secret)
    await s.createCalls(1, () => phone(7000))
    await waitFor('a delivery', () => r.acknowledged().length >= 1)
    const x = r.received[0] as Received
    expect((x.headers['webhook-signature'] as string).split(' ')).toHaveLength(2)
    for (const secret of [ep.secret, next]) {
      expect(() => new Webhook(secret).verify(x.body, x.headers as Record<string, string>)).not.toThrow()
    }
    expect(() =>
      new Webhook(`whsec_${Buffer.alloc(32, 1).toString('base64')}`).verify(
        x.body,
        x.headers as Record<string, string>,
      ),
    ).toThrow()
  })

  it('redelivers an event already delivered, with the same webhook-id', async () => {
    const r = await receiver()
    await endpoint({ url: r.url, events: ['call.created'] })
    const [id] = await s.createCalls(1, () => phone(8000))
    const event = await waitFor('the delivery recorded', async () => {
      const events = await s.api('GET', `/api/v1/events?callId=${id}&type=call.created`)
      const e = events.body.data[0]
      return e?.deliveries[0]?.state === 'delivered' ? e : undefined
    })
    expect(r.acknowledged()).toHaveLength(1)
    const res = await s.api('POST', `/api/v1/events/${event.id}/redeliver`)
    expect(res.statusCode).toBe(202)
    expect(res.body.data.deliveries).toBe(1)
    await waitFor('the redelivery', () => r.received.length >= 2)
    expect(r.received[1]?.headers['webhook-id']).toBe(event.id)
    expect(r.received[1]?.body).toBe(r.received[0]?.body)
    expect((await s.api('POST', '/api/v1/events/00000000-0000-4000-8000-000000000000/redeliver')).statusCode).toBe(404)
  })

  it("lets an operator list a call's events and redeliver one from the CLI", async () => {
    const r = await receiver()
    await endpoint({ url: r.url, events: ['call.created'] })
    const [id] = await s.createCalls(1, () => phone(8100))
    await waitFor('the delivery recorded', async () => {
      const { rows } = await sql<{ n: number }>`
        select count(*)::int as n from webhook_deliveries where state = 'delivered'`.execute(t.db)
      return rows[0]?.n === 1
    })
    const shown = await cli(['events', id as string, '--json'])
    expect(shown.code).toBe(0)
    const rows = JSON.parse(shown.stdout) as { event_id: string; type: string; state: string | null }[]
    const created = rows.find((x) => x.type === 'call.created')
    expect(created?.state).toBe('delivered')
    const again = await cli(['redeliver', created?.event_id as string])
    expect(again.code).toBe(0)
    expect(again.stdout).toMatch(/sent again to 1 endpoint/)
    await waitFor('the redelivery, published by the lease sweep', () => r.received.length >= 2)
    expect(r.received[1]?.headers['webhook-id']).toBe(created?.event_id)
    expect((await cli(['redeliver', '00000000-0000-4000-8000-000000000000'])).code).toBe(1)
  })

  it('sends an endpoint only the types it asked for, with the call sequence showing the gaps', async () => {
    const all = await receiver()
    const finals = await receiver()
    const other = await receiver()
    await endpoint({ url: all.url })
    await endpoint({ url: finals.url, events: ['call.completed', 'call.failed'] })
    await endpoint({ url: other.url, campaignId: '11111111-1111-4111-8111-111111111111' })
    await s.createCalls(3, (i) => phone(9000 + i))
    await s.waitAllFinal()
    await waitFor('all events', () => all.acknowledged().length >= 9 && finals.acknowledged().length >= 3)
    expect(finals.received.map((x) => [x.json.type, x.json.data.sequence])).toEqual(
      Array(3).fill(['call.completed', 3]),
    )
    // calls outside the endpoint's campaign are not sent to it
    expect(other.received).toHaveLength(0)
  })

  it('writes events no endpoint takes already published, so the relay never reads them, and logs them all', async () => {
    const finals = await receiver()
    await endpoint({ url: finals.url, events: ['call.completed'] })
    await endpoint({ url: finals.url, campaignId: '11111111-1111-4111-8111-111111111111' })
    const [id] = await s.createCalls(1, () => phone(9100))
    await s.waitAllFinal()
    await waitFor('call.completed', () => finals.acknowledged().length >= 1)
    // written published: the row is the version its own transaction wrote (the relay's update would be a new one)
    const { rows } = await sql<{ type: string; published: boolean; untouched: boolean; deliveries: number }>`
      select e.type, e.published,
             e.xmin::text = (select min(h.xmin::text) from call_events h
                              where h.call_id = e.call_id and h.kind = 'CREATED') as untouched,
             (select count(*)::int from webhook_deliveries d where d.event_id = e.id) as deliveries
        from webhook_events e where e.call_id = ${id}::uuid order by e.sequence`.execute(t.db)
    expect(rows).toEqual([
      { type: 'call.created', published: true, untouched: true, deliveries: 0 },
      { type: 'call.started', published: true, untouched: false, deliveries: 0 },
      { type: 'call.completed', published: true, untouched: false, deliveries: 1 },
    ])
    expect((await s.api('GET', `/api/v1/events?callId=${id}`)).body.data).toHaveLength(3)
    expect(finals.received.map((x) => x.json.type)).toEqual(['call.completed'])
  })

  // retry: once in a full run, cancel_pending_calls() below was chosen as a deadlock victim against the running
  // service (cause not yet found; recorded in docs/webhooks.md); the events it asserts are unaffected by a retry.
  it('writes an event for every status change, whichever statement makes it', { retry: 2 }, async () => {
    const r = await receiver()
    await endpoint({ url: r.url })
    // inserted by hand and due in an hour, so no dispatcher takes them: each path below writes its own event
    const { rows } = await sql<{ id: string }>`
      insert into calls (to_phone, script_id, expires_at, next_attempt_at)
      select '+96650100000' || n, 'test', now() + interval '2 hours', now() + interval '1 hour'
        from generate_series(1, 4) n
      returning id`.execute(t.db)
    const [a, b, c, d] = rows.map((x) => x.id) as [string, string, string, string]
    expect((await s.api('POST', `/api/v1/calls/${a}/cancel`)).statusCode).toBe(200)
    await sql`update calls set expires_at = now() - interval '1 second' where id = ${b}::uuid`.execute(t.db)
    await expireOverdueCalls(t.db)
    await sql`select cancel_pending_calls()`.execute(t.db)
    await sql`select retry_call(${c}::uuid)`.execute(t.db)
    expect((await s.api('PATCH', `/api/v1/calls/${d}`, { scriptId: 'other' })).statusCode).toBe(409)
    const types = async (id: string) =>
      (
        await sql<{
          type: string
        }>`select type from webhook_events where call_id = ${id}::uuid order by sequence`.execute(t.db)
      ).rows.map((x) => x.type)
    expect(await types(a)).toEqual(['call.created', 'call.canceled'])
    expect(await types(b)).toEqual(['call.created', 'call.expired'])
    expect((await types(c)).slice(0, 3)).toEqual(['call.created', 'call.canceled', 'call.retry_scheduled'])
    // a change that is not a status change (metadata, script) writes none
    expect(await types(d)).toEqual(['call.created', 'call.canceled'])
  })

  it('writes no event while no endpoint is enabled', { retry: 2 }, async () => {
    await s.createCalls(2, (i) => phone(9200 + i))
    await s.waitAllFinal()
    const { rows } = await sql<{ n: number }>`select count(*)::int as n from webhook_events`.execute(t.db)
    expect(rows[0]?.n).toBe(0)
  })
})

describe('client webhooks that keep failing', () => {
  let g: Stack
  beforeAll(async () => {
    g = await startStack(t, { ...WEBHOOK_ENV, WEBHOOK_RETRY_FOR_MS: '3000', WEBHOOK_DISABLE_AFTER_MS: '4000' })
    await s.stop()
  })
  afterAll(async () => {
    await g.stop()
    await restart()
  })

  it('gives an event up after WEBHOOK_RETRY_FOR_MS and disables an endpoint failing for WEBHOOK_DISABLE_AFTER_MS', async () => {
    const r = await receiver(() => 500)
    const ep = await endpoint({ url: r.url, events: ['call.created'] }, g)
    await g.createCalls(1, () => phone(6000))
    await waitFor(
      'the event given up',
      async () => {
        const res = await g.api('GET', `/api/v1/webhook-endpoints/${ep.id}/deliveries?status=failed`)
        return res.body.data.length === 1
      },
      10_000,
    )
    let n = 0
    await waitFor(
      'the endpoint disabled',
      async () => {
        await g.createCalls(1, () => phone(6001 + n++))
        const res = await g.api('GET', `/api/v1/webhook-endpoints/${ep.id}`)
        return res.body.data.enabled === false ? res.body.data : undefined
      },
      15_000,
      300,
    )
    const got = (await g.api('GET', `/api/v1/webhook-endpoints/${ep.id}`)).body.data
    expect(got.disabledReason).toMatch(/every delivery failed since/)
  })
})
