import { chmod, mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import pg from 'pg'
import { PgBoss } from 'pg-boss'
import type { TestProject } from 'vitest/node'
import { createDb, createPool, migrateToLatest } from '../src/db/database.ts'
import { type EmbeddedDb, freePort, startEmbeddedDb } from '../src/db/embedded.ts'

// One PostgreSQL per run: TEST_DATABASE_URL when set (any database on the server; we create our own), otherwise an
// embedded one in a temporary directory. A template database is migrated once, with pg-boss's schema, and each test
// file clones it (test/db.ts), which takes ~100 ms instead of a migration per file.

declare module 'vitest' {
  interface ProvidedContext {
    adminUrl: string
    templateDb: string
  }
}

export default async function setup(project: TestProject) {
  let embedded: EmbeddedDb | undefined
  let tmp: string | undefined
  let adminUrl = process.env.TEST_DATABASE_URL
  if (!adminUrl) {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'orchestrator-test-'))
    // Reachable by the `postgres` user PostgreSQL runs as under root; otherwise the data would move to /var/lib.
    await chmod(tmp, 0o755)
    embedded = await startEmbeddedDb({
      dir: path.join(tmp, 'pg'),
      port: await freePort(),
      database: 'postgres',
      persistent: false,
      settings: { max_connections: '300', fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off' },
    })
    adminUrl = embedded.url
  }
  const templateDb = `orchestrator_template_${process.pid}`
  const admin = new pg.Client({ connectionString: adminUrl })
  await admin.connect()
  await admin.query(`drop database if exists ${templateDb} with (force)`)
  await admin.query(`create database ${templateDb}`)

  const templateUrl = withDatabase(adminUrl, templateDb)
  const pool = createPool(templateUrl, 2)
  const db = createDb(pool)
  await migrateToLatest(db)
  await db.destroy()
  const boss = new PgBoss({ connectionString: templateUrl, supervise: false, schedule: false })
  boss.on('error', () => {})
  await boss.start()
  await boss.stop({ graceful: false })

  project.provide('adminUrl', adminUrl)
  project.provide('templateDb', templateDb)

  return async () => {
    const { rows } = await admin.query<{ datname: string }>(
      `select datname from pg_database where datname like $1 or datname = $2`,
      [`t\\_${process.pid}\\_%`, templateDb],
    )
    for (const r of rows) await admin.query(`drop database if exists ${r.datname} with (force)`)
    await admin.end()
    await embedded?.stop()
    if (tmp) await rm(tmp, { recursive: true, force: true })
  }
}

export function withDatabase(url: string, database: string): string {
  const u = new URL(url)
  u.pathname = `/${database}`
  return u.toString()
}
