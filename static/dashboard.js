// dashboard.js — owns the status strip: GET /stats kept fresh (soon after
// each job event, at most once a second, and every 10 s for the upstream's
// state), the counts per status and in total (also on the filter tabs), the
// two small charts of the last hour (jobs created / resolved per minute, and
// lateness p50 / p99 per minute) drawn with the vendored uPlot, and what the
// upstream banner says (failing, rate limited until, key rejected, demo).
// No job state here: the numbers are the server's.

import uPlot from '/static/vendor/uplot/uPlot.esm.js';
import { getStats } from './api.js';
import { clockTime, h, msText, parseTime, zoneName } from './util.js';

const MIN_GAP_MS = 1000; // at most one GET /stats a second, however many events arrive
const EVERY_MS = 10_000; // the upstream's state changes without a job event

export class StatsFeed {
  /** onStats(stats) after each successful GET; onError(err) after a failed one. */
  constructor({ onStats, onError }) {
    this.onStats = onStats;
    this.onError = onError || (() => {});
    this.last = 0;
    this.timer = null;
    this.inFlight = false;
    this.again = false;
  }

  start() {
    this.refreshSoon();
    setInterval(() => { if (!document.hidden) this.refreshSoon(); }, EVERY_MS);
    document.addEventListener('visibilitychange', () => { if (!document.hidden) this.refreshSoon(); });
  }

  /** Something changed: fetch the numbers again soon (coalesced). */
  refreshSoon() {
    if (this.inFlight) { this.again = true; return; }
    if (this.timer) return;
    const wait = Math.max(0, this.last + MIN_GAP_MS - Date.now());
    this.timer = setTimeout(() => { this.timer = null; this.fetch(); }, wait);
  }

  async fetch() {
    this.inFlight = true;
    this.last = Date.now();
    try {
      this.onStats(await getStats());
    } catch (err) {
      this.onError(err);
    } finally {
      this.inFlight = false;
      if (this.again) { this.again = false; this.refreshSoon(); }
    }
  }
}

const COUNTED = ['pending', 'resolved', 'failed', 'cancelled'];

/** Read a CSS custom property (the charts follow the light or dark theme). */
function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || '#888';
}

function chartOptions(width, series, yLabel) {
  return {
    width, height: 120,
    legend: { show: false },
    cursor: { show: true, points: { show: false }, drag: { x: false, y: false } },
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.15)] } },
    axes: [
      { stroke: cssVar('--muted'), grid: { show: false }, ticks: { show: false }, size: 24, font: '11px system-ui',
        values: (u, splits) => splits.map((s) => clockTime(s * 1000).slice(0, 5)) },
      { stroke: cssVar('--muted'), grid: { stroke: cssVar('--border'), width: 1 }, ticks: { show: false }, size: 44,
        font: '11px system-ui', label: yLabel ? undefined : undefined,
        values: (u, splits) => splits.map((v) => (yLabel === 'ms' ? msText(v).replace(' ', '\u202f') : String(v))) },
    ],
    series: [{}, ...series],
  };
}

export class StatusStrip {
  /** root: the strip's element; tabCounts: {status: element} on the filter tabs. */
  constructor({ root, tabCounts }) {
    this.root = root;
    this.tabCounts = tabCounts;
    this.tiles = {};
    this.charts = null;
    this.stats = null;
    this.build();
  }

  build() {
    const tile = (key, label) => {
      const value = h('dd', { class: 'tile-value', 'data-testid': `stat-${key}`, text: '–' });
      this.tiles[key] = value;
      return h('div', { class: `tile tile-${key}` }, h('dt', { text: label }), value);
    };
    this.activityBox = h('div', { class: 'chart', 'data-testid': 'chart-activity', role: 'img' });
    this.latenessBox = h('div', { class: 'chart', 'data-testid': 'chart-lateness', role: 'img' });
    this.activityLegend = h('p', { class: 'chart-legend' });
    this.latenessLegend = h('p', { class: 'chart-legend' });
    this.root.replaceChildren(
      h('dl', { class: 'tiles' }, tile('total', 'Total'), ...COUNTED.map((s) => tile(s, s[0].toUpperCase() + s.slice(1)))),
      h('div', { class: 'charts' },
        h('figure', { class: 'chart-panel' },
          h('figcaption', {}, h('span', { class: 'chart-title' }, 'Jobs per minute ', h('span', { class: 'chart-zone subtle' })),
            this.activityLegend),
          this.activityBox),
        h('figure', { class: 'chart-panel' },
          h('figcaption', {}, h('span', { class: 'chart-title' }, 'Lateness after due ', h('span', { class: 'chart-zone subtle' })),
            this.latenessLegend),
          this.latenessBox)),
    );
    if ('ResizeObserver' in window) {
      new ResizeObserver(() => this.resize()).observe(this.activityBox);
    }
  }

