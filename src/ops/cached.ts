/**
 * `load` at most once per `ms`, shared by every caller in that time (and by callers that arrive while a load runs),
 * so a scrape or a dashboard poll costs the database one query per second however many clients ask. A failed load
 * is not cached.
 */
export function cachedFor<T>(ms: number, load: () => Promise<T>): () => Promise<T> {
  let value: { at: number; v: T } | undefined
  let running: Promise<T> | undefined
  return () => {
    if (value && performance.now() - value.at < ms) return Promise.resolve(value.v)
    running ??= load()
      .then((v) => {
        value = { at: performance.now(), v }
        return v
      })
      .finally(() => {
        running = undefined
      })
    return running
  }
}
