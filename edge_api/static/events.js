// Rendering of events (rows, severity badges, summaries) and the client-side filter that decides
// whether a live event belongs in the current timeline. All fields are untrusted: text only.

import {fmtTime, h, relTime} from './dom.js';

export const CATEGORIES = ['web', 'iot', 'app', 'ops', 'security'];
export const SEVERITIES = ['debug', 'info', 'warn', 'error', 'critical'];

export const evType = (ev) => str(ev?.event?.type);
export const evSource = (ev) => str(ev?.source?.id);
export const evCategory = (ev) => str(ev?.event?.category);
export const evSeverity = (ev) => str(ev?.event?.severity) || 'info';

function str(v) {
  return v === null || v === undefined ? '' : String(v);
}

export function severityBadge(sev) {
  const known = SEVERITIES.includes(sev) ? sev : 'info';
  return h('span', {class: ['sev', `sev-${known}`]}, sev || 'info');
}

/** One line of the payload: "k=v k2=v2", truncated. */
export function summary(data, max = 160) {
  let text;
  if (data && typeof data === 'object' && !Array.isArray(data)) {
    text = Object.entries(data)
      .map(([k, v]) => `${k}=${v !== null && typeof v === 'object' ? JSON.stringify(v) : v}`)
      .join('  ');
  } else {
    text = data === undefined ? '' : JSON.stringify(data);
  }
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

const clockFmt = new Intl.DateTimeFormat(undefined, {hour: '2-digit', minute: '2-digit', second: '2-digit'});
const dayFmt = new Intl.DateTimeFormat(undefined, {month: 'short', day: 'numeric'});

/** "14:03:09 · 5 minutes ago" (local time; the date too when not today). */
function rowTime(ms) {
  const d = new Date(Number(ms));
  if (ms === null || ms === undefined || Number.isNaN(d.getTime())) return h('span', {class: 'muted'}, '—');
  const today = d.toDateString() === new Date().toDateString();
  return h('time', {datetime: d.toISOString(), title: fmtTime(ms)},
    `${today ? '' : `${dayFmt.format(d)} `}${clockFmt.format(d)}`, h('span', {class: 'rel'}, ` · ${relTime(ms)}`));
}

/** A clickable row for lists of events. */
export function eventRow(ev, onOpen, {unseen = false} = {}) {
  const btn = h('button', {
    type: 'button',
    class: ['ev', unseen && 'unseen'],
    'data-event-id': str(ev?.event_id),
    onclick: () => onOpen(ev),
  },
  h('span', {class: 'ev-time'}, rowTime(ev?.observed_at)),
  severityBadge(evSeverity(ev)),
  h('span', {class: 'ev-cat'}, evCategory(ev)),
  h('span', {class: 'ev-type'}, evType(ev), unseen ? h('span', {class: 'tag new'}, 'new') : null),
  h('span', {class: 'ev-source'}, evSource(ev)),
  h('span', {class: 'ev-summary'}, summary(ev?.event?.data)));
  return h('li', {}, btn);
}

/** Filters as the timeline holds them (strings from the URL hash; fromMs/toMs resolved). */
export function matches(ev, f) {
  if (f.category && evCategory(ev) !== f.category) return false;
  if (f.type && evType(ev) !== f.type) return false;
  if (f.source && evSource(ev) !== f.source) return false;
  if (f.severity && !f.severity.split(',').includes(evSeverity(ev))) return false;
  const t = Number(ev?.observed_at);
  if (f.fromMs && Number.isFinite(t) && t < f.fromMs) return false;
  if (f.toMs && Number.isFinite(t) && t > f.toMs) return false;
  if (f.q) {
    let payload = '';
    try {
      payload = JSON.stringify(ev?.event?.data ?? null);
    } catch {
      payload = '';
    }
    const hay = `${evType(ev)}\n${evSource(ev)}\n${payload}`.toLowerCase();
    if (!hay.includes(f.q.toLowerCase())) return false;
  }
  return true;
}
