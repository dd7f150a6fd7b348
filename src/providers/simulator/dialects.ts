import { createHmac } from 'node:crypto'
import { sign as retellSign } from 'retell-sdk'
import { sign } from '../signature.ts'

// The simulator's three dialects: the generic contract, and the subset of Vapi and Retell the adapters use, with
// their documented JSON shapes, signatures and end reasons (docs/providers.md lists the pages). Each dialect turns a
// create-call request into a call, and a call into the create response, its webhooks and its get-call answer.

export type Dialect = 'generic' | 'vapi' | 'retell'
export type SimOutcome = 'COMPLETED' | 'FAILED' | 'BUSY' | 'NO_ANSWER' | 'VOICEMAIL' | 'NO_WEBHOOK'

export interface SimCall {
  id: string
  dialect: Dialect
  to: string
  /** The platform metadata the dial carried (Vapi assistantOverrides.metadata, Retell metadata). */
  metadata: Record<string, unknown> | undefined
  assistant: string
  outcome: SimOutcome
  endReason: string
  startedAt: number
  endedAt: number | undefined
}

export interface ParsedDial {
  to: string
  /** "<call id>:<attempt>": the Idempotency-Key, or our ids from the platform metadata. */
  key: string
  /** Where this call's webhooks go: the generic webhookUrl, or the server URL configured for the dialect. */
  webhookUrl: string | undefined
  metadata: Record<string, unknown> | undefined
  assistant: string
}

export interface DialectSpec {
  createPath: string
  /** The get-call path prefix, followed by the platform's call id. */
  getPrefix: string
  parse(body: unknown, idempotencyKey: string | undefined): ParsedDial | string
  created(call: SimCall): object
  progress(call: SimCall): object[]
  final(call: SimCall): object
  poll(call: SimCall): object
  notFound: object
  endReason(outcome: SimOutcome): string
  /** Headers that sign one webhook body, or none when no secret is known. */
  sign(body: string, keys: { apiKey?: string; webhookSecret?: string }): Promise<Record<string, string>>
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)
const keyOf = (m: Record<string, unknown> | undefined) =>
  m && typeof m.orchestrator_call_id === 'string' ? `${m.orchestrator_call_id}:${m.orchestrator_attempt}` : ''
const iso = (ms: number | undefined) => (ms === undefined ? undefined : new Date(ms).toISOString())
const durationSec = (c: SimCall) => Math.round(((c.endedAt ?? Date.now()) - c.startedAt) / 1000)
const RECORDING = (c: SimCall) => `https://recordings.example.invalid/${c.id}.wav`
const TRANSCRIPT = 'Agent: Hello, this is a simulated call.\nUser: Thank you, goodbye.'

const generic: DialectSpec = {
  createPath: '/api/v1/calls',
  getPrefix: '/api/v1/calls/',
  parse(body, idempotencyKey) {
    if (!isObject(body)) return 'the body must be a JSON object'
    const { to, scriptId, webhookUrl, metadata } = body
    if (typeof to !== 'string' || to === '') return 'to is required'
    if (typeof scriptId !== 'string' || scriptId === '') return 'scriptId is required'
    if (typeof webhookUrl !== 'string' || !/^https?:\/\//.test(webhookUrl) || !URL.canParse(webhookUrl)) {
      return 'webhookUrl must be an http(s) URL'
    }
    if (metadata !== undefined && !isObject(metadata)) return 'metadata must be an object'
    if (!idempotencyKey) return 'the Idempotency-Key header is required'
    return { to, key: idempotencyKey, webhookUrl, metadata: undefined, assistant: scriptId }
  },
  created: (c) => ({ callId: c.id }),
  progress: (c) => [
    { callId: c.id, status: 'RINGING' },
    { callId: c.id, status: 'IN_PROGRESS' },
  ],
  final(c) {
    const status = c.outcome === 'NO_WEBHOOK' ? 'COMPLETED' : c.outcome
    const error = GENERIC_ERRORS[status]
    return {
      callId: c.id,
      status,
      durationSec: durationSec(c),
      completedAt: iso(c.endedAt ?? Date.now()),
      ...(error ? { error } : {}),
    }
  },
  poll(c) {
    if (c.endedAt === undefined) return { callId: c.id, status: 'IN_PROGRESS' }
    return generic.final(c)
  },
  notFound: { error: 'no such call', code: 'CALL_NOT_FOUND' },
  endReason: (o) => (o === 'NO_WEBHOOK' ? 'COMPLETED' : o),
  async sign(body, { webhookSecret }): Promise<Record<string, string>> {
    return webhookSecret ? { 'x-signature': sign(webhookSecret, body) } : {}
  },
}
const GENERIC_ERRORS: Record<string, string> = {
  FAILED: 'agent error',
  BUSY: 'line busy',
  NO_ANSWER: 'no answer',
  VOICEMAIL: 'reached voicemail',
}

