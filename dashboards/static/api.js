// The hub's read API (hub_api/API.md) with the optional API key.
// The key lives in localStorage and goes out as "Authorization: Bearer <key>". A 401 anywhere
// raises "ek:auth-required" (app.js asks for the key once). Every answer that carries
// "latest_event_ms" raises "ek:latest", which the truth banner shows.

const KEY_NAME = 'edgekite.hubApiKey';

export class AuthError extends Error {
  constructor() {
    super('API key required');
    this.name = 'AuthError';
  }
}

export class ApiError extends Error {
  constructor(status, code, reason) {
    super(`${reason} (HTTP ${status})`);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

let memoryKey = '';

export function getKey() {
  try {
    return localStorage.getItem(KEY_NAME) || memoryKey;
  } catch {
    return memoryKey;
  }
}

export function setKey(key) {
  memoryKey = key || '';
  try {
    if (key) localStorage.setItem(KEY_NAME, key);
    else localStorage.removeItem(KEY_NAME);
  } catch {
    // Storage disabled: the key then lasts until the page reloads.
  }
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

function headers(accept) {
  const hd = {Accept: accept};
  const key = getKey();
  if (key) hd.Authorization = `Bearer ${key}`;
  return hd;
}

async function fetchOk(url, accept, signal) {
  const resp = await fetch(url, {headers: headers(accept), signal, credentials: 'same-origin', cache: 'no-store'});
  if (resp.status === 401) {
    window.dispatchEvent(new CustomEvent('ek:auth-required'));
    throw new AuthError();
  }
  return resp;
}

/** GET a JSON endpoint: the parsed body, or an ApiError carrying the API's error code and message. */
export async function get(path, params, signal) {
  const url = apiUrl(path, params);
  const resp = await fetchOk(url, 'application/json', signal);
  const text = await resp.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      if (resp.ok) throw new ApiError(resp.status, 'bad_response', 'response is not JSON');
    }
  }
  if (!resp.ok) {
    const err = data && typeof data.error === 'object' && data.error ? data.error : {};
    const message = typeof err.message === 'string' ? err.message : resp.statusText || 'request failed';
    throw new ApiError(resp.status, typeof err.code === 'string' ? err.code : 'http_error', message);
  }
  if (data && typeof data === 'object' && 'latest_event_ms' in data) {
    window.dispatchEvent(new CustomEvent('ek:latest', {detail: {ms: data.latest_event_ms, url}}));
  }
  return data;
}

/** Save a CSV export. With a key set, a plain link cannot send it: fetch, then save the blob. */
async function download(url, filename) {
  const resp = await fetchOk(url, 'text/csv', undefined);
  if (!resp.ok) throw new ApiError(resp.status, 'http_error', resp.statusText || 'export failed');
  const blob = await resp.blob();
  const href = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = href;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 10000);
}

/** A "CSV" download link for the same query as a table (format=csv). */
export function csvLink(path, params, filename) {
  const url = apiUrl(path, {...params, format: 'csv'});
  const name = `${filename}.csv`;
  const a = document.createElement('a');
  a.className = 'csv';
  a.href = url;
  a.setAttribute('download', name);
  a.title = 'Download this table as CSV';
  a.textContent = 'CSV ⤓';
  a.addEventListener('click', (e) => {
    if (!getKey()) return; // an open hub: the browser downloads it itself
    e.preventDefault();
    download(url, name).catch((err) => {
      if (err.name !== 'AuthError') window.alert(`CSV export failed: ${err.message}`);
    });
  });
  return a;
}