  render(stats) {
    this.stats = stats;
    const counts = stats.counts || {};
    this.tiles.total.textContent = Number(stats.total ?? 0).toLocaleString();
    for (const s of COUNTED) {
      const n = Number(counts[s] ?? 0).toLocaleString();
      this.tiles[s].textContent = n;
      if (this.tabCounts[s]) this.tabCounts[s].textContent = n;
    }
    if (this.tabCounts.all) this.tabCounts.all.textContent = Number(stats.total ?? 0).toLocaleString();
    this.drawCharts(stats.minutes || []);
  }

  drawCharts(minutes) {
    if (this.root.hidden || !this.root.isConnected) return;
    const xs = minutes.map((m) => parseTime(m.start) / 1000);
    const num = (v) => (Number.isFinite(Number(v)) ? Number(v) : 0);
    const created = minutes.map((m) => num(m.created));
    const resolved = minutes.map((m) => num(m.resolved));
    const p50 = minutes.map((m) => (m.lateness ? num(m.lateness.p50_ms) : null));
    const p99 = minutes.map((m) => (m.lateness ? num(m.lateness.p99_ms) : null));
    const sum = (a) => a.reduce((x, y) => x + y, 0);
    const worst = Math.max(0, ...p99.filter((v) => v != null));
    this.root.querySelectorAll('.chart-zone').forEach((el) => { el.textContent = zoneName(); });
    this.activityLegend.replaceChildren(
      h('span', { class: 'key key-created', text: `created ${sum(created)}` }),
      h('span', { class: 'key key-resolved', text: `resolved ${sum(resolved)}` }));
    this.latenessLegend.replaceChildren(
      h('span', { class: 'key key-p50', text: 'p50' }),
      h('span', { class: 'key key-p99', text: `p99 (worst ${msText(worst)})` }));
    this.activityBox.setAttribute('aria-label',
      `Last hour: ${sum(created)} jobs created and ${sum(resolved)} resolved; ${created.at(-1) ?? 0} created this minute.`);
    this.latenessBox.setAttribute('aria-label',
      worst ? `Last hour: jobs resolved at worst ${msText(worst)} after their due time (p99 per minute).` : 'Last hour: no job resolved.');
    const width = this.chartWidth();
    if (!this.charts) {
      const bars = uPlot.paths.bars({ size: [0.7, 12] });
      this.charts = [
        new uPlot(chartOptions(width, [
          { label: 'created', stroke: cssVar('--pending-accent'), fill: cssVar('--pending-accent'), paths: bars, points: { show: false } },
          { label: 'resolved', stroke: cssVar('--resolved-accent'), width: 2, points: { show: false } },
        ]), [xs, created, resolved], this.activityBox),
        new uPlot(chartOptions(width, [
          // Points too: a minute with resolutions between two without is a lone value, not a line.
          { label: 'p50', stroke: cssVar('--ring'), width: 2, points: { show: true, size: 5 }, spanGaps: false },
          { label: 'p99', stroke: cssVar('--failed-accent'), width: 2, points: { show: true, size: 5 }, spanGaps: false },
        ], 'ms'), [xs, p50, p99], this.latenessBox),
      ];
      this.root.dataset.ready = 'true';
    } else {
      this.charts[0].setData([xs, created, resolved]);
      this.charts[1].setData([xs, p50, p99]);
    }
    this.root.dataset.created = String(sum(created));
    this.root.dataset.resolved = String(sum(resolved));
  }

  chartWidth() {
    return Math.max(200, Math.floor(this.activityBox.clientWidth || 300));
  }

  resize() {
    if (!this.charts) return;
    const width = this.chartWidth();
    for (const chart of this.charts) if (chart.width !== width) chart.setSize({ width, height: 120 });
  }
}

/**
 * What to tell the user about the upstream: null when all is well, else
 * {state, text, quiet}. `upstream` is /stats's "upstream" object.
 */
export function upstreamNotice(upstream) {
  const state = upstream && typeof upstream.state === 'string' ? upstream.state : 'ok';
  const when = (iso) => clockTime(parseTime(iso)).slice(0, 8);
  switch (state) {
    case 'failing':
      return { state, text: `Unsplash is failing${upstream.since ? ` since ${when(upstream.since)}` : ''}. Due jobs wait and are tried again with backoff.` };
    case 'rate_limited':
      return { state, text: `Unsplash's hourly request limit is used up. Due jobs wait${upstream.until ? ` until ${when(upstream.until)}` : ''}; none fails for it.` };
    case 'rejected':
      return { state, text: `Unsplash rejected the access key${upstream.since ? ` at ${when(upstream.since)}` : ''}. Jobs cannot fetch photos: check CALO_UNSPLASH_ACCESS_KEY and restart the server.` };
    case 'demo':
      return { state, quiet: true, text: 'Demo mode: no Unsplash access key is set, so jobs resolve with bundled demo images.' };
    default:
      return null;
  }
}
