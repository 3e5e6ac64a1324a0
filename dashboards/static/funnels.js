// Funnels: 2-8 steps, each a page path or an event type, done in order within a time window
// (ClickHouse windowFunnel); a bar per step with the visitors who got that far, the conversion
// from the first step and the drop-off from the previous one. The steps are in the URL:
// #/funnels?site=site-1&steps=page:/,page:/pricing,event:signup&window=3600

import {apiUrl, csvLink, get} from './api.js';
import {asFraction, clear, errorNotice, fill, fmtNum, fmtRate, h, notice, num, section} from './dom.js';
import {botsToggle, ensureSite, loadSites, filterChips, queryOf, rangeOf, rangePicker, sitePicker, withParams} from './state.js';
import {dataTable} from './table.js';

const MIN_STEPS = 2;
const MAX_STEPS = 8;
const WINDOWS = [[600, '10 minutes'], [1800, '30 minutes'], [3600, '1 hour'], [21600, '6 hours'], [86400, '1 day'], [604800, '7 days']];
const DEFAULT_WINDOW = 3600;

/** 'page:/a,event:signup' -> [{kind: 'page', value: '/a'}, {kind: 'event', value: 'signup'}] */
export function parseSteps(raw) {
  if (!raw) return [];
  return raw.split(',').map((part) => {
    const i = part.indexOf(':');
    const kind = i < 0 ? 'page' : part.slice(0, i);
    return {kind: kind === 'event' ? 'event' : 'page', value: i < 0 ? part : part.slice(i + 1)};
  }).slice(0, MAX_STEPS);
}

export function stepLabel(step) {
  const {kind, value} = parseSteps(String(step ?? ''))[0] || {kind: 'page', value: ''};
  return [h('span', {class: `tag ${kind === 'event' ? 'ev-tag' : ''}`}, kind === 'event' ? 'event' : 'page'), ' ', h('span', {class: 'mono'}, value)];
}

export function mount(root, params, ctx) {
  const {signal} = ctx;
  const controls = h('div', {class: 'controls', id: 'funnel-controls'});
  const status = h('div', {id: 'funnel-status'});
  const [editSec, editBody] = section('Steps');
  editSec.id = 'funnel-editor';
  const resultTools = h('span', {class: 'card-tools'});
  const [resSec, resBody] = section('Conversion', resultTools);
  resSec.id = 'funnel-result';
  root.append(
    h('div', {class: 'page-head'}, h('div', {}, h('h1', {}, 'Funnels'),
      h('p', {class: 'lede'}, 'Visitors who went through the steps in this order, each within the window of the first.'))),
    controls, status, editSec, resSec);

  (async () => {
    const sites = await loadSites(signal, status);
    if (sites === null) return;
    const p = ensureSite('funnels', params, sites);
    const q = queryOf(p);
    controls.append(sitePicker('funnels', p, ctx, sites), rangePicker('funnels', p, ctx), botsToggle('funnels', p, ctx));
    status.append(filterChips('funnels', p, ctx));
    const steps = parseSteps(p.get('steps'));
    const win = Number(p.get('window')) > 0 ? Number(p.get('window')) : DEFAULT_WINDOW;
    renderEditor(editBody, steps, win, p, q, ctx);
    if (steps.length < MIN_STEPS) {
      fill(resBody, h('p', {class: 'muted'}, `Pick ${MIN_STEPS} to ${MAX_STEPS} steps and press “Show funnel”.`));
      return;
    }
    const api = {...q, steps: p.get('steps'), window_secs: win};
    resultTools.append(csvLink('/api/web/funnel', api, `funnel-${q.site || 'all'}`));
    fill(resBody, h('p', {class: 'muted'}, 'Loading…'));
    let data;
    try {
      data = await get('/api/web/funnel', api, signal);
    } catch (err) {
      if (err.name !== 'AbortError') fill(resBody, errorNotice(err));
      return;
    }
    resBody.dataset.api = apiUrl('/api/web/funnel', api);
    renderFunnel(resBody, Array.isArray(data?.steps) ? data.steps : [], rangeOf(p), win);
  })();
  return null;
}

async function pageSuggestions(list, q, signal) {
  try {
    const data = await get('/api/web/top', {...q, dim: 'page', limit: 50}, signal);
    list.replaceChildren(...(data?.rows || []).map((x) => h('option', {value: String(x.value ?? '')})));
  } catch {
    // suggestions only
  }
}

