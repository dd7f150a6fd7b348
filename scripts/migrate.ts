import { createDb, createPool, migrateToLatest } from '../src/db/database.ts'

// `npm run migrate`: applies db/migrations to DATABASE_URL and exits. The service does the same at start-up; this is
// for a rollout that migrates once, before any new process starts.
const url = process.env.DATABASE_URL
if (!url) {
  console.error('DATABASE_URL is not set: nothing to migrate (the embedded database migrates itself at start-up)')
  process.exit(2)
}
const db = createDb(createPool(url, 1))
try {
  const applied = await migrateToLatest(db)
  console.log(applied.length > 0 ? `applied: ${applied.join(', ')}` : 'the database is up to date')
} catch (err) {
  console.error(`migration failed: ${(err as Error).message}`)
  process.exitCode = 1
} finally {
  await db.destroy()
}
