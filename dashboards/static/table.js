// Tables: declared columns, or columns taken from the rows' own keys (for answers whose fields the
// dashboard does not know in advance, e.g. incidents and heartbeats). Cells are text; on a phone
// each row becomes a card whose cells are labelled (style.css, td[data-label]).

import {fmtDec, fmtNum, fmtTime, h} from './dom.js';
import {toMs} from './charts.js';

/** columns: [{key, label, num?: bool, fmt?: (value, row) => Node|string, cls?}] */
export function dataTable({id, columns, rows, caption = null, rowAttrs = null}) {
  return h('div', {class: 'table-wrap'}, h('table', {class: 'table', id},
    caption ? h('caption', {class: 'muted'}, caption) : null,
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', {scope: 'col', class: c.num ? 'num' : null}, c.label)))),
    h('tbody', {}, rows.map((r) => h('tr', rowAttrs ? rowAttrs(r) : {}, columns.map((c) => {
      const v = r[c.key];
      const shown = c.fmt ? c.fmt(v, r) : c.num ? fmtNum(Number(v)) : v === null || v === undefined ? '—' : String(v);
      return h('td', {'data-label': c.label, 'data-col': c.key, class: [c.num ? 'num' : null, c.cls || null]}, shown);
    }))))));
}

const TIME_KEY = /(^t$|_at$|_ms$|^first_seen$|^last_seen$|^start|^end|^time|^day$|^hour$)/;

function label(key) {
  const s = key.replace(/_/g, ' ');
  return s.charAt(0).toUpperCase() + s.slice(1);
}

/** A value of unknown shape as text: times formatted, lists joined, objects as JSON. */
export function cellText(key, v) {
  if (v === null || v === undefined || v === '') return '—';
  if (Array.isArray(v)) return v.map((x) => (typeof x === 'object' ? JSON.stringify(x) : String(x))).join(', ');
  if (typeof v === 'object') return JSON.stringify(v);
  if (TIME_KEY.test(key)) {
    const ms = toMs(v);
    if (Number.isFinite(ms) && (typeof v === 'string' || ms > 1e11)) return fmtTime(ms);
  }
  if (typeof v === 'number') return Number.isInteger(v) ? fmtNum(v) : fmtDec(v, 3);
  if (typeof v === 'boolean') return v ? 'yes' : 'no';
  return String(v);
}

/** Columns from the union of the rows' keys (first row's order first). */
export function genericTable({id, rows, caption = null, prefer = []}) {
  const keys = [];
  for (const k of prefer) if (rows.some((r) => r && k in r)) keys.push(k);
  for (const r of rows) for (const k of Object.keys(r || {})) if (!keys.includes(k)) keys.push(k);
  const columns = keys.map((k) => ({
    key: k, label: label(k), num: rows.some((r) => typeof r?.[k] === 'number') && !TIME_KEY.test(k),
    fmt: (v) => cellText(k, v),
  }));
  return dataTable({id, columns, rows, caption});
}

function csvCell(v) {
  const s = v === null || v === undefined ? '' : Array.isArray(v) ? v.join(' ') : typeof v === 'object' ? JSON.stringify(v) : String(v);
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/** A "CSV" link for rows the page already has (for answers the API cannot export itself). */
export function localCsvLink(keys, rows, filename) {
  const a = h('a', {class: 'csv', href: '#', download: `${filename}.csv`, title: 'Download this table as CSV'}, 'CSV ⤓');
  a.addEventListener('click', () => {
    const text = [keys.join(','), ...rows.map((r) => keys.map((k) => csvCell(r[k])).join(','))].join('\n') + '\n';
    const old = a.getAttribute('href');
    if (old && old.startsWith('blob:')) URL.revokeObjectURL(old);
    a.href = URL.createObjectURL(new Blob([text], {type: 'text/csv'}));
  });
  return a;
}
