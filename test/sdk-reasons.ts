import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import { Vapi } from '@vapi-ai/server-sdk'

// The end reasons the installed SDKs document, for the outcome-table tests.

/** Retell's disconnection_reason union, read from the installed SDK's type definitions (it has no runtime list). */
export function retellReasons(): string[] {
  const require = createRequire(import.meta.url)
  const file = path.join(path.dirname(require.resolve('retell-sdk')), 'resources', 'call.d.ts')
  const line = readFileSync(file, 'utf8')
    .split('\n')
    .find((l) => l.includes('disconnection_reason?:')) as string
  return [...line.matchAll(/'([a-z_]+)'/g)].map((m) => m[1] as string)
}

export function vapiReasons(): string[] {
  return Object.values(Vapi.CallEndedReason) as string[]
}
