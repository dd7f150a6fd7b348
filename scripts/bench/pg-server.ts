import { once } from 'node:events'
import { startEmbeddedDb } from '../../src/db/embedded.ts'

// The embedded PostgreSQL (the bench's default server) kept in a data directory that outlives the bench, so a long
// history fill can run once and be timed later through `npm run bench -- --pg-url=<the URL printed>`:
//
//   node scripts/bench/pg-server.ts <dir> <port>     runs until SIGINT/SIGTERM; the data stays in <dir>
//
// Default settings, as startBenchDb gives the bench (fsync and synchronous_commit on).

const [dir, port] = process.argv.slice(2)
if (!dir || !port) {
  console.error('usage: node scripts/bench/pg-server.ts <dir> <port>')
  process.exit(2)
}
const server = await startEmbeddedDb({ dir, port: Number(port), database: 'postgres', persistent: true })
console.log(`${server.url} (data in ${server.dataDir})`)
await Promise.race([once(process, 'SIGINT'), once(process, 'SIGTERM')])
await server.stop()