// https://docs.retellai.com/api-references/create-phone-call, /api-references/get-call, /features/webhook-overview,
// /features/secure-webhook (x-retell-signature, made here with the SDK's own sign()).
const RETELL_REASONS: Record<SimOutcome, string> = {
  COMPLETED: 'user_hangup',
  NO_WEBHOOK: 'agent_hangup',
  BUSY: 'dial_busy',
  NO_ANSWER: 'dial_no_answer',
  VOICEMAIL: 'voicemail_reached',
  FAILED: 'dial_failed',
}
const RETELL_NOT_CONNECTED = new Set([
  'dial_busy',
  'dial_failed',
  'dial_no_answer',
  'invalid_destination',
  'telephony_provider_permission_denied',
  'telephony_provider_unavailable',
  'sip_routing_error',
  'marked_as_spam',
  'user_declined',
])
function retellCall(c: SimCall) {
  const ended = c.endedAt !== undefined
  const status = !ended
    ? 'ongoing'
    : RETELL_NOT_CONNECTED.has(c.endReason)
      ? 'not_connected'
      : c.endReason.startsWith('error_')
        ? 'error'
        : 'ended'
  const connected = ended && status === 'ended'
  return {
    call_type: 'phone_call',
    call_id: c.id,
    agent_id: c.assistant,
    agent_version: 1,
    call_status: status,
    direction: 'outbound',
    from_number: '+14155550100',
    to_number: c.to,
    metadata: c.metadata,
    start_timestamp: c.startedAt,
    ...(ended
      ? {
          end_timestamp: c.endedAt,
          duration_ms: (c.endedAt as number) - c.startedAt,
          disconnection_reason: c.endReason,
          call_cost: { combined_cost: 12.5, product_costs: [], total_duration_seconds: durationSec(c) },
          ...(connected
            ? { recording_url: RECORDING(c), public_log_url: `${RECORDING(c)}.log`, transcript: TRANSCRIPT }
            : {}),
        }
      : {}),
  }
}
const retell: DialectSpec = {
  createPath: '/v2/create-phone-call',
  getPrefix: '/v2/get-call/',
  parse(body) {
    if (!isObject(body)) return 'the body must be a JSON object'
    const { from_number, to_number, override_agent_id, metadata } = body
    if (typeof from_number !== 'string') return 'from_number is required'
    if (typeof to_number !== 'string' || !/^\+[1-9]\d{6,14}$/.test(to_number)) return 'to_number must be E.164'
    if (metadata !== undefined && !isObject(metadata)) return 'metadata must be an object'
    return {
      to: to_number,
      key: keyOf(metadata),
      webhookUrl: undefined,
      metadata,
      assistant: typeof override_agent_id === 'string' ? override_agent_id : 'agent_default',
    }
  },
  created: (c) => ({ ...retellCall(c), call_status: 'registered' }),
  progress: (c) => [{ event: 'call_started', call: retellCall(c) }],
  final: (c) => ({ event: 'call_ended', call: retellCall(c) }),
  poll: retellCall,
  notFound: { status: 'error', message: 'Call not found' },
  endReason: (o) => RETELL_REASONS[o],
  async sign(body, { apiKey }): Promise<Record<string, string>> {
    return apiKey ? { 'x-retell-signature': await retellSign(body, apiKey) } : {}
  },
}

