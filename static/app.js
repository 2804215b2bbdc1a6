// app.js — owns wiring and routing: hash routes (#/, #/?status=pending,
// #/jobs/{id}), boot order (WebSocket hello → snapshot GET → live events),
// first-page / "Load more" paging per filter, the Create job button and its
// keyboard shortcut, the offline banner, and one render per animation frame.

import * as api from './api.js';
import { LiveSync } from './live.js';
import { CreateQueue } from './queue.js';
import { FILTERS, JobStore } from './store.js';
import { backoffDelay } from './util.js';
import { DetailView, ListView, Toasts, renderConnection } from './view.js';

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
});
const detailView = new DetailView({ root: $('#detail-view'), body: $('#detail-body') });
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
    });
  }
  renderBanner();
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
    window.scrollTo(0, 0);
    render();
    refreshDetail();
  }
}

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
  },
  onState(state) {
    renderConnection(conn, state);
    scheduleRender();
  },
  onHello() {
    bootGrace = false;
    queue.flush();
    if (route.name === 'detail' && (detail.error || detail.loading)) refreshDetail();
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
window.addEventListener('online', () => { queue.flush(); ensureLoaded(); });
document.addEventListener('keydown', (e) => {
  if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
  const t = e.target;
  if (t instanceof Element && t.closest('input, textarea, select, [contenteditable=""], [contenteditable="true"]')) return;
  if (e.key === 'n' || e.key === 'N' || e.key === 'c' || e.key === 'C') {
    e.preventDefault();
    createPressed();
  } else if (e.key === 'Escape' && route.name === 'detail') {
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
onRoute();
live.start();
setTimeout(() => { bootGrace = false; ensureLoaded(); }, 1500);
if (queue.size) queue.flush();
