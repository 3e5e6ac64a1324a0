// EdgeKite edge dashboard: hash router, nav with the unseen-alerts badge, API key prompt.
// Plain ES modules served by the edge itself; no build step, nothing from the internet.

import {get, getKey, setKey} from './api.js';
import {h} from './dom.js';
import {closeDrawer, initDrawer, openEvent} from './drawer.js';
import * as stream from './stream.js';
import * as overview from './overview.js';
import * as timeline from './timeline.js';
import * as alerts from './alerts.js';
import * as incidents from './incidents.js';
import * as health from './health.js';

const PAGES = {overview, timeline, alerts, incidents, health};
const TITLES = {overview: 'Overview', timeline: 'Timeline', alerts: 'Alerts', incidents: 'Incidents', health: 'Health'};

let current = null; // {name, abort, cleanup}

/** '#/timeline?type=x' -> {name: 'timeline', params: URLSearchParams} */
export function parseHash(hash = location.hash) {
  const raw = hash.replace(/^#\/?/, '');
  const i = raw.indexOf('?');
  const name = (i < 0 ? raw : raw.slice(0, i)) || 'overview';
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

// ---- alerts badge (on every page) ----------------------------------------------------------

let badgeTimer = null;

export function setUnseen(n) {
  for (const el of document.querySelectorAll('[data-alerts-badge]')) {
    el.textContent = n > 99 ? '99+' : String(n);
    el.hidden = !(n > 0);
  }
  const link = document.getElementById('nav-alerts');
  link.setAttribute('aria-label', n > 0 ? `Alerts, ${n} unseen` : 'Alerts');
}

export async function refreshBadge() {
  try {
    const data = await get('/api/alerts', {limit: 1});
    setUnseen(Number(data?.unseen) || 0);
  } catch {
    // The page itself shows errors; the badge just keeps its last value.
  }
}

function scheduleBadge(delay = 1000) {
  if (badgeTimer) return;
  badgeTimer = setTimeout(() => {
    badgeTimer = null;
    refreshBadge();
  }, delay);
}

// ---- pages ---------------------------------------------------------------------------------

const ctx = {navigate, openEvent, refreshBadge, setUnseen, subscribe: stream.subscribe};

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
  closeDrawer();
  keyPromptDismissed = false;
  for (const a of document.querySelectorAll('#nav a[data-route]')) {
    if (a.dataset.route === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.body.classList.remove('nav-open');
  document.getElementById('nav-toggle').setAttribute('aria-expanded', 'false');
  const main = document.getElementById('main');
  const root = h('div', {class: 'page', 'data-page': page ? name : 'missing'});
  main.replaceChildren(root);
  if (!page) {
    document.title = 'Not found · EdgeKite';
    root.append(h('h1', {}, 'Page not found'), h('p', {}, h('a', {href: '#/overview'}, 'Back to the overview')));
    return;
  }
  document.title = `${TITLES[name]} · EdgeKite edge`;
  const abort = new AbortController();
  current = {name, abort, cleanup: null};
  current.cleanup = page.mount(root, params, {...ctx, signal: abort.signal});
}

// ---- API key prompt --------------------------------------------------------------------------

// Dismissed prompts stay closed (background refreshes also meet 401s) until the next page change.
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
    stream.connect();
    refreshBadge();
    render();
  });
}

// ---- start ---------------------------------------------------------------------------------

function initNav() {
  const toggle = document.getElementById('nav-toggle');
  toggle.addEventListener('click', () => {
    const open = document.body.classList.toggle('nav-open');
    toggle.setAttribute('aria-expanded', String(open));
  });
  const live = document.getElementById('live-status');
  stream.onStatus((state) => {
    const label = {live: '● live', connecting: '○ connecting', reconnecting: '○ reconnecting', offline: '○ offline'};
    live.textContent = label[state] || state;
    live.dataset.state = state;
  });
}

async function loadEdgeId() {
  try {
    const hd = await get('/api/health');
    if (hd?.edge_id) document.getElementById('edge-id').textContent = String(hd.edge_id);
  } catch {
    // shown by the pages
  }
}

function start() {
  initNav();
  initDrawer();
  initKeyDialog();
  stream.subscribe((kind, ev) => {
    if (kind === 'event' && ['error', 'critical'].includes(ev?.event?.severity)) scheduleBadge();
  });
  stream.connect();
  window.addEventListener('hashchange', render);
  render();
  refreshBadge();
  loadEdgeId();
  setInterval(refreshBadge, 30000);
}

start();
