// One edge (#/edge?edge_id=farm-3&range=7d): last seen, reported backlog, events per day, sync lag
// percentiles per day, the last heartbeat of each of its sources, and its sources.

import {csvLink, get} from './api.js';
import {append, clear, errorNotice, fill, fmtDec, fmtDuration, fmtNum, fmtTime, h, num, relTime, section, timeEl} from './dom.js';
import {bucketLabel, buckets, timeChart, toMs} from './charts.js';
import {queryOf, rangeOf, rangePicker} from './state.js';
import {dataTable, genericTable} from './table.js';

export function mount(root, params, ctx) {
  const {signal} = ctx;
  const edgeId = params.get('edge_id') || '';
  const r = rangeOf(params);
  const q = queryOf(params);
  const path = `/api/fleet/${encodeURIComponent(edgeId)}`;
  const api = {from: q.from, to: q.to};
  const summary = h('div', {id: 'edge-summary'}, h('p', {class: 'muted'}, 'Loading…'));
  const [evSec, evBody] = section(`Events per day, ${r.label}`, csvLink(path, api, `edge-${edgeId}`));
  const [lagSec, lagBody] = section('Sync lag (hub receive time − observed time), per day');
  const [hbSec, hbBody] = section('Last heartbeat per source');
  const [srcSec, srcBody] = section('Sources');
  evSec.id = 'edge-events';
  lagSec.id = 'edge-lag';
  root.append(
    h('p', {class: 'crumbs'}, h('a', {href: '#/fleet'}, '← Fleet')),
    h('div', {class: 'page-head'},
      h('div', {}, h('h1', {}, 'Edge ', h('span', {class: 'mono', id: 'edge-title'}, edgeId || '(none)'))),
      h('div', {class: 'controls'}, rangePicker('edge', params, ctx))),
    summary, evSec, lagSec, hbSec, srcSec);
  if (!edgeId) {
    fill(summary, errorNotice(new Error('no edge_id in the address')));
    return null;
  }

  (async () => {
    let d;
    try {
      d = await get(path, api, signal);
    } catch (err) {
      if (err.name === 'AbortError') return;
      for (const el of [summary, evBody, lagBody, hbBody, srcBody]) clear(el);
      summary.append(errorNotice(err));
      return;
    }
    const days = Array.isArray(d?.events_per_day) ? d.events_per_day : [];
    const total = days.reduce((a, x) => a + (Number(x.events) || 0), 0);
    fill(summary, h('div', {class: 'counters'},
      counter('Last seen', d?.last_seen ? relTime(toMs(d.last_seen)) : 'never', 'last_seen', d?.last_seen ? fmtTime(toMs(d.last_seen)) : null),
      counter('Backlog reported', fmtNum(Number(d?.backlog_reported)), 'backlog_reported'),
      counter(`Events, ${r.label}`, fmtNum(total), 'events'),
      counter('Sources', fmtNum((d?.sources || []).length), 'sources')));

    const byDay = new Map(days.map((x) => [toMs(x.day), Number(x.events) || 0]));
    const slots = buckets(r.from, r.to, 'day', [...byDay.keys()]).map((t) => ({t, values: {events: byDay.get(t) || 0}}));
    fill(evBody, 
      timeChart({slots, interval: 'day', stack: [{key: 'events', label: 'events'}], id: 'edge-events-chart', title: 'Events per day', unit: 'events'}),
      dataTable({id: 'edge-days', rows: [...days].sort((a, b) => toMs(b.day) - toMs(a.day)), columns: [
        {key: 'day', label: 'Day (UTC)', fmt: (v) => bucketLabel(toMs(v), 'day', true)},
        {key: 'events', label: 'Events', num: true},
      ]}));

    const lag = Array.isArray(d?.sync_lag) ? [...d.sync_lag].sort((a, b) => toMs(b.day) - toMs(a.day)) : [];
    const ms = (v) => fmtDuration(Number(v));
    fill(lagBody, lag.length ? dataTable({id: 'edge-lag-table', rows: lag, columns: [
      {key: 'day', label: 'Day (UTC)', fmt: (v) => bucketLabel(toMs(v), 'day', true)},
      {key: 'p50_ms', label: 'p50', num: true, fmt: ms},
      {key: 'p95_ms', label: 'p95', num: true, fmt: ms},
      {key: 'p99_ms', label: 'p99', num: true, fmt: ms},
    ]}) : h('p', {class: 'muted'}, 'No events in this range.'));

    const hbs = Array.isArray(d?.heartbeats) ? d.heartbeats : [];
    fill(hbBody, hbs.length
      ? genericTable({id: 'edge-heartbeats', rows: hbs, prefer: ['source_id', 'source_type', 'last_heartbeat_at']})
      : h('p', {class: 'muted'}, 'No heartbeat from this edge\'s sources.'));

    const srcs = Array.isArray(d?.sources) ? [...d.sources] : [];
    srcs.sort((a, b) => (Number(b.events) || 0) - (Number(a.events) || 0));
    fill(srcBody, srcs.length ? dataTable({id: 'edge-sources', rows: srcs, columns: [
      {key: 'source_id', label: 'Source', cls: 'mono'},
      {key: 'events', label: 'Events', num: true},
      {key: 'last_seen', label: 'Last seen', fmt: (v) => timeEl(toMs(v))},
    ]}) : h('p', {class: 'muted'}, 'No sources.'));
  })();
  return null;
}

function counter(label, value, id, note = null) {
  return append(h('div', {class: 'counter', 'data-counter': id}), [
    h('div', {class: 'counter-value'}, value), h('div', {class: 'counter-label'}, label),
    note ? h('div', {class: 'counter-note'}, note) : null]);
}
