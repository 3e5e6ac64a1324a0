// The event detail drawer: every envelope field, the payload pretty-printed, attachment links.
// Opened with an Event object, or an event_id (fetched from /api/events/{id}).

import {get} from './api.js';
import {append, clear, errorNotice, fmtBytes, fmtDuration, fmtTime, h, linkOrText, relTime} from './dom.js';
import {severityBadge} from './events.js';

const drawer = () => document.getElementById('drawer');
const body = () => document.getElementById('drawer-body');
const backdrop = () => document.getElementById('drawer-backdrop');
let returnFocus = null;
let loadSeq = 0;

export function initDrawer() {
  document.getElementById('drawer-close').addEventListener('click', closeDrawer);
  backdrop().addEventListener('click', closeDrawer);
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && !drawer().hidden) closeDrawer();
  });
}

export function closeDrawer() {
  loadSeq += 1;
  drawer().hidden = true;
  backdrop().hidden = true;
  document.body.classList.remove('drawer-open');
  if (returnFocus && document.contains(returnFocus)) returnFocus.focus();
  returnFocus = null;
}

/** Show one event; `evOrId` is an Event or an event_id string. */
export async function openEvent(evOrId) {
  if (drawer().hidden) returnFocus = document.activeElement;
  drawer().hidden = false;
  backdrop().hidden = false;
  document.body.classList.add('drawer-open');
  document.getElementById('drawer-close').focus();
  const seq = ++loadSeq;
  if (typeof evOrId === 'string') {
    clear(body()).append(h('p', {class: 'muted'}, 'Loading…'));
    try {
      const ev = await get(`/api/events/${encodeURIComponent(evOrId)}`);
      if (seq === loadSeq) render(ev);
    } catch (err) {
      if (seq === loadSeq) clear(body()).append(errorNotice(err));
    }
  } else {
    render(evOrId);
  }
}

function fieldValue(key, v) {
  if (v === null || v === undefined) return h('span', {class: 'muted'}, 'null');
  if ((key === 'observed_at' || key === 'received_at' || key === 'last_sync') && typeof v === 'number') {
    return h('span', {}, `${fmtTime(v)} (${relTime(v)})`, h('span', {class: 'muted'}, ` · ${v}`));
  }
  if (key === 'size_bytes' && typeof v === 'number') return `${fmtBytes(v)} (${v} B)`;
  if (typeof v === 'object') return h('pre', {class: 'json small'}, JSON.stringify(v, null, 2));
  return String(v);
}

/** A <dl> of every key of obj (known keys first, in that order). */
function fields(obj, order = []) {
  const dl = h('dl', {class: 'fields'});
  if (!obj || typeof obj !== 'object') return dl;
  const keys = [...order.filter((k) => k in obj), ...Object.keys(obj).filter((k) => !order.includes(k))];
  for (const k of keys) {
    const v = k === 'severity' ? severityBadge(String(obj[k] ?? 'info')) : fieldValue(k, obj[k]);
    append(dl, [h('dt', {}, k), h('dd', {}, v)]);
  }
  return dl;
}

function group(title, ...content) {
  return h('section', {class: 'drawer-group'}, h('h3', {}, title), ...content);
}

function attachments(list) {
  if (!Array.isArray(list) || list.length === 0) return h('p', {class: 'muted'}, 'No attachments.');
  return h('ul', {class: 'attachments'}, list.map((a) => h('li', {},
    h('span', {class: 'tag'}, String(a?.kind ?? 'attachment')), ' ',
    linkOrText(a?.uri),
    fields(Object.fromEntries(Object.entries(a || {}).filter(([k]) => k !== 'uri' && k !== 'kind'))))));
}

function render(ev) {
  const b = clear(body());
  if (!ev || typeof ev !== 'object') {
    b.append(h('p', {}, 'No such event.'));
    return;
  }
  const e = ev.event || {};
  document.getElementById('drawer-title').textContent = `${e.type ?? 'event'} · ${ev.source?.id ?? ''}`;
  const delay = typeof ev.received_at === 'number' && typeof ev.observed_at === 'number'
    ? ev.received_at - ev.observed_at : null;
  const known = ['event_id', 'observed_at', 'received_at', 'source', 'event', 'correlation', 'attachments',
    'privacy', 'sync', 'flags'];
  const rest = Object.fromEntries(Object.entries(ev).filter(([k]) => !known.includes(k)));
  append(b, [
    fields({event_id: ev.event_id, observed_at: ev.observed_at, received_at: ev.received_at}),
    delay !== null && Math.abs(delay) >= 1000
      ? h('p', {class: 'muted'}, `Received ${fmtDuration(Math.abs(delay))} ${delay >= 0 ? 'after' : 'BEFORE'} it was observed.`)
      : null,
    Array.isArray(ev.flags) && ev.flags.length
      ? h('p', {}, 'Flags: ', ev.flags.map((f) => h('span', {class: 'tag warn'}, String(f))))
      : null,
    group('Event', fields(Object.fromEntries(Object.entries(e).filter(([k]) => k !== 'data')),
      ['category', 'type', 'severity', 'schema_version'])),
    group('Payload (data)', h('pre', {class: 'json payload', tabindex: '0'}, JSON.stringify(e.data ?? null, null, 2))),
    group('Attachments', attachments(ev.attachments)),
    group('Source', fields(ev.source, ['type', 'id', 'version', 'metadata'])),
    ev.correlation ? group('Correlation', fields(ev.correlation, ['correlation_id', 'session_id', 'incident_id'])) : null,
    ev.privacy ? group('Privacy', fields(ev.privacy, ['pii', 'retention_class'])) : null,
    ev.sync ? group('Sync', fields(ev.sync, ['source_seq', 'synced'])) : null,
    Object.keys(rest).length ? group('Other fields', fields(rest)) : null,
    h('div', {class: 'row-actions'},
      e.type ? h('a', {class: 'btn', href: `#/timeline?${new URLSearchParams({type: String(e.type)})}`}, 'Events of this type') : null,
      ev.source?.id ? h('a', {class: 'btn', href: `#/timeline?${new URLSearchParams({source: String(ev.source.id)})}`}, 'Events of this source') : null),
    h('details', {class: 'raw'}, h('summary', {}, 'Raw envelope (JSON)'), h('pre', {class: 'json small'}, JSON.stringify(ev, null, 2))),
  ]);
}
