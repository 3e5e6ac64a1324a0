// Cohorts: visitors grouped by the week of their first visit, and the share of each cohort that
// came back in each following week, as a heat-shaded grid (#/cohorts?site=site-1&weeks=8).

import {apiUrl, csvLink, get} from './api.js';
import {errorNotice, fill, fmtNum, fmtRate, h, num, section} from './dom.js';
import {bucketLabel, toMs} from './charts.js';
import {botsToggle, ensureSite, loadSites, filterChips, queryOf, sitePicker, withParams} from './state.js';

const WEEKS = [4, 8, 12, 26];

/**
 * Retention cells as fractions of the cohort. The API's `retention` holds, per week, either the
 * share (0..1), a percentage, or the visitors who came back; week 0 tells which (it is the whole
 * cohort: 1, 100, or `visitors`).
 */
export function retentionFractions(cohort) {
  const vals = (Array.isArray(cohort.retention) ? cohort.retention : []).map(num);
  const size = num(cohort.visitors);
  const w0 = vals[0];
  let kind = 'fraction';
  if (Number.isFinite(size) && size > 1 && w0 === size) kind = 'count';
  else if (Math.abs(w0 - 100) < 1e-6) kind = 'percent';
  else if (Math.abs(w0 - 1) < 1e-6 || vals.every((v) => !Number.isFinite(v) || v <= 1)) kind = 'fraction';
  else if (vals.some((v) => v > 100)) kind = 'count';
  else kind = 'percent';
  return vals.map((v) => {
    if (!Number.isFinite(v)) return {frac: NaN, count: NaN, raw: v};
    if (kind === 'count') return {frac: size > 0 ? v / size : NaN, count: v, raw: v};
    const frac = kind === 'percent' ? v / 100 : v;
    return {frac, count: Number.isFinite(size) ? Math.round(frac * size) : NaN, raw: v};
  });
}

export function mount(root, params, ctx) {
  const {signal} = ctx;
  const controls = h('div', {class: 'controls', id: 'cohort-controls'});
  const status = h('div', {id: 'cohort-status'});
  const tools = h('span', {class: 'card-tools'});
  const [sec, body] = section('Weekly retention', tools);
  sec.id = 'cohorts';
  body.append(h('p', {class: 'muted'}, 'Loading…'));
  root.append(
    h('div', {class: 'page-head'}, h('div', {}, h('h1', {}, 'Cohorts'),
      h('p', {class: 'lede'}, 'Visitors by the week of their first visit (weeks start Monday, UTC), and who came back in later weeks.'))),
    controls, status, sec);

  (async () => {
    const sites = await loadSites(signal, status);
    if (sites === null) return;
    const p = ensureSite('cohorts', params, sites);
    const weeks = WEEKS.includes(Number(p.get('weeks'))) ? Number(p.get('weeks')) : 8;
    const weekSel = h('select', {id: 'cohort-weeks', onchange: (e) => ctx.navigate('cohorts', withParams(p, {weeks: e.target.value}))},
      WEEKS.map((w) => h('option', {value: w, selected: w === weeks}, `${w} weeks`)));
    controls.append(sitePicker('cohorts', p, ctx, sites),
      h('div', {class: 'field'}, h('label', {for: 'cohort-weeks'}, 'Cohorts'), weekSel), botsToggle('cohorts', p, ctx));
    status.append(filterChips('cohorts', p, ctx));
    // The cohorts are the last `weeks` weeks: the date range does not apply here.
    const {from: _from, to: _to, ...common} = queryOf(p);
    const api = {...common, weeks};
    tools.append(csvLink('/api/web/cohorts', api, `cohorts-${common.site || 'all'}`));
    let data;
    try {
      data = await get('/api/web/cohorts', api, signal);
    } catch (err) {
      if (err.name !== 'AbortError') fill(body, errorNotice(err));
      return;
    }
    body.dataset.api = apiUrl('/api/web/cohorts', api);
    renderGrid(body, Array.isArray(data?.cohorts) ? data.cohorts : []);
  })();
  return null;
}

function renderGrid(el, cohorts) {
  if (!cohorts.length) {
    fill(el, h('p', {class: 'muted'}, 'No visitors in these weeks.'));
    return;
  }
  const width = Math.max(...cohorts.map((c) => (Array.isArray(c.retention) ? c.retention.length : 0)), 1);
  const table = h('table', {class: 'table cohort-grid', id: 'cohort-grid'},
    h('caption', {class: 'muted'}, 'Share of each cohort active in week n after its first visit (week 0 = the first week).'),
    h('thead', {}, h('tr', {}, h('th', {scope: 'col'}, 'Cohort (week of)'), h('th', {scope: 'col', class: 'num'}, 'Visitors'),
      Array.from({length: width}, (_, i) => h('th', {scope: 'col', class: 'num'}, `Week ${i}`)))),
    h('tbody', {}, cohorts.map((c) => {
      const cells = retentionFractions(c);
      const start = toMs(c.week_start);
      return h('tr', {'data-week': String(c.week_start ?? '')},
        h('th', {scope: 'row', 'data-label': 'Cohort'}, Number.isFinite(start) ? bucketLabel(start, 'day', true) : String(c.week_start ?? '')),
        h('td', {class: 'num', 'data-label': 'Visitors'}, fmtNum(num(c.visitors))),
        Array.from({length: width}, (_, i) => {
          const cell = cells[i];
          if (!cell) return h('td', {class: 'num heat empty', 'data-label': `Week ${i}`}, '');
          const td = h('td', {class: 'num heat', 'data-label': `Week ${i}`, 'data-value': String(cell.raw),
            title: Number.isFinite(cell.count) ? `${fmtNum(cell.count)} of ${fmtNum(num(c.visitors))} visitors` : null}, fmtRate(cell.frac));
          if (Number.isFinite(cell.frac)) {
            const a = Math.min(1, Math.max(0, cell.frac));
            td.style.backgroundColor = `rgba(11, 92, 173, ${(0.06 + 0.84 * Math.sqrt(a)).toFixed(3)})`;
            if (a >= 0.3) td.classList.add('dark');
          }
          return td;
        }));
    })));
  fill(el, h('div', {class: 'table-wrap'}, table));
}
