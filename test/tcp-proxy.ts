import net from 'node:net'

// A TCP proxy in front of PostgreSQL, to break the database connection the way networks and restarts do:
// refuse(ms) drops every connection and refuses new ones for a while (a restart, a blip); freeze() stops forwarding
// on the connections open now without closing them (a half-open connection: the server or a middlebox gone silent).

export interface TcpProxy {
  port: number
  /** postgres URL of `url` with its host and port replaced by the proxy's. */
  via(url: string): string
  refuse(ms: number): void
  freeze(): void
  close(): Promise<void>
}

export async function startTcpProxy(targetPort: number, targetHost = '127.0.0.1'): Promise<TcpProxy> {
  const pairs = new Set<{ client: net.Socket; server: net.Socket; frozen: boolean }>()
  let refusingUntil = 0
  const server = net.createServer((client) => {
    if (Date.now() < refusingUntil) return client.destroy()
    const upstream = net.connect(targetPort, targetHost)
    const pair = { client, server: upstream, frozen: false }
    pairs.add(pair)
    const forward = (from: net.Socket, to: net.Socket) =>
      from.on('data', (chunk) => {
        if (!pair.frozen) to.write(chunk)
      })
    forward(client, upstream)
    forward(upstream, client)
    const end = () => {
      pairs.delete(pair)
      client.destroy()
      upstream.destroy()
    }
    client.on('error', end).on('close', end)
    upstream.on('error', end).on('close', end)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as net.AddressInfo).port
  return {
    port,
    via(url) {
      const u = new URL(url)
      u.hostname = '127.0.0.1'
      u.port = String(port)
      return u.toString()
    },
    refuse(ms) {
      refusingUntil = Date.now() + ms
      for (const p of pairs) {
        p.client.destroy()
        p.server.destroy()
      }
    },
    freeze() {
      for (const p of pairs) p.frozen = true
    },
    async close() {
      for (const p of pairs) {
        p.client.destroy()
        p.server.destroy()
      }
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}
