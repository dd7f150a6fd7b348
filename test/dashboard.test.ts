import { existsSync } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { sql } from 'kysely'
import { type Browser, chromium, type Page } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type Service, startService } from '../src/service.ts'
import { saveDispatchSettings } from '../src/sql/settings.ts'
import { createTestDb, type TestDb } from './db.ts'
import { apiOnly, log, phone, testConfig, waitFor } from './helpers.ts'
import { useTestDb } from './kit.ts'

// The dashboard in a real headless Chromium against the whole service (dispatcher, built-in provider simulator),
// with calls holding slots. Needs Debian's chromium (.ci/run installs it); without it these tests skip, saying so.

// The page's globals, for the functions Playwright runs inside it (this project's TypeScript has no DOM library).
// Functions, not strings: the page's Content-Security-Policy forbids eval, and the test keeps that policy on.
declare const document: any
declare const window: any
declare function getComputedStyle(element: unknown): { fontSize: string }

const CHROMIUM = '/usr/bin/chromium'
const hasBrowser = existsSync(CHROMIUM)
const skipNote = hasBrowser ? '' : ` (skipped: no browser at ${CHROMIUM}; apt-get install chromium)`
// The picture in docs/operating.md is refreshed with UPDATE_SCREENSHOT=1; ordinary runs write under .vitest/ so a test run leaves
// the work tree clean.
const SCREENSHOT = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  process.env.UPDATE_SCREENSHOT ? '../docs/dashboard.png' : '../.vitest/dashboard.png',
)
const CAP = 5

const t = useTestDb()
let svc: Service
let browser: Browser
let page: Page
const problems: string[] = []

