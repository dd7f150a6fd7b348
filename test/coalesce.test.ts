import { describe, expect, it } from 'vitest'
import { coalesce } from '../src/db/coalesce.ts'

// src/db/coalesce.ts: the batching that lets a burst of reports share one statement. Pure; the writes here are fakes
// that record what they were given.

const tick = () => new Promise<void>((r) => setImmediate(r))

describe('coalesce', () => {
  it('writes a lone item at once and the items that arrive meanwhile together, each with its own result', async () => {
    const batches: number[][] = []
    const write = async (items: number[]) => {
      batches.push(items)
      await tick()
      return items.map((n) => n * 10)
    }
    const add = coalesce(write)
    const results = await Promise.all([1, 2, 3, 4].map((n) => add(n)))
    expect(results).toEqual([10, 20, 30, 40])
    expect(batches).toEqual([[1], [2, 3, 4]])
  })

  it('puts at most one item per key in a batch and at most maxBatch items', async () => {
    const batches: string[][] = []
    const add = coalesce(
      async (items: string[]) => {
        batches.push(items)
        await tick()
        return items
      },
      { keyOf: (s) => s.slice(0, 1), maxBatch: 3 },
    )
    await Promise.all(['x0', 'a1', 'a2', 'b1', 'c1', 'd1', 'a3'].map((s) => add(s)))
    expect(batches).toEqual([['x0'], ['a1', 'b1', 'c1'], ['a2', 'd1'], ['a3']])
  })

  const refusing13 = (batches: number[][]) => async (items: number[]) => {
    batches.push(items)
    await tick()
    if (items.includes(13)) throw new Error('refused 13')
    return items
  }

  it('with retryAlone, writes the items of a failed batch one by one, so one bad item fails alone', async () => {
    const batches: number[][] = []
    const add = coalesce(refusing13(batches), { retryAlone: true })
    const results = await Promise.allSettled([1, 12, 13, 14].map((n) => add(n)))
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'rejected', 'fulfilled'])
    expect((results[2] as PromiseRejectedResult).reason.message).toBe('refused 13')
    expect(batches).toEqual([[1], [12, 13, 14], [12], [13], [14]])
  })

  it('without it, fails every item of a failed batch and writes nothing again', async () => {
    const batches: number[][] = []
    const add = coalesce(refusing13(batches))
    const results = await Promise.allSettled([1, 12, 13, 14].map((n) => add(n)))
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'rejected', 'rejected'])
    expect(batches).toEqual([[1], [12, 13, 14]])
  })
})
