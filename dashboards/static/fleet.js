// Fleet: every edge that ever sent a batch (events, last seen, reported backlog, batches, rejected
// events), each edge's sync lag, and events per day across the fleet. An edge's row opens its
// drill-down (#/edge?edge_id=...).

import {get} from './api.js';
import {errorNotice, fill, fmtDuration, fmtNum, h, section, timeEl} from './dom.js';
import {buckets, timeChart, toMs} from './charts.js';
import {queryOf, rangeOf, rangePicker} from './state.js';
import {dataTable, localCsvLink} from './table.js';

const MAX_CHART_EDGES = 24; // one drill-down request each; beyond that the chart says so
const STALE_MS = 15 * 60e3;

export function mount(root, params, ctx) {
  const {signal} = ctx;
  const r = rangeOf(params);
  const q = queryOf(params);
  const status = h('p', {class: 'muted', id: 'fleet-status', role: 'status'}, 'Loading…');
  const csvSlot = h('span', {class: 'card-tools', id: 'fleet-csv'});
  const [tableSec, tableBody] = section('Edges', csvSlot);
  tableSec.id = 'fleet-edges';
  const [chartSec, chartBody] = section(`Events per day, ${r.label}`);
  chartSec.id = 'fleet-chart';
  root.append(
    h('div', {class: 'page-head'},
      h('div', {}, h('h1', {}, 'Fleet'), h('p', {class: 'lede'}, 'Every edge that forwards to this hub, as the hub has stored it.')),
      h('div', {class: 'controls'}, rangePicker('fleet', params, ctx))),
    status, tableSec, chartSec);

  async function load() {
    let fleet;
    try {
      fleet = await get('/api/fleet', {}, signal);
    } catch (err) {
      if (err.name !== 'AbortError') fill(status, errorNotice(err));
      return;
    }
    const edges = Array.isArray(fleet?.edges) ? fleet.edges : [];
    // /api/fleet has no CSV export: the page writes the same rows itself.
    csvSlot.replaceChildren(localCsvLink(['edge_id', 'events', 'last_seen', 'backlog_reported', 'batches', 'rejected'], edges, 'edgekite-fleet'));
    status.replaceChildren(
      `${fmtNum(edges.length)} edge${edges.length === 1 ? '' : 's'}, `,
      `${fmtNum(edges.reduce((a, e) => a + (Number(e.events) || 0), 0))} events accepted in total.`,
      fleet?.dev_mode ? ' ' : null,
      fleet?.dev_mode ? h('span', {class: 'tag warn', title: 'No [edges] configured: the hub accepts any edge without a key'}, 'development mode') : null);
    if (!('latest_event_ms' in (fleet || {}))) freshness(edges, ctx);
    const details = new Map();
    renderTable(tableBody, edges, details);
    if (!edges.length) {
      fill(chartBody, h('p', {class: 'muted'}, 'No edge has sent anything yet.'));
      return;
    }
    // Per-edge drill-downs: events per day for the chart, sync lag for the table (4 at a time).
    const wanted = [...edges].sort((a, b) => (Number(b.events) || 0) - (Number(a.events) || 0)).slice(0, MAX_CHART_EDGES);
    let next = 0;
    await Promise.all(Array.from({length: Math.min(4, wanted.length)}, async () => {
      while (next < wanted.length && !signal.aborted) {
        const e = wanted[next++];
        try {
          details.set(e.edge_id, await get(`/api/fleet/${encodeURIComponent(e.edge_id)}`, {from: q.from, to: q.to}, signal));
        } catch (err) {
          if (err.name === 'AbortError') return;
          details.set(e.edge_id, {error: err});
        }
      }
    }));
    if (signal.aborted) return;
    renderTable(tableBody, edges, details);
    renderChart(chartBody, wanted, details, r, edges.length);
  }
  load();
  const timer = setInterval(load, 60000);
  return () => clearInterval(timer);
}

