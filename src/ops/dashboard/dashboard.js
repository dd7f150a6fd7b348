// The dashboard's only script: polls GET /api/v1/dashboard and redraws. Plain DOM, no build step, no library.

const REFRESH_MS = 1500
const KEY_STORAGE = 'orchestrator.apiKey'
const SVG = 'http://www.w3.org/2000/svg'

const $ = (id) => document.getElementById(id)
let apiKey = sessionStorage.getItem(KEY_STORAGE) ?? ''
let timer

// callId -> box index: a call keeps its box for as long as it holds a slot, so boxes do not shuffle between polls.
const assignment = new Map()

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v
    else node.setAttribute(k, v)
  }
  for (const c of children) node.append(c)
  return node
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag)
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v))
  if (text !== undefined) node.textContent = text
  return node
}

const clock = (iso) => new Date(iso).toLocaleTimeString([], { hour12: false })
const hhmm = (iso) => new Date(iso).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hour12: false })
const last4 = (phone) => phone.slice(-4)
// a time of day alone would hide that an endpoint last succeeded days ago
const when = (iso) => (Date.now() - new Date(iso) < 86_400_000 ? clock(iso) : new Date(iso).toLocaleString())

function duration(sec, short = false) {
  const s = Math.max(0, Math.floor(sec))
  if (s < 60) return `${s}s`
  if (s < 3600) return short ? `${Math.floor(s / 60)}m` : `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}`
}

function setStatus(text, kind) {
  const s = $('status')
  s.textContent = text
  s.className = `status ${kind}`
}

// ---- slots ----

function placeSlots(slots, cap) {
  const live = new Set(slots.map((s) => s.callId))
  for (const id of [...assignment.keys()]) if (!live.has(id)) assignment.delete(id)
  const boxes = Math.max(cap, slots.length)
  for (const [id, i] of [...assignment]) if (i >= boxes) assignment.delete(id)
  const used = new Set(assignment.values())
  let next = 0
  for (const s of slots) {
    if (assignment.has(s.callId)) continue
    while (used.has(next)) next++
    assignment.set(s.callId, next)
    used.add(next)
  }
  return boxes
}

function renderSlots(data) {
  const cap = data.maxConcurrentCalls
  const boxes = placeSlots(data.slots, cap)
  const container = $('slots')
  // Fewer, larger boxes for a small cap; at 300 each box is a small tile with the last 4 digits and the age.
  const size = boxes <= 40 ? 'roomy' : boxes <= 120 ? 'compact' : 'tiny'
  container.className = `slots ${size}`
  container.style.setProperty('--box', { roomy: '104px', compact: '64px', tiny: '38px' }[size])
  container.style.setProperty('--box-h', { roomy: '44px', compact: '34px', tiny: '30px' }[size])
  while (container.children.length < boxes) container.append(el('li'))
  while (container.children.length > boxes) container.lastElementChild.remove()

  const byBox = new Map()
  for (const s of data.slots) byBox.set(assignment.get(s.callId), s)
  for (let i = 0; i < boxes; i++) {
    const box = container.children[i]
    const s = byBox.get(i)
    if (!s) {
      box.className = 'slot free'
      box.removeAttribute('data-call-id')
      box.title = `slot ${i + 1}: free`
      box.replaceChildren(size === 'tiny' ? '' : el('span', {}, `${i + 1}`))
      continue
    }
    const ratio = data.callTimeoutSec > 0 ? s.seconds / data.callTimeoutSec : 0
    const age = ratio < 0.5 ? 'age-ok' : ratio < 0.9 ? 'age-warn' : 'age-late'
    box.className = `slot busy ${age}${i >= cap ? ' over' : ''}`
    box.dataset.callId = s.callId
    box.title = `slot ${i + 1}: ${s.phone}, attempt ${s.attempt}, in the call for ${duration(s.seconds)} (since ${clock(s.startedAt)})\ncall ${s.callId}`
    const top = size === 'roomy' ? `${last4(s.phone)} #${s.attempt}` : last4(s.phone)
    box.replaceChildren(el('div', { class: 'phone' }, top), el('div', {}, duration(s.seconds, size === 'tiny')))
  }
  const free = Math.max(cap - data.slots.length, 0)
  $('slot-summary').textContent = `${data.slots.length} of ${cap} in use, ${free} free`
}

// ---- numbers and charts ----