function renderEditor(el, initial, win, p, q, ctx) {
  const steps = initial.length ? initial.map((x) => ({...x})) : [{kind: 'page', value: '/'}, {kind: 'page', value: ''}];
  const datalist = h('datalist', {id: 'funnel-pages'});
  pageSuggestions(datalist, q, ctx.signal);
  const list = h('ol', {class: 'steps', id: 'funnel-steps'});
  const message = h('p', {class: 'form-msg', role: 'alert'});
  const windowSel = h('select', {id: 'funnel-window'}, WINDOWS.map(([secs, label]) =>
    h('option', {value: secs, selected: secs === win}, label)),
  WINDOWS.some(([secs]) => secs === win) ? null : h('option', {value: win, selected: true}, `${fmtNum(win)} s`));
  const add = h('button', {type: 'button', class: 'btn', id: 'funnel-add', onclick: () => {
    steps.push({kind: 'page', value: ''});
    draw();
    list.querySelector('li:last-child input')?.focus();
  }}, '+ Add step');

  function draw() {
    list.replaceChildren(...steps.map((st, i) => {
      const kind = h('select', {'aria-label': `Step ${i + 1} kind`, class: 'step-kind', onchange: (e) => {
        st.kind = e.target.value;
        draw();
      }}, h('option', {value: 'page', selected: st.kind === 'page'}, 'Page path'), h('option', {value: 'event', selected: st.kind === 'event'}, 'Event type'));
      const input = h('input', {type: 'text', class: 'step-value', value: st.value, 'aria-label': `Step ${i + 1} ${st.kind === 'page' ? 'page path' : 'event type'}`,
        placeholder: st.kind === 'page' ? '/pricing' : 'signup', list: st.kind === 'page' ? 'funnel-pages' : null, spellcheck: 'false',
        oninput: (e) => {
          st.value = e.target.value;
        }});
      const remove = h('button', {type: 'button', class: 'btn small', 'aria-label': `Remove step ${i + 1}`, disabled: steps.length <= MIN_STEPS,
        onclick: () => {
          steps.splice(i, 1);
          draw();
        }}, '✕');
      return h('li', {class: 'step-row'}, h('span', {class: 'step-no'}, `${i + 1}`), kind, input, remove);
    }));
    add.disabled = steps.length >= MAX_STEPS;
  }
  draw();

  const form = h('form', {class: 'funnel-form', onsubmit: (e) => {
    e.preventDefault();
    const clean = steps.map((st) => ({kind: st.kind, value: st.value.trim()}));
    const bad = clean.findIndex((st) => !st.value || st.value.includes(','));
    if (bad >= 0) {
      message.textContent = clean[bad].value ? `Step ${bad + 1}: a comma cannot be part of a step.` : `Step ${bad + 1} is empty.`;
      return;
    }
    if (clean.length < MIN_STEPS || clean.length > MAX_STEPS) {
      message.textContent = `A funnel has ${MIN_STEPS} to ${MAX_STEPS} steps.`;
      return;
    }
    message.textContent = '';
    ctx.navigate('funnels', withParams(p, {steps: clean.map((st) => `${st.kind}:${st.value}`).join(','), window: windowSel.value}));
  }}, datalist, list,
  h('div', {class: 'row-actions'}, add,
    h('span', {class: 'field inline'}, h('label', {for: 'funnel-window'}, 'Window'), windowSel),
    h('button', {type: 'submit', class: 'btn primary', id: 'funnel-run'}, 'Show funnel')),
  message);
  fill(el, form);
}

function renderFunnel(el, steps, r, win) {
  if (!steps.length) {
    fill(el, notice('The hub returned no steps.', 'warn'));
    return;
  }
  const first = num(steps[0].visitors) || 0;
  const rows = steps.map((st, i) => {
    const visitors = num(st.visitors) || 0;
    const prev = i ? num(steps[i - 1].visitors) || 0 : visitors;
    const conv = asFraction(st.conversion_rate, visitors, first);
    const drop = num(st.drop_off);
    const dropRate = Number.isFinite(num(st.drop_off_rate)) ? num(st.drop_off_rate) : prev ? (prev - visitors) / prev : NaN;
    // drop_off: the visitors lost since the previous step (a count; a hub sending a rate is shown as one)
    const dropIsCount = Number.isInteger(drop) && drop === prev - visitors;
    return {...st, i, visitors, conv, dropText: i === 0 ? '—'
      : dropIsCount ? `${fmtNum(drop)} (${fmtRate(dropRate)})` : fmtRate(asFraction(drop, prev - visitors, prev))};
  });
  const bars = h('ol', {class: 'funnel', id: 'funnel-bars'}, rows.map((row) => {
    const fill = h('span', {class: 'funnel-fill'});
    fill.style.width = `${first && row.visitors ? Math.max(0.5, (100 * row.visitors) / first) : 0}%`;
    return h('li', {class: 'funnel-step', 'data-step': String(row.step ?? ''), 'data-visitors': String(row.visitors)},
      h('div', {class: 'funnel-label'}, h('span', {class: 'step-no'}, String(row.i + 1)), stepLabel(row.step)),
      h('div', {class: 'funnel-track'}, fill),
      h('div', {class: 'funnel-nums'},
        h('strong', {class: 'funnel-visitors'}, fmtNum(row.visitors)), ' visitors · ',
        h('span', {class: 'funnel-conv', 'data-value': String(row.conversion_rate ?? '')}, fmtRate(row.conv)), ' of step 1',
        row.i ? h('span', {class: 'muted'}, ` · drop-off ${row.dropText}`) : null));
  }));
  const last = rows[rows.length - 1];
  fill(el, 
    h('p', {class: 'funnel-summary'}, `${fmtNum(last.visitors)} of ${fmtNum(first)} visitors (${fmtRate(last.conv)}) completed all ${rows.length} steps, ${r.label}, `,
      `each within ${fmtNum(win / 60)} minutes of the first.`),
    bars,
    dataTable({id: 'funnel-table', rows, columns: [
      {key: 'i', label: 'Step', fmt: (v) => String(v + 1)},
      {key: 'step', label: 'Page or event', fmt: (v) => h('span', {}, stepLabel(v))},
      {key: 'visitors', label: 'Visitors', num: true},
      {key: 'conv', label: 'Conversion', num: true, fmt: (v) => fmtRate(v)},
      {key: 'dropText', label: 'Drop-off', num: true, fmt: (v) => v},
    ]}));
}
