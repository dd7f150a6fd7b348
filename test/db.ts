import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { inject } from 'vitest'
import { createDb, createPool, type Database } from '../src/db/database.ts'
import { withDatabase } from './global-setup.ts'

export interface TestDb {
  url: string
  db: Database
  drop(): Promise<void>
}

/** A fresh database cloned from the migrated template; drop() removes it. */
export async function createTestDb(): Promise<TestDb> {
  const adminUrl = inject('adminUrl')
  const name = `t_${process.ppid}_${randomBytes(4).toString('hex')}`
  const admin = new pg.Client({ connectionString: adminUrl })
  await admin.connect()
  try {
    await admin.query(`create database ${name} template ${inject('templateDb')}`)
  } finally {
    await admin.end()
  }
  const url = withDatabase(adminUrl, name)
  const db = createDb(createPool(url, 10))
  return {
    url,
    db,
    async drop() {
      await db.destroy()
      const c = new pg.Client({ connectionString: adminUrl })
      await c.connect()
      await c.query(`drop database if exists ${name} with (force)`)
      await c.end()
    },
  }
}
