// A strict reader of the Prometheus text exposition format 0.0.4, enough to prove /metrics parses the way a
// Prometheus server reads it: every sample belongs to a family declared by # TYPE before it, label syntax and values
// are valid, and histograms are cumulative with +Inf equal to _count. Throws with the line number otherwise.

export interface Sample {
  name: string
  labels: Record<string, string>
  value: number
}

export interface Family {
  name: string
  type: 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped'
  help: string
  samples: Sample[]
}

const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*'
const SAMPLE = new RegExp(`^(${NAME})(\\{(.*)\\})?[ \\t]+(\\S+)([ \\t]+-?\\d+)?$`)
const LABEL = /^\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)/
const SUFFIXES: Record<Family['type'], string[]> = {
  counter: [''],
  gauge: [''],
  untyped: [''],
  histogram: ['_bucket', '_sum', '_count'],
  summary: ['', '_sum', '_count'],
}

export function parsePrometheusText(text: string): Map<string, Family> {
  const families = new Map<string, Family>()
  const help = new Map<string, string>()
  const lines = text.split('\n')
  lines.forEach((line, i) => {
    const fail = (why: string): never => {
      throw new Error(`line ${i + 1}: ${why}: ${JSON.stringify(line)}`)
    }
    if (line.trim() === '') return
    if (line.startsWith('#')) {
      const m = new RegExp(`^# (HELP|TYPE) (${NAME}) ?(.*)$`).exec(line)
      if (!m) return // a plain comment
      const [, keyword, name, rest] = m as unknown as [string, string, string, string]
      if (keyword === 'HELP') {
        help.set(name, rest)
        return
      }
      if (!(rest in SUFFIXES)) fail(`unknown type ${rest}`)
      if (families.has(name)) fail(`second TYPE for ${name}`)
      families.set(name, { name, type: rest as Family['type'], help: help.get(name) ?? '', samples: [] })
      return
    }
    const m = SAMPLE.exec(line) ?? fail('not a sample')
    const [, name, , labelText, valueText] = m as unknown as [string, string, string, string | undefined, string]
    const labels: Record<string, string> = {}
    let rest = labelText ?? ''
    while (rest.trim() !== '') {
      const l = LABEL.exec(rest) ?? fail('bad label syntax')
      labels[l[1] as string] = (l[2] as string).replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c))
      rest = rest.slice(l[0].length)
    }
    const value = parseValue(valueText) ?? fail(`bad value ${valueText}`)
    const family = [...families.values()].find((f) => SUFFIXES[f.type].some((suffix) => `${f.name}${suffix}` === name))
    if (!family) fail(`sample ${name} before its # TYPE`)
    family?.samples.push({ name, labels, value })
  })
  for (const f of families.values()) if (f.type === 'histogram') checkHistogram(f)
  return families
}

// Prometheus reads values with Go's strconv.ParseFloat, which takes NaN and Inf in any case; prom-client writes
// "Nan" for an event-loop histogram with no samples yet.
function parseValue(text: string): number | undefined {
  if (/^nan$/i.test(text)) return Number.NaN
  if (/^[+-]?inf(inity)?$/i.test(text)) return text.startsWith('-') ? -Infinity : Infinity
  return /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(text) ? Number(text) : undefined
}

function checkHistogram(f: Family) {
  const series = new Map<string, Sample[]>()
  for (const s of f.samples) {
    const { le: _le, ...rest } = s.labels
    const key = JSON.stringify(rest)
    series.set(key, [...(series.get(key) ?? []), s])
  }
  for (const [key, samples] of series) {
    const buckets = samples.filter((s) => s.name.endsWith('_bucket'))
    const count = samples.find((s) => s.name.endsWith('_count'))
    let previous = 0
    for (const b of buckets) {
      if (b.value < previous) throw new Error(`${f.name}${key}: buckets are not cumulative`)
      previous = b.value
    }
    const inf = buckets.find((b) => b.labels.le === '+Inf')
    if (!inf || !count || inf.value !== count.value) throw new Error(`${f.name}${key}: +Inf bucket differs from _count`)
  }
}

/** The value of the one sample `name` whose labels are exactly `labels` (undefined when there is none). */
export function sampleValue(
  families: Map<string, Family>,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  const want = JSON.stringify(Object.entries(labels).sort())
  for (const f of families.values()) {
    const s = f.samples.find((x) => x.name === name && JSON.stringify(Object.entries(x.labels).sort()) === want)
    if (s) return s.value
  }
  return undefined
}
