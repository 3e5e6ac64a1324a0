// The edge's HTTP API (edge_api/API.md) with the optional API key.
// The key lives in localStorage and goes out as "Authorization: Bearer <key>"; EventSource cannot
// send headers, so the stream gets it as ?key=. A 401 anywhere raises "ek:auth-required".

const KEY_NAME = 'edgekite.apiKey';

export class AuthError extends Error {
  constructor() {
    super('API key required');
    this.name = 'AuthError';
  }
}

export class ApiError extends Error {
  constructor(status, reason) {
    super(`${reason} (HTTP ${status})`);
    this.name = 'ApiError';
    this.status = status;
  }
}

export function getKey() {
  try {
    return localStorage.getItem(KEY_NAME) || '';
  } catch {
    return '';
  }
}

export function setKey(key) {
  try {
    if (key) localStorage.setItem(KEY_NAME, key);
    else localStorage.removeItem(KEY_NAME);
  } catch {
    // Storage disabled: the key then lasts until the page reloads.
  }
  memoryKey = key || '';
}

let memoryKey = '';

function currentKey() {
  return getKey() || memoryKey;
}

/** '/api/x' + params (empty values dropped) -> URL string. */
export function apiUrl(path, params) {
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== null && v !== undefined && v !== '') qs.set(k, String(v));
  }
  const q = qs.toString();
  return q ? `${path}?${q}` : path;
}

async function request(method, path, {params, body, signal} = {}) {
  const headers = {Accept: 'application/json'};
  const key = currentKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(apiUrl(path, params), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    credentials: 'same-origin',
    cache: 'no-store',
  });
  if (resp.status === 401) {
    window.dispatchEvent(new CustomEvent('ek:auth-required'));
    throw new AuthError();
  }
  let data = null;
  const text = await resp.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      if (resp.ok) throw new ApiError(resp.status, 'response is not JSON');
    }
  }
  if (!resp.ok) {
    const reason = data && typeof data.error === 'string' ? data.error : resp.statusText || 'request failed';
    throw new ApiError(resp.status, reason);
  }
  return data;
}

export const get = (path, params, signal) => request('GET', path, {params, signal});
export const post = (path, body, signal) => request('POST', path, {body, signal});

export function streamUrl() {
  const key = currentKey();
  return apiUrl('/api/stream', {key});
}
