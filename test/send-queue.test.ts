import { describe, expect, it } from 'vitest'
import { sendQueue } from '../src/notify/send-queue.ts'

// src/notify/send-queue.ts: the order in which a process sends the deliveries it has leased. Pure; the sends here
// are fakes that finish when the test says so.

function fakeSends() {
  const started: string[] = []
  const finish = new Map<string, () => void>()
  const send = (name: string) =>
    new Promise<void>((resolve) => {
      started.push(name)
      finish.set(name, resolve)
    })
  const done = async (name: string) => {
    finish.get(name)?.()
    await new Promise<void>((r) => setImmediate(r))
  }
  return { started, send, done }
}

describe('send queue', () => {
  it("sends a call's later event before the call.created deliveries that were waiting for a slot", async () => {
    const f = fakeSends()
    const q = sendQueue(1, f.send)
    q.push('created-1', 1)
    q.push('created-2', 1)
    q.push('created-3', 1)
    q.push('completed-9', 3)
    q.push('started-8', 2)
    expect(f.started).toEqual(['created-1'])
    for (const name of ['created-1', 'completed-9', 'started-8', 'created-2']) await f.done(name)
    expect(f.started).toEqual(['created-1', 'completed-9', 'started-8', 'created-2', 'created-3'])
  })

  it('sends at most its concurrency at once and tells a worker when there is room for another batch', async () => {
    const f = fakeSends()
    const q = sendQueue(2, f.send)
    for (const name of ['a', 'b', 'c', 'd', 'e']) q.push(name, 1)
    expect(f.started).toEqual(['a', 'b'])
    expect(q.waiting).toBe(3)
    let room = false
    void q.room(3).then(() => {
      room = true
    })
    let idle = false
    void q.idle().then(() => {
      idle = true
    })
    await new Promise<void>((r) => setImmediate(r))
    expect(room).toBe(false)
    await f.done('a')
    expect(f.started).toEqual(['a', 'b', 'c'])
    expect(room).toBe(true)
    for (const name of ['b', 'c', 'd']) await f.done(name)
    expect(idle).toBe(false)
    await f.done('e')
    expect(idle).toBe(true)
  })

  it('gives the slot back when a send fails', async () => {
    const sent: string[] = []
    const q = sendQueue(1, async (name: string) => {
      sent.push(name)
      if (name === 'bad') throw new Error('refused')
    })
    q.push('bad', 1)
    q.push('good', 1)
    await q.idle()
    expect(sent).toEqual(['bad', 'good'])
  })
})
