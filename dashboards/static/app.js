// EdgeKite hub analysts' dashboard: hash router, nav, the truth banner, API key prompt.
// Plain ES modules served by the hub itself; no build step, nothing from the internet.

import {getKey, setKey} from './api.js';
import {fmtTime, h, relTime} from './dom.js';
import * as fleet from './fleet.js';
import * as edge from './edge.js';
import * as web from './web.js';
import * as funnels from './funnels.js';
import * as cohorts from './cohorts.js';
import * as iot from './iot.js';

const PAGES = {fleet, edge, web, funnels, cohorts, iot};
const TITLES = {fleet: 'Fleet', edge: 'Edge', web: 'Web', funnels: 'Funnels', cohorts: 'Cohorts', iot: 'IoT'};
const NAV_OF = {edge: 'fleet'}; // the drill-down lights up its parent in the nav

let current = null; // {name, abort, cleanup}

/** '#/web?site=x' -> {name: 'web', params: URLSearchParams} */
export function parseHash(hash = location.hash) {
  const raw = hash.replace(/^#\/?/, '');
  const i = raw.indexOf('?');
  const name = (i < 0 ? raw : raw.slice(0, i)) || 'fleet';
  return {name, params: new URLSearchParams(i < 0 ? '' : raw.slice(i + 1))};
}

/** Go to a page with params (a new history entry, so the back button undoes it). */
export function navigate(name, params = {}) {
  const qs = new URLSearchParams();
  for (const [k, v] of params instanceof URLSearchParams ? params.entries() : Object.entries(params)) {
    if (v !== null && v !== undefined && v !== '') qs.set(k, String(v));
  }
  const q = qs.toString();
  const hash = `#/${name}${q ? `?${q}` : ''}`;
  if (hash === location.hash) render();
  else location.hash = hash;
}

// ---- the truth banner: hub numbers, and how fresh they are -----------------------------------

let latest = {ms: undefined, seen: false};

function showLatest() {
  const el = document.getElementById('truth-latest-time');
  const box = document.getElementById('truth-latest');
  if (!latest.seen) {
    el.textContent = '…';
    box.removeAttribute('data-ms');
    return;
  }
  if (latest.ms === null || latest.ms === undefined) {
    el.textContent = 'none yet';
    box.dataset.ms = '';
    return;
  }
  el.replaceChildren(h('time', {datetime: new Date(latest.ms).toISOString(), title: fmtTime(latest.ms)},
    fmtTime(latest.ms)), ` (${relTime(latest.ms)})`);
  box.dataset.ms = String(latest.ms);
}

/** A page reports the newest event time it knows (most answers carry latest_event_ms). */
export function setLatest(ms) {
  const v = typeof ms === 'number' && Number.isFinite(ms) ? ms : null;
  if (!latest.seen || (v !== null && (latest.ms === null || v > latest.ms))) latest = {ms: v, seen: true};
  showLatest();
}

// ---- pages ---------------------------------------------------------------------------------

const ctx = {navigate, setLatest};

function render() {
  const {name, params} = parseHash();
  const page = PAGES[name];
  if (current) {
    current.abort.abort();
    try {
      current.cleanup?.();
    } catch (err) {
      console.error(err);
    }
    current = null;
  }
  keyPromptDismissed = false;
  latest = {ms: undefined, seen: false};
  showLatest();
  const navName = NAV_OF[name] || name;
  for (const a of document.querySelectorAll('#nav a[data-route]')) {
    if (a.dataset.route === navName) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.body.classList.remove('nav-open');
  document.getElementById('nav-toggle').setAttribute('aria-expanded', 'false');
  const main = document.getElementById('main');
  const root = h('div', {class: 'page', 'data-page': page ? name : 'missing'});
  main.replaceChildren(root);
  if (!page) {
    document.title = 'Not found · EdgeKite hub';
    root.append(h('h1', {}, 'Page not found'), h('p', {}, h('a', {href: '#/fleet'}, 'Back to the fleet')));
    return;
  }
  document.title = `${TITLES[name]} · EdgeKite hub`;
  const abort = new AbortController();
  current = {name, abort, cleanup: null};
  current.cleanup = page.mount(root, params, {...ctx, signal: abort.signal});
}

// ---- API key prompt --------------------------------------------------------------------------

// Dismissed prompts stay closed (parallel requests all meet the 401) until the next page change.
let keyPromptDismissed = false;

function initKeyDialog() {
  const dialog = document.getElementById('key-dialog');
  const input = document.getElementById('key-input');
  const open = (e) => {
    if (dialog.open || (e.type === 'ek:auth-required' && keyPromptDismissed)) return;
    input.value = getKey();
    dialog.showModal();
    input.focus();
  };
  window.addEventListener('ek:auth-required', open);
  document.getElementById('set-key').addEventListener('click', open);
  document.getElementById('key-cancel').addEventListener('click', () => {
    keyPromptDismissed = true;
    dialog.close();
  });
  dialog.addEventListener('cancel', () => {
    keyPromptDismissed = true; // Escape
  });
  document.getElementById('key-forget').addEventListener('click', () => {
    setKey('');
    input.value = '';
  });
  document.getElementById('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    setKey(input.value.trim());
    keyPromptDismissed = false;
    dialog.close();
    render();
  });
}

// ---- start ---------------------------------------------------------------------------------

function start() {
  const toggle = document.getElementById('nav-toggle');
  toggle.addEventListener('click', () => {
    const open = document.body.classList.toggle('nav-open');
    toggle.setAttribute('aria-expanded', String(open));
  });
  window.addEventListener('ek:latest', (e) => setLatest(e.detail?.ms));
  initKeyDialog();
  window.addEventListener('hashchange', render);
  if (!location.hash) history.replaceState(history.state, '', '#/fleet'); // one address per page
  render();
}

start();
