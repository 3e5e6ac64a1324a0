// Alerts: the inbox of error and critical events (/api/alerts), unseen ones marked, and
// "mark all seen" (POST /api/alerts/seen) which clears the nav badge.

import {get, post} from './api.js';
import {errorNotice, fmtNum, h, relTime} from './dom.js';
import {eventRow} from './events.js';

export function mount(root, params, ctx) {
  const {signal} = ctx;
  let cursor = null;
  let seenAt = null;
  const list = h('ol', {class: 'events', id: 'alerts-list'});
  const status = h('p', {class: 'muted', id: 'alerts-status', role: 'status'}, 'Loading…');
  const summary = h('p', {id: 'alerts-summary'});
  const more = h('button', {type: 'button', class: 'btn', id: 'alerts-more', hidden: true, onclick: () => load(false)}, 'Load more');
  const markBtn = h('button', {type: 'button', class: 'btn primary', id: 'mark-seen', onclick: markSeen}, 'Mark all seen');

  root.append(
    h('div', {class: 'page-head'}, h('h1', {}, 'Alerts'), markBtn),
    h('p', {class: 'muted'}, 'Error and critical events, newest first. ',
      h('a', {href: '#/timeline?severity=error%2Ccritical'}, 'Open them in the timeline'), ' to filter further.'),
    summary, status, list, h('div', {class: 'more'}, more));

  function showSummary(unseen) {
    summary.textContent = unseen > 0
      ? `${fmtNum(unseen)} unseen alert${unseen === 1 ? '' : 's'}.`
      : `No unseen alerts${seenAt ? ` (last marked seen ${relTime(seenAt)})` : ''}.`;
    markBtn.disabled = !(unseen > 0);
  }

  // The edge compares its own receive time with seen_at (a device clock running ahead
  // cannot keep an alert unseen).
  const isUnseen = (ev) => {
    const t = Number(ev?.received_at);
    return seenAt === null || (Number.isFinite(t) && t > seenAt);
  };

  async function load(reset) {
    more.disabled = true;
    try {
      const data = await get('/api/alerts', {limit: 50, cursor: reset ? '' : cursor}, signal);
      seenAt = typeof data?.seen_at === 'number' ? data.seen_at : null;
      if (reset) list.replaceChildren();
      for (const ev of data?.alerts || []) list.append(eventRow(ev, ctx.openEvent, {unseen: isUnseen(ev)}));
      cursor = data?.next_cursor ?? null;
      more.hidden = !cursor;
      const unseen = Number(data?.unseen) || 0;
      ctx.setUnseen(unseen);
      showSummary(unseen);
      status.textContent = list.childElementCount ? '' : 'No alerts: nothing at error or critical severity.';
    } catch (err) {
      if (err.name !== 'AbortError') status.replaceChildren(errorNotice(err));
    } finally {
      more.disabled = false;
    }
  }

  async function markSeen() {
    markBtn.disabled = true;
    try {
      // No "until": the edge marks everything up to its own clock (the browser's may differ).
      const res = await post('/api/alerts/seen', {}, signal);
      seenAt = typeof res?.seen_at === 'number' ? res.seen_at : Date.now();
      const unseen = Number(res?.unseen) || 0;
      ctx.setUnseen(unseen);
      showSummary(unseen);
      for (const btn of list.querySelectorAll('button.ev.unseen')) {
        btn.classList.remove('unseen');
        btn.querySelector('.tag.new')?.remove();
      }
    } catch (err) {
      if (err.name !== 'AbortError') status.replaceChildren(errorNotice(err));
      markBtn.disabled = false;
    }
  }

  load(true);
  // New alerts arrive on the stream: refresh the first page (cheap, bounded) at most every 5 s.
  let timer = null;
  const unsubscribe = ctx.subscribe((kind, ev) => {
    if (kind !== 'event' || !['error', 'critical'].includes(ev?.event?.severity) || timer) return;
    timer = setTimeout(() => {
      timer = null;
      if (!cursor || list.childElementCount <= 50) load(true);
    }, 5000);
  });
  return () => {
    clearTimeout(timer);
    unsubscribe();
  };
}
