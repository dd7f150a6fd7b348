import { sql } from 'kysely'
import { describe, expect, it } from 'vitest'
import { createDb, createPool } from '../src/db/database.ts'
import { phone } from './helpers.ts'
import { useTestDb } from './kit.ts'

// The service's pool prepares statements that have parameters (src/db/database.ts). These pin down what that must not change.

const t = useTestDb()

describe('prepared statements', () => {
  it('answer a repeated query like an unprepared one, parameters included', async () => {
    await sql`insert into calls (to_phone, script_id, expires_at) values (${phone()}, 'a', now() + interval '1 hour'),
      (${phone()}, 'b', now() + interval '1 hour')`.execute(t.db)
    const byScript = (s: string) => t.db.selectFrom('calls').select('script_id').where('script_id', '=', s).execute()
    for (let i = 0; i < 8; i++) {
      expect(await byScript('a')).toEqual([{ script_id: 'a' }])
      expect(await byScript('b')).toEqual([{ script_id: 'b' }])
    }
  })

  it('recover after a migration changes the columns of a prepared select *', async () => {
    // One connection, so the statement is surely prepared on the connection that runs it after the change.
    const db = createDb(createPool(t.url, 1))
    try {
      await sql`create table prep_probe (id int primary key)`.execute(db)
      await sql`insert into prep_probe values (1)`.execute(db)
      const probe = () => sql<Record<string, unknown>>`select * from prep_probe where id = ${1}::int`.execute(db)
      for (let i = 0; i < 3; i++) await probe()
      await sql`alter table prep_probe add column note text default 'x'`.execute(db)
      // PostgreSQL refuses at most one run per connection ("cached plan must not change result type") ...
      const outcomes = []
      for (let i = 0; i < 4; i++)
        outcomes.push(
          await probe().then(
            (r) => r.rows[0],
            (e: { code?: string }) => e.code,
          ),
        )
      expect(outcomes.filter((o) => o === '0A000').length).toBeLessThanOrEqual(1)
      // ... and every run after that sees the new column.
      expect(outcomes.at(-1)).toEqual({ id: 1, note: 'x' })
    } finally {
      await sql`drop table if exists prep_probe`.execute(db)
      await db.destroy()
    }
  })
})
