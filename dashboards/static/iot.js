// IoT: detections per camera over time (with confidence) and the incidents they form, across every
// camera and edge; sensor min/avg/max over time, one small chart per sensor and metric.
// #/iot?site=site-1&range=24h&source=site-1-cam-1&label=person&interval=hour

import {apiUrl, csvLink, get} from './api.js';
import {errorNotice, fill, fmtDec, fmtDuration, fmtNum, fmtTime, h, num, section} from './dom.js';
import {bandChart, bucketLabel, buckets, timeChart, toMs} from './charts.js';
import {DAY, queryOf, rangeOf, rangePicker, sitePicker, withParams} from './state.js';
import {dataTable, genericTable} from './table.js';

const MAX_ROWS_SHOWN = 200;
const conf = (v) => (Number.isFinite(num(v)) ? fmtDec(num(v), 2) : '—');
const MAX_STACK = 8;

export function mount(root, params, ctx) {
  const {signal} = ctx;
  const r = rangeOf(params);
  const interval = ['hour', 'day'].includes(params.get('interval')) ? params.get('interval') : r.to - r.from > 7 * DAY ? 'day' : 'hour';
  const q = queryOf(params);
  const common = {site: q.site, from: q.from, to: q.to, edge_id: q.edge_id};
  const source = params.get('source') || '';
  const label = params.get('label') || '';
  const metric = params.get('metric') || '';
  const controls = h('div', {class: 'controls', id: 'iot-controls'});
  const detTools = h('span', {class: 'card-tools'});
  const [detSec, detBody] = section(`Detections per ${interval}, ${r.label}`, detTools);
  detSec.id = 'iot-detections';
  const incTools = h('span', {class: 'card-tools'});
  const [incSec, incBody] = section('Incidents', incTools);
  incSec.id = 'iot-incidents';
  const senTools = h('span', {class: 'card-tools'});
  const [senSec, senBody] = section(`Sensors: min / avg / max per ${interval}`, senTools);
  senSec.id = 'iot-sensors';
  for (const b of [detBody, incBody, senBody]) b.append(h('p', {class: 'muted'}, 'Loading…'));
  root.append(
    h('div', {class: 'page-head'}, h('div', {}, h('h1', {}, 'IoT'),
      h('p', {class: 'lede'}, 'Camera detections, incidents and sensor readings from every edge.'))),
    controls, detSec, incSec, senSec);

  const detApi = {...common, source, label, interval};
  const senApi = {...common, source, metric, interval};
  detTools.append(csvLink('/api/iot/detections', detApi, 'iot-detections'));
  senTools.append(csvLink('/api/iot/sensors', senApi, 'iot-sensors'));

  (async () => {
    const [sites, det, sen] = await Promise.allSettled([
      get('/api/web/sites', {}, signal),
      get('/api/iot/detections', detApi, signal),
      get('/api/iot/sensors', senApi, signal),
    ]);
    if (signal.aborted) return;
    const siteList = sites.status === 'fulfilled' && Array.isArray(sites.value?.sites) ? sites.value.sites : [];
    const detRows = det.status === 'fulfilled' && Array.isArray(det.value?.rows) ? det.value.rows : [];
    const senRows = sen.status === 'fulfilled' && Array.isArray(sen.value?.rows) ? sen.value.rows : [];
    const pick = (id, name, text, values, current) => {
      const opts = [...new Set([...values, ...(current ? [current] : [])])].sort();
      return h('div', {class: 'field'}, h('label', {for: id}, text),
        h('select', {id, onchange: (e) => ctx.navigate('iot', withParams(params, {[name]: e.target.value}))},
          h('option', {value: '', selected: !current}, 'All'),
          opts.map((v) => h('option', {value: v, selected: v === current}, v))));
    };
    const sensorSources = senRows.map((x) => String(x.source_id ?? ''));
    controls.append(
      sitePicker('iot', params, ctx, siteList, {allowAll: true}),
      rangePicker('iot', params, ctx),
      pick('iot-source', 'source', 'Camera or sensor', [...detRows.map((x) => String(x.camera_id ?? '')), ...sensorSources], source),
      pick('iot-label', 'label', 'Label', detRows.map((x) => String(x.label ?? '')), label),
      pick('iot-metric', 'metric', 'Metric', senRows.map((x) => String(x.metric ?? '')), metric),
      h('div', {class: 'field'}, h('label', {for: 'iot-interval'}, 'Per'),
        h('select', {id: 'iot-interval', onchange: (e) => ctx.navigate('iot', withParams(params, {interval: e.target.value}))},
          h('option', {value: 'hour', selected: interval === 'hour'}, 'hour'), h('option', {value: 'day', selected: interval === 'day'}, 'day'))));
    if (det.status === 'fulfilled') {
      detBody.dataset.api = apiUrl('/api/iot/detections', detApi);
      renderDetections(detBody, detRows, r, interval);
      const inc = Array.isArray(det.value?.incidents) ? det.value.incidents : [];
      renderIncidents(incBody, inc);
    } else if (det.reason?.name !== 'AbortError') {
      fill(detBody, errorNotice(det.reason));
      fill(incBody, errorNotice(det.reason));
    }
    if (sen.status === 'fulfilled') {
      senBody.dataset.api = apiUrl('/api/iot/sensors', senApi);
      renderSensors(senBody, senRows, interval, r);
    } else if (sen.reason?.name !== 'AbortError') fill(senBody, errorNotice(sen.reason));
  })();
  return null;
}

