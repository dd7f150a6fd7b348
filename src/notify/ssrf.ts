import dns from 'node:dns'
import net from 'node:net'
import { buildConnector } from 'undici'

// The SSRF guard: a client webhook may not reach a loopback, private, link-local or metadata address unless
// WEBHOOK_ALLOW_PRIVATE_NETWORKS=true. A URL's host name proves nothing (a public name can resolve to 127.0.0.1, and
// resolve differently a second later), so the check is made where the connection is made:
// - names: our lookup filters the addresses the socket is about to connect to, so nothing is sent to a refused one;
// - the socket's remoteAddress is checked again once connected (covers IP literals, which skip the lookup, and any
//   path we did not foresee), before a byte of the request is written.
// The API also refuses a URL whose host is a refused IP literal, so the client learns early (src/http routes).

const blocked = new net.BlockList()
for (const [prefix, bits] of [
  ['0.0.0.0', 8], // "this network"; 0.0.0.0 reaches the local host on Linux
  ['10.0.0.0', 8],
  ['100.64.0.0', 10], // carrier-grade NAT
  ['127.0.0.0', 8],
  ['169.254.0.0', 16], // link-local, the cloud metadata services (169.254.169.254)
  ['172.16.0.0', 12],
  ['192.168.0.0', 16],
] as const) {
  blocked.addSubnet(prefix, bits, 'ipv4')
}
for (const [prefix, bits] of [
  ['::', 128], // unspecified
  ['::1', 128],
  ['fc00::', 7], // unique local (includes fd00:ec2::254, the AWS metadata address over IPv6)
  ['fe80::', 10],
] as const) {
  blocked.addSubnet(prefix, bits, 'ipv6')
}

/** True when `address` (an IP literal, brackets allowed) is one the guard refuses. */
export function isRefusedAddress(address: string): boolean {
  const a = address.replace(/^\[|\]$/g, '')
  const family = net.isIP(a)
  if (family === 4) return blocked.check(a, 'ipv4')
  if (family === 6) {
    // IPv4-mapped (::ffff:127.0.0.1) and NAT64-free forms reach the IPv4 address
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(a)
    if (mapped) return blocked.check(mapped[1] as string, 'ipv4')
    return blocked.check(a, 'ipv6')
  }
  return false
}

export class RefusedAddressError extends Error {
  readonly code = 'WEBHOOK_ADDRESS_REFUSED'
  constructor(host: string, address: string) {
    super(`refused to connect to ${host} (${address}): a loopback, private or link-local address`)
  }
}

type LookupCallback = (
  err: NodeJS.ErrnoException | null,
  address: string | dns.LookupAddress[],
  family?: number,
) => void

/** dns.lookup that fails for a name resolving to any refused address. */
function guardedLookup(hostname: string, options: dns.LookupOptions, callback: LookupCallback) {
  dns.lookup(hostname, { ...options, all: true }, (err, addresses) => {
    if (err) return callback(err, [])
    const refused = addresses.find((a) => isRefusedAddress(a.address))
    if (refused) return callback(new RefusedAddressError(hostname, refused.address), [])
    if (options.all) return callback(null, addresses)
    const first = addresses[0]
    if (!first) return callback(Object.assign(new Error(`no address for ${hostname}`), { code: 'ENOTFOUND' }), [])
    callback(null, first.address, first.family)
  })
}

/** undici's connector, with the guard when private networks are not allowed. */
export function guardedConnector(opts: { allowPrivateNetworks: boolean; timeoutMs: number }): buildConnector.connector {
  if (opts.allowPrivateNetworks) return buildConnector({ timeout: opts.timeoutMs })
  const connect = buildConnector({ timeout: opts.timeoutMs, lookup: guardedLookup } as buildConnector.BuildOptions)
  return (options, callback) => {
    const host = options.hostname.replace(/^\[|\]$/g, '')
    if (net.isIP(host) && isRefusedAddress(host)) {
      callback(new RefusedAddressError(host, host), null)
      return
    }
    connect(options, (err, socket) => {
      if (err || !socket) return callback(err ?? new Error('no socket'), null)
      const remote = (socket as net.Socket).remoteAddress
      if (!remote || isRefusedAddress(remote)) {
        socket.destroy()
        return callback(new RefusedAddressError(host, remote ?? 'unknown'), null)
      }
      callback(null, socket)
    })
  }
}

/** Why the API refuses an endpoint URL, or undefined. The connect-time checks above still apply to every delivery. */
export function refuseEndpointUrl(
  raw: string,
  o: { allowHttp: boolean; allowPrivateNetworks: boolean },
): { code: string; message: string } | undefined {
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    return { code: 'INVALID_URL', message: 'url is not a valid absolute URL' }
  }
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && o.allowHttp))
    return {
      code: 'URL_NOT_HTTPS',
      message: o.allowHttp ? 'url must be http or https' : 'url must be https (WEBHOOK_ALLOW_HTTP=true allows http)',
    }
  if (url.username || url.password)
    return { code: 'URL_HAS_CREDENTIALS', message: 'url must not carry credentials; verify our signature instead' }
  if (!o.allowPrivateNetworks && (isRefusedAddress(url.hostname) || url.hostname === 'localhost'))
    return {
      code: 'URL_ADDRESS_REFUSED',
      message:
        'url points to a loopback, private or link-local address (WEBHOOK_ALLOW_PRIVATE_NETWORKS=true allows it)',
    }
  return undefined
}
