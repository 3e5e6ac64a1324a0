// Overview: 24 h / 7 d counters, an hourly chart of the last 24 h (inline SVG), top-N lists and
// HyperLogLog unique estimates, with a window selector kept in the URL (#/overview?window=7d).

import {get} from './api.js';
import {clear, errorNotice, fmtHour, fmtNum, h, relTime, s, section} from './dom.js';
import {CATEGORIES} from './events.js';

const WINDOWS = ['24h', '7d', '30d'];
const HOUR = 3600e3;
const DAY = 24 * HOUR;
const TOPS = [
  {dim: 'page', title: 'Pages', link: (k) => ({category: 'web', type: 'page_view', q: k})},
  {dim: 'referrer', title: 'Referrers', link: (k) => (k === '(direct)' ? null : {category: 'web', q: k})},
  {dim: 'type', title: 'Event types', link: (k) => ({type: k})},
  {dim: 'source', title: 'Sources', link: (k) => ({source: k})},
  {dim: 'error', title: 'Errors', link: (k) => ({severity: 'error,critical', q: k.split(': ').slice(1).join(': ') || k})},
];

export function mount(root, params, ctx) {
  const win = WINDOWS.includes(params.get('window')) ? params.get('window') : '24h';
  const {signal} = ctx;

  const select = h('select', {id: 'ov-window', onchange: (e) => ctx.navigate('overview', {window: e.target.value})},
    WINDOWS.map((w) => h('option', {value: w, selected: w === win}, {'24h': 'last 24 hours', '7d': 'last 7 days', '30d': 'last 30 days'}[w])));

  const counters = h('div', {class: 'counters', id: 'ov-counters'}, h('p', {class: 'muted'}, 'Loading…'));
  const [chartSec, chartBody] = section('Events per hour, last 24 h');
  const [uniqSec, uniqBody] = section('Unique visitors and sources');
  const tops = h('div', {class: 'tops'});

  root.append(
    h('div', {class: 'page-head'},
      h('h1', {}, 'Overview'),
      h('div', {class: 'inline-field'}, h('label', {for: 'ov-window'}, 'Window for top lists and uniques'), select)),
    counters,
    chartSec,
    uniqSec,
    h('h2', {class: 'sub'}, `Top ${win === '24h' ? 'of the last 24 hours' : `of the last ${win.replace('d', ' days')}`}`),
    tops,
  );

  async function load() {
    const now = Date.now();
    await Promise.all([
      loadCounters(counters, now, signal),
      loadChart(chartBody, now, signal),
      loadUniques(uniqBody, win, signal),
      loadTops(tops, win, ctx),
    ]);
  }
  load();
  const timer = setInterval(load, 30000);
  return () => clearInterval(timer);
}

function counter(label, value, note, id) {
  return h('div', {class: 'counter', 'data-counter': id},
    h('div', {class: 'counter-value'}, value),
    h('div', {class: 'counter-label'}, label),
    note ? h('div', {class: 'counter-note'}, note) : null);
}

async function loadCounters(el, now, signal) {
  try {
    const [stats, days] = await Promise.all([
      get('/api/stats', {}, signal),
      get('/api/counts', {bucket: 'day', group_by: 'category', from: now - 7 * DAY, to: now}, signal),
    ]);
    const week = (days?.buckets || []).reduce((a, b) => a + (Number(b.count) || 0), 0);
    clear(el).append(
      counter('events, last 24 h', fmtNum(stats?.events_24h), null, 'events_24h'),
      counter('events, last 7 days', fmtNum(week), 'from daily rollups', 'events_7d'),
      counter('events stored', fmtNum(stats?.events_stored), stats?.oldest_event ? `oldest ${relTime(stats.oldest_event)}` : null, 'events_stored'),
      counter('sources', fmtNum(stats?.sources), stats?.newest_event ? `newest event ${relTime(stats.newest_event)}` : null, 'sources'),
      counter('rejected, last 24 h', fmtNum(stats?.rejected_24h), 'see Health → rejected input', 'rejected_24h'),
      counter('duplicates dropped', fmtNum(stats?.duplicates_total), 'since the store was created', 'duplicates_total'),
    );
  } catch (err) {
    if (err.name !== 'AbortError') clear(el).append(errorNotice(err));
  }
}

// ---- hourly chart (inline SVG, stacked by category) -----------------------------------------

async function loadChart(el, now, signal) {
  const end = Math.floor(now / HOUR) * HOUR; // start of the current hour
  const start = end - 23 * HOUR;
  try {
    const data = await get('/api/counts', {bucket: 'hour', group_by: 'category', from: start, to: now}, signal);
    const slots = Array.from({length: 24}, (_, i) => ({t: start + i * HOUR, total: 0, by: {}}));
    for (const b of data?.buckets || []) {
      const i = Math.round((Number(b.t) - start) / HOUR);
      if (i < 0 || i > 23) continue;
      const key = CATEGORIES.includes(b.key) ? b.key : 'other';
      slots[i].by[key] = (slots[i].by[key] || 0) + (Number(b.count) || 0);
      slots[i].total += Number(b.count) || 0;
    }
    clear(el).append(chart(slots));
  } catch (err) {
    if (err.name !== 'AbortError') clear(el).append(errorNotice(err));
  }
}

function niceMax(v) {
  if (v <= 5) return 5;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 2.5, 5, 10].map((m) => m * p).find((m) => m >= v);
}

