// app.js — owns wiring and routing: hash routes (#/, #/?status=pending,
// #/jobs/{id}), boot order (WebSocket hello → snapshot GET → live events),
// first-page / "Load more" paging per filter, the Create job button and its
// keyboard shortcut, job actions (retry, cancel, retry all failed with a
// confirmation), the detail view's live timeline, the status strip, the
// banners (offline, reconnecting, upstream), the local/UTC switch, and one
// render per animation frame.

import * as api from './api.js';
import { onUnauthorized, setToken, token } from './auth.js';
import { StatsFeed, StatusStrip, upstreamNotice } from './dashboard.js';
import { LiveSync } from './live.js';
import { CreateQueue } from './queue.js';
import { FILTERS, JobStore } from './store.js';
import { backoffDelay, setTimeZoneMode, timeZoneMode } from './util.js';
import { DetailView, ListView, Toasts, reloadBrokenImages, renderConnection } from './view.js';

const $ = (sel) => document.querySelector(sel);

const store = new JobStore();
const toasts = new Toasts($('#toasts'));
const listView = new ListView({
  list: $('#job-list'),
  empty: $('#empty-state'),
  emptyTitle: $('#empty-title'),
  emptyText: $('#empty-text'),
  status: $('#list-summary'),
  loadMore: $('#load-more'),
  retry: $('#retry-load'),
  onAction: jobAction,
});
const detailView = new DetailView({ root: $('#detail-view'), body: $('#detail-body'), onAction: jobAction });
const strip = new StatusStrip({
  root: $('#status-strip'),
  tabCounts: Object.fromEntries([...document.querySelectorAll('[data-count]')].map((el) => [el.dataset.count, el])),
});
const conn = { wrap: $('#conn'), label: $('#conn-label') };
const createBtn = $('#create-job');
const banner = $('#offline-banner');
const bannerText = $('#offline-text');

/* ---------------------------------------------------------------- routes */

function parseRoute() {
  const hash = location.hash || '#/';
  const m = /^#\/jobs\/([^/?#]+)\/?$/.exec(hash);
  if (m) {
    let id = m[1];
    try { id = decodeURIComponent(id); } catch { /* keep raw */ }
    return { name: 'detail', id };
  }
  const q = new URLSearchParams(hash.includes('?') ? hash.slice(hash.indexOf('?') + 1) : '');
  const status = q.get('status');
  return { name: 'list', filter: FILTERS.includes(status) ? status : 'all' };
}

let route = parseRoute();
let listFilter = route.name === 'list' ? route.filter : 'all';
let listHash = route.name === 'list' ? (location.hash || '#/') : '#/';
let listScrollY = 0;
let openedFromList = null;
let detail = { loading: false, notFound: false, error: null };
let detailToken = 0;
let timeline = { id: null, events: null, loading: false, error: null, rev: 0 };
let timelineTimer = null;
let stats = null;
const fresh = new Set(); // ids to animate in on the next list render

// Rows rendered per filter: the first page, plus one page per "Load more".
// Live events can add any number of jobs; the DOM never holds more than this.
const PAGE_ROWS = api.PAGE_SIZE;
const rowLimit = Object.fromEntries(FILTERS.map((f) => [f, PAGE_ROWS]));

/* ---------------------------------------------------------- rendering */

let renderPending = false;
let lastRender = 0;
let changesSinceRender = 0;
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  const run = () => { renderPending = false; changesSinceRender = 0; lastRender = performance.now(); render(); };
  // Under a burst of events (or with thousands of jobs in memory) render less
  // often: each render may rebuild the whole visible window.
  const gap = changesSinceRender > 50 ? 350 : store.jobs.size > 2000 ? 120 : 0;
  const wait = Math.max(0, lastRender + gap - performance.now());
  if (document.hidden || wait > 0) setTimeout(() => (document.hidden ? run() : requestAnimationFrame(run)), wait || 50);
  else requestAnimationFrame(run);
}

