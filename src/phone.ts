import { parsePhoneNumberFromString } from 'libphonenumber-js/max'

/** E.164 form of an international number ("+966 50 123 4567" -> "+966501234567"), or undefined if invalid. */
export function normalizePhone(input: string): string | undefined {
  const trimmed = input.trim()
  // Without a leading + the country is a guess; we refuse to guess whom to phone.
  if (!trimmed.startsWith('+')) return undefined
  const parsed = parsePhoneNumberFromString(trimmed)
  return parsed?.isValid() ? parsed.number : undefined
}

/**
 * The last 4 digits only ("+966501234567" -> "+********4567"): the rule of mask_phone() in migration 0003, which the
 * dashboard and the operator views use (test/operator-views.test.ts compares the two). The service's logs carry no
 * phone number at all (test/logs.test.ts); the database keeps the whole number.
 */
export function maskPhone(phone: string): string {
  return phone.length <= 4 ? '****' : `+${'*'.repeat(Math.max(0, phone.length - 5))}${phone.slice(-4)}`
}
