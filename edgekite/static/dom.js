// DOM and formatting helpers shared by the edge's LAN dashboard and the hub's analysts' dashboard
// (each serves this file as /static/dom.js; edgekite/static_files.py). Every value from the API is
// untrusted input (event fields, page paths, referrers, UTM tags come from the internet): text only
// ever reaches the page through textContent / createTextNode (never innerHTML), and links only
// through safeHref().

const SVG_NS = 'http://www.w3.org/2000/svg';

function put(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'text') el.textContent = String(v);
    else if (k === 'class') el.setAttribute('class', Array.isArray(v) ? v.filter(Boolean).join(' ') : v);
    else if (k.startsWith('on')) {
      // Only functions: an "on..." attribute given a string would be inline script.
      if (typeof v !== 'function') throw new TypeError(`handler ${k} must be a function`);
      el.addEventListener(k.slice(2), v);
    } else if (k === 'innerHTML' || k === 'outerHTML') throw new TypeError('no HTML injection');
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

/** Append children: nodes, strings/numbers (as text nodes), nested arrays; null/false skipped. */
export function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
  return el;
}

/** h('li', {class: 'x', onclick: fn}, 'text', child) -> HTMLElement */
export function h(tag, attrs, ...children) {
  return put(document.createElement(tag), attrs, children);
}

/** Same for SVG elements. */
export function s(tag, attrs, ...children) {
  return put(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

/** Replace an element's children (null/false skipped, strings as text). */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** The URI as an http(s)/file URL string, or null when it must not be clickable. */
export function safeHref(uri) {
  if (typeof uri !== 'string' || uri === '') return null;
  let url;
  try {
    url = new URL(uri);
  } catch {
    return null;
  }
  return ['http:', 'https:', 'file:'].includes(url.protocol) ? url.href : null;
}

/** A link for safe schemes, otherwise the URI as plain text. */
export function linkOrText(uri, label) {
  const href = safeHref(uri);
  const text = label ?? String(uri ?? '');
  if (!href) return h('span', {class: 'uri', title: 'not a http/https/file link'}, text);
  return h('a', {href, target: '_blank', rel: 'noopener noreferrer', class: 'uri'}, text);
}

// ---- formatting (the browser's own time zone and locale) -------------------------------------

const numFmt = new Intl.NumberFormat();
const rtf = new Intl.RelativeTimeFormat(undefined, {numeric: 'auto'});
const dtFmt = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
});
const shortFmt = new Intl.DateTimeFormat(undefined, {
  month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
});
const hourFmt = new Intl.DateTimeFormat(undefined, {hour: '2-digit', minute: '2-digit'});

export const fmtNum = (n) => (typeof n === 'number' && Number.isFinite(n) ? numFmt.format(n) : '—');
export const fmtHour = (ms) => hourFmt.format(new Date(ms));

function toDate(ms) {
  if (ms === null || ms === undefined || ms === '') return null;
  const d = new Date(typeof ms === 'string' && /^\d+$/.test(ms) ? Number(ms) : ms);
  return Number.isNaN(d.getTime()) ? null : d;
}

export function fmtTime(ms, short = false) {
  const d = toDate(ms);
  if (!d) return '—';
  return (short && Math.abs(Date.now() - d) < 300 * 86400e3 ? shortFmt : dtFmt).format(d);
}

export function relTime(ms, now = Date.now()) {
  const d = toDate(ms);
  if (!d) return 'never';
  const secs = (d.getTime() - now) / 1000;
  const abs = Math.abs(secs);
  if (abs < 5) return 'just now';
  if (abs < 60) return rtf.format(Math.round(secs), 'second');
  if (abs < 3600) return rtf.format(Math.round(secs / 60), 'minute');
  if (abs < 86400) return rtf.format(Math.round(secs / 3600), 'hour');
  return rtf.format(Math.round(secs / 86400), 'day');
}

/** <time> with the local absolute time, the relative time in brackets (or as title). */
export function timeEl(ms, {relative = true, short = true} = {}) {
  const d = toDate(ms);
  if (!d) return h('span', {class: 'muted'}, '—');
  const abs = fmtTime(ms, short);
  return h('time', {datetime: d.toISOString(), title: fmtTime(ms)},
    relative ? `${relTime(ms)}` : abs, relative ? h('span', {class: 'abs'}, ` · ${abs}`) : null);
}

export function fmtBytes(n) {
  if (typeof n !== 'number' || !Number.isFinite(n)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(i === 0 || v >= 100 ? 0 : 1)} ${units[i]}`;
}

export function fmtDuration(ms) {
  if (typeof ms !== 'number' || !Number.isFinite(ms) || ms < 0) return '—';
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function fmtPercent(v, digits = 0) {
  return typeof v === 'number' && Number.isFinite(v) ? `${v.toFixed(digits)} %` : '—';
}

/** Seconds as "4 min 05 s" (Umami's average visit duration). */
export function fmtSecs(secs) {
  if (typeof secs !== 'number' || !Number.isFinite(secs) || secs < 0) return '—';
  const t = Math.round(secs);
  if (t < 60) return `${t} s`;
  if (t < 3600) return `${Math.floor(t / 60)} min ${String(t % 60).padStart(2, '0')} s`;
  return `${Math.floor(t / 3600)} h ${String(Math.floor((t % 3600) / 60)).padStart(2, '0')} min`;
}

/** A number with at most `digits` decimals ("0.93", "12.5"). */
export function fmtDec(v, digits = 2) {
  if (typeof v !== 'number' || !Number.isFinite(v)) return '—';
  return new Intl.NumberFormat(undefined, {maximumFractionDigits: digits}).format(v);
}

/** A rate given as a fraction (0..1) shown as a percentage with one decimal: 0.4567 -> "45.7 %". */
export function fmtRate(fraction) {
  return typeof fraction === 'number' && Number.isFinite(fraction) ? `${(fraction * 100).toFixed(1)} %` : '—';
}

export const num = (v) => (v === null || v === undefined || v === '' ? NaN : Number(v));

/**
 * Rates come as fractions (0..1) per the API; a hub that sends percentages is recognised by
 * comparing with the counts it came with (`bounces / visits`), so the screen never shows 4500 %.
 */
export function asFraction(rate, part, whole) {
  const v = num(rate);
  if (!Number.isFinite(v)) return NaN;
  const p = num(part);
  const w = num(whole);
  if (Number.isFinite(p) && Number.isFinite(w) && w > 0) {
    const f = p / w;
    if (Math.abs(v - f) <= 0.0015) return v;
    if (Math.abs(v / 100 - f) <= 0.0015) return v / 100;
  }
  return v > 1 ? v / 100 : v;
}

/** A labelled status/error line; the message is text. */
export function notice(message, kind = 'info') {
  return h('p', {class: ['notice', kind], role: kind === 'error' ? 'alert' : 'status'}, message);
}

export function errorNotice(err) {
  if (err && err.name === 'AuthError') return notice('API key required: enter it to continue.', 'warn');
  const msg = err && err.message ? err.message : String(err);
  return notice(`Could not load: ${msg}`, 'error');
}

/** Section with a heading; returns [section, body]. */
export function section(title, ...extra) {
  const body = h('div', {class: 'section-body'});
  const sec = h('section', {class: 'card'}, h('div', {class: 'card-head'}, h('h2', {}, title), ...extra), body);
  return [sec, body];
}
