import type { Config } from '../config.ts'
import { createProvider } from './generic.ts'
import { createGenericPoll } from './generic-poll.ts'
import { createRetellProvider } from './retell.ts'
import type { CallProvider } from './types.ts'
import { scriptMapper } from './types.ts'
import { createVapiProvider } from './vapi.ts'

/** The provider AI_CALL_PROVIDER names, at `baseUrl` (AI_CALL_API_URL, or the simulator; undefined: the SDK's own). */
export function createCallProvider(config: Config, baseUrl: string | undefined): CallProvider {
  const p = config.provider
  const script = scriptMapper(p.scriptMap)
  if (p.name === 'vapi') {
    return createVapiProvider({
      apiKey: p.apiKey ?? '',
      baseUrl,
      phoneNumberId: p.vapiPhoneNumberId,
      timeoutMs: p.timeoutMs,
      script,
    })
  }
  if (p.name === 'retell') {
    return createRetellProvider({
      apiKey: p.apiKey ?? '',
      baseUrl,
      fromNumber: p.retellFromNumber,
      timeoutMs: p.timeoutMs,
      script,
    })
  }
  const url = baseUrl ?? 'http://127.0.0.1:1'
  const dialer = createProvider({ baseUrl: url, apiKey: p.apiKey, timeoutMs: p.timeoutMs })
  const poll = createGenericPoll({ baseUrl: url, apiKey: p.apiKey, timeoutMs: p.timeoutMs })
  return {
    name: 'generic',
    dial: (req) => dialer.dial(req),
    getCall: (id) => poll.getCall(id),
    close: async () => {
      await Promise.all([dialer.close(), poll.close()])
    },
  }
}