function allRows(rows, columns, id) {
  const sorted = [...rows].sort((a, b) => toMs(b.t) - toMs(a.t));
  return h('details', {class: 'rows'},
    h('summary', {}, `All ${fmtNum(rows.length)} rows${rows.length > MAX_ROWS_SHOWN ? ` (newest ${MAX_ROWS_SHOWN} shown; the CSV has all)` : ''}`),
    dataTable({id, rows: sorted.slice(0, MAX_ROWS_SHOWN), columns}));
}

function renderDetections(el, rows, r, interval) {
  if (!rows.length) {
    fill(el, h('p', {class: 'muted'}, 'No detections in this range.'));
    return;
  }
  // Per camera: totals, confidence weighted by detections.
  const cams = new Map();
  for (const x of rows) {
    const id = String(x.camera_id ?? '');
    const n = num(x.detections) || 0;
    const c = cams.get(id) || {camera_id: id, labels: new Set(), detections: 0, confSum: 0, max: -Infinity};
    c.detections += n;
    c.confSum += (num(x.avg_confidence) || 0) * n;
    c.max = Math.max(c.max, num(x.max_confidence));
    c.labels.add(String(x.label ?? ''));
    cams.set(id, c);
  }
  const perCam = [...cams.values()].sort((a, b) => b.detections - a.detections)
    .map((c) => ({...c, labels: [...c.labels].sort().join(', '), avg_confidence: c.detections ? c.confSum / c.detections : NaN}));
  const stackIds = perCam.slice(0, MAX_STACK).map((c) => c.camera_id);
  const byT = new Map();
  for (const x of rows) {
    const t = toMs(x.t);
    const id = stackIds.includes(String(x.camera_id)) ? String(x.camera_id) : '(other cameras)';
    const v = byT.get(t) || {};
    v[id] = (v[id] || 0) + (num(x.detections) || 0);
    byT.set(t, v);
  }
  const keys = perCam.length > MAX_STACK ? [...stackIds, '(other cameras)'] : stackIds;
  const slots = buckets(r.from, r.to, interval, [...byT.keys()]).map((t) => ({t, values: byT.get(t) || {}}));
  fill(el, 
    timeChart({slots, interval, stack: keys.map((k) => ({key: k, label: k})), id: 'iot-det-chart', title: `Detections per ${interval}`, unit: 'detections'}),
    dataTable({id: 'iot-cameras', rows: perCam, caption: 'Per camera, in this range', columns: [
      {key: 'camera_id', label: 'Camera', cls: 'mono'},
      {key: 'labels', label: 'Labels'},
      {key: 'detections', label: 'Detections', num: true},
      {key: 'avg_confidence', label: 'Avg confidence', num: true, fmt: conf},
      {key: 'max', label: 'Max confidence', num: true, fmt: conf},
    ]}),
    allRows(rows, [
      {key: 't', label: interval === 'day' ? 'Day (UTC)' : 'Hour', fmt: (v) => bucketLabel(toMs(v), interval, true)},
      {key: 'camera_id', label: 'Camera', cls: 'mono'},
      {key: 'label', label: 'Label'},
      {key: 'detections', label: 'Detections', num: true},
      {key: 'avg_confidence', label: 'Avg confidence', num: true, fmt: conf},
      {key: 'max_confidence', label: 'Max confidence', num: true, fmt: conf},
    ], 'iot-det-rows'));
}

const INCIDENTS_SHOWN = 15;

