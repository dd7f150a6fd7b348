import { parseArgs } from 'node:util'
import pg from 'pg'
import { STATUSES } from '../src/dispatch/call-state.ts'
import { normalizePhone } from '../src/phone.ts'

// `npm run calls -- <command>`: the operator's recipes from a shell. It reads the views of migration 0003 and acts
// only through its functions (retry_call, cancel_pending_calls), which change calls the way the service does.

const USAGE = `Usage: npm run calls -- <command> [--json]

  status                          calls by status, slots in use against the cap, backlog, calls in progress
  list [--status S] [--limit N]   newest calls first (S: ${STATUSES.join(', ')}; N: 1-1000, default 20)
  show <call id>                  one call and its timeline
  retry <call id>                 put a FAILED, EXPIRED or CANCELED call back to PENDING (retry_call)
  cancel --all-pending            cancel every PENDING call (cancel_pending_calls)
  campaigns                       campaigns: status, in progress against their cap, waiting for the window (campaign_overview)
  pause <campaign id>             no new dial of the campaign starts once this returns (pause_campaign)
  resume <campaign id>            dial the campaign again
  suppress <phone> [--reason R]   never dial this phone again; its PENDING calls are canceled (suppress_phone)
  events <call id>                the call's client webhook events and their delivery per endpoint
  redeliver <event id>            send a client webhook event again to its endpoints (redeliver_event)

  --json                          print JSON instead of tables

Connects to DATABASE_URL, or to the embedded PostgreSQL that \`npm start\` runs:
  postgres://postgres:postgres@127.0.0.1:\${EMBEDDED_PG_PORT:-54329}/orchestrator
To cancel one call, use the API: POST /api/v1/calls/<id>/cancel.`

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

class UsageError extends Error {}
/** Expected refusals (retry of a call that cannot be retried, unknown id): exit 1 with the message. */
class Refused extends Error {}

type Row = Record<string, unknown>
interface Output {
  json: unknown
  text: string
}

async function main(argv: string[]): Promise<number> {
  let args: ReturnType<typeof parse>
  try {
    args = parse(argv)
  } catch (err) {
    console.error(`${(err as Error).message}\n\n${USAGE}`)
    return 2
  }
  const [command, ...rest] = args.positionals
  if (args.values.help) {
    console.log(USAGE)
    return 0
  }
  if (!command) {
    console.error(USAGE)
    return 2
  }

  const url =
    process.env.DATABASE_URL ||
    `postgres://postgres:postgres@127.0.0.1:${process.env.EMBEDDED_PG_PORT || 54329}/orchestrator`
  const client = new pg.Client({ connectionString: url, application_name: 'calls-cli' })
  try {
    await client.connect()
  } catch (err) {
    console.error(`cannot reach the database at ${redact(url)}: ${(err as Error).message} (set DATABASE_URL)`)
    return 1
  }
  try {
    const out = await run(client, command, rest, args.values)
    console.log(args.values.json ? JSON.stringify(out.json, null, 2) : out.text)
    return 0
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`${err.message}\n\n${USAGE}`)
      return 2
    }
    if (err instanceof Refused) {
      console.error(err.message)
      return 1
    }
    throw err
  } finally {
    await client.end()
  }
}

function parse(argv: string[]) {
  return parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      json: { type: 'boolean', default: false },
      status: { type: 'string' },
      limit: { type: 'string' },
      'all-pending': { type: 'boolean', default: false },
      reason: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  })
}

async function run(
  db: pg.Client,
  command: string,
  rest: string[],
  opts: ReturnType<typeof parse>['values'],
): Promise<Output> {
  switch (command) {
    case 'status':
      return status(db)
    case 'list': {
      const status = opts.status?.toUpperCase()
      if (status !== undefined && !(STATUSES as readonly string[]).includes(status))
        throw new UsageError(`--status must be one of ${STATUSES.join(', ')}`)
      const limit = Number(opts.limit ?? 20)
      if (!Number.isInteger(limit) || limit < 1 || limit > 1000)
        throw new UsageError('--limit must be a whole number from 1 to 1000')
      return list(db, status, limit)
    }
    case 'show':
      return show(db, callId(rest))
    case 'retry':
      return retry(db, callId(rest))
    case 'events':
      return callEvents(db, callId(rest))
    case 'redeliver':
      return redeliver(db, callId(rest, 'an event id'))
    case 'cancel':
      if (!opts['all-pending'])
        throw new UsageError('cancel needs --all-pending (one call: POST /api/v1/calls/<id>/cancel)')
      return cancelAllPending(db)
    case 'campaigns':
      return campaigns(db)
    case 'pause':
    case 'resume':
      return pause(db, campaignId(rest), command === 'pause')
    case 'suppress': {
      const phone = normalizePhone(rest[0] ?? '')
      if (!phone) throw new UsageError('a phone number with country code is required, e.g. +966501234567')
      return suppress(db, phone, opts.reason)
    }
    default:
      throw new UsageError(`unknown command ${JSON.stringify(command)}`)
  }
}