beforeAll(async () => {
  if (!hasBrowser) return
  svc = await startService(
    testConfig({
      DATABASE_URL: t.url,
      MAX_CONCURRENT_CALLS: String(CAP),
      MAX_RETRY_ATTEMPTS: '2',
      RETRY_BASE_DELAY_MS: '200',
      RETRY_MAX_DELAY_MS: '1000',
      SWEEP_INTERVAL_MS: '100',
      // calls hold their slot well beyond the test: the page must show them busy
      SIM_CALL_DURATION_MS: '30000',
    }),
    log,
  )
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  })
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') problems.push(`console.${m.type()}: ${m.text()}`)
  })
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`))
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`))
  page.on('response', (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`)
  })
}, 60_000)

afterAll(async () => {
  await browser?.close()
  await svc?.stop()
})

const createCalls = async (n: number, offset: number) => {
  const calls = Array.from({ length: n }, (_, i) => ({ to: phone(offset + i), scriptId: 'campaign' }))
  const res = await svc.app.inject({ method: 'POST', url: '/api/v1/calls/batch', payload: { calls } })
  expect(res.statusCode).toBe(201)
}
const inProgressIds = async () =>
  (await t.db.selectFrom('calls').select('id').where('status', '=', 'IN_PROGRESS').execute()).map((r) => r.id).sort()

describe('GET /dashboard', () => {
  it.skipIf(!hasBrowser)(
    `shows one box per slot, the busy ones holding the calls in progress, with no console errors${skipNote}`,
    async () => {
      // Some history first, so the charts and the call list have something to show: short calls, a few busy lines.
      svc.simulator?.configure({ callDurationMs: 50, outcomes: { COMPLETED: 6, BUSY: 2, FAILED: 1 } })
      await createCalls(12, 7000)
      await waitFor(
        'the warm-up calls to finish',
        async () => {
          const { rows } = await sql<{ n: number }>`
            select count(*)::int as n from calls where status in ('PENDING', 'IN_PROGRESS')`.execute(t.db)
          return rows[0]?.n === 0
        },
        20_000,
      )
      // Then 8 long calls for 5 slots: 5 in progress, 3 waiting.
      svc.simulator?.configure({ callDurationMs: 30_000, outcomes: { COMPLETED: 1 } })
      await createCalls(8, 8000)
      await waitFor('every slot to be taken', async () => (await inProgressIds()).length === CAP)

      await page.goto(`${svc.url}/dashboard`)
      await page.waitForFunction((n) => document.querySelectorAll('#slots .slot.busy').length === n, CAP, {
        timeout: 10_000,
      })
      expect(await page.locator('#slots .slot').count()).toBe(CAP)
      const busy = await page.locator('#slots .slot.busy').all()
      const shown = await Promise.all(busy.map((b) => b.getAttribute('data-call-id')))
      expect(shown.sort()).toEqual(await inProgressIds())
      expect(await page.locator('#slot-summary').textContent()).toBe(`${CAP} of ${CAP} in use, 0 free`)
      expect(await page.locator('#pending').textContent()).toBe('3')
      await page.waitForFunction(() => Number(document.querySelector('#completed-30').textContent) > 0)
      expect(await page.locator('#recent tr').count()).toBe(20)
      // a busy box names the call by its last 4 digits only
      expect(await page.locator('#slots .slot.busy .phone').first().textContent()).toMatch(/^\d{4} #1$/)

      // it refreshes itself: a call canceled through the API leaves the backlog on screen
      const { data } = (await svc.app.inject({ method: 'GET', url: '/api/v1/calls?status=PENDING&limit=1' })).json()
      await svc.app.inject({ method: 'POST', url: `/api/v1/calls/${data[0].id}/cancel` })
      await page.waitForFunction(() => document.querySelector('#pending').textContent === '2', undefined, {
        timeout: 5000,
      })

      await mkdir(path.dirname(SCREENSHOT), { recursive: true })
      await page.screenshot({ path: SCREENSHOT, fullPage: true })
      expect(problems).toEqual([])
    },
  )

  it.skipIf(!hasBrowser).each([30, 300])(
    `stays readable at %i slots: every box fits the page width, none too small${skipNote}`,
    async (cap) => {
      // The page takes the cap from dispatch_settings; the dispatcher keeps enforcing its own 5.
      await saveDispatchSettings(t.db, { maxConcurrentCalls: cap })
      await page.reload()
      await page.waitForFunction((n) => document.querySelectorAll('#slots .slot').length === n, cap, {
        timeout: 10_000,
      })
      const layout = await page.evaluate(() => {
        const boxes: { width: number; right: number }[] = [...document.querySelectorAll('#slots .slot')].map((b) =>
          b.getBoundingClientRect(),
        )
        return {
          overflowX: document.documentElement.scrollWidth > window.innerWidth,
          minWidth: Math.min(...boxes.map((b) => b.width)),
          maxRight: Math.max(...boxes.map((b) => b.right)),
          gridHeight: document.querySelector('#slots').getBoundingClientRect().height as number,
          fontPx: Number.parseFloat(getComputedStyle(document.querySelector('#slots .slot.busy')).fontSize),
        }
      })
      expect(layout.overflowX).toBe(false)
      expect(layout.maxRight).toBeLessThanOrEqual(1280)
      expect(layout.minWidth).toBeGreaterThanOrEqual(36)
      expect(layout.fontPx).toBeGreaterThanOrEqual(9)
      expect(layout.gridHeight).toBeLessThan(600) // 300 slots in well under one screen
      expect(await page.locator('#slots .slot.busy').count()).toBe(CAP)
      expect(problems).toEqual([])
      await saveDispatchSettings(t.db, { maxConcurrentCalls: CAP })
    },
  )

  it.skipIf(!hasBrowser)(
    `asks for an API key when the service requires one, then shows the data${skipNote}`,
    async () => {
      const keyed = await apiOnly(t, { API_KEYS: 'ops-key-1' })
      await keyed.listen({ port: 0, host: '127.0.0.1' })
      const other = await browser.newPage()
      const errors: string[] = []
      other.on('pageerror', (err) => errors.push(err.message))
      try {
        const { port } = keyed.server.address() as { port: number }
        await other.goto(`http://127.0.0.1:${port}/dashboard`)
        await other.locator('#key-input').waitFor({ state: 'visible' })
        await other.locator('#key-input').fill('ops-key-1')
        await other.locator('#key-form button').click()
        await other.waitForFunction(() => document.body.dataset.loaded === 'true', undefined, { timeout: 5000 })
        expect(await other.locator('#key-form').isHidden()).toBe(true)
        expect(await other.locator('#slots .slot').count()).toBe(CAP)
        expect(errors).toEqual([])
      } finally {
        await other.close()
        await keyed.close()
      }
    },
  )
})

