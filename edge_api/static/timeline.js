// Timeline: filters in the URL hash (#/timeline?type=page_view&source=cam-1), newest first,
// "load more" through next_cursor, live events from /api/stream prepended (with a pause toggle).

import {get} from './api.js';
import {clear, errorNotice, fmtNum, h} from './dom.js';
import {CATEGORIES, SEVERITIES, eventRow, matches} from './events.js';

const RANGES = {'': 'any time', '1h': 'last hour', '24h': 'last 24 hours', '7d': 'last 7 days', '30d': 'last 30 days', custom: 'custom…'};
const RANGE_MS = {'1h': 3600e3, '24h': 86400e3, '7d': 7 * 86400e3, '30d': 30 * 86400e3};
const FILTER_KEYS = ['range', 'from', 'to', 'category', 'type', 'source', 'severity', 'q'];
const PAGE = 50;
const LIVE_FLUSH_MS = 500;
const LIVE_MAX_ROWS = 1000; // live rows prepended before the view pauses itself (bounded DOM)

/** datetime-local value <-> epoch ms (the browser's time zone). */
function toLocalInput(ms) {
  const d = new Date(Number(ms));
  if (Number.isNaN(d.getTime())) return '';
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

function readFilters(params) {
  const f = Object.fromEntries(FILTER_KEYS.map((k) => [k, (params.get(k) || '').trim()]));
  if (f.from || f.to) f.range = 'custom';
  const now = Date.now();
  f.fromMs = f.range in RANGE_MS ? now - RANGE_MS[f.range] : parseTime(f.from);
  f.toMs = f.range === 'custom' ? parseTime(f.to) : null;
  return f;
}

function parseTime(v) {
  if (!v) return null;
  const n = /^\d+$/.test(v) ? Number(v) : Date.parse(v);
  return Number.isFinite(n) ? n : null;
}

export function mount(root, params, ctx) {
  const f = readFilters(params);
  const {signal} = ctx;
  let cursor = null;
  let loading = false;
  let paused = false;
  let pending = 0;
  let liveRows = 0;
  let queue = [];
  const shown = new Set();
  const live = !(f.toMs && f.toMs < Date.now());

  // ---- filter form ----
  const field = (id, label, control) => h('div', {class: 'field'}, h('label', {for: id}, label), control);
  const opt = (value, label, sel) => h('option', {value, selected: value === sel}, label);
  const rangeSel = h('select', {id: 'f-range', name: 'range'}, Object.entries(RANGES).map(([v, l]) => opt(v, l, f.range)));
  const fromIn = h('input', {id: 'f-from', name: 'from', type: 'datetime-local', value: f.fromMs && f.range === 'custom' ? toLocalInput(f.fromMs) : ''});
  const toIn = h('input', {id: 'f-to', name: 'to', type: 'datetime-local', value: f.toMs ? toLocalInput(f.toMs) : ''});
  const custom = h('div', {class: 'custom-range', hidden: f.range !== 'custom'},
    field('f-from', 'From', fromIn), field('f-to', 'To', toIn));
  const catSel = h('select', {id: 'f-category', name: 'category'}, opt('', 'any', f.category), CATEGORIES.map((c) => opt(c, c, f.category)));
  const sevOptions = [['', 'any'], ['error,critical', 'error + critical'], ['warn,error,critical', 'warn and worse'], ...SEVERITIES.map((x) => [x, x])];
  if (f.severity && !sevOptions.some(([v]) => v === f.severity)) sevOptions.push([f.severity, f.severity]);
  const sevSel = h('select', {id: 'f-severity', name: 'severity'}, sevOptions.map(([v, l]) => opt(v, l, f.severity)));
  const typeIn = h('input', {id: 'f-type', name: 'type', value: f.type, list: 'dl-types', autocomplete: 'off', placeholder: 'e.g. page_view'});
  const sourceIn = h('input', {id: 'f-source', name: 'source', value: f.source, list: 'dl-sources', autocomplete: 'off', placeholder: 'e.g. cam-barn-01'});
  const qIn = h('input', {id: 'f-q', name: 'q', type: 'search', value: f.q, placeholder: 'text in type, source or payload'});
  const dlTypes = h('datalist', {id: 'dl-types'});
  const dlSources = h('datalist', {id: 'dl-sources'});

  const apply = () => {
    const range = rangeSel.value;
    const next = {
      range: range === 'custom' ? '' : range,
      from: range === 'custom' && fromIn.value ? new Date(fromIn.value).getTime() : '',
      to: range === 'custom' && toIn.value ? new Date(toIn.value).getTime() : '',
      category: catSel.value, type: typeIn.value.trim(), source: sourceIn.value.trim(),
      severity: sevSel.value, q: qIn.value.trim(),
    };
    ctx.navigate('timeline', next);
  };
  rangeSel.addEventListener('change', () => {
    custom.hidden = rangeSel.value !== 'custom';
    if (rangeSel.value !== 'custom') apply();
  });
  for (const sel of [catSel, sevSel]) sel.addEventListener('change', apply);

  const active = FILTER_KEYS.filter((k) => k !== 'range' && f[k]).length + (f.range && f.range !== 'custom' ? 1 : 0);
  const form = h('form', {class: 'filters', id: 'timeline-filters', role: 'search', 'aria-label': 'Timeline filters',
    onsubmit: (e) => {
      e.preventDefault();
      apply();
    }},
  field('f-range', 'Time', rangeSel), custom,
  field('f-category', 'Category', catSel), field('f-type', 'Type', typeIn), field('f-source', 'Source', sourceIn),
  field('f-severity', 'Severity', sevSel), field('f-q', 'Search', qIn), dlTypes, dlSources,
  h('div', {class: 'field actions'},
    h('button', {type: 'submit', class: 'btn primary'}, 'Apply'),
    active ? h('a', {class: 'btn', href: '#/timeline'}, 'Clear filters') : null));

  // ---- list and live controls ----
  const list = h('ol', {class: 'events', id: 'timeline-list', 'aria-live': 'off'});
  const status = h('p', {class: 'muted', id: 'timeline-status', role: 'status'});
  const more = h('button', {type: 'button', class: 'btn', id: 'load-more', hidden: true, onclick: () => load(false)}, 'Load more');
  const liveBtn = h('button', {type: 'button', class: 'btn', id: 'live-toggle', 'aria-pressed': 'true', onclick: () => setPaused(!paused)});
  const liveNote = h('span', {class: 'muted', id: 'live-note', role: 'status'});

  function renderLive() {
    liveBtn.textContent = paused ? 'Resume live updates' : 'Pause live updates';
    liveBtn.setAttribute('aria-pressed', String(!paused));
    liveNote.textContent = !live ? 'Live updates off: the range ends in the past.'
      : paused ? `Paused${pending ? `: ${fmtNum(pending)} new matching event${pending === 1 ? '' : 's'}` : ''}`
        : 'New matching events appear at the top.';
  }
  function setPaused(p) {
    paused = p;
    if (!paused && (pending || liveRows >= LIVE_MAX_ROWS)) {
      pending = 0;
      liveRows = 0;
      load(true); // simplest correct catch-up: reload the newest page
    }
    renderLive();
  }

  root.append(
    h('div', {class: 'page-head'}, h('h1', {}, 'Timeline'),
      live ? h('div', {class: 'live-controls'}, liveBtn, liveNote) : liveNote),
    // On a phone the filters fold away behind one line (open on wider screens).
    h('details', {class: 'filters-box', open: !window.matchMedia('(max-width: 760px)').matches},
      h('summary', {}, active ? `Filters (${active} active)` : 'Filters'), form),
    status, list, h('div', {class: 'more'}, more));
  renderLive();

  // ---- loading ----
  function query() {
    return {
      from: f.fromMs ?? '', to: f.toMs ?? '', category: f.category, type: f.type, source: f.source,
      severity: f.severity, q: f.q, limit: PAGE,
    };
  }
  async function load(reset) {
    if (loading) return;
    loading = true;
    more.disabled = true;
    status.textContent = 'Loading…';
    try {
      const data = await get('/api/timeline', {...query(), cursor: reset ? '' : cursor}, signal);
      if (reset) {
        clear(list);
        shown.clear();
        queue = [];
      }
      const events = Array.isArray(data?.events) ? data.events : [];
      for (const ev of events) {
        if (shown.has(ev?.event_id)) continue;
        shown.add(ev?.event_id);
        list.append(eventRow(ev, ctx.openEvent));
      }
      cursor = data?.next_cursor ?? null;
      more.hidden = !cursor;
      status.textContent = list.childElementCount
        ? `${fmtNum(list.childElementCount)} event${list.childElementCount === 1 ? '' : 's'} shown, newest first${cursor ? '' : ' (end of list)'}.`
        : cursor ? 'No matches in the events searched so far: load more to keep searching.' : 'No events match these filters.';
    } catch (err) {
      if (err.name !== 'AbortError') status.replaceChildren(errorNotice(err));
    } finally {
      loading = false;
      more.disabled = false;
    }
  }
  load(true);

  // Suggestions for type/source from the 30-day top lists (cheap rollups).
  for (const [dim, dl] of [['type', dlTypes], ['source', dlSources]]) {
    get('/api/top', {dim, window: '30d', limit: 100}, signal)
      .then((d) => dl.append(...(d?.items || []).map((it) => h('option', {value: String(it.key ?? '')}))))
      .catch(() => {});
  }

  // ---- live events ----
  const flush = () => {
    if (!queue.length) return;
    const batch = queue;
    queue = [];
    const frag = document.createDocumentFragment();
    // The queue is in arrival order; the list is newest first.
    for (let i = batch.length - 1; i >= 0; i -= 1) frag.append(eventRow(batch[i], ctx.openEvent));
    list.prepend(frag);
    liveRows += batch.length;
    status.textContent = `${fmtNum(list.childElementCount)} events shown, newest first.`;
    if (liveRows >= LIVE_MAX_ROWS) {
      paused = true;
      liveNote.textContent = '';
      renderLive();
      liveNote.textContent = `Paused after ${fmtNum(LIVE_MAX_ROWS)} live events: resume to reload.`;
    }
  };
  const unsubscribe = live ? ctx.subscribe((kind, ev) => {
    if (kind === 'lagged') {
      liveNote.textContent = 'The live stream fell behind: some events were skipped. Reload to catch up.';
      return;
    }
    if (kind !== 'event' || !ev || shown.has(ev.event_id) || !matches(ev, f)) return;
    if (paused || queue.length >= LIVE_MAX_ROWS) {
      pending += 1; // counted only; resuming reloads the newest page
      if (!paused) paused = true;
      renderLive();
      return;
    }
    shown.add(ev.event_id);
    queue.push(ev);
  }) : () => {};
  const timer = setInterval(flush, LIVE_FLUSH_MS);

  return () => {
    clearInterval(timer);
    unsubscribe();
  };
}