function render() {
  if (route.name === 'list') {
    const all = store.visible(listFilter);
    const paging = store.paging[listFilter];
    const limit = rowLimit[listFilter];
    listView.render({
      filter: listFilter,
      entries: all.length > limit ? all.slice(0, limit) : all,
      queued: queue.queued,
      paging,
      hasData: store.hasData(listFilter),
      canLoadMore: all.length > limit || Boolean(paging.next),
      fresh,
    });
    fresh.clear();
  } else {
    const entry = detail.notFound ? null : store.entry(route.id);
    detailView.render({
      id: route.id,
      job: entry?.job ?? null,
      rev: entry?.rev ?? null,
      loading: detail.loading,
      notFound: detail.notFound,
      error: entry ? null : detail.error,
      backHref: listHash,
      timeline: timeline.id === route.id ? timeline : null,
    });
  }
  renderBanner();
  renderRetryAll();
}

function renderBanner() {
  const q = queue.size;
  const offline = live.state === 'offline';
  if (offline) {
    bannerText.textContent = q
      ? `You're offline. ${q} ${q === 1 ? 'job is' : 'jobs are'} queued and will be created when you're back.`
      : "You're offline. Jobs you create are queued and sent when you're back.";
  } else if (queue.queued.length) {
    bannerText.textContent = `${q} ${q === 1 ? 'job is' : 'jobs are'} waiting to be sent — the server is unreachable, retrying…`;
  }
  banner.hidden = !(offline || queue.queued.length);
  $('#retry-queue').hidden = !queue.queued.length;
}

