import { createHmac, timingSafeEqual } from 'node:crypto'

// Webhook signatures: `X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
// Signing the timestamp with the body stops a captured request from being replayed after the tolerance window.

export const SIGNATURE_HEADER = 'x-signature'
export const SIGNATURE_TOLERANCE_SEC = 300

export function sign(secret: string, rawBody: string | Buffer, nowSec = Math.floor(Date.now() / 1000)): string {
  const mac = createHmac('sha256', secret).update(`${nowSec}.`).update(rawBody).digest('hex')
  return `t=${nowSec},v1=${mac}`
}

export type VerifyResult = { ok: true } | { ok: false; reason: 'missing' | 'malformed' | 'stale' | 'mismatch' }

export function verify(
  secret: string,
  rawBody: string | Buffer,
  header: string | undefined,
  nowSec = Math.floor(Date.now() / 1000),
  toleranceSec = SIGNATURE_TOLERANCE_SEC,
): VerifyResult {
  if (!header) return { ok: false, reason: 'missing' }
  let t: number | undefined
  const candidates: string[] = []
  for (const part of header.split(',')) {
    const [key, value] = part.trim().split('=', 2)
    if (key === 't' && value && /^\d{1,12}$/.test(value)) t = Number(value)
    else if (key === 'v1' && value && /^[0-9a-f]{64}$/i.test(value)) candidates.push(value.toLowerCase())
  }
  if (t === undefined || candidates.length === 0) return { ok: false, reason: 'malformed' }
  if (Math.abs(nowSec - t) > toleranceSec) return { ok: false, reason: 'stale' }
  const expected = Buffer.from(createHmac('sha256', secret).update(`${t}.`).update(rawBody).digest('hex'))
  // Several v1 entries let a provider rotate secrets; each is compared in constant time.
  const matched = candidates.some((c) => timingSafeEqual(Buffer.from(c), expected))
  return matched ? { ok: true } : { ok: false, reason: 'mismatch' }
}

/**
 * The token our webhook URL carries beside `call` and `attempt`: the provider signs the body, not our query string,
 * so without it a signed webhook could be pointed at another call. 128 bits of HMAC-SHA256, base64url.
 */
export function webhookUrlToken(secret: string, callId: string, attempt: number): string {
  return createHmac('sha256', secret).update(`webhook-url:${callId}:${attempt}`).digest('base64url').slice(0, 22)
}

export function verifyWebhookUrlToken(
  secret: string,
  callId: string | undefined,
  attempt: number | undefined,
  token: string | undefined,
): boolean {
  if (!callId || !attempt || !token) return false
  const expected = Buffer.from(webhookUrlToken(secret, callId, attempt))
  const given = Buffer.from(token)
  return given.length === expected.length && timingSafeEqual(given, expected)
}
