// Small statistics for benchmark rounds: nearest-rank percentiles and medians. Pure functions.

export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  const rank = Math.ceil((p / 100) * sorted.length)
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))] as number
}

export const median = (values: readonly number[]) => percentile(values, 50)

export const round = (n: number, digits = 1) => {
  const f = 10 ** digits
  return Math.round(n * f) / f
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

/** Distinct valid Saudi mobile numbers in E.164, as the API stores them; `n` picks the number. */
export const benchPhone = (n: number) => `+9665${String(10_000_000 + (n % 89_999_999)).padStart(8, '0')}`