// https://docs.vapi.ai/api-reference/calls/create, /api-reference/calls/get, /server-url/events (status-update,
// end-of-call-report), /server-url/server-authentication (an HMAC credential: x-signature over
// "{timestamp}.{body}" with x-timestamp, the documented defaults of HmacAuthenticationPlan).
const VAPI_REASONS: Record<SimOutcome, string> = {
  COMPLETED: 'customer-ended-call',
  NO_WEBHOOK: 'assistant-ended-call',
  BUSY: 'customer-busy',
  NO_ANSWER: 'customer-did-not-answer',
  VOICEMAIL: 'voicemail',
  FAILED: 'twilio-failed-to-connect-call',
}
function vapiCall(c: SimCall) {
  const ended = c.endedAt !== undefined
  return {
    id: c.id,
    orgId: 'org_simulated',
    type: 'outboundPhoneCall',
    status: ended ? 'ended' : 'in-progress',
    assistantId: c.assistant,
    assistantOverrides: { metadata: c.metadata },
    customer: { number: c.to },
    createdAt: iso(c.startedAt),
    updatedAt: iso(c.endedAt ?? c.startedAt),
    startedAt: iso(c.startedAt),
    ...(ended
      ? {
          endedAt: iso(c.endedAt),
          endedReason: c.endReason,
          cost: 0.08,
          artifact: { recordingUrl: RECORDING(c), transcript: TRANSCRIPT },
        }
      : {}),
  }
}
const vapi: DialectSpec = {
  createPath: '/call',
  getPrefix: '/call/',
  parse(body) {
    if (!isObject(body)) return 'the body must be a JSON object'
    const { assistantId, customer, assistantOverrides } = body
    if (!isObject(customer) || typeof customer.number !== 'string') return 'customer.number is required'
    if (assistantOverrides !== undefined && !isObject(assistantOverrides)) return 'assistantOverrides must be an object'
    const metadata = isObject(assistantOverrides?.metadata) ? assistantOverrides.metadata : undefined
    return {
      to: customer.number,
      key: keyOf(metadata),
      webhookUrl: undefined,
      metadata,
      assistant: typeof assistantId === 'string' ? assistantId : 'assistant_default',
    }
  },
  created: (c) => ({ ...vapiCall(c), status: 'queued' }),
  progress: (c) => [
    { message: { type: 'status-update', status: 'ringing', call: vapiCall(c), timestamp: Date.now() } },
    { message: { type: 'status-update', status: 'in-progress', call: vapiCall(c), timestamp: Date.now() } },
  ],
  final(c) {
    const call = vapiCall(c)
    return {
      message: {
        type: 'end-of-call-report',
        endedReason: c.endReason,
        call,
        cost: call.cost,
        artifact: call.artifact,
        analysis: {},
        startedAt: call.startedAt,
        endedAt: call.endedAt,
        timestamp: Date.now(),
      },
    }
  },
  poll: vapiCall,
  notFound: { message: 'Not Found', statusCode: 404 },
  endReason: (o) => VAPI_REASONS[o],
  async sign(body, { webhookSecret }): Promise<Record<string, string>> {
    if (!webhookSecret) return {}
    const ts = String(Math.floor(Date.now() / 1000))
    const mac = createHmac('sha256', webhookSecret).update(`${ts}.${body}`).digest('hex')
    return { 'x-signature': mac, 'x-timestamp': ts }
  },
}

export const DIALECTS: Record<Dialect, DialectSpec> = { generic, vapi, retell }

/** The dialect whose create-call or get-call path this is. */
export function routeOf(
  method: string,
  path: string,
): { dialect: Dialect; op: 'create' | 'get'; id?: string } | undefined {
  for (const [name, d] of Object.entries(DIALECTS) as [Dialect, DialectSpec][]) {
    if (method === 'POST' && path === d.createPath) return { dialect: name, op: 'create' }
    if (method === 'GET' && path.startsWith(d.getPrefix) && path.length > d.getPrefix.length) {
      const id = decodeURIComponent(path.slice(d.getPrefix.length))
      if (!id.includes('/')) return { dialect: name, op: 'get', id }
    }
  }
  return undefined
}
