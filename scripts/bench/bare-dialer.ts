import http from 'node:http'
import { Pool } from 'undici'
import { SIGNATURE_HEADER, verify } from '../../src/providers/signature.ts'

// A reference for benchmark 3: the least work an orchestrator can do per call on this machine. Keeps CAP dials to
// the simulator in flight and, for each verified final webhook, answers 200 and dials the next call at once. No
// database, no validation, no queue: what it reaches is the bound that the machine, Node's HTTP and the simulator
// set, and the service's figure is read against it. Run as its own process, like the service:
//
//   SIM_URL=... WEBHOOK_SECRET=... CAP=30 TOTAL=3000 node scripts/bench/bare-dialer.ts   (prints "done" at the end)

const env = process.env
const cap = Number(env.CAP ?? 30)
const total = Number(env.TOTAL ?? 3000)
const secret = env.WEBHOOK_SECRET ?? ''
const sim = new Pool(env.SIM_URL as string, { connections: 64, keepAliveTimeout: 30_000 })

let dialed = 0
let ended = 0

const server = http.createServer((req, res) => {
  const chunks: Buffer[] = []
  req.on('data', (c: Buffer) => chunks.push(c))
  req.on('end', () => {
    const raw = Buffer.concat(chunks)
    const header = req.headers[SIGNATURE_HEADER]
    if (secret && !verify(secret, raw, Array.isArray(header) ? header[0] : header).ok) {
      res.writeHead(401).end()
      return
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end('{"success":true}')
    ended++
    if (dialed < total) void dial()
    else if (ended === total) console.log('done')
  })
})

async function dial() {
  const n = dialed++
  const res = await sim.request({
    method: 'POST',
    path: '/api/v1/calls',
    headers: { 'content-type': 'application/json', 'idempotency-key': `bare-${process.pid}-${n}` },
    body: JSON.stringify({
      to: `+9665${String(20_000_000 + n).padStart(8, '0')}`,
      scriptId: 'bare',
      metadata: {},
      webhookUrl: `http://127.0.0.1:${port}/hook?n=${n}`,
    }),
  })
  await res.body.text()
}

server.listen(0, '127.0.0.1')
await new Promise((r) => server.once('listening', r))
const port = (server.address() as { port: number }).port
for (let i = 0; i < Math.min(cap, total); i++) void dial()
