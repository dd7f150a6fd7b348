import { mkdir, writeFile } from 'node:fs/promises'
import path from 'node:path'

// The table printed at the end of `npm run bench` and the JSON written beside it.

export interface GoalRow {
  id: number
  benchmark: string
  figure: string
  goal: string
  met: boolean | undefined
}

export function printTable(rows: GoalRow[]) {
  const cells = rows.map((r) => [
    String(r.id),
    r.benchmark,
    r.figure,
    r.goal,
    r.met === undefined ? '-' : r.met ? 'yes' : 'NO',
  ])
  const head = ['#', 'benchmark', 'figure', 'goal', 'met?']
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] as string).length)))
  const line = (c: string[]) => `| ${c.map((s, i) => s.padEnd(widths[i] as number)).join(' | ')} |`
  console.log(line(head))
  console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`)
  for (const c of cells) console.log(line(c))
}

export async function writeResults(dir: string, result: object, latest: boolean): Promise<string> {
  await mkdir(dir, { recursive: true })
  const stamp = new Date()
    .toISOString()
    .replace(/[:]/g, '-')
    .replace(/\.\d+Z$/, 'Z')
  const file = path.join(dir, `${stamp}.json`)
  const text = `${JSON.stringify(result, null, 2)}\n`
  await writeFile(file, text)
  if (latest) await writeFile(path.join(dir, 'latest.json'), text)
  return file
}