function callId(rest: string[], what = 'a call id'): string {
  const id = rest[0]
  if (!id || !UUID.test(id)) throw new UsageError(`${what} (uuid) is required`)
  return id
}

function campaignId(rest: string[]): string {
  const id = rest[0]
  if (!id || !UUID.test(id)) throw new UsageError('a campaign id (uuid) is required')
  return id
}

// ---- commands ----

async function status(db: pg.Client): Promise<Output> {
  const overview = (
    await db.query(`
      select pending, due_now, in_progress, max_concurrent_calls, free_slots, completed, failed, expired, canceled,
             total, oldest_pending_age::text, oldest_due_wait::text, longest_in_progress::text
        from call_overview`)
  ).rows[0] as Row
  const { rows: inProgress } = await db.query(`
    select call_id, phone, attempt, age::text, provider_call_id, started_at from calls_in_progress limit 50`)
  const o = overview
  const cap = o.max_concurrent_calls ?? '?'
  const text = [
    `Slots     ${o.in_progress} of ${cap} in progress${o.free_slots === null ? '' : `, ${o.free_slots} free`}` +
      (o.longest_in_progress ? `; longest ${o.longest_in_progress}` : ''),
    `Backlog   ${o.pending} pending, ${o.due_now} due now` +
      (o.oldest_pending_age ? `; oldest ${o.oldest_pending_age}` : '') +
      (o.oldest_due_wait ? `; a due call has waited ${o.oldest_due_wait}` : ''),
    `Ended     ${o.completed} completed, ${o.failed} failed, ${o.expired} expired, ${o.canceled} canceled` +
      ` (${o.total} calls in all)`,
    ...(inProgress.length > 0
      ? [
          '',
          `In progress${Number(o.in_progress) > inProgress.length ? ` (oldest ${inProgress.length})` : ''}:`,
          table(inProgress),
        ]
      : []),
  ].join('\n')
  return { json: { overview, inProgress }, text }
}

async function list(db: pg.Client, status: string | undefined, limit: number): Promise<Output> {
  const { rows } = await db.query(
    `select id, status, attempts, mask_phone(to_phone) as phone, script_id, created_at, updated_at,
            last_error ->> 'code' as last_error
       from calls
      where $1::text is null or status = $1::text
      order by created_at desc, id desc
      limit $2::int`,
    [status ?? null, limit],
  )
  return { json: rows, text: rows.length > 0 ? table(rows) : 'no calls' }
}

async function show(db: pg.Client, id: string): Promise<Output> {
  const call = (
    await db.query(
      `select id, status, attempts, mask_phone(to_phone) as phone, script_id, metadata, last_error, provider_call_id,
              duration_sec, created_at, next_attempt_at, started_at, ended_at, expires_at
         from calls where id = $1::uuid`,
      [id],
    )
  ).rows[0] as Row | undefined
  if (!call) throw new Refused(`no call ${id}`)
  const { rows: timeline } = await db.query(
    `select event_id, created_at, attempt, kind, status, outcome, detail
       from call_timeline where call_id = $1::uuid`,
    [id],
  )
  const width = Math.max(...Object.keys(call).map((k) => k.length))
  const text = [
    ...Object.entries(call).map(([k, v]) => `${k.padEnd(width)}  ${cell(v)}`),
    '',
    'Timeline:',
    table(timeline.map(({ detail, ...e }) => ({ ...e, detail: compactDetail(detail as Row) }))),
  ].join('\n')
  return { json: { call, timeline }, text }
}

async function retry(db: pg.Client, id: string): Promise<Output> {
  const { rows } = await db.query('select retry_call($1::uuid) as retried', [id])
  if (!rows[0]?.retried) {
    const found = await db.query('select status from calls where id = $1::uuid', [id])
    const now = found.rows[0]?.status as string | undefined
    throw new Refused(
      now ? `call ${id} is ${now}: only FAILED, EXPIRED or CANCELED calls can be retried` : `no call ${id}`,
    )
  }
  const call = (
    await db.query('select id, status, attempts, next_attempt_at, expires_at from calls where id = $1::uuid', [id])
  ).rows[0] as Row
  return {
    json: { retried: true, call },
    text: `call ${id} is PENDING again; its next dial is attempt ${Number(call.attempts) + 1}, within about a second of a dispatcher seeing it (expires ${cell(call.expires_at)})`,
  }
}