function renderStats(data) {
  const sum = (k) => data.perMinute.reduce((a, m) => a + m[k], 0)
  $('pending').textContent = data.backlog.pending
  $('due-now').textContent = data.backlog.dueNow
  $('retrying').textContent = data.backlog.retrying
  $('oldest').textContent = data.backlog.oldestPendingSec === null ? '–' : duration(data.backlog.oldestPendingSec)
  $('completed-30').textContent = sum('completed')
  $('failed-30').textContent = sum('failed')
  $('retries-30').textContent = sum('retries')
  $('expired-30').textContent = sum('expired')
}

/** Bars per minute: `series` is [[key, cssClass], ...], stacked when `stacked`, side by side otherwise. */
function renderChart(node, minutes, series, stacked) {
  const W = 600
  const H = 150
  const left = 28
  const bottom = 16
  const top = 8
  const plotH = H - bottom - top
  const slotW = (W - left) / minutes.length
  const totals = minutes.map((m) =>
    stacked ? series.reduce((a, [k]) => a + m[k], 0) : Math.max(...series.map(([k]) => m[k])),
  )
  const max = Math.max(1, ...totals)
  const y = (v) => top + plotH - (v / max) * plotH
  const parts = [
    svg('line', { class: 'axis', x1: left, x2: W, y1: top + plotH, y2: top + plotH }),
    svg('text', { x: left - 4, y: top + 8, 'text-anchor': 'end' }, String(max)),
    svg('text', { x: left - 4, y: top + plotH, 'text-anchor': 'end' }, '0'),
  ]
  minutes.forEach((m, i) => {
    const x0 = left + i * slotW + 1
    const barW = slotW - 2
    let base = 0
    series.forEach(([k, cls], j) => {
      const v = m[k]
      if (v > 0) {
        const x = stacked ? x0 : x0 + (j * barW) / series.length
        const w = stacked ? barW : barW / series.length
        const y1 = y(stacked ? base + v : v)
        const y0 = y(stacked ? base : 0)
        const bar = svg('rect', { class: cls, x, y: y1, width: Math.max(w, 1), height: Math.max(y0 - y1, 1) })
        bar.append(svg('title', {}, `${hhmm(m.minute)} ${k}: ${v}`))
        parts.push(bar)
      }
      if (stacked) base += v
    })
    if (i % 5 === 0 || i === minutes.length - 1) {
      const last = i === minutes.length - 1
      const x = last ? W : x0 + barW / 2
      parts.push(svg('text', { x, y: H - 3, 'text-anchor': last ? 'end' : 'middle' }, hhmm(m.minute)))
    }
  })
  node.replaceChildren(...parts)
}

// ---- latest calls ----

const EVENT_LABELS = {
  CREATED: 'created',
  UPDATED: 'updated',
  CANCELED: 'canceled',
  CLAIMED: 'claimed',
  DIAL_ACCEPTED: 'accepted',
  DIAL_FAILED: 'dial failed',
  DIAL_THROTTLED: '429',
  DIAL_REJECTED: 'rejected',
  EXPIRED: 'expired',
  TIMED_OUT: 'timed out',
  RETRY_REQUESTED: 'retry requested',
}

function eventChip(e) {
  const label = e.kind === 'WEBHOOK' ? (e.status ?? 'webhook').toLowerCase().replace('_', ' ') : EVENT_LABELS[e.kind]
  const good = e.kind === 'DIAL_ACCEPTED' || (e.kind === 'WEBHOOK' && e.status === 'COMPLETED')
  const bad =
    ['DIAL_FAILED', 'DIAL_REJECTED', 'TIMED_OUT', 'EXPIRED'].includes(e.kind) ||
    (e.kind === 'WEBHOOK' && ['FAILED', 'BUSY', 'NO_ANSWER'].includes(e.status))
  const note = e.kind === 'DIAL_THROTTLED' || e.kind === 'RETRY_REQUESTED'
  const ignored = e.outcome === 'duplicate' || e.outcome === 'stale'
  const cls = `event${good ? ' good' : bad ? ' badev' : note ? ' note' : ''}${ignored ? ' ignored' : ''}`
  const title = `${clock(e.at)} attempt ${e.attempt}: ${e.kind}${e.status ? ` ${e.status}` : ''}${e.outcome ? ` (${e.outcome})` : ''}`
  return el('span', { class: cls, title }, e.kind === 'CLAIMED' ? `${label} #${e.attempt}` : label)
}

