// Web, Umami-like: a site, a date range and filters (all in the URL), the totals (visitors, visits,
// page views, bounce rate, average visit duration), a trend chart and the top lists. Clicking a
// row of a top list filters everything by it; a chip removes the filter again.

import {apiUrl, csvLink, get} from './api.js';
import {asFraction, clear, errorNotice, fill, fmtNum, fmtRate, fmtSecs, h, notice, num, section} from './dom.js';
import {buckets, timeChart, toMs} from './charts.js';
import {botsToggle, ensureSite, loadSites, filterChips, queryOf, rangeOf, rangePicker, sitePicker, withParams} from './state.js';

/** Top-list cards, each with tabs: [dim, tab label, filter param set by clicking a row]. */
const CARDS = [
  {id: 'pages', title: 'Pages', tabs: [['page', 'Pages', 'path'], ['entry_page', 'Entry pages', 'path'], ['exit_page', 'Exit pages', 'path']]},
  {id: 'sources', title: 'Sources', tabs: [['referrer', 'Referrers', 'referrer'], ['channel', 'Channels', 'channel']]},
  {id: 'location', title: 'Location', tabs: [['country', 'Countries', 'country'], ['region', 'Regions', 'region'], ['city', 'Cities', 'city']]},
  {id: 'env', title: 'Environment', tabs: [['browser', 'Browsers', 'browser'], ['os', 'OS', 'os'], ['device', 'Devices', 'device']]},
  {id: 'utm', title: 'Campaigns (UTM)', tabs: [['utm_source', 'Source', 'utm_source'], ['utm_medium', 'Medium', 'utm_medium'], ['utm_campaign', 'Campaign', 'utm_campaign']]},
];
const EMPTY = {referrer: '(direct / none)', channel: '(unknown)', country: '(unknown)', region: '(unknown)', city: '(unknown)'};

export function mount(root, params, ctx) {
  const {signal} = ctx;
  const head = h('div', {class: 'page-head'},
    h('div', {}, h('h1', {}, 'Web'), h('p', {class: 'lede'}, 'Visitors, visits and page views, by Umami\'s definitions (docs/metrics.md).')));
  const controls = h('div', {class: 'controls', id: 'web-controls'});
  const status = h('div', {id: 'web-status'});
  const counters = h('div', {class: 'counters', id: 'web-totals'}, h('p', {class: 'muted'}, 'Loading…'));
  const chartTools = h('span', {class: 'card-tools'});
  const [chartSec, chartBody] = section('Trend', chartTools);
  chartSec.id = 'web-trend';
  const tops = h('div', {class: 'tops', id: 'web-tops'});
  root.append(head, controls, status, counters, chartSec, tops);

  (async () => {
    const sites = await loadSites(signal, status);
    if (sites === null) return;
    const p = ensureSite('web', params, sites);
    const live = {params: p}; // the URL's params, with the tabs' choices as they change
    const q = queryOf(p);
    const r = rangeOf(p);
    controls.append(sitePicker('web', p, ctx, sites), rangePicker('web', p, ctx), botsToggle('web', p, ctx));
    status.append(filterChips('web', p, ctx));
    if (!sites.length && !p.get('site')) status.append(notice('No web traffic has reached the hub yet.', 'info'));
    chartSec.querySelector('h2').textContent = `Trend, ${r.label}`;
    chartTools.append(csvLink('/api/web/overview', q, `web-overview-${q.site || 'all'}`));
    await Promise.all([
      loadOverview(counters, chartBody, q, r, signal),
      ...CARDS.map((card) => loadCard(tops, card, live, q, ctx)),
    ]);
  })();
  return null;
}

function counter(label, value, id, raw, note = null) {
  return h('div', {class: 'counter', 'data-metric': id, 'data-value': raw === undefined || raw === null ? '' : String(raw)},
    h('div', {class: 'counter-value'}, value), h('div', {class: 'counter-label'}, label),
    note ? h('div', {class: 'counter-note'}, note) : null);
}

