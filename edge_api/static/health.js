// Health: edge status, sources (stale ones highlighted), storage, sync, CPU/RAM/disk, and the
// latest rejected input (dead letters). Refreshes every 10 s while open.

import {get} from './api.js';
import {append, clear, errorNotice, fmtBytes, fmtNum, fmtPercent, fmtTime, h, relTime, section, timeEl} from './dom.js';

export function mount(root, params, ctx) {
  const {signal} = ctx;
  const updated = h('span', {class: 'muted', role: 'status'});
  const [statusSec, statusBody] = section('Edge');
  const [srcSec, srcBody] = section('Sources');
  const [storeSec, storeBody] = section('Storage and sync');
  const [resSec, resBody] = section('Resources');
  const [dlSec, dlBody] = section('Rejected input (latest dead letters)');
  srcSec.id = 'health-sources';
  root.append(
    h('div', {class: 'page-head'}, h('h1', {}, 'Health'), h('div', {},
      h('button', {type: 'button', class: 'btn', onclick: () => load()}, 'Refresh'), ' ', updated)),
    h('div', {class: 'grid2'}, statusSec, storeSec), srcSec, resSec, dlSec);

  async function load() {
    const [health, res, dead] = await Promise.allSettled([
      get('/api/health', {}, signal),
      get('/api/resources', {}, signal),
      get('/api/dead_letters', {limit: 10}, signal),
    ]);
    if (signal.aborted) return;
    if (health.status === 'fulfilled') {
      renderStatus(statusBody, health.value);
      renderSources(srcBody, health.value);
      renderStorage(storeBody, health.value);
    } else {
      for (const b of [statusBody, srcBody, storeBody]) clear(b).append(errorNotice(health.reason));
    }
    if (res.status === 'fulfilled') renderResources(resBody, res.value);
    else clear(resBody).append(errorNotice(res.reason));
    if (dead.status === 'fulfilled') renderDead(dlBody, dead.value);
    else clear(dlBody).append(errorNotice(dead.reason));
    updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
  }
  load();
  const timer = setInterval(load, 10000);
  return () => clearInterval(timer);
}

function kv(pairs) {
  const dl = h('dl', {class: 'kv'});
  for (const [k, v] of pairs) append(dl, [h('dt', {}, k), h('dd', {}, v)]);
  return dl;
}

function okTag(ok, yes, no) {
  return h('span', {class: ['tag', ok ? 'ok' : 'bad']}, ok ? yes : no);
}

function renderStatus(el, hd) {
  clear(el).append(kv([
    ['Status', okTag(hd?.status === 'ok', 'ok', String(hd?.status ?? 'unknown'))],
    ['Edge id', String(hd?.edge_id ?? '—')],
    ['MQTT', okTag(Boolean(hd?.mqtt_connected), 'connected', 'disconnected')],
    ['Ingest queue', fmtNum(hd?.ingest_queue_depth)],
    ['Last commit', timeEl(hd?.last_commit_ms)],
    hd?.uptime_secs !== undefined ? ['Uptime', `${fmtNum(Math.round(hd.uptime_secs / 60))} min`] : null,
    hd?.last_store_error ? ['Last store error', h('span', {class: 'bad-text'}, String(hd.last_store_error))] : null,
  ].filter(Boolean)));
}

function renderSources(el, hd) {
  const sources = Array.isArray(hd?.sources) ? [...hd.sources] : null;
  if (!sources) {
    clear(el).append(h('p', {class: 'muted'}, 'This edge does not report sources yet.'));
    return;
  }
  if (!sources.length) {
    clear(el).append(h('p', {class: 'muted'}, 'No source has sent anything yet.'));
    return;
  }
  sources.sort((a, b) => Number(Boolean(b.stale)) - Number(Boolean(a.stale)) || String(a.source_id).localeCompare(String(b.source_id)));
  const stale = sources.filter((x) => x.stale).length;
  clear(el).append(
    h('p', {class: stale ? 'warn-text' : 'muted'}, stale
      ? `${stale} of ${sources.length} sources are stale (nothing received recently).`
      : `All ${sources.length} sources reported recently.`),
    h('div', {class: 'table-wrap'}, h('table', {class: 'table sources', id: 'sources-table'},
      h('thead', {}, h('tr', {}, ['Source', 'Type', 'Last seen', 'Last heartbeat', 'Events', 'State'].map((c) => h('th', {scope: 'col'}, c)))),
      h('tbody', {}, sources.map((src) => h('tr', {class: src.stale ? 'stale' : null},
        h('td', {'data-label': 'Source'}, h('a', {href: `#/timeline?${new URLSearchParams({source: String(src.source_id ?? '')})}`}, String(src.source_id ?? ''))),
        h('td', {'data-label': 'Type'}, String(src.source_type ?? '')),
        h('td', {'data-label': 'Last seen'}, timeEl(src.last_seen)),
        h('td', {'data-label': 'Last heartbeat'}, src.last_heartbeat ? timeEl(src.last_heartbeat) : h('span', {class: 'muted'}, 'none')),
        h('td', {'data-label': 'Events', class: 'num'}, fmtNum(Number(src.events))),
        h('td', {'data-label': 'State'}, okTag(!src.stale, 'ok', 'stale')))))),
  ));
}

