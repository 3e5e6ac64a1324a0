// Charts as inline SVG (no library): time buckets filled between `from` and `to`, bars (plain or
// stacked) with a line on top, and min/avg/max bands. Labels are text nodes; every bucket has a
// <title> tooltip and the whole chart an aria-label that says what it shows.

import {fmtDec, fmtNum, h, s} from './dom.js';
import {DAY, HOUR} from './state.js';

/** A bucket time from the API (ms, numeric string, 'YYYY-MM-DD', 'YYYY-MM-DD hh:mm:ss' UTC, ISO). */
export function toMs(v) {
  if (typeof v === 'number') return v;
  if (typeof v !== 'string' || !v) return NaN;
  if (/^\d+$/.test(v)) return Number(v);
  if (/^\d{4}-\d{2}-\d{2}$/.test(v)) return Date.parse(`${v}T00:00:00Z`);
  const iso = v.includes('T') ? v : v.replace(' ', 'T');
  return Date.parse(/[zZ]|[+-]\d{2}:?\d{2}$/.test(iso) ? iso : `${iso}Z`);
}

const hourFmt = new Intl.DateTimeFormat(undefined, {hour: '2-digit', minute: '2-digit'});
const dayHourFmt = new Intl.DateTimeFormat(undefined, {month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit'});
const dayFmt = new Intl.DateTimeFormat(undefined, {month: 'short', day: 'numeric', timeZone: 'UTC'});
const dayLongFmt = new Intl.DateTimeFormat(undefined, {weekday: 'short', year: 'numeric', month: 'short', day: 'numeric', timeZone: 'UTC'});

/** Bucket label: hours in local time, days as UTC days (the hub's days are UTC). */
export function bucketLabel(t, interval, long = false) {
  if (!Number.isFinite(t)) return '?';
  if (interval === 'day') return (long ? dayLongFmt : dayFmt).format(new Date(t));
  return (long ? dayHourFmt : hourFmt).format(new Date(t));
}

/** Every bucket start from `from` to `to` (at most `max`), merged with the rows' own times. */
export function buckets(from, to, interval, times, max = 800) {
  const step = interval === 'day' ? DAY : HOUR;
  const set = new Set(times.filter(Number.isFinite));
  if (Number.isFinite(from) && Number.isFinite(to) && (to - from) / step <= max) {
    for (let t = Math.floor(from / step) * step; t < to; t += step) set.add(t);
  }
  return [...set].sort((a, b) => a - b);
}

function niceMax(v) {
  if (v <= 5) return 5;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10].map((m) => m * p).find((m) => m >= v);
}

/** The colour class of the i-th series of a stack (8 colours, then they repeat). */
export const seriesClass = (i) => `ser-${i % 8}`;

/**
 * A time chart: bars (stacked when `stack` has several keys) and an optional line.
 * slots: [{t, values: {key: n}}]; stack: [{key, label}]; line: {key, label} | null.
 */
export function timeChart({slots, interval, stack, line = null, id, title, unit = ''}) {
  const W = 720;
  const H = 230;
  const pad = {l: 48, r: 10, t: 10, b: 26};
  const n = Math.max(1, slots.length);
  const tot = (sl) => stack.reduce((a, k) => a + (Number(sl.values[k.key]) || 0), 0);
  const peakBar = Math.max(0, ...slots.map(tot));
  const peakLine = line ? Math.max(0, ...slots.map((sl) => Number(sl.values[line.key]) || 0)) : 0;
  const max = niceMax(Math.max(1, peakBar, peakLine));
  const bw = (W - pad.l - pad.r) / n;
  const y = (v) => pad.t + (H - pad.t - pad.b) * (1 - v / max);
  const grand = slots.reduce((a, sl) => a + tot(sl), 0);
  const svg = s('svg', {viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', id,
    'aria-label': `${title}: ${fmtNum(grand)} ${unit} in ${slots.length} ${interval === 'day' ? 'days' : 'hours'}.`});
  for (const frac of [0, 0.5, 1]) {
    const yy = y(max * frac);
    svg.append(s('line', {x1: pad.l, x2: W - pad.r, y1: yy, y2: yy, class: 'grid'}),
      s('text', {x: pad.l - 6, y: yy + 4, 'text-anchor': 'end', class: 'axis'}, fmtNum(max * frac)));
  }
  const every = Math.max(1, Math.ceil(n / 8));
  slots.forEach((sl, i) => {
    const x = pad.l + i * bw;
    const g = s('g', {class: 'bar', 'data-t': sl.t});
    const parts = stack.map((k) => `${k.label} ${fmtNum(Number(sl.values[k.key]) || 0)}`);
    if (line) parts.push(`${line.label} ${fmtNum(Number(sl.values[line.key]) || 0)}`);
    g.append(s('title', {}, `${bucketLabel(sl.t, interval, true)}: ${parts.join(', ')}`),
      s('rect', {x, y: pad.t, width: bw, height: H - pad.t - pad.b, class: 'hit'}));
    let acc = 0;
    stack.forEach((k, j) => {
      const v = Number(sl.values[k.key]) || 0;
      if (!v) return;
      const y0 = y(acc + v);
      g.append(s('rect', {x: x + Math.min(1, bw * 0.1), y: y0, width: Math.max(1, bw - 2 * Math.min(1, bw * 0.1)),
        height: Math.max(0.5, y(acc) - y0), class: stack.length > 1 ? seriesClass(j) : 'bar-main'}));
      acc += v;
    });
    svg.append(g);
    if (i % every === 0) {
      svg.append(s('text', {x: x + bw / 2, y: H - 8, 'text-anchor': 'middle', class: 'axis'}, bucketLabel(sl.t, interval)));
    }
  });
  if (line && slots.length) {
    const pts = slots.map((sl, i) => `${(pad.l + (i + 0.5) * bw).toFixed(1)},${y(Number(sl.values[line.key]) || 0).toFixed(1)}`);
    svg.append(s('polyline', {points: pts.join(' '), class: 'line-main'}));
    if (slots.length <= 60) {
      slots.forEach((sl, i) => svg.append(s('circle', {cx: pad.l + (i + 0.5) * bw, cy: y(Number(sl.values[line.key]) || 0), r: 2.5, class: 'dot-main'})));
    }
  }
  const keys = [...stack.map((k, j) => ({label: k.label, cls: stack.length > 1 ? seriesClass(j) : 'bar-main'}))];
  if (line) keys.push({label: line.label, cls: 'line-key'});
  const legend = h('ul', {class: 'legend', 'aria-hidden': 'true'}, keys.map((k) => h('li', {}, h('span', {class: `swatch ${k.cls}`}), k.label)));
  return h('figure', {class: 'chart-wrap'}, svg, legend);
}

/** Min/avg/max per bucket: a shaded band from min to max and the average as a line. */
export function bandChart({points, interval, id, title, unit = '', domain = null}) {
  const W = 360;
  const H = 150;
  const pad = {l: 44, r: 8, t: 8, b: 22};
  const vals = points.flatMap((p) => [p.min, p.max]).filter(Number.isFinite);
  let lo = vals.length ? Math.min(...vals) : 0;
  let hi = vals.length ? Math.max(...vals) : 1;
  if (hi - lo < 1e-9) {
    lo -= 1;
    hi += 1;
  }
  const span = hi - lo;
  lo -= span * 0.05;
  hi += span * 0.05;
  // The time axis spans the range asked for (a sensor that went quiet shows where it stopped).
  const t0 = domain ? Math.min(domain[0], ...points.map((p) => p.t)) : points.length ? points[0].t : 0;
  const t1 = domain ? Math.max(domain[1], ...points.map((p) => p.t)) : points.length ? points[points.length - 1].t : 1;
  const x = (t) => pad.l + (W - pad.l - pad.r) * (t1 > t0 ? (t - t0) / (t1 - t0) : 0.5);
  const y = (v) => pad.t + (H - pad.t - pad.b) * (1 - (v - lo) / (hi - lo));
  const svg = s('svg', {viewBox: `0 0 ${W} ${H}`, class: 'chart band', role: 'img', id,
    'aria-label': `${title}: ${points.length} ${interval === 'day' ? 'days' : 'hours'}, from ${fmtDec(Math.min(...vals))} to ${fmtDec(Math.max(...vals))} ${unit}`.trim()});
  for (const v of [lo + (hi - lo) * 0.1, (lo + hi) / 2, hi - (hi - lo) * 0.1]) {
    svg.append(s('line', {x1: pad.l, x2: W - pad.r, y1: y(v), y2: y(v), class: 'grid'}),
      s('text', {x: pad.l - 5, y: y(v) + 4, 'text-anchor': 'end', class: 'axis'}, fmtDec(v, Math.abs(hi - lo) < 10 ? 1 : 0)));
  }
  if (points.length) {
    const upper = points.map((p) => `${x(p.t).toFixed(1)},${y(p.max).toFixed(1)}`);
    const lower = points.slice().reverse().map((p) => `${x(p.t).toFixed(1)},${y(p.min).toFixed(1)}`);
    svg.append(s('polygon', {points: [...upper, ...lower].join(' '), class: 'band-area'}),
      s('polyline', {points: points.map((p) => `${x(p.t).toFixed(1)},${y(p.avg).toFixed(1)}`).join(' '), class: 'line-main'}));
    points.forEach((p) => {
      svg.append(s('g', {class: 'pt'}, s('title', {}, `${bucketLabel(p.t, interval, true)}: min ${fmtDec(p.min)}, avg ${fmtDec(p.avg)}, max ${fmtDec(p.max)} ${unit}`.trim()),
        s('circle', {cx: x(p.t), cy: y(p.avg), r: points.length > 48 ? 1.2 : 2.2, class: 'dot-main'})));
    });
    for (const [t, anchor] of [[t0, 'start'], [(t0 + t1) / 2, 'middle'], [t1, 'end']]) {
      svg.append(s('text', {x: x(t), y: H - 6, 'text-anchor': anchor, class: 'axis'}, bucketLabel(t, interval)));
    }
  }
  return h('figure', {class: 'chart-wrap small'}, svg);
}
