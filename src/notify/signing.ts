import { randomBytes } from 'node:crypto'
import { Webhook } from 'standardwebhooks'

// Standard Webhooks signatures (https://www.standardwebhooks.com), made by the `standardwebhooks` package, not by
// hand: the receiver checks them with the same package's verify(). Pure: no I/O, nothing of ours imported.

/** A new endpoint secret: whsec_ + base64 of 32 random bytes (the specification asks for 24 to 64). */
export function newSecret(): string {
  return `whsec_${randomBytes(32).toString('base64')}`
}

export interface SignedHeaders {
  'webhook-id': string
  'webhook-timestamp': string
  'webhook-signature': string
}

/**
 * The three headers of one delivery attempt. `at` is the attempt's time (a retry is never stale to a receiver that
 * checks the timestamp's freshness); during a rotation's overlap the signature list carries one per secret,
 * space-separated, newest first, so a receiver holding either secret verifies it.
 */
export function signDelivery(secrets: readonly string[], eventId: string, at: Date, body: string): SignedHeaders {
  const signature = secrets.map((s) => new Webhook(s).sign(eventId, at, body)).join(' ')
  return {
    'webhook-id': eventId,
    'webhook-timestamp': String(Math.floor(at.getTime() / 1000)),
    'webhook-signature': signature,
  }
}
