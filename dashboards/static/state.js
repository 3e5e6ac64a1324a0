// What every analytics page shares: the date range, the site and the filters, all kept in the URL
// (#/web?site=site-1&range=7d&country=DE), turned into the API's common parameters, and the
// controls that change them. Changing one is a navigation, so the back button undoes it.

import {get} from './api.js';
import {errorNotice, h} from './dom.js';

export const HOUR = 3600e3;
export const DAY = 24 * HOUR;
export const RANGES = {'24h': 'Last 24 hours', '7d': 'Last 7 days', '30d': 'Last 30 days', custom: 'Custom…'};
const SPANS = {'24h': DAY, '7d': 7 * DAY, '30d': 30 * DAY};

/** The API's filter parameters, with the label a chip shows. */
export const FILTERS = {
  path: 'Page', referrer: 'Referrer', channel: 'Channel', country: 'Country', region: 'Region', city: 'City',
  browser: 'Browser', os: 'OS', device: 'Device', utm_source: 'UTM source', utm_medium: 'UTM medium',
  utm_campaign: 'UTM campaign', edge_id: 'Edge',
};

const DATE_RE = /^\d{4}-\d{2}-\d{2}$/;

/** 'YYYY-MM-DD' of a local date. */
export function isoDay(d) {
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`;
}

function localMidnight(day) {
  const [y, m, d] = day.split('-').map(Number);
  return new Date(y, m - 1, d).getTime();
}

/**
 * The range in the URL as {range, from, to, label}: 24h/7d/30d end now (rounded up to the next
 * minute, so a reload within the minute asks the same question); custom is whole local days,
 * `from` and `to` both included.
 */
export function rangeOf(params, now = Date.now()) {
  let range = params.get('range') || '7d';
  if (!(range in RANGES)) range = '7d';
  if (range === 'custom') {
    const f = params.get('from') || '';
    const t = params.get('to') || '';
    if (DATE_RE.test(f) && DATE_RE.test(t) && f <= t) {
      return {range, from: localMidnight(f), to: localMidnight(t) + DAY, label: f === t ? f : `${f} – ${t}`, fromDay: f, toDay: t};
    }
    range = '7d';
  }
  const to = Math.ceil(now / 60000) * 60000;
  return {range, from: to - SPANS[range], to, label: RANGES[range].toLowerCase()};
}

/** The filters set in the URL: [[param, value], ...]. */
export function filtersOf(params) {
  return Object.keys(FILTERS).filter((k) => params.get(k)).map((k) => [k, params.get(k)]);
}

/** The API's common parameters for these URL params. */
export function queryOf(params, now) {
  const r = rangeOf(params, now);
  const q = {from: r.from, to: r.to};
  if (params.get('site')) q.site = params.get('site');
  for (const [k, v] of filtersOf(params)) q[k] = v;
  if (params.get('include_bots') === '1') q.include_bots = 1;
  return q;
}

/** A copy of the URL params with some keys set (null/'' removes them). */
export function withParams(params, changes) {
  const next = new URLSearchParams(params);
  for (const [k, v] of Object.entries(changes)) {
    if (v === null || v === undefined || v === '') next.delete(k);
    else next.set(k, String(v));
  }
  return next;
}

// ---- controls --------------------------------------------------------------------------------

/** The date-range picker: a select, and two date inputs with "Apply" for a custom range. */
export function rangePicker(page, params, ctx) {
  const r = rangeOf(params);
  const today = isoDay(new Date());
  const fromIn = h('input', {type: 'date', id: 'range-from', value: r.fromDay || isoDay(new Date(Date.now() - 6 * DAY)), max: today});
  const toIn = h('input', {type: 'date', id: 'range-to', value: r.toDay || today, max: today});
  const custom = h('span', {class: 'custom-range', id: 'range-custom', hidden: r.range !== 'custom'},
    h('label', {for: 'range-from', class: 'sr'}, 'From'), fromIn,
    h('span', {'aria-hidden': 'true'}, '–'),
    h('label', {for: 'range-to', class: 'sr'}, 'To'), toIn,
    h('button', {type: 'button', class: 'btn', id: 'range-apply', onclick: () => {
      if (!fromIn.value || !toIn.value) return;
      const [f, t] = fromIn.value <= toIn.value ? [fromIn.value, toIn.value] : [toIn.value, fromIn.value];
      ctx.navigate(page, withParams(params, {range: 'custom', from: f, to: t}));
    }}, 'Apply'));
  const select = h('select', {id: 'range', onchange: (e) => {
    if (e.target.value === 'custom') {
      custom.hidden = false;
      fromIn.focus();
    } else {
      ctx.navigate(page, withParams(params, {range: e.target.value, from: null, to: null}));
    }
  }}, Object.entries(RANGES).map(([k, label]) => h('option', {value: k, selected: k === r.range}, label)));
  return h('div', {class: 'field range-field'}, h('label', {for: 'range'}, 'Date range'), h('div', {class: 'range-row'}, select, custom));
}

/** The site picker, filled from /api/web/sites (the caller passes the list). */
export function sitePicker(page, params, ctx, sites, {allowAll = false} = {}) {
  const current = params.get('site') || '';
  const options = sites.map((x) => String(x.site ?? ''));
  if (current && !options.includes(current)) options.unshift(current);
  const select = h('select', {id: 'site', onchange: (e) => ctx.navigate(page, withParams(params, {site: e.target.value}))},
    allowAll ? h('option', {value: '', selected: !current}, 'All sites') : null,
    options.map((s) => h('option', {value: s, selected: s === current}, s || '(no site)')));
  return h('div', {class: 'field'}, h('label', {for: 'site'}, 'Site'), select);
}

/** The include-bots toggle (bots are left out of web numbers by default). */
export function botsToggle(page, params, ctx) {
  const on = params.get('include_bots') === '1';
  const box = h('input', {type: 'checkbox', id: 'include-bots', checked: on,
    onchange: (e) => ctx.navigate(page, withParams(params, {include_bots: e.target.checked ? '1' : null}))});
  return h('div', {class: 'field check'}, h('label', {for: 'include-bots'}, box, ' Include bots'));
}

/** The active filters as removable chips (or nothing). */
export function filterChips(page, params, ctx) {
  const active = filtersOf(params);
  if (!active.length) return h('div', {class: 'chips', id: 'filter-chips', hidden: true});
  return h('div', {class: 'chips', id: 'filter-chips', role: 'group', 'aria-label': 'Active filters'},
    h('span', {class: 'muted'}, 'Filtered by'),
    active.map(([k, v]) => h('span', {class: 'chip', 'data-filter': k},
      h('span', {class: 'chip-key'}, `${FILTERS[k]}: `), h('span', {class: 'chip-value'}, v),
      h('button', {type: 'button', class: 'chip-x', 'aria-label': `Remove filter ${FILTERS[k]} ${v}`,
        onclick: () => ctx.navigate(page, withParams(params, {[k]: null}))}, '✕'))),
    active.length > 1
      ? h('button', {type: 'button', class: 'linkish small', id: 'clear-filters',
        onclick: () => ctx.navigate(page, withParams(params, Object.fromEntries(active.map(([k]) => [k, null]))))}, 'Clear all')
      : null);
}

/**
 * The sites the hub knows, for the site picker. A failed call leaves a notice in `status` and
 * gives [] (the page still works for a site named in the URL); null when the page was left.
 */
export async function loadSites(signal, status) {
  try {
    const data = await get('/api/web/sites', {}, signal);
    return Array.isArray(data?.sites) ? data.sites : [];
  } catch (err) {
    if (err.name === 'AbortError') return null;
    status.append(errorNotice(err));
    return [];
  }
}

/** Pick the first site when the URL names none, without a new history entry. */
export function ensureSite(page, params, sites) {
  if (params.get('site') || !sites.length) return params;
  const next = withParams(params, {site: sites[0].site});
  history.replaceState(history.state, '', `#/${page}?${next}`);
  return next;
}