// The webhook endpoints panel, on a database of its own (no dispatcher or relay touches its endpoints): one endpoint
// of each health, deliveries in every state, a URL whose query string carries a token.
describe('the webhook endpoints panel', () => {
  let w: TestDb
  let failing: string
  beforeAll(async () => {
    w = await createTestDb()
    const db = w.db
    const { rows: eps } = await sql<{ id: string; url: string }>`
      insert into webhook_endpoints (url, secret, enabled, disabled_reason, failing_since, last_success_at)
      values ('https://ok.example.com/hooks', 'whsec_a', true, null, null, now() - interval '1 minute'),
             ('https://slow.example.com/in?token=t0ps3cret', 'whsec_b', true, null, now() - interval '5 minutes',
              now() - interval '10 minutes'),
             ('https://gone.example.com/hooks', 'whsec_c', false, 'the endpoint answered 410 Gone', null, null)
      returning id, url`.execute(db)
    const [ok, slow, gone] = eps.map((e) => e.id) as [string, string, string]
    failing = slow
    // two calls, so two call.created events (the trigger writes them while an endpoint is enabled)
    await sql`
      insert into calls (to_phone, script_id, expires_at, next_attempt_at)
      select '+96650200000' || n, 'test', now() + interval '2 hours', now() + interval '1 hour'
        from generate_series(1, 2) n`.execute(db)
    const { rows: events } = await sql<{ id: string; call_id: string }>`
      select id, call_id from webhook_events order by created_at`.execute(db)
    const [e1, e2] = events as [{ id: string; call_id: string }, { id: string; call_id: string }]
    await sql`
      insert into webhook_deliveries (endpoint_id, event_id, line_id, sequence, state, attempts, created_at)
      values (${ok}::uuid, ${e1.id}::uuid, ${e1.call_id}::uuid, 1, 'delivered', 1, now() - interval '2 minutes'),
             (${slow}::uuid, ${e1.id}::uuid, ${e1.call_id}::uuid, 1, 'queued', 3, now() - interval '90 seconds'),
             (${slow}::uuid, ${e2.id}::uuid, ${e2.call_id}::uuid, 1, 'queued', 0, now() - interval '30 seconds'),
             (${gone}::uuid, ${e2.id}::uuid, ${e2.call_id}::uuid, 1, 'failed', 1, now() - interval '30 seconds')
    `.execute(db)
  })
  afterAll(async () => {
    await w?.drop()
  })

  it('reports health counts, and per endpoint the backlog and the age of its oldest undelivered event', async () => {
    const app = await apiOnly(w)
    try {
      const res = await app.inject({ method: 'GET', url: '/api/v1/dashboard' })
      expect(res.statusCode).toBe(200)
      const { webhooks } = res.json().data
      expect([webhooks.healthy, webhooks.failing, webhooks.disabled]).toEqual([1, 1, 1])
      expect(
        webhooks.endpoints.map((e: { url: string; health: string; backlog: number; retrying: number }) => [
          e.url,
          e.health,
          e.backlog,
          e.retrying,
        ]),
      ).toEqual([
        ['https://slow.example.com/in', 'failing', 2, 1],
        ['https://ok.example.com/hooks', 'healthy', 0, 0],
        ['https://gone.example.com/hooks', 'disabled', 0, 0],
      ])
      const [slow, ok, gone] = webhooks.endpoints
      expect(slow.id).toBe(failing)
      expect(slow.oldestUndeliveredSec).toBeGreaterThanOrEqual(89)
      expect(slow.oldestUndeliveredSec).toBeLessThan(3600)
      expect(slow.failingSince).not.toBeNull()
      expect(ok.oldestUndeliveredSec).toBeNull()
      expect(gone.disabledReason).toMatch(/410/)
      // neither the receiver's token nor a secret leaves the service
      expect(res.body).not.toContain('t0ps3cret')
      expect(res.body).not.toContain('whsec_')
    } finally {
      await app.close()
    }
  })

  it.skipIf(!hasBrowser)(`shows the panel, failing endpoints first${skipNote}`, async () => {
    const app = await apiOnly(w)
    await app.listen({ port: 0, host: '127.0.0.1' })
    const other = await browser.newPage()
    const errors: string[] = []
    other.on('pageerror', (err) => errors.push(err.message))
    try {
      const { port } = app.server.address() as { port: number }
      await other.goto(`http://127.0.0.1:${port}/dashboard`)
      await other.waitForFunction(() => document.body.dataset.loaded === 'true', undefined, { timeout: 5000 })
      expect(await other.locator('#webhook-summary').textContent()).toBe('1 healthy, 1 failing, 1 disabled')
      const rows = other.locator('#webhooks tr')
      expect(await rows.count()).toBe(3)
      expect(await rows.first().getAttribute('data-endpoint-id')).toBe(failing)
      expect(await rows.first().locator('.badge').textContent()).toBe('failing')
      expect(await rows.first().locator('.backlog').textContent()).toBe('2')
      expect(await rows.nth(2).textContent()).toContain('410 Gone')
      expect(errors).toEqual([])
    } finally {
      await other.close()
      await app.close()
    }
  })
})
