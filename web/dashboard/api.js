// The dashboard's REST calls: the bearer token in a header (never in a
// URL), JSON in and out, and the server's JSON error shape
// (`{"error": {"code", "message"}}`) turned into an ApiError that says
// what the server said, so no refusal is ever shown as a bare "failed".
// The one REST helper of the dashboard: the side panels' restClient
// (panels.js) is built on it, and every action goes through postAction.

export class ApiError extends Error {
  /** `status` 0 is a network error (nothing came back). */
  constructor(status, code, message) {
    super(message || code);
    this.status = status;
    this.code = code;
  }
}

let tokenOf = () => '';

/** Where the calls get the token from (the dashboard's session). */
export function useToken(f) {
  tokenOf = f;
}

/** The raw Response of an authenticated request; throws ApiError unless 2xx. */
export async function call(method, path, body) {
  const headers = { authorization: `Bearer ${tokenOf()}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, 'network', String(e?.message ?? e));
  }
  if (!res.ok) {
    const json = await res.json().catch(() => null);
    throw new ApiError(res.status, json?.error?.code ?? `http_${res.status}`, json?.error?.message ?? res.statusText);
  }
  return res;
}

/** `call` and its JSON answer (null when it has no body). */
export async function request(method, path, body) {
  return (await call(method, path, body)).json().catch(() => null);
}

/** Network errors are retried this many times, with the same id. */
const RETRIES = 3;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * POSTs an action (PROTOCOL.md 4.14; `body` has its `id`) and resolves
 * with the server's answer. Only a request that may not have arrived (a
 * network error) is sent again, the very same (same id: applied once);
 * a refusal will not change by asking again: thrown as the ApiError.
 */
export async function postAction(exam, body) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await request('POST', examPath(exam, '/actions'), body);
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 0 || attempt === RETRIES) throw err;
      await sleep(500 * 2 ** attempt);
    }
  }
}

/**
 * A client-chosen id (an action's, PROTOCOL.md 4.14: 1-64 characters),
 * `prefix-` and 24 hex digits. getRandomValues, not crypto.randomUUID: the
 * latter exists only in secure contexts (https, localhost), not on a
 * plain-http LAN address.
 */
export function newId(prefix = 'a') {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return `${prefix}-${[...bytes].map((b) => b.toString(16).padStart(2, '0')).join('')}`;
}

/** `/v1/exams/{exam}` + `rest`, the exam id escaped. */
export const examPath = (exam, rest = '') => `/v1/exams/${encodeURIComponent(exam)}${rest}`;