function onRoute() {
  const prev = route;
  route = parseRoute();
  const toList = route.name === 'list';
  if (prev.name === 'list' && !toList) listScrollY = window.scrollY;
  $('#list-view').hidden = !toList;
  $('#detail-view').hidden = toList;
  fresh.clear();
  if (toList) {
    const filterChanged = route.filter !== listFilter;
    listFilter = route.filter;
    listHash = location.hash || '#/';
    for (const a of document.querySelectorAll('[data-filter]')) {
      if (a.dataset.filter === listFilter) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    document.title = listFilter === 'all' ? 'Calo Jobs' : `${cap(listFilter)} jobs · Calo Jobs`;
    ensureLoaded();
    render();
    if (prev.name === 'detail') {
      window.scrollTo(0, listScrollY);
      const card = openedFromList && listView.cards.get(`j:${openedFromList}`);
      card?.a.focus({ preventScroll: true });
    } else if (filterChanged) {
      window.scrollTo(0, 0);
    }
  } else {
    openedFromList = route.id;
    document.title = `Job ${route.id} · Calo Jobs`;
    detail = { loading: true, notFound: false, error: null };
    detailView.key = null;
    timeline = { id: route.id, events: null, loading: true, error: null, rev: timeline.rev + 1 };
    window.scrollTo(0, 0);
    render();
    refreshDetail();
    loadTimeline();
  }
}

/* -------------------------------------------------------------- timeline */

async function loadTimeline() {
  if (route.name !== 'detail') return;
  const id = route.id;
  try {
    const events = await api.getJobEvents(id);
    if (route.name !== 'detail' || route.id !== id) return;
    timeline = { id, events, loading: false, error: null, rev: timeline.rev + 1 };
  } catch (err) {
    if (route.name !== 'detail' || route.id !== id) return;
    timeline = { ...timeline, id, loading: false, error: err.status === 404 ? null : err, rev: timeline.rev + 1 };
  }
  detailView.renderTimeline(timeline);
}

/** The job on screen changed: read its timeline again, once for a burst of events. */
function timelineSoon() {
  clearTimeout(timelineTimer);
  timelineTimer = setTimeout(loadTimeline, 150);
}

/* --------------------------------------------------------------- actions */

const ACTION_TEXT = {
  retry: { done: 'Job retried: it is pending again, due now.', verb: 'retry' },
  cancel: { done: 'Job cancelled.', verb: 'cancel' },
};

/** Retry or cancel one job, from its card or its detail view. */
async function jobAction(kind, id, button) {
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  try {
    const job = kind === 'retry' ? await api.retryJob(id) : await api.cancelJob(id);
    store.upsert(job, { origin: 'local' });
    toasts.show(ACTION_TEXT[kind].done, { kind: 'success', timeout: 3000 });
    statsFeed.refreshSoon();
  } catch (err) {
    toasts.show(`Could not ${ACTION_TEXT[kind].verb} the job: ${err.message}`, { kind: 'error' });
    if (button.isConnected) { button.disabled = false; button.removeAttribute('aria-busy'); }
  }
}

const retryAllBtn = $('#retry-all');
const confirmDialog = $('#confirm-retry-all');

function failedCount() {
  return Number(stats?.counts?.failed) || 0;
}

function renderRetryAll() {
  const n = failedCount();
  retryAllBtn.hidden = !(route.name === 'list' && (listFilter === 'all' || listFilter === 'failed') && n > 0);
  $('#retry-all-label').textContent = `Retry all failed (${n.toLocaleString()})`;
}

function askRetryAll() {
  const n = failedCount();
  if (!n) return;
  $('#confirm-text').textContent = `${n.toLocaleString()} failed ${n === 1 ? 'job goes' : 'jobs go'} back to pending, due now, and ${n === 1 ? 'is' : 'are'} tried again. Each keeps its earlier tries in its timeline.`;
  $('#confirm-ok').textContent = `Retry ${n.toLocaleString()} ${n === 1 ? 'job' : 'jobs'}`;
  confirmDialog.returnValue = '';
  confirmDialog.showModal();
}

confirmDialog.addEventListener('close', async () => {
  if (confirmDialog.returnValue !== 'confirm') return;
  retryAllBtn.disabled = true;
  try {
    const n = await api.retryFailed();
    toasts.show(`${n.toLocaleString()} ${n === 1 ? 'job' : 'jobs'} retried.`, { kind: 'success', timeout: 4000 });
  } catch (err) {
    toasts.show(`Could not retry the failed jobs: ${err.message}`, { kind: 'error' });
  } finally {
    retryAllBtn.disabled = false;
    statsFeed.refreshSoon();
  }
});

/* ------------------------------------------------------------ API token */

const tokenDialog = $('#token-dialog');
const authBanner = $('#auth-banner');
let tokenRejected = false;
let tokenDeclined = false; // "Not now": the banner's button asks again, 401s no longer do

/** A 401: ask for the token (saying so if the one we sent was refused). */
onUnauthorized(() => {
  tokenRejected = token() != null;
  authBanner.hidden = false;
  if (!tokenDialog.open && !tokenDeclined) askToken();
});

function askToken() {
  $('#token-error').hidden = !tokenRejected;
  $('#token-input').value = '';
  tokenDialog.returnValue = '';
  tokenDialog.showModal();
}

tokenDialog.addEventListener('close', () => {
  const value = $('#token-input').value.trim();
  $('#token-input').value = '';
  tokenDeclined = tokenDialog.returnValue !== 'save' || !value;
  if (tokenDeclined) return;
  setToken(value);
  tokenRejected = false;
  authBanner.hidden = true;
  // Everything that was refused goes again, now with the token.
  bootGrace = false;
  live.restart();
  queue.flush();
  statsFeed.refreshSoon();
  store.setLoading(listFilter, false, null);
  ensureLoaded();
  if (route.name === 'detail') { refreshDetail(); loadTimeline(); }
});

/* ------------------------------------------------------- stats + banners */

const upstreamBanner = $('#upstream-banner');
const statsFeed = new StatsFeed({
  onStats(next) {
    stats = next;
    strip.render(next);
    const notice = upstreamNotice(next.upstream);
    upstreamBanner.hidden = !notice;
    upstreamBanner.dataset.state = notice?.state ?? 'ok';
    upstreamBanner.classList.toggle('is-quiet', Boolean(notice?.quiet));
    $('#upstream-text').textContent = notice?.text ?? '';
    renderRetryAll();
  },
});

// "Reconnecting" becomes a banner nobody can miss once it has lasted a few seconds.
const RECONNECT_BANNER_MS = 3000;
let connBannerTimer = null;
function renderConnBanner(state) {
  clearTimeout(connBannerTimer);
  if (state !== 'reconnecting') { $('#conn-banner').hidden = true; return; }
  // While the token is missing the socket is refused: the token banner says why.
  connBannerTimer = setTimeout(() => {
    $('#conn-banner').hidden = live.state !== 'reconnecting' || !authBanner.hidden;
  }, RECONNECT_BANNER_MS);
}

const tzToggle = $('#tz-toggle');
function renderTimeZone() {
  const utc = timeZoneMode() === 'utc';
  tzToggle.setAttribute('aria-pressed', String(utc));
  tzToggle.title = utc ? 'Times are in UTC: press for your local time zone' : 'Times are in your local time zone: press for UTC';
}
tzToggle.addEventListener('click', () => {
  setTimeZoneMode(timeZoneMode() === 'utc' ? 'local' : 'utc');
  renderTimeZone();
  detailView.key = null; // every time on screen is written again
  listView.tick();
  if (stats) strip.render(stats);
  scheduleRender();
});

const cap = (s) => s.charAt(0).toUpperCase() + s.slice(1);

async function refreshDetail() {
  if (route.name !== 'detail') return;
  const id = route.id;
  const token = ++detailToken;
  try {
    const job = await api.getJob(id);
    if (token !== detailToken) return;
    detail = { loading: false, notFound: false, error: null };
    store.upsert(job);
  } catch (err) {
    if (token !== detailToken) return;
    detail = { loading: false, notFound: err.status === 404, error: err.status === 404 ? null : err };
  }
  scheduleRender();
}

/* ---------------------------------------------------------------- paging */

let bootGrace = true; // wait briefly for the WebSocket hello before a plain GET
let firstPageRetry = null;
let firstPageFails = 0;

async function loadFirstPage(filter) {
  const p = store.paging[filter];
  if (p.loading || p.loaded) return;
  const gen = store.pagingGen;
  store.setLoading(filter, true);
  try {
    const { jobs, next } = await api.listJobs({ status: filter === 'all' ? null : filter });
    if (store.applyPage(filter, jobs, next, gen)) firstPageFails = 0;
  } catch (err) {
    if (gen !== store.pagingGen) return;
    store.setLoading(filter, false, err);
    clearTimeout(firstPageRetry);
    firstPageRetry = setTimeout(ensureLoaded, 1000 + backoffDelay(firstPageFails++, 1000, 15000));
  }
}

/** Make sure the filter on screen has its first page (unless a snapshot is coming). */
function ensureLoaded() {
  if (bootGrace || live.syncing) return;
  const f = route.name === 'list' ? route.filter : listFilter;
  if (!store.paging[f].loaded) loadFirstPage(f);
}

async function loadMore() {
  const filter = listFilter;
  const p = store.paging[filter];
  if (p.loading) return;
  if (store.visible(filter).length > rowLimit[filter]) {
    rowLimit[filter] += PAGE_ROWS; // rows already in memory (e.g. from live events)
    scheduleRender();
    return;
  }
  if (!p.next) return;
  const gen = store.pagingGen;
  store.setLoading(filter, true);
  try {
    const { jobs, next } = await api.listJobs({ url: p.next });
    if (store.applyPage(filter, jobs, next, gen)) rowLimit[filter] += PAGE_ROWS;
  } catch (err) {
    if (gen === store.pagingGen) store.setLoading(filter, false);
    toasts.show(`Could not load more jobs. ${err.message}`, { kind: 'error' });
  }
}

/** Snapshot for LiveSync: fresh first page of the filter on screen. */
async function loadSnapshot({ clear }) {
  const filter = listFilter;
  const { jobs, next } = await api.listJobs({ status: filter === 'all' ? null : filter });
  for (const f of FILTERS) rowLimit[f] = PAGE_ROWS;
  store.applySnapshot(filter, jobs, next, { clear });
  firstPageFails = 0;
  if (route.name === 'detail') refreshDetail();
  setTimeout(ensureLoaded, 0); // after LiveSync has left syncing mode
}

/* ------------------------------------------------------------- live + queue */

const live = new LiveSync({
  loadSnapshot,
  applyEvent(m) {
    const job = m.job;
    if (!job || typeof job !== 'object' || typeof job.id !== 'string') return;
    const seq = Number(m.seq);
    if (store.upsert(job, { seq: Number.isFinite(seq) ? seq : null, origin: 'event' }) && m.type === 'job.created') {
      fresh.add(job.id);
    }
    if (route.name === 'detail' && job.id === route.id) timelineSoon();
    statsFeed.refreshSoon();
  },
  onState(state) {
    renderConnection(conn, state);
    renderConnBanner(state);
    scheduleRender();
  },
  onHello() {
    bootGrace = false;
    queue.flush();
    if (route.name === 'detail' && (detail.error || detail.loading)) refreshDetail();
    if (route.name === 'detail') timelineSoon();
    reloadBrokenImages(document);
    statsFeed.refreshSoon();
  },
  onSnapshotError(err) {
    const f = listFilter;
    if (!store.hasData(f)) store.setLoading(f, false, err);
  },
});

let failureToast = null;
const queue = new CreateQueue({
  onCreated(job) {
    if (queue.size === 0) { failureToast?.remove(); failureToast = null; }
    fresh.add(job.id);
    store.upsert(job, { origin: 'local' });
    if (route.name === 'detail') {
      toasts.show('Job created — it is at the top of the list.', { kind: 'success', timeout: 3000 });
    } else if (listFilter === 'resolved' || listFilter === 'failed') {
      toasts.show('Job created — it is listed under Pending.', { kind: 'success', timeout: 3000 });
    }
    scheduleRender();
  },
  onRejected(err) {
    toasts.show(`Could not create the job: ${err.message}`, { kind: 'error' });
  },
  onFailure(err) {
    if (failureToast) return; // one toast per outage; the banner stays up meanwhile
    failureToast = toasts.show(
      navigator.onLine === false
        ? "You're offline — the job is queued and will be created when you're back."
        : err.status === 503 || err.status === 429
          ? 'The server is busy — the job is queued and will be sent automatically.'
          : "Can't reach the server — the job is queued and will be sent when it's back.",
      { timeout: 6000 },
    );
    setTimeout(() => { failureToast = null; }, 6000);
  },
  onChange: scheduleRender,
});

function createPressed() {
  // While not live, show the placeholder at once instead of after a timeout.
  queue.press({ queued: live.state !== 'live' });
  createBtn.classList.remove('pressed');
  void createBtn.offsetWidth;
  createBtn.classList.add('pressed');
}

/* ------------------------------------------------------------------ events */

store.subscribe((change) => {
  changesSinceRender += Math.max(1, change.ids.length);
  scheduleRender();
});
window.addEventListener('hashchange', onRoute);
createBtn.addEventListener('click', createPressed);
$('#load-more').addEventListener('click', loadMore);
$('#retry-load').addEventListener('click', () => {
  store.setLoading(listFilter, false, null);
  bootGrace = false;
  live.retryNow();
  ensureLoaded();
});
$('#retry-queue').addEventListener('click', () => queue.flush());
$('#reconnect-now').addEventListener('click', () => live.retryNow());
$('#enter-token').addEventListener('click', askToken);
retryAllBtn.addEventListener('click', askRetryAll);
window.addEventListener('online', () => { queue.flush(); ensureLoaded(); });
document.addEventListener('keydown', (e) => {
  if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
  if (document.querySelector('dialog[open]')) return; // a modal question is on screen
  const t = e.target;
  if (t instanceof Element && t.closest('input, textarea, select, [contenteditable=""], [contenteditable="true"]')) return;
  if (e.key === 'n' || e.key === 'N' || e.key === 'c' || e.key === 'C') {
    e.preventDefault();
    createPressed();
  } else if (e.key === 'Escape' && route.name === 'detail' && !confirmDialog.open) {
    location.hash = listHash;
  }
});
setInterval(() => {
  if (route.name === 'list') listView.tick();
  else detailView.tick();
}, 500);

/* -------------------------------------------------------------------- boot */

if ('scrollRestoration' in history) history.scrollRestoration = 'manual';
renderConnection(conn, navigator.onLine === false ? 'offline' : 'reconnecting');
renderTimeZone();
onRoute();
live.start();
statsFeed.start();
setTimeout(() => { bootGrace = false; ensureLoaded(); }, 1500);
if (queue.size) queue.flush();
