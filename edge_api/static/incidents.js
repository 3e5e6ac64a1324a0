// Incidents: camera detections grouped into time windows (/api/incidents), newest first.

import {get} from './api.js';
import {errorNotice, fmtDuration, fmtNum, fmtTime, h, linkOrText, relTime} from './dom.js';

const RANGES = {'24h': 86400e3, '7d': 7 * 86400e3, '30d': 30 * 86400e3, all: null};

export function mount(root, params, ctx) {
  const {signal} = ctx;
  const range = params.get('range') in RANGES ? params.get('range') : '7d';
  const source = (params.get('source') || '').trim();
  let cursor = null;

  const rangeSel = h('select', {id: 'i-range', onchange: () => apply()},
    Object.keys(RANGES).map((k) => h('option', {value: k, selected: k === range}, k === 'all' ? 'any time' : `last ${k.replace('h', ' hours').replace('d', ' days')}`)));
  const sourceIn = h('input', {id: 'i-source', value: source, placeholder: 'camera id, e.g. cam-gate-02', autocomplete: 'off'});
  const apply = () => ctx.navigate('incidents', {range: rangeSel.value, source: sourceIn.value.trim()});
  const form = h('form', {class: 'filters', role: 'search', 'aria-label': 'Incident filters', onsubmit: (e) => {
    e.preventDefault();
    apply();
  }},
  h('div', {class: 'field'}, h('label', {for: 'i-range'}, 'Time'), rangeSel),
  h('div', {class: 'field'}, h('label', {for: 'i-source'}, 'Camera'), sourceIn),
  h('div', {class: 'field actions'}, h('button', {type: 'submit', class: 'btn primary'}, 'Apply')));

  const tbody = h('tbody');
  const table = h('table', {class: 'table incidents', id: 'incidents-table'},
    h('caption', {class: 'muted'}, 'Detections of one camera less than the configured gap apart form one incident.'),
    h('thead', {}, h('tr', {}, ['Camera', 'Start – end', 'Detections', 'Top confidence', 'Labels', 'Thumbnail', ''].map((c) => h('th', {scope: 'col'}, c)))),
    tbody);
  const status = h('p', {class: 'muted', role: 'status'}, 'Loading…');
  const more = h('button', {type: 'button', class: 'btn', hidden: true, onclick: () => load()}, 'Load more');

  root.append(h('div', {class: 'page-head'}, h('h1', {}, 'Incidents')), form, status, h('div', {class: 'table-wrap'}, table), h('div', {class: 'more'}, more));

  function row(inc) {
    const conf = Number(inc?.top_confidence);
    const thumb = inc?.thumbnail?.uri;
    return h('tr', {},
      h('td', {'data-label': 'Camera'}, h('a', {href: `#/timeline?${new URLSearchParams({source: String(inc?.source_id ?? '')})}`}, String(inc?.source_id ?? ''))),
      h('td', {'data-label': 'Start – end'},
        h('time', {title: fmtTime(inc?.start)}, `${fmtTime(inc?.start, true)} – ${inc?.end ? new Date(inc.end).toLocaleTimeString() : '?'}`),
        h('div', {class: 'muted'}, `${relTime(inc?.start)}, lasted ${fmtDuration(Number(inc?.end) - Number(inc?.start))}`)),
      h('td', {'data-label': 'Detections', class: 'num'}, fmtNum(Number(inc?.count))),
      h('td', {'data-label': 'Top confidence', class: 'num'}, Number.isFinite(conf) ? `${(conf * 100).toFixed(1)} %` : '—'),
      h('td', {'data-label': 'Labels'}, (Array.isArray(inc?.labels) ? inc.labels : []).map((l) => h('span', {class: 'tag'}, String(l)))),
      h('td', {'data-label': 'Thumbnail', class: 'thumb'}, thumb ? linkOrText(thumb) : h('span', {class: 'muted'}, 'none')),
      h('td', {}, inc?.top_event_id
        ? h('button', {type: 'button', class: 'btn small', onclick: () => ctx.openEvent(String(inc.top_event_id))}, 'Top detection')
        : null));
  }

  async function load() {
    more.disabled = true;
    const span = RANGES[range];
    try {
      const data = await get('/api/incidents', {from: span ? Date.now() - span : '', source, limit: 50, cursor}, signal);
      for (const inc of data?.incidents || []) tbody.append(row(inc));
      cursor = data?.next_cursor ?? null;
      more.hidden = !cursor;
      status.textContent = tbody.childElementCount ? '' : 'No incidents in this range.';
    } catch (err) {
      if (err.name !== 'AbortError') status.replaceChildren(errorNotice(err));
    } finally {
      more.disabled = false;
    }
  }
  load();
  return null;
}
