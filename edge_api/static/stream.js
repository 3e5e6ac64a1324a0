// One EventSource on /api/stream for the whole dashboard (the edge caps SSE clients), fanned
// out to subscribers: the timeline prepends events, the nav badge counts alerts.

import {streamUrl} from './api.js';

const subscribers = new Set();
const statusListeners = new Set();
let source = null;
let retryTimer = null;
let retryDelay = 2000;
let state = 'connecting';

function setState(next) {
  state = next;
  for (const fn of statusListeners) fn(state);
}

export function onStatus(fn) {
  statusListeners.add(fn);
  fn(state);
  return () => statusListeners.delete(fn);
}

/** fn(kind, payload): kind 'event' with an Event object, or 'lagged'. Returns an unsubscribe. */
export function subscribe(fn) {
  subscribers.add(fn);
  return () => subscribers.delete(fn);
}

function emit(kind, payload) {
  for (const fn of subscribers) {
    try {
      fn(kind, payload);
    } catch (err) {
      console.error('stream subscriber failed', err);
    }
  }
}

export function connect() {
  if (retryTimer) clearTimeout(retryTimer);
  retryTimer = null;
  if (source) source.close();
  setState('connecting');
  const es = new EventSource(streamUrl());
  source = es;
  es.onopen = () => {
    retryDelay = 2000;
    setState('live');
  };
  es.addEventListener('event', (msg) => {
    let ev;
    try {
      ev = JSON.parse(msg.data);
    } catch {
      return;
    }
    if (ev && typeof ev === 'object') emit('event', ev);
  });
  es.addEventListener('lagged', (msg) => emit('lagged', msg.data));
  es.onerror = () => {
    if (source !== es) return;
    if (es.readyState === EventSource.CLOSED) {
      // An HTTP error (401, 503, too many clients): the browser gives up, so retry ourselves.
      setState('offline');
      retryTimer = setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 30000);
    } else {
      setState('reconnecting');
    }
  };
}

export function disconnect() {
  if (retryTimer) clearTimeout(retryTimer);
  if (source) source.close();
  source = null;
  setState('offline');
}
