import { describe, expect, it } from 'vitest'
import { ConfigError, loadConfig } from '../src/config.ts'

const problemsOf = (env: Record<string, string>) => {
  try {
    loadConfig(env)
    return []
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err
    return err.problems
  }
}

describe('provider configuration', () => {
  it('defaults to the generic contract and reconciles every minute calls older than 5 minutes, 120 a minute', () => {
    const c = loadConfig({})
    expect(c.provider).toMatchObject({ name: 'generic', scriptMap: {} })
    expect(c.reconcile).toEqual({ intervalMs: 60_000, afterMs: 300_000, maxPerMinute: 120 })
  })

  it('reads AI_CALL_PROVIDER, the caller identities and PROVIDER_SCRIPT_MAP', () => {
    const c = loadConfig({
      AI_CALL_PROVIDER: 'retell',
      AI_CALL_API_KEY: 'k',
      RETELL_FROM_NUMBER: '+14155550100',
      PROVIDER_SCRIPT_MAP: 'welcome=agent_1,reminder=agent_2',
    })
    expect(c.provider).toMatchObject({
      name: 'retell',
      retellFromNumber: '+14155550100',
      scriptMap: { welcome: 'agent_1', reminder: 'agent_2' },
    })
  })

  it('refuses what cannot work, naming the variable', () => {
    expect(problemsOf({ AI_CALL_PROVIDER: 'twilio' }).join()).toContain('AI_CALL_PROVIDER')
    expect(problemsOf({ AI_CALL_PROVIDER: 'vapi', AI_CALL_API_KEY: 'k' }).join()).toContain('VAPI_PHONE_NUMBER_ID')
    expect(problemsOf({ AI_CALL_PROVIDER: 'retell', AI_CALL_API_KEY: 'k' }).join()).toContain('RETELL_FROM_NUMBER')
    expect(problemsOf({ AI_CALL_PROVIDER: 'vapi', AI_CALL_API_URL: 'http://proxy' }).join()).toContain(
      'AI_CALL_API_KEY',
    )
    expect(problemsOf({ PROVIDER_SCRIPT_MAP: 'welcome' }).join()).toContain('PROVIDER_SCRIPT_MAP')
    expect(problemsOf({ RECONCILE_MAX_PER_MINUTE: '-1' }).join()).toContain('RECONCILE_MAX_PER_MINUTE')
  })

  it('needs nothing but AI_CALL_PROVIDER to run against the simulator', () => {
    expect(problemsOf({ AI_CALL_PROVIDER: 'retell' })).toEqual([])
    expect(problemsOf({ AI_CALL_PROVIDER: 'vapi' })).toEqual([])
  })
})
