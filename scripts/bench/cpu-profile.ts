import { readFile } from 'node:fs/promises'

// `node scripts/bench/cpu-profile.ts <file.cpuprofile> [top]`: where a --cpu-prof profile spent its time, by
// function (self time) and by package (self time summed over node_modules/<package> or our src/ files).

interface Node {
  id: number
  callFrame: { functionName: string; url: string; lineNumber: number }
  children?: number[]
}
interface Profile {
  nodes: Node[]
  samples: number[]
  timeDeltas: number[]
  startTime: number
  endTime: number
}

export async function summarize(file: string, top = 25) {
  const p = JSON.parse(await readFile(file, 'utf8')) as Profile
  const self = new Map<number, number>()
  for (const [i, id] of p.samples.entries()) self.set(id, (self.get(id) ?? 0) + (p.timeDeltas[i] ?? 0))
  const total = [...self.values()].reduce((a, b) => a + b, 0)
  const byFn = new Map<string, number>()
  const byPkg = new Map<string, number>()
  for (const n of p.nodes) {
    const us = self.get(n.id) ?? 0
    if (!us) continue
    const { functionName, url, lineNumber } = n.callFrame
    const short = url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*?\/(src|scripts)\//, '$1/')
    const fn = `${functionName || '(anonymous)'} ${short}:${lineNumber + 1}`
    byFn.set(fn, (byFn.get(fn) ?? 0) + us)
    const pkg = url.includes('node_modules/')
      ? (/node_modules\/((@[^/]+\/)?[^/]+)/.exec(url)?.[1] ?? url)
      : url.startsWith('file://')
        ? 'our code'
        : url
          ? 'node internals'
          : functionName.startsWith('(')
            ? functionName
            : 'native'
    byPkg.set(pkg, (byPkg.get(pkg) ?? 0) + us)
  }
  const pct = (us: number) => `${((100 * us) / total).toFixed(1).padStart(5)}%`
  const wall = (p.endTime - p.startTime) / 1e6
  console.log(`${file}: ${wall.toFixed(1)} s wall, ${(total / 1e6).toFixed(1)} s sampled`)
  console.log('\nby package (self time):')
  for (const [k, v] of [...byPkg].sort((a, b) => b[1] - a[1]).slice(0, 15)) console.log(`  ${pct(v)}  ${k}`)
  console.log('\nby function (self time):')
  for (const [k, v] of [...byFn].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`  ${pct(v)}  ${k}`)
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [file, top] = process.argv.slice(2)
  if (!file) {
    console.error('usage: node scripts/bench/cpu-profile.ts <file.cpuprofile> [top]')
    process.exit(2)
  }
  await summarize(file, Number(top ?? 25))
}
