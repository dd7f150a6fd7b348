import { createHmac, timingSafeEqual } from 'node:crypto'
import type { VerifyResult } from './signature.ts'

// Vapi webhooks (https://docs.vapi.ai/server-url/server-authentication) are authenticated one of two ways, both
// checked against WEBHOOK_SECRET:
// - an HMAC credential (the SDK's HmacAuthenticationPlan, with its documented defaults): `x-signature` = hex
//   HMAC-SHA256(secret, "{timestamp}.{body}"), `x-timestamp` = the timestamp. The docs do not say whether the
//   timestamp is in seconds or milliseconds; both are accepted (a value above 10^12 is milliseconds). A timestamp
//   more than 5 minutes away is refused, so a captured request cannot be replayed later.
// - the server URL's `secret`, sent as is in `x-vapi-secret` (the older docs name the header X-Vapi-Signature; both
//   are read). A static secret cannot stop a replay; a replayed end report only repeats an end already applied.

export const VAPI_TOLERANCE_SEC = 300

export function signVapi(secret: string, rawBody: string | Buffer, timestamp: string): string {
  return createHmac('sha256', secret).update(`${timestamp}.`).update(rawBody).digest('hex')
}

export function verifyVapi(
  secret: string,
  rawBody: string | Buffer,
  headers: Record<string, string | string[] | undefined>,
  nowMs = Date.now(),
): VerifyResult {
  const h = (name: string) => {
    const v = headers[name]
    return Array.isArray(v) ? v[0] : v
  }
  const signature = h('x-signature')
  const timestamp = h('x-timestamp')
  if (signature !== undefined || timestamp !== undefined) {
    if (!signature || !timestamp || !/^\d{1,16}$/.test(timestamp)) return { ok: false, reason: 'malformed' }
    const hex = signature.replace(/^sha256=/, '').toLowerCase()
    if (!/^[0-9a-f]{64}$/.test(hex)) return { ok: false, reason: 'malformed' }
    const t = Number(timestamp)
    const tMs = t > 1e12 ? t : t * 1000
    if (Math.abs(nowMs - tMs) > VAPI_TOLERANCE_SEC * 1000) return { ok: false, reason: 'stale' }
    const expected = Buffer.from(signVapi(secret, rawBody, timestamp))
    return timingSafeEqual(Buffer.from(hex), expected) ? { ok: true } : { ok: false, reason: 'mismatch' }
  }
  const plain = h('x-vapi-secret') ?? h('x-vapi-signature')
  if (!plain) return { ok: false, reason: 'missing' }
  const a = Buffer.from(plain)
  const b = Buffer.from(secret)
  return a.length === b.length && timingSafeEqual(a, b) ? { ok: true } : { ok: false, reason: 'mismatch' }
}
