import { describe, expect, it } from 'vitest'
import { ConfigError, loadConfig } from '../src/config.ts'

describe('loadConfig', () => {
  it('has the documented defaults', () => {
    const c = loadConfig({})
    expect(c).toMatchObject({
      port: 3000,
      host: '0.0.0.0',
      role: 'all',
      databaseUrl: undefined,
      provider: { url: undefined, timeoutMs: 10_000 },
      webhook: { baseUrl: undefined, secret: undefined },
      dispatch: {
        maxConcurrentCalls: 30,
        maxAttempts: 3,
        retryBaseDelayMs: 30_000,
        retryMaxDelayMs: 600_000,
        callTimeoutMs: 900_000,
        callExpiryMs: 86_400_000,
      },
      apiKeys: [],
    })
  })

  it('refuses a CALL_TIMEOUT_MS that is not longer than PROVIDER_TIMEOUT_MS', () => {
    // a dial still waiting for the provider would be timed out before its answer could come
    expect(() => loadConfig({ CALL_TIMEOUT_MS: '10000', PROVIDER_TIMEOUT_MS: '10000' })).toThrow(
      /CALL_TIMEOUT_MS: must be greater than PROVIDER_TIMEOUT_MS/,
    )
    expect(() => loadConfig({ CALL_TIMEOUT_MS: '5000' })).toThrow(ConfigError)
    expect(loadConfig({ CALL_TIMEOUT_MS: '10001', PROVIDER_TIMEOUT_MS: '10000' }).dispatch.callTimeoutMs).toBe(10_001)
  })

  it('gives SIGTERM the provider timeout and a few seconds to record the dials in flight', () => {
    expect(loadConfig({ PROVIDER_TIMEOUT_MS: '20000', CALL_TIMEOUT_MS: '60000' }).shutdownGraceMs).toBe(25_000)
  })

  it('reads numbers, lists and URLs', () => {
    const c = loadConfig({
      PORT: '8080',
      MAX_CONCURRENT_CALLS: '5',
      API_KEYS: ' a , b,,c ',
      AI_CALL_API_URL: 'https://provider.example/',
      WEBHOOK_BASE_URL: 'https://hooks.example/base/',
    })
    expect(c.port).toBe(8080)
    expect(c.dispatch.maxConcurrentCalls).toBe(5)
    expect(c.apiKeys).toEqual(['a', 'b', 'c'])
    expect(c.provider.url).toBe('https://provider.example')
    expect(c.webhook.baseUrl).toBe('https://hooks.example/base')
  })

  it('builds DATABASE_URL from the legacy DB_* variables when it is unset', () => {
    const c = loadConfig({
      DB_HOST: 'db',
      DB_PORT: '5433',
      DB_USERNAME: 'app',
      DB_PASSWORD: 'p@ss',
      DB_DATABASE: 'calls',
    })
    expect(c.databaseUrl).toBe('postgres://app:p%40ss@db:5433/calls')
    expect(loadConfig({ DATABASE_URL: 'postgres://x@y/z', DB_HOST: 'db' }).databaseUrl).toBe('postgres://x@y/z')
  })

  it.each([
    [{ PORT: 'abc' }, 'PORT'],
    [{ PORT: '70000' }, 'PORT'],
    [{ MAX_CONCURRENT_CALLS: '0' }, 'MAX_CONCURRENT_CALLS'],
    [{ MAX_RETRY_ATTEMPTS: '1.5' }, 'MAX_RETRY_ATTEMPTS'],
    [{ ROLE: 'both' }, 'ROLE'],
    [{ DATABASE_URL: 'mysql://x' }, 'DATABASE_URL'],
    [{ AI_CALL_API_URL: 'ftp://x' }, 'AI_CALL_API_URL'],
    [{ RETRY_BASE_DELAY_MS: '5000', RETRY_MAX_DELAY_MS: '1000' }, 'RETRY_MAX_DELAY_MS'],
    [{ NODE_ENV: 'production', WEBHOOK_SECRET: 's' }, 'API_KEYS'],
    [{ NODE_ENV: 'production', API_KEYS: 'k' }, 'WEBHOOK_SECRET'],
    [{ SIM_OUTCOMES: 'COMPLETED=1,HANGUP=2' }, 'SIM_OUTCOMES'],
  ])('refuses %o, naming %s', (env, name) => {
    expect(() => loadConfig(env)).toThrow(ConfigError)
    try {
      loadConfig(env)
    } catch (err) {
      expect((err as ConfigError).problems.join('\n')).toContain(name)
    }
  })
})
