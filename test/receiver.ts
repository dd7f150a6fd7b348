import { createServer, type IncomingHttpHeaders, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'

// A real HTTP receiver for client webhooks: records every request it gets and answers what `respond` says.

export interface Received {
  at: number
  headers: IncomingHttpHeaders
  body: string
  json: { type: string; timestamp: string; data: { call: { id: string }; sequence: number; attempt: number } }
  status: number
}

export type Respond = (
  r: Omit<Received, 'status'>,
  n: number,
) => number | { status: number; headers?: Record<string, string> }

export interface Receiver {
  url: string
  port: number
  received: Received[]
  respond: Respond
  /** Requests answered 2xx, first per webhook-id. */
  acknowledged(): Received[]
  close(): Promise<void>
}

export async function startReceiver(respond: Respond = () => 200, port = 0): Promise<Receiver> {
  const received: Received[] = []
  let server: Server
  const r: Receiver = {
    url: '',
    port: 0,
    received,
    respond,
    acknowledged() {
      const seen = new Set<string>()
      return received.filter((x) => {
        const id = x.headers['webhook-id'] as string
        if (x.status < 200 || x.status >= 300 || seen.has(id)) return false
        seen.add(id)
        return true
      })
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
  server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString()
      const base = { at: Date.now(), headers: req.headers, body, json: JSON.parse(body) }
      const answer = r.respond(base, received.length)
      const { status, headers } = typeof answer === 'number' ? { status: answer, headers: {} } : answer
      received.push({ ...base, status })
      res.writeHead(status, headers)
      res.end('ok')
    })
  })
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve))
  r.port = (server.address() as AddressInfo).port
  r.url = `http://127.0.0.1:${r.port}/hooks`
  return r
}