function renderRecent(data) {
  const rows = data.recent.map((c) =>
    el(
      'tr',
      {},
      el('td', { class: 'mono' }, clock(c.updatedAt)),
      el('td', { class: 'mono', title: c.id }, c.id.slice(0, 8)),
      el('td', { class: 'mono' }, c.phone),
      el('td', {}, el('span', { class: `badge ${c.status}` }, c.status)),
      el('td', {}, String(c.attempts)),
      el('td', {}, el('div', { class: 'events' }, ...c.events.map(eventChip))),
    ),
  )
  $('recent').replaceChildren(...rows)
}

function renderCampaigns(data) {
  const rows = data.campaigns.map((k) =>
    el(
      'tr',
      {},
      el('td', { title: k.id }, k.name),
      el('td', {}, el('span', { class: `badge ${k.status}` }, k.status)),
      el('td', {}, String(k.priority)),
      el('td', {}, `${k.inProgress} / ${k.maxConcurrentCalls ?? data.maxConcurrentCalls}`),
      el('td', {}, String(k.dueNow)),
      el('td', {}, String(k.waiting)),
      el('td', { class: 'mono' }, k.nextEligibleAt ? new Date(k.nextEligibleAt).toLocaleString() : '–'),
      el('td', {}, k.donePercent === null ? '–' : `${k.donePercent}% of ${k.total}`),
    ),
  )
  $('campaigns').replaceChildren(
    ...(rows.length > 0 ? rows : [el('tr', {}, el('td', { colspan: '8' }, 'no campaigns'))]),
  )
}

// Failing endpoints come first (the query orders them); backlog and age say how far behind an endpoint is.
function renderWebhooks(data) {
  const w = data.webhooks
  $('webhook-summary').textContent = `${w.healthy} healthy, ${w.failing} failing, ${w.disabled} disabled`
  const rows = w.endpoints.map((e) =>
    el(
      'tr',
      { 'data-endpoint-id': e.id },
      el('td', { class: 'mono', title: e.id }, e.url),
      el('td', {}, el('span', { class: `badge ${e.health}` }, e.health)),
      el('td', { class: 'backlog' }, String(e.backlog)),
      el('td', {}, String(e.retrying)),
      el('td', { class: 'mono' }, e.oldestUndeliveredSec === null ? '–' : duration(e.oldestUndeliveredSec)),
      el('td', { class: 'mono', title: e.lastSuccessAt ?? '' }, e.lastSuccessAt ? when(e.lastSuccessAt) : '–'),
      el(
        'td',
        {},
        e.disabledReason ?? (e.failingSince ? `failing since ${new Date(e.failingSince).toLocaleString()}` : ''),
      ),
    ),
  )
  $('webhooks').replaceChildren(
    ...(rows.length > 0 ? rows : [el('tr', {}, el('td', { colspan: '7' }, 'no webhook endpoints'))]),
  )
}

// ---- polling ----

function render(data) {
  renderSlots(data)
  renderStats(data)
  renderChart(
    $('throughput'),
    data.perMinute,
    [
      ['completed', 'ok'],
      ['failed', 'bad'],
    ],
    true,
  )
  renderChart(
    $('retries'),
    data.perMinute,
    [
      ['retries', 'warn'],
      ['expired', 'muted'],
    ],
    false,
  )
  renderCampaigns(data)
  renderWebhooks(data)
  renderRecent(data)
}

async function poll() {
  clearTimeout(timer)
  try {
    const res = await fetch('/api/v1/dashboard', {
      headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {},
      cache: 'no-store',
    })
    if (res.status === 401) {
      $('key-form').hidden = false
      setStatus('an API key is needed', 'warn')
      return // polling resumes when a key is entered
    }
    if (!res.ok) throw new Error(`HTTP ${res.status}`)
    const { data } = await res.json()
    render(data)
    document.body.dataset.loaded = 'true'
    setStatus(`updated ${clock(data.now)}, every ${REFRESH_MS / 1000} s`, 'ok')
  } catch (err) {
    setStatus(`no data: ${err instanceof Error ? err.message : String(err)}`, 'error')
  }
  timer = setTimeout(poll, REFRESH_MS)
}

$('key-form').addEventListener('submit', (event) => {
  event.preventDefault()
  apiKey = $('key-input').value.trim()
  sessionStorage.setItem(KEY_STORAGE, apiKey)
  $('key-form').hidden = true
  poll()
})

poll()
