/**
 * A task a loop starts beside its own work when due (at most every `everyMs`), never two at a time: the loop goes on
 * while it runs. Failures are logged on the first and every 30th in a row, so a database that is down does not
 * flood the log. `idle()` resolves once no run is in progress (for shutdown).
 */
export function runBeside(o: {
  everyMs: number
  run: () => Promise<void>
  onError: (err: unknown, failures: number) => void
}) {
  let last = 0
  let running: Promise<void> | undefined
  let failures = 0
  return {
    whenDue() {
      if (running || Date.now() - last < o.everyMs) return
      last = Date.now()
      running = o
        .run()
        .then(() => {
          failures = 0
        })
        .catch((err) => {
          failures++
          if (failures === 1 || failures % 30 === 0) o.onError(err, failures)
        })
        .finally(() => {
          running = undefined
        })
    },
    idle: () => running ?? Promise.resolve(),
  }
}