function chart(slots) {
  const W = 640;
  const H = 220;
  const pad = {l: 44, r: 8, t: 10, b: 26};
  const total = slots.reduce((a, x) => a + x.total, 0);
  const peak = slots.reduce((a, x) => (x.total > a.total ? x : a), slots[0]);
  const max = niceMax(Math.max(1, peak.total));
  const bw = (W - pad.l - pad.r) / slots.length;
  const y = (v) => pad.t + (H - pad.t - pad.b) * (1 - v / max);
  const order = [...CATEGORIES, 'other'];
  const svg = s('svg', {
    viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', id: 'ov-chart',
    'aria-label': `Events per hour over the last 24 hours: ${total} in total, peak ${peak.total} at ${fmtHour(peak.t)}.`,
  });
  for (const frac of [0, 0.5, 1]) {
    const yy = y(max * frac);
    svg.append(
      s('line', {x1: pad.l, x2: W - pad.r, y1: yy, y2: yy, class: 'grid'}),
      s('text', {x: pad.l - 6, y: yy + 4, 'text-anchor': 'end', class: 'axis'}, fmtNum(max * frac)));
  }
  slots.forEach((slot, i) => {
    const x = pad.l + i * bw;
    const g = s('g', {class: 'bar'});
    const parts = order.filter((k) => slot.by[k]).map((k) => `${k} ${slot.by[k]}`).join(', ');
    g.append(s('title', {}, `${fmtHour(slot.t)}–${fmtHour(slot.t + HOUR)}: ${slot.total} events${parts ? ` (${parts})` : ''}`));
    // A transparent full-height target so the tooltip works on empty hours too.
    g.append(s('rect', {x, y: pad.t, width: bw, height: H - pad.t - pad.b, class: 'hit'}));
    let acc = 0;
    for (const k of order) {
      const v = slot.by[k];
      if (!v) continue;
      const y0 = y(acc + v);
      g.append(s('rect', {x: x + 1, y: y0, width: Math.max(1, bw - 2), height: Math.max(0.5, y(acc) - y0), class: `cat-${k}`}));
      acc += v;
    }
    svg.append(g);
    if (i % 3 === 0) {
      svg.append(s('text', {x: x + bw / 2, y: H - 8, 'text-anchor': 'middle', class: 'axis'}, fmtHour(slot.t)));
    }
  });
  const legend = h('ul', {class: 'legend', 'aria-hidden': 'true'},
    order.filter((k) => slots.some((sl) => sl.by[k])).map((k) => h('li', {}, h('span', {class: `swatch cat-${k}`}), k)));
  return h('figure', {class: 'chart-wrap'}, svg, legend,
    h('figcaption', {class: 'muted'}, `${fmtNum(total)} events in the last 24 hours (local time), from hourly rollups.`));
}

// ---- uniques (HyperLogLog estimates) -------------------------------------------------------

async function loadUniques(el, win, signal) {
  try {
    const u = await get('/api/uniques', {window: win}, signal);
    const one = (label, est, id) => h('div', {class: 'counter estimate', 'data-unique': id},
      h('div', {class: 'counter-value'}, `≈ ${fmtNum(est?.value)}`),
      h('div', {class: 'counter-label'}, label),
      h('div', {class: 'counter-note'},
        est && typeof est.lower === 'number' ? `95 % between ${fmtNum(est.lower)} and ${fmtNum(est.upper)}` : null));
    clear(el).append(
      h('p', {class: 'estimate-note'}, h('span', {class: 'tag'}, 'estimate (HyperLogLog)'),
        ` Distinct counts over the ${win} window are probabilistic estimates on the edge; the hub counts exactly.`),
      h('div', {class: 'counters'}, one('unique visitors', u?.visitors, 'visitors'), one('unique sources', u?.sources, 'sources')),
    );
  } catch (err) {
    if (err.name !== 'AbortError') clear(el).append(errorNotice(err));
  }
}

// ---- top-N -----------------------------------------------------------------------------------

async function loadTops(el, win, ctx) {
  if (!el.childElementCount) {
    el.append(...TOPS.map((t) => {
      const [sec, body] = section(t.title);
      sec.dataset.top = t.dim;
      body.append(h('p', {class: 'muted'}, 'Loading…'));
      return sec;
    }));
  }
  const cards = TOPS.map((t, i) => ({t, body: el.children[i].querySelector('.section-body')}));
  await Promise.all(cards.map(async ({t, body}) => {
    try {
      const data = await get('/api/top', {dim: t.dim, window: win, limit: 10}, ctx.signal);
      const items = data?.items || [];
      if (!items.length) {
        clear(body).append(h('p', {class: 'muted'}, 'Nothing in this window.'));
        return;
      }
      const max = Math.max(...items.map((i) => Number(i.count) || 0), 1);
      clear(body).append(h('ol', {class: 'toplist'}, items.map((it) => {
        const key = String(it.key ?? '');
        const target = t.link(key);
        const label = target
          ? h('a', {href: `#/timeline?${new URLSearchParams(target)}`, class: 'top-key'}, key || '(empty)')
          : h('span', {class: 'top-key'}, key || '(empty)');
        const bar = h('span', {class: 'top-bar', 'aria-hidden': 'true'});
        bar.style.width = `${Math.max(2, (100 * (Number(it.count) || 0)) / max)}%`;
        return h('li', {}, label, h('span', {class: 'top-count'}, fmtNum(Number(it.count))), bar);
      })));
    } catch (err) {
      if (err.name !== 'AbortError') clear(body).append(errorNotice(err));
    }
  }));
}
