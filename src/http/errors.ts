import { Type } from 'typebox'

// The one error envelope of the API: {success: false, error: {code, message, details?}}. Routes send the errors they
// expect with errorBody(apiError(...)); the app's error handler maps everything else (validation, bad JSON, crashes).

export const ErrorResponse = Type.Object(
  {
    success: Type.Literal(false),
    error: Type.Object({
      code: Type.String({ description: 'Machine-readable, e.g. VALIDATION_ERROR, CALL_NOT_FOUND' }),
      message: Type.String(),
      details: Type.Optional(Type.Unknown()),
    }),
  },
  { $id: 'ErrorResponse', description: 'Error envelope' },
)

export const errorRef = Type.Ref('ErrorResponse')

/** A response of the error envelope; the description is what the document says the status means for the route. */
export const errorResponse = (description: string) => Type.Ref('ErrorResponse', { description })

export interface ApiError {
  status: number
  code: string
  message: string
  details?: unknown
}

export function apiError(status: number, code: string, message: string, details?: unknown): ApiError {
  return { status, code, message, ...(details === undefined ? {} : { details }) }
}

export function errorBody(e: ApiError) {
  return {
    success: false as const,
    error: { code: e.code, message: e.message, ...(e.details === undefined ? {} : { details: e.details }) },
  }
}

/** Fastify's own 4xx errors, by code, mapped to ours. */
export const FRAMEWORK_ERRORS: Record<string, { code: string; message?: string }> = {
  FST_ERR_CTP_INVALID_JSON_BODY: { code: 'INVALID_JSON', message: 'request body is not valid JSON' },
  FST_ERR_CTP_EMPTY_JSON_BODY: { code: 'INVALID_JSON', message: 'request body is empty' },
  FST_ERR_CTP_INVALID_MEDIA_TYPE: { code: 'UNSUPPORTED_MEDIA_TYPE', message: 'use Content-Type: application/json' },
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: { code: 'INVALID_CONTENT_LENGTH' },
  FST_ERR_CTP_BODY_TOO_LARGE: { code: 'PAYLOAD_TOO_LARGE', message: 'request body is larger than the limit' },
  FST_ERR_CTP_INVALID_TYPE: { code: 'UNSUPPORTED_MEDIA_TYPE' },
}