function incidentTable(id, rows) {
  const known = rows.every((x) => 'incident_key' in x && 'first_seen' in x);
  if (!known) return genericTable({id, rows});
  const list = (v) => (Array.isArray(v) ? v.join(', ') : String(v ?? ''));
  return dataTable({id, rows, rowAttrs: (x) => ({'data-incident': String(x.incident_key ?? '')}), columns: [
    {key: 'first_seen', label: 'Started', fmt: (v) => h('span', {title: fmtTime(toMs(v))}, fmtTime(toMs(v), true))},
    {key: 'duration', label: 'Duration', num: true, fmt: (v) => fmtDuration(num(v) * 1000)},
    {key: 'detections', label: 'Detections', num: true},
    {key: 'cameras', label: 'Cameras', fmt: (v) => h('span', {class: 'mono'}, list(v))},
    {key: 'labels', label: 'Labels', fmt: list},
    {key: 'edges', label: 'Edges', fmt: list},
    {key: 'max_confidence', label: 'Max confidence', num: true, fmt: conf},
    {key: 'incident_key', label: 'Incident', fmt: (v, x) => h('span', {class: 'mono key', title: String(v ?? '')},
      String(v ?? '').length > 14 ? `${String(v).slice(0, 12)}…` : String(v ?? ''),
      num(x.correlated) ? ' ' : null, num(x.correlated) ? h('span', {class: 'tag', title: 'detections share correlation.incident_id'}, 'correlated') : null)},
  ]});
}

function renderIncidents(el, incidents) {
  if (!incidents.length) {
    fill(el, h('p', {class: 'muted'}, 'No incidents in this range.'));
    return;
  }
  const first = incidents.slice(0, INCIDENTS_SHOWN);
  const rest = incidents.slice(INCIDENTS_SHOWN);
  fill(el,
    h('p', {class: 'muted small'}, `${fmtNum(incidents.length)} incidents, newest first: detections sharing an incident id across `,
      'cameras and edges, or one camera\'s detections at most 60 s apart.'),
    incidentTable('iot-incidents-table', first),
    rest.length ? h('details', {class: 'rows'}, h('summary', {}, `${fmtNum(rest.length)} more`), incidentTable('iot-incidents-more', rest)) : null);
}

function renderSensors(el, rows, intervalAsked, r) {
  if (!rows.length) {
    fill(el, h('p', {class: 'muted'}, 'No sensor readings in this range.'));
    return;
  }
  const groups = new Map();
  for (const x of rows) {
    const key = `${x.source_id}\u0000${x.metric}`;
    if (!groups.has(key)) groups.set(key, {source_id: String(x.source_id ?? ''), metric: String(x.metric ?? ''), rows: []});
    groups.get(key).rows.push(x);
  }
  const list = [...groups.values()].sort((a, b) => a.source_id.localeCompare(b.source_id) || a.metric.localeCompare(b.metric));
  const summary = list.map((g) => {
    const samples = g.rows.reduce((a, x) => a + (num(x.samples) || 0), 0);
    const wsum = g.rows.reduce((a, x) => a + (num(x.avg) || 0) * (num(x.samples) || 0), 0);
    return {source_id: g.source_id, metric: g.metric, samples,
      min: Math.min(...g.rows.map((x) => num(x.min)).filter(Number.isFinite)),
      avg: samples ? wsum / samples : NaN,
      max: Math.max(...g.rows.map((x) => num(x.max)).filter(Number.isFinite))};
  });
  const charts = h('div', {class: 'smalls'}, list.map((g, i) => {
    const pts = g.rows.map((x) => ({t: toMs(x.t), min: num(x.min), avg: num(x.avg), max: num(x.max)}))
      .filter((p) => Number.isFinite(p.t)).sort((a, b) => a.t - b.t);
    const gaps = pts.slice(1).map((p, j) => p.t - pts[j].t);
    const interval = gaps.length && Math.min(...gaps) >= DAY ? 'day' : intervalAsked === 'day' && !gaps.length ? 'day' : 'hour';
    return h('div', {class: 'small-chart', 'data-sensor': g.source_id, 'data-metric': g.metric},
      h('h3', {}, h('span', {class: 'mono'}, g.source_id), ` · ${g.metric}`),
      bandChart({points: pts, interval, domain: [r.from, r.to], id: `sensor-chart-${i}`, title: `${g.source_id} ${g.metric}`}));
  }));
  const f = (v) => fmtDec(num(v), 2);
  fill(el, charts,
    dataTable({id: 'iot-sensor-summary', rows: summary, caption: 'Per sensor and metric, in this range', columns: [
      {key: 'source_id', label: 'Sensor', cls: 'mono'},
      {key: 'metric', label: 'Metric'},
      {key: 'min', label: 'Min', num: true, fmt: f},
      {key: 'avg', label: 'Avg', num: true, fmt: f},
      {key: 'max', label: 'Max', num: true, fmt: f},
      {key: 'samples', label: 'Samples', num: true},
    ]}),
    allRows(rows, [
      {key: 't', label: 'Time', fmt: (v) => bucketLabel(toMs(v), intervalAsked, true)},
      {key: 'source_id', label: 'Sensor', cls: 'mono'},
      {key: 'metric', label: 'Metric'},
      {key: 'min', label: 'Min', num: true, fmt: f},
      {key: 'avg', label: 'Avg', num: true, fmt: f},
      {key: 'max', label: 'Max', num: true, fmt: f},
      {key: 'samples', label: 'Samples', num: true},
    ], 'iot-sensor-rows'));
}