/** When /api/fleet has no latest_event_ms, the hub's health says when it last received a batch. */
async function freshness(edges, ctx) {
  try {
    const hd = await get('/api/health', {}, ctx.signal);
    const ms = Number(hd?.last_hub_received_at);
    if (Number.isFinite(ms) && ms > 0) ctx.setLatest(ms);
    else if (!edges.length) ctx.setLatest(null);
  } catch {
    const ms = Math.max(0, ...edges.map((e) => Number(e.last_seen) || 0));
    ctx.setLatest(ms || null);
  }
}

function lagOf(detail) {
  const rows = Array.isArray(detail?.sync_lag) ? detail.sync_lag : [];
  if (!rows.length) return null;
  return [...rows].sort((a, b) => toMs(b.day) - toMs(a.day))[0];
}

function renderTable(el, edges, details) {
  if (!edges.length) {
    fill(el, h('p', {class: 'muted'}, 'No edge has sent a batch to this hub yet.'));
    return;
  }
  const now = Date.now();
  const rows = [...edges].sort((a, b) => String(a.edge_id).localeCompare(String(b.edge_id)));
  fill(el, dataTable({
    id: 'fleet-table',
    rows,
    rowAttrs: (e) => ({'data-edge': String(e.edge_id), class: now - Number(e.last_seen) > STALE_MS ? 'stale' : null}),
    columns: [
      {key: 'edge_id', label: 'Edge', fmt: (v) => h('a', {href: `#/edge?${new URLSearchParams({edge_id: String(v ?? '')})}`, class: 'edge-link'}, String(v ?? ''))},
      {key: 'events', label: 'Events', num: true},
      {key: 'last_seen', label: 'Last seen', fmt: (v) => timeEl(Number(v))},
      {key: 'backlog_reported', label: 'Backlog reported', num: true,
        fmt: (v) => h('span', {class: Number(v) > 0 ? 'warn-text' : null}, fmtNum(Number(v)))},
      {key: 'batches', label: 'Batches', num: true},
      {key: 'rejected', label: 'Rejected', num: true,
        fmt: (v) => h('span', {class: Number(v) > 0 ? 'bad-text' : null}, fmtNum(Number(v)))},
      {key: 'edge_id', label: 'Sync lag p95 (latest day)', num: true, cls: 'lag',
        fmt: (v) => {
          const d = details.get(v);
          if (!d) return h('span', {class: 'muted'}, details.size ? '—' : '…');
          const lag = lagOf(d);
          return lag ? h('span', {title: `p50 ${fmtDuration(Number(lag.p50_ms))}, p99 ${fmtDuration(Number(lag.p99_ms))}`},
            fmtDuration(Number(lag.p95_ms))) : h('span', {class: 'muted'}, '—');
        }},
    ],
  }));
}

function renderChart(el, wanted, details, r, total) {
  const perEdge = wanted.map((e) => ({id: String(e.edge_id), days: details.get(e.edge_id)?.events_per_day || []}));
  const byDay = new Map();
  for (const e of perEdge) {
    for (const d of e.days) {
      const t = toMs(d.day);
      if (!Number.isFinite(t)) continue;
      if (!byDay.has(t)) byDay.set(t, {});
      byDay.get(t)[e.id] = (byDay.get(t)[e.id] || 0) + (Number(d.events) || 0);
    }
  }
  const times = buckets(r.from, r.to, 'day', [...byDay.keys()]);
  const slots = times.map((t) => ({t, values: byDay.get(t) || {}}));
  const stack = perEdge.filter((e) => e.days.length).map((e) => ({key: e.id, label: e.id}));
  const errors = perEdge.filter((e) => details.get(e.id)?.error);
  fill(el, 
    stack.length
      ? timeChart({slots, interval: 'day', stack, id: 'fleet-events-chart', title: 'Events per day by edge', unit: 'events'})
      : h('p', {class: 'muted'}, 'No events in this range.'),
    h('p', {class: 'muted small'}, 'Days in UTC, by the edge\'s receive time. ',
      total > wanted.length ? `Showing the ${wanted.length} busiest of ${total} edges.` : null),
    errors.length ? errorNotice(details.get(errors[0].id).error) : null);
}
