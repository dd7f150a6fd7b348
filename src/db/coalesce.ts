/**
 * Batches calls to `write`: items added while a write runs go together in the next one, so a burst costs a few
 * statements instead of one per item, and a lone item is written at once. Each add() settles with its own result.
 *
 * - `keyOf`: a batch holds at most one item per key (undefined: no key); a second item with the same key waits for
 *   the next batch (a set-based UPDATE cannot apply two reports to one row in one statement).
 * - `retryAlone`: when a batch of several items fails, each item is written again on its own, so one item the
 *   database refuses cannot fail the others with it. Only for writes that are safe to repeat: a batch may fail after
 *   part of its work committed.
 */
export function coalesce<T, R>(
  write: (items: T[]) => Promise<R[]>,
  opts: { maxBatch?: number; keyOf?: (item: T) => string | undefined; retryAlone?: boolean } = {},
): (item: T) => Promise<R> {
  const maxBatch = opts.maxBatch ?? 500
  type Entry = { item: T; resolve: (r: R) => void; reject: (err: unknown) => void }
  let queue: Entry[] = []
  let writing = false

  function take(): Entry[] {
    const batch: Entry[] = []
    const rest: Entry[] = []
    const keys = new Set<string>()
    for (const e of queue) {
      const key = opts.keyOf?.(e.item)
      if (batch.length >= maxBatch || (key !== undefined && keys.has(key))) {
        rest.push(e)
        continue
      }
      if (key !== undefined) keys.add(key)
      batch.push(e)
    }
    queue = rest
    return batch
  }

  async function run(batch: Entry[]) {
    try {
      const results = await write(batch.map((e) => e.item))
      for (const [i, e] of batch.entries()) e.resolve(results[i] as R)
    } catch (err) {
      if (batch.length > 1 && opts.retryAlone) {
        for (const e of batch) await run([e])
        return
      }
      for (const e of batch) e.reject(err ?? new Error('write failed'))
    }
  }

  async function drain() {
    writing = true
    while (queue.length > 0) await run(take())
    writing = false
  }

  return (item) =>
    new Promise<R>((resolve, reject) => {
      queue.push({ item, resolve, reject })
      if (!writing) void drain()
    })
}