function usageBar(used, total, label) {
  if (!(total > 0)) return h('span', {class: 'muted'}, '—');
  const pct = Math.min(100, Math.max(0, (100 * used) / total));
  const meter = h('meter', {min: 0, max: 100, value: pct.toFixed(1), low: 70, high: 90, optimum: 10, 'aria-label': label});
  return h('span', {class: 'usage'}, meter, ` ${fmtBytes(used)} of ${fmtBytes(total)} (${pct.toFixed(0)} %)`);
}

function renderStorage(el, hd) {
  const st = hd?.storage || hd || {};
  const total = Number(st.disk_total_bytes);
  const free = Number(st.disk_free_bytes);
  const sync = hd?.sync;
  clear(el).append(kv([
    ['Database', fmtBytes(Number(st.db_bytes))],
    ['WAL', fmtBytes(Number(st.wal_bytes))],
    ['Disk free', Number.isFinite(free) ? fmtBytes(free) : '—'],
    ['Disk used', Number.isFinite(total) && Number.isFinite(free) ? usageBar(total - free, total, 'disk used') : '—'],
    ['Sync to hub', !sync ? 'not reported'
      : sync.enabled ? h('span', {id: 'sync-state'}, okTag(Boolean(sync.connected), String(sync.transport ?? 'on'), 'hub unreachable'),
        ` ${String(sync.hub ?? '')}`)
        : h('span', {class: 'muted'}, 'off (no hub configured)')],
    ...(sync?.enabled ? [
      ['Backlog', h('span', {id: 'sync-backlog', class: Number(sync.backlog) > 0 ? 'warn-text' : null},
        `${fmtNum(Number(sync.backlog))} events` + (sync.oldest_unsynced_age_secs != null
          ? `, oldest ${fmtNum(Math.round(Number(sync.oldest_unsynced_age_secs)))} s old` : ''))],
      ['In flight', `${fmtNum(Number(sync.in_flight))} batches`],
      ['Last acknowledged', sync.last_success_ms ? timeEl(sync.last_success_ms) : h('span', {class: 'muted'}, 'never')],
      sync.last_error ? ['Last sync error', h('span', {class: 'bad-text'}, String(sync.last_error), ' ', relTime(sync.last_error_ms))] : null,
    ].filter(Boolean) : []),
  ]));
}

// The edge's own RSS plus its helper processes' (the MQTT bridge child, decode workers).
function edgeMemory(p) {
  const helpers = Array.isArray(p.helper_processes) ? p.helper_processes : [];
  if (!helpers.length || !Number.isFinite(Number(p.total_rss_bytes))) return fmtBytes(Number(p.rss_bytes));
  const names = {mqtt_bridge: 'MQTT bridge', decode_worker: 'decode worker', resource_tracker: 'multiprocessing tracker'};
  const parts = helpers.map((x) => `${names[x.kind] || x.kind} ${fmtBytes(Number(x.rss_bytes))}`);
  return `${fmtBytes(Number(p.total_rss_bytes))} (edge ${fmtBytes(Number(p.rss_bytes))} + ${parts.join(' + ')})`;
}

function renderResources(el, r) {
  const p = r?.process || {};
  const sys = r?.system || {};
  const disk = r?.disk || {};
  const memTotal = Number(sys.memory_total_bytes);
  const memAvail = Number(sys.memory_available_bytes);
  const load = Array.isArray(sys.load_avg) ? sys.load_avg.map((x) => Number(x).toFixed(2)).join(' / ') : '—';
  clear(el).append(h('div', {class: 'grid2'},
    kv([
      ['Edge CPU', fmtPercent(Number(p.cpu_percent), 1)],
      ['Edge memory (RSS)', edgeMemory(p)],
      ['Edge threads', fmtNum(Number(p.threads))],
    ]),
    kv([
      ['System CPU', fmtPercent(Number(sys.cpu_percent), 1)],
      ['System RAM', usageBar(memTotal - memAvail, memTotal, 'RAM used')],
      ['Load (1/5/15 min)', load],
      ['Disk', usageBar(Number(disk.total_bytes) - Number(disk.free_bytes), Number(disk.total_bytes), 'disk used')],
    ])));
}

function renderDead(el, d) {
  const rows = Array.isArray(d?.dead_letters) ? d.dead_letters : [];
  if (!rows.length) {
    clear(el).append(h('p', {class: 'muted'}, 'No rejected input.'));
    return;
  }
  clear(el).append(h('ul', {class: 'dead'}, rows.map((x) => h('li', {},
    h('div', {}, h('span', {class: 'tag bad'}, String(x.code ?? 'rejected')), ' ', String(x.reason ?? ''),
      h('span', {class: 'muted'}, ` · ${String(x.transport ?? '')} ${String(x.topic ?? '')} · ${fmtBytes(Number(x.payload_bytes))} · `),
      h('time', {title: fmtTime(x.received_at)}, relTime(x.received_at))),
    x.payload_preview ? h('pre', {class: 'json small'}, String(x.payload_preview)) : null))));
}
