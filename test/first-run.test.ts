import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { chmodSync, cpSync, existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { freePort } from '../src/db/embedded.ts'
import { waitFor } from './helpers.ts'
import { runServiceProcess, startServiceProcess } from './kit.ts'

// `npm start` with no DATABASE_URL, as a newcomer runs it: from a checkout that other users cannot enter (a home
// directory of mode 700), as root on this machine, where the embedded PostgreSQL runs as the `postgres` user. It
// must start, keep its data across restarts and stop cleanly; when it cannot start it says why in one sentence.

const tmp = mkdtempSync(path.join(os.tmpdir(), 'orchestrator-firstrun-'))
/** For the failures: a directory the `postgres` user can enter, so no data directory is made under /var/lib. */
const open = mkdtempSync(path.join(os.tmpdir(), 'orchestrator-firstrun-open-'))
chmodSync(open, 0o755)
const cleanup: string[] = [tmp, open]
afterAll(() => {
  for (const dir of cleanup) rmSync(dir, { recursive: true, force: true })
})

/** A checkout of this repository under `tmp` (mode 700): sources copied, node_modules hard-linked. */
function checkout(): string {
  const app = path.join(tmp, 'app')
  for (const dir of ['src', 'db']) cpSync(dir, path.join(app, dir), { recursive: true })
  cpSync('package.json', path.join(app, 'package.json'))
  execFileSync('cp', ['-al', 'node_modules', path.join(app, 'node_modules')])
  return app
}

function dataDirFrom(output: string[]): string | undefined {
  for (const line of output.join('').split('\n')) {
    if (!line.includes('started the embedded PostgreSQL')) continue
    return (JSON.parse(line) as { dataDir?: string }).dataDir
  }
  return undefined
}

/** One sentence on stderr, no stack trace anywhere, exit code 1. */
function expectOneSentence(r: { code: number | null; stdout: string; stderr: string }, mentions: RegExp) {
  expect(r.code).toBe(1)
  expect(`${r.stdout}${r.stderr}`).not.toMatch(/^\s+at /m)
  const lines = r.stderr.trim().split('\n')
  expect(lines, r.stderr).toHaveLength(1)
  expect(lines[0]).toMatch(mentions)
}

describe('npm start on a first run', () => {
  it('starts from a checkout inside a directory of mode 700, keeps its data across a restart, and stops on SIGTERM', async () => {
    expect(statSync(tmp).mode & 0o777).toBe(0o700)
    const app = checkout()
    const env = { EMBEDDED_PG_PORT: String(await freePort()), EMBEDDED_PG_DIR: path.join(app, '.data', 'postgres') }
    // Where src/db/embedded.ts keeps it as root: removed even when the service never says so (a start that times out).
    const id = createHash('sha256').update(env.EMBEDDED_PG_DIR).digest('hex').slice(0, 12)
    cleanup.push(`/var/lib/ai-call-orchestrator/data-postgres-${id}`)

    const first = await startServiceProcess(env, 90_000, app)
    const dataDir = dataDirFrom(first.output)
    if (dataDir) cleanup.push(dataDir)
    expect((await fetch(`${first.url}/health`)).status).toBe(200)
    const created = await fetch(`${first.url}/api/v1/calls`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ to: '+966501234567', scriptId: 'first-run' }),
    })
    expect(created.status).toBe(201)
    const { data } = (await created.json()) as { data: { id: string } }
    expect(await first.stop()).toBe(0)

    const second = await startServiceProcess(env, 90_000, app)
    expect(dataDirFrom(second.output)).toBe(dataDir)
    expect((await fetch(`${second.url}/api/v1/calls/${data.id}`)).status).toBe(200)
    expect(await second.stop()).toBe(0)
  }, 180_000)

  it('says in one sentence that EMBEDDED_PG_DIR cannot be created under a regular file', async () => {
    const file = path.join(tmp, 'a-file')
    writeFileSync(file, '')
    const r = await runServiceProcess({
      EMBEDDED_PG_PORT: String(await freePort()),
      EMBEDDED_PG_DIR: path.join(file, 'postgres'),
    })
    expectOneSentence(r, /EMBEDDED_PG_DIR/)
  }, 60_000)

  it('says in one sentence that PORT is taken, and leaves no PostgreSQL running behind it', async () => {
    const dataDir = path.join(open, 'port-taken')
    const busy = net.createServer().listen(0, '127.0.0.1')
    await new Promise((r) => busy.once('listening', r))
    try {
      const r = await runServiceProcess({
        PORT: String((busy.address() as net.AddressInfo).port),
        HOST: '127.0.0.1',
        EMBEDDED_PG_PORT: String(await freePort()),
        EMBEDDED_PG_DIR: dataDir,
      })
      expectOneSentence(r, /PORT/)
      // PostgreSQL removes its pid file when it has shut down
      await waitFor('the embedded PostgreSQL to shut down', () => !existsSync(path.join(dataDir, 'postmaster.pid')))
    } finally {
      busy.close()
    }
  }, 60_000)

  it('says in one sentence that the embedded PostgreSQL port is taken', async () => {
    const busy = net.createServer().listen(0, '127.0.0.1')
    await new Promise((r) => busy.once('listening', r))
    try {
      const r = await runServiceProcess({
        EMBEDDED_PG_PORT: String((busy.address() as net.AddressInfo).port),
        EMBEDDED_PG_DIR: path.join(open, 'pg-port-taken'),
      })
      expectOneSentence(r, /EMBEDDED_PG_PORT/)
    } finally {
      busy.close()
    }
  }, 60_000)
})
