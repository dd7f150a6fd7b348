// Leased deliveries waiting for one of a process's sending slots. A call further along its life goes first (the
// priority pg-boss fetched by), then the oldest: a worker leases its jobs as soon as it has fetched them and returns
// to pg-boss for more, so a call's final event fetched behind a batch of call.created is sent before that batch,
// instead of waiting in pg-boss until a worker's whole batch had found free slots (measured with BENCH_TRACE: the
// final events of the slowest percent waited there during each slot run's burst of 1,500 call.created).
// Pure: knows nothing of deliveries, leases or pg-boss.

export interface SendQueue<T> {
  /** Sends the item when a slot is free, before every waiting item of lower priority. */
  push(item: T, priority: number): void
  /** Resolves once fewer than `limit` items wait for a slot (a worker's cue to fetch more). */
  room(limit: number): Promise<void>
  /** Items waiting for a slot (not those being sent). */
  readonly waiting: number
  /** Resolves once nothing waits and nothing is being sent. */
  idle(): Promise<void>
}

export function sendQueue<T>(concurrency: number, send: (item: T) => Promise<void>): SendQueue<T> {
  // few items (a couple of batches): a sorted array is simplest; stable, so equal priorities keep their order
  const queue: { item: T; priority: number }[] = []
  let running = 0
  let watchers: { ready: () => boolean; resolve: () => void }[] = []

  const check = () => {
    const ready = watchers.filter((w) => w.ready())
    watchers = watchers.filter((w) => !ready.includes(w))
    for (const w of ready) w.resolve()
  }

  const pump = () => {
    while (running < concurrency && queue.length > 0) {
      const { item } = queue.shift() as { item: T; priority: number }
      running++
      void send(item)
        .catch(() => {}) // the sender logs its own failures; a slot must come back whatever happens
        .finally(() => {
          running--
          pump()
        })
    }
    check()
  }

  const wait = (ready: () => boolean) =>
    ready() ? Promise.resolve() : new Promise<void>((resolve) => watchers.push({ ready, resolve }))

  return {
    push(item, priority) {
      let i = queue.length
      while (i > 0 && (queue[i - 1] as { priority: number }).priority < priority) i--
      queue.splice(i, 0, { item, priority })
      pump()
    },
    room: (limit) => wait(() => queue.length < limit),
    get waiting() {
      return queue.length
    },
    idle: () => wait(() => queue.length === 0 && running === 0),
  }
}
