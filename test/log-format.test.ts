import { execFileSync, spawnSync } from 'node:child_process'
import { Writable } from 'node:stream'
import { describe, expect, it } from 'vitest'
import { createLogger } from '../src/log.ts'

// LOG_FORMAT=auto (the default) prints readable lines to a terminal and JSON lines to anything else; json and pretty
// force one or the other. The service is started with a database that refuses connections, so it logs its start-up
// warnings, says on stderr in one sentence that it could not start, and exits 1.

const ANSI_COLOUR = new RegExp(`${String.fromCharCode(27)}\\[[0-9;]*m`, 'g')
const hasScript = spawnSync('script', ['--version']).status === 0
const ENV = { PATH: process.env.PATH ?? '', PORT: '0', DATABASE_URL: 'postgres://u:p@127.0.0.1:1/none' }

/** stdout of `node src/main.ts`, under a pseudo-terminal (util-linux `script`) when tty is true. */
function run(env: Record<string, string>, tty: boolean): string {
  const all = { ...ENV, ...env }
  if (!tty) return spawnSync(process.execPath, ['src/main.ts'], { env: all, encoding: 'utf8' }).stdout
  const assignments = Object.entries(all).map(([k, v]) => `${k}='${v}'`)
  const cmd = `env ${assignments.join(' ')} '${process.execPath}' src/main.ts`
  let out: string
  try {
    out = execFileSync('script', ['-qfec', cmd, '/dev/null'], { encoding: 'utf8' })
  } catch (err) {
    out = (err as { stdout: string }).stdout // the service exits 1, and script -e passes that on
  }
  return out.replace(/\r/g, '').replace(ANSI_COLOUR, '')
}

/** The log lines (the start-up failure sentence on stderr, merged in by the terminal, left out). */
const jsonLines = (out: string) =>
  out
    .trim()
    .split('\n')
    .filter((l) => !l.startsWith('could not start: '))
    .map((l) => JSON.parse(l) as { level: number; msg: string })

describe.runIf(hasScript)('log format', () => {
  it('prints readable lines at a terminal by default', () => {
    const out = run({}, true)
    expect(out).toMatch(/^\[\d\d:\d\d:\d\d\.\d{3}\] WARN \(orchestrator\): API_KEYS is not set/m)
    expect(out).toMatch(/^could not start: the database at DATABASE_URL \(127\.0\.0\.1:1\/none\) cannot be used/m)
    expect(out).not.toMatch(/^\{"level"/m)
  }, 90_000)

  it('prints JSON lines when stdout is not a terminal', () => {
    const lines = jsonLines(run({}, false))
    expect(lines[0]).toMatchObject({ level: 40, msg: expect.stringMatching(/^API_KEYS is not set/) })
    expect(lines).toHaveLength(2)
  }, 90_000)

  it('follows LOG_FORMAT over the terminal check', () => {
    expect(run({ LOG_FORMAT: 'pretty' }, false)).toMatch(/WARN \(orchestrator\): API_KEYS is not set/)
    expect(jsonLines(run({ LOG_FORMAT: 'json' }, true))[0]).toMatchObject({ level: 40 })
  }, 90_000)
})

describe('pretty logs', () => {
  it('are redacted like JSON logs', () => {
    const lines: string[] = []
    const sink = new Writable({
      write(chunk, _encoding, done) {
        lines.push(String(chunk))
        done()
      },
    })
    const log = createLogger('info', 'test', sink, 'pretty')
    log.info({ req: { headers: { authorization: 'Bearer s3cr3t' } }, config: { apiKeys: ['k-123'] } }, 'a request')
    const out = lines.join('')
    expect(out).toContain('a request')
    expect(out).toContain('[redacted]')
    expect(out).not.toMatch(/s3cr3t|k-123/)
  })
})
