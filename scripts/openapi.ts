import { writeFile } from 'node:fs/promises'
import { loadConfig } from '../src/config.ts'
import { createDb, createPool } from '../src/db/database.ts'
import { createWakeup } from '../src/dispatch/wakeup.ts'
import { buildApp } from '../src/http/app.ts'
import { createLogger } from '../src/log.ts'

// Writes the OpenAPI document the service serves at /docs/json: `npm run openapi -- openapi.json` (stdout without a
// path). Nothing connects: the pool opens a connection only when a route runs a query, and none runs here.

const out = process.argv[2]
const config = loadConfig({ ...process.env, NODE_ENV: 'development', LOG_LEVEL: 'silent' })
const pool = createPool(config.databaseUrl ?? 'postgres://localhost/openapi', 1)
const app = await buildApp({
  config,
  db: createDb(pool),
  log: createLogger('silent', 'openapi'),
  wakeup: createWakeup(undefined, undefined),
})
await app.ready()
const text = `${JSON.stringify(app.swagger(), null, 2)}\n`
await app.close()
await pool.end()
if (out) await writeFile(out, text)
else process.stdout.write(text)