async function callEvents(db: pg.Client, id: string): Promise<Output> {
  const { rows } = await db.query(
    `select e.sequence as seq, e.id as event_id, e.type, e.created_at,
            d.endpoint_id, d.state, d.attempts, d.last_status, d.last_error
       from webhook_events e
       left join webhook_deliveries d on d.event_id = e.id
      where e.call_id = $1::uuid
      order by e.sequence, d.endpoint_id`,
    [id],
  )
  if (rows.length === 0) {
    const found = await db.query('select 1 from calls where id = $1::uuid', [id])
    if (found.rowCount === 0) throw new Refused(`no call ${id}`)
  }
  return { json: rows, text: rows.length > 0 ? table(rows) : 'no client webhook events (no endpoint was enabled)' }
}

async function redeliver(db: pg.Client, id: string): Promise<Output> {
  const found = await db.query('select call_id from webhook_events where id = $1::uuid', [id])
  if (found.rowCount === 0) throw new Refused(`no event ${id}`)
  const { rows } = await db.query('select redeliver_event($1::uuid) as n', [id])
  const n = Number(rows[0]?.n ?? 0)
  if (n === 0) throw new Refused(`event ${id} has no enabled endpoint that wants it`)
  return {
    json: { eventId: id, deliveries: n },
    text: `event ${id} will be sent again to ${n} endpoint${n === 1 ? '' : 's'} within about a second`,
  }
}

async function cancelAllPending(db: pg.Client): Promise<Output> {
  const { rows } = await db.query('select cancel_pending_calls() as canceled')
  const canceled = Number(rows[0]?.canceled ?? 0)
  return {
    json: { canceled },
    text: `canceled ${canceled} PENDING call${canceled === 1 ? '' : 's'}; calls in progress finish on their own`,
  }
}

async function campaigns(db: pg.Client): Promise<Output> {
  const { rows } = await db.query(`
    select id, name, status, priority, in_progress || '/' || coalesce(max_concurrent_calls::text, '?') as slots,
           pending, due_now, waiting, next_eligible_at, completed, failed + expired + canceled as not_completed,
           done_percent
      from campaign_overview order by created_at desc limit 100`)
  return { json: rows, text: rows.length > 0 ? table(rows) : 'no campaigns' }
}

async function pause(db: pg.Client, id: string, paused: boolean): Promise<Output> {
  const { rows } = await db.query('select id, name, status from pause_campaign($1::uuid, $2::boolean)', [id, paused])
  const campaign = rows[0] as Row | undefined
  if (!campaign) {
    const found = await db.query('select status from campaigns where id = $1::uuid', [id])
    throw new Refused(found.rows[0] ? `campaign ${id} is CANCELED: it cannot change` : `no campaign ${id}`)
  }
  return {
    json: campaign,
    text: paused
      ? `campaign ${id} is PAUSED: no new dial of it starts; calls in progress finish`
      : `campaign ${id} is ACTIVE again`,
  }
}

async function suppress(db: pg.Client, phone: string, reason: string | undefined): Promise<Output> {
  const { rows } = await db.query('select suppress_phone($1::text, $2::text) as canceled', [phone, reason ?? null])
  const canceled = Number(rows[0]?.canceled ?? 0)
  return {
    json: { phone, canceled },
    text: `${phone} is on the do-not-call list; ${canceled} PENDING call${canceled === 1 ? '' : 's'} canceled`,
  }
}

// ---- output ----

function cell(v: unknown): string {
  if (v === null || v === undefined) return '-'
  if (v instanceof Date) return `${v.toISOString().slice(0, 19).replace('T', ' ')}Z`
  if (typeof v === 'object') return JSON.stringify(v)
  return String(v)
}

/** The detail of an event without what the outcome column already says, cut to a line. */
function compactDetail(detail: Row): string {
  const { outcome: _o, ...rest } = detail ?? {}
  const text = Object.keys(rest).length > 0 ? JSON.stringify(rest) : ''
  return text.length > 80 ? `${text.slice(0, 77)}...` : text
}

function table(rows: Row[]): string {
  const first = rows[0]
  if (!first) return '(none)'
  const columns = Object.keys(first)
  const cells = rows.map((r) => columns.map((c) => cell(r[c])))
  const widths = columns.map((c, i) => Math.max(c.length, ...cells.map((r) => (r[i] as string).length)))
  const line = (values: string[]) =>
    values
      .map((v, i) => v.padEnd(widths[i] as number))
      .join('  ')
      .trimEnd()
  return [line(columns.map((c) => c.toUpperCase())), ...cells.map(line)].join('\n')
}

function redact(url: string): string {
  try {
    const u = new URL(url)
    if (u.password) u.password = '***'
    return u.toString()
  } catch {
    return '(unparsable DATABASE_URL)'
  }
}

process.exitCode = await main(process.argv.slice(2))