async function loadOverview(counters, chartBody, q, r, signal) {
  let data;
  try {
    data = await get('/api/web/overview', q, signal);
  } catch (err) {
    if (err.name !== 'AbortError') {
      fill(counters, errorNotice(err));
      clear(chartBody);
    }
    return;
  }
  const t = data?.totals || {};
  counters.dataset.api = apiUrl('/api/web/overview', q);
  const bounce = asFraction(t.bounce_rate, t.bounces, t.visits);
  fill(counters, 
    counter('Visitors', fmtNum(num(t.visitors)), 'visitors', t.visitors),
    counter('Visits', fmtNum(num(t.visits)), 'visits', t.visits),
    counter('Page views', fmtNum(num(t.pageviews)), 'pageviews', t.pageviews),
    counter('Bounce rate', fmtRate(bounce), 'bounce_rate', t.bounce_rate,
      Number.isFinite(num(t.bounces)) ? `${fmtNum(num(t.bounces))} one-page visits` : null),
    counter('Average visit duration', fmtSecs(num(t.avg_duration_secs)), 'avg_duration_secs', t.avg_duration_secs),
  );
  const interval = data?.interval === 'hour' ? 'hour' : 'day';
  const series = Array.isArray(data?.series) ? data.series : [];
  const byT = new Map(series.map((x) => [toMs(x.t), x]));
  const slots = buckets(r.from, r.to, interval, [...byT.keys()]).map((tt) => {
    const x = byT.get(tt) || {};
    return {t: tt, values: {pageviews: num(x.pageviews) || 0, visitors: num(x.visitors) || 0, visits: num(x.visits) || 0}};
  });
  fill(chartBody, 
    timeChart({slots, interval, stack: [{key: 'pageviews', label: 'Page views'}], line: {key: 'visitors', label: 'Visitors'},
      id: 'web-chart', title: `Page views per ${interval}`, unit: 'page views'}),
    h('p', {class: 'muted small'}, interval === 'day' ? 'Days in UTC.' : 'Hours in your local time.'));
}

async function loadCard(container, card, live, q, ctx) {
  const p = live.params;
  const key = `tab_${card.id}`;
  const dims = card.tabs.map((t) => t[0]);
  const dim = dims.includes(p.get(key)) ? p.get(key) : dims[0];
  const [, tabLabel, filterKey] = card.tabs.find((t) => t[0] === dim);
  const tools = h('span', {class: 'card-tools'});
  const tablist = h('div', {class: 'tabs', role: 'tablist', 'aria-label': card.title}, card.tabs.map(([d, label]) =>
    h('button', {type: 'button', role: 'tab', class: 'tab', 'aria-selected': String(d === dim), 'data-dim': d,
      onclick: () => {
        if (d === dim) return;
        // A tab is a view choice, not a question: it replaces the history entry.
        live.params = withParams(live.params, {[key]: d === dims[0] ? null : d});
        history.replaceState(history.state, '', `#/web?${live.params}`);
        loadCard(container, card, live, q, ctx);
      }}, label)));
  const [sec, body] = section(card.title, tools);
  sec.dataset.card = card.id;
  sec.dataset.dim = dim;
  sec.querySelector('.card-head').after(tablist);
  body.append(h('p', {class: 'muted'}, 'Loading…'));
  const old = container.querySelector(`[data-card="${card.id}"]`);
  if (old) old.replaceWith(sec);
  else {
    // keep the cards' order whatever order they finish in
    const i = CARDS.indexOf(card);
    const after = [...container.children].find((c) => CARDS.findIndex((x) => x.id === c.dataset.card) > i);
    container.insertBefore(sec, after || null);
  }
  const params = {...q, dim, limit: 10};
  tools.append(csvLink('/api/web/top', params, `web-top-${dim}-${q.site || 'all'}`));
  let data;
  try {
    data = await get('/api/web/top', params, ctx.signal);
  } catch (err) {
    if (err.name !== 'AbortError') fill(body, errorNotice(err));
    return;
  }
  const rows = Array.isArray(data?.rows) ? data.rows : [];
  body.dataset.api = apiUrl('/api/web/top', params);
  if (!rows.length) {
    fill(body, h('p', {class: 'muted'}, 'Nothing in this range.'));
    return;
  }
  const second = rows.some((x) => 'visits' in x) && !rows.some((x) => 'pageviews' in x) ? ['visits', 'Visits'] : ['pageviews', 'Views'];
  const max = Math.max(1, ...rows.map((x) => num(x.visitors) || 0));
  const active = p.get(filterKey);
  fill(body, 
    h('div', {class: 'toplist-head', 'aria-hidden': 'true'}, h('span', {}, tabLabel), h('span', {}, 'Visitors'), h('span', {}, second[1])),
    h('ol', {class: 'toplist', 'data-dim': dim}, rows.map((x) => {
      const value = x.value === null || x.value === undefined ? '' : String(x.value);
      const shown = value || EMPTY[dim] || '(none)';
      const isActive = active !== null && active === value;
      const label = value && !isActive
        ? h('button', {type: 'button', class: 'top-key linkish-row', title: `Filter by ${tabLabel.toLowerCase()}: ${value}`,
          onclick: () => ctx.navigate('web', withParams(live.params, {[filterKey]: value}))}, shown)
        : h('span', {class: ['top-key', isActive ? 'active' : null, value ? null : 'muted']}, shown);
      const bar = h('span', {class: 'top-bar', 'aria-hidden': 'true'});
      bar.style.width = `${Math.max(2, (100 * (num(x.visitors) || 0)) / max)}%`;
      return h('li', {'data-value': value},
        label,
        h('span', {class: 'top-count', 'data-col': 'visitors'}, fmtNum(num(x.visitors))),
        h('span', {class: 'top-count', 'data-col': second[0]}, fmtNum(num(x[second[0]]))),
        bar);
    })));
}
