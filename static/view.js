// view.js — owns rendering: the job list (keyed, incremental DOM updates;
// only the jobs the store says are visible) with each card's action (retry a
// failed job, cancel a pending one), queued-press placeholders, the job
// detail view with its actions and its timeline (from GET /jobs/{id}/events),
// the connection indicator, toasts and the 500 ms ticker for countdowns /
// relative times. Images that fail show a designed fallback, and
// `reloadBrokenImages` tries them again once the connection is back. Every
// value from the API or Unsplash goes in
// through textContent / setAttribute (via h()) and every href/src through
// safeUrl — never innerHTML.

import {
  clockText, clockTime, countdownText, durationText, fullTime, h, icon, msText, now, parseTime, relTime,
  safeColor, safeUrl, withUtm, zoneName,
} from './util.js';
import { applyBlurhash } from './blurhash.js';

export const jobHref = (id) => `#/jobs/${encodeURIComponent(id)}`;

const STATUS_ICON = { pending: 'clock', resolved: 'check', failed: 'alert', cancelled: 'ban' };

/** What a job's card and detail view offer: retry a failed job, cancel a pending one. */
export function jobAction(job) {
  if (job.status === 'failed') return { kind: 'retry', label: 'Retry', icon: 'retry' };
  if (job.status === 'pending') return { kind: 'cancel', label: 'Cancel', icon: 'ban' };
  return null;
}

/** resolved_at - due_at in ms, or null. */
export function latenessMs(job) {
  const late = parseTime(job.resolved_at) - parseTime(job.due_at);
  return Number.isFinite(late) ? late : null;
}

function lateText(late) {
  return late >= 0 ? `${msText(late)} after due` : `${msText(-late)} before due`;
}

/** The designed stand-in for a photo that cannot be shown. */
function imageFallback(small) {
  return h('span', { class: 'thumb-fallback', 'data-testid': 'image-fallback' },
    icon('image', 'icon-xl'), h('span', { class: small ? 'fallback-text sr-only' : 'fallback-text', text: 'Photo unavailable' }));
}

function photo(src, alt, size, frame, lazy) {
  const el = h('img', {
    src, alt: alt || 'Food photo', loading: lazy ? 'lazy' : null, decoding: 'async', width: size?.[0], height: size?.[1],
  });
  watchImage(el, frame);
  return el;
}

function watchImage(img, frame) {
  img.addEventListener('error', () => frame.classList.replace('is-retrying', 'is-broken') || frame.classList.add('is-broken'), { once: true });
  img.addEventListener('load', () => frame.classList.remove('is-broken', 'is-retrying'), { once: true });
}

/** After a reconnect: load again every photo that failed (e.g. while offline). */
export function reloadBrokenImages(root) {
  for (const frame of root.querySelectorAll('.is-broken')) {
    const img = frame.querySelector('img');
    if (!img || !img.getAttribute('src')) continue;
    // A hidden (display: none) lazy image is never loaded: show it, transparent, while
    // the fallback stays in front, until it loads or fails again.
    frame.classList.replace('is-broken', 'is-retrying');
    const fresh = img.cloneNode(false); // a new element: a new request, not the old failure
    watchImage(fresh, frame);
    img.replaceWith(fresh);
  }
}

function badge(status) {
  const known = Object.hasOwn(STATUS_ICON, status);
  return h('span', { class: `badge badge-${known ? status : 'unknown'}` },
    icon(known ? STATUS_ICON[status] : 'clock'), h('span', { class: 'badge-text', text: String(status) }));
}

function timeEl(ms, cls) {
  return h('time', {
    class: cls,
    datetime: Number.isNaN(ms) ? null : new Date(ms).toISOString(),
    title: fullTime(ms),
    text: relTime(ms),
  });
}

function progressFraction(job) {
  const start = parseTime(job.created_at);
  const due = parseTime(job.due_at);
  if (Number.isNaN(start) || Number.isNaN(due) || due <= start) return 1;
  return Math.min(1, Math.max(0, (now() - start) / (due - start)));
}

function imageSize(img) {
  const w = Number(img?.width);
  const hgt = Number(img?.height);
  return w > 0 && hgt > 0 ? [w, hgt] : null;
}

function photographerName(image) {
  const n = image?.photographer?.name;
  return typeof n === 'string' && n.trim() ? n : null;
}

/* ============================================================ job list */

export class ListView {
  constructor({ list, empty, emptyTitle, emptyText, status, loadMore, retry, onAction }) {
    this.onAction = onAction; // (kind: 'retry'|'cancel', id, button) => void
    this.list = list;
    this.empty = empty;
    this.emptyTitle = emptyTitle;
    this.emptyText = emptyText;
    this.status = status;
    this.loadMore = loadMore;
    this.retry = retry;
    this.cards = new Map(); // key → {li, a, rev, status, tick}
    this.onScreen = new Set();
    // Cards far from the screen are not laid out (content-visibility: auto in the CSS) and
    // hold an estimated height until they are. The estimate is what the cards on screen
    // measure, so scrolling down does not move what lies below them (the Load more button
    // under the pointer jumped by a few hundred pixels with a fixed guess).
    this.sizer = 'ResizeObserver' in window ? new ResizeObserver((entries) => this.estimateCardSize(entries)) : null;
    this.io = 'IntersectionObserver' in window
      ? new IntersectionObserver((items) => {
        for (const it of items) {
          if (it.isIntersecting) {
            this.onScreen.add(it.target);
            this.sizer?.observe(it.target);
            it.target._tick?.();
          } else this.forget(it.target);
        }
      }, { rootMargin: '200px 0px' })
      : null;
  }

  forget(li) {
    this.onScreen.delete(li);
    this.sizer?.unobserve(li);
  }

  /** The height a card not yet laid out stands in with: the median of cards just measured. */
  estimateCardSize(entries) {
    const heights = entries
      .filter((e) => e.target.isConnected && (e.target.checkVisibility?.({ contentVisibilityAuto: true }) ?? true))
      .map((e) => e.borderBoxSize?.[0]?.blockSize ?? e.contentRect.height)
      .filter((height) => height > 0)
      .sort((a, b) => a - b);
    if (!heights.length) return;
    const estimate = `${heights[heights.length >> 1]}px`;
    if (this.list.style.getPropertyValue('--card-block-size') !== estimate) {
      this.list.style.setProperty('--card-block-size', estimate);
    }
  }

  /** Called every second: refresh countdowns and relative times on screen. */
  tick() {
    if (this.io) for (const li of this.onScreen) li._tick?.();
    else for (const { li } of this.cards.values()) li._tick?.();
  }

  /**
   * filter: 'all'|'pending'|'resolved'|'failed'
   * entries: store entries ({job, rev}) newest first; queued: queue entries
   * paging: that filter's paging state; hasData: a page has arrived
   * canLoadMore: more rows are held back or another page exists
   * fresh: Set of ids to animate in (new from live events / this tab)
   */
  render({ filter, entries, queued, paging, hasData, canLoadMore, fresh }) {
    const desired = [];
    const keep = new Set();
    const showQueued = filter === 'all' || filter === 'pending';
    if (showQueued) {
      for (const q of [...queued].reverse()) {
        const key = `q:${q.key}`;
        keep.add(key);
        desired.push(this.queuedCard(key, q).li);
      }
    }
    for (const e of entries) {
      const key = `j:${e.job.id}`;
      keep.add(key);
      desired.push(this.jobCard(key, e, fresh).li);
    }
    for (const [key, c] of this.cards) {
      if (!keep.has(key)) { this.io?.unobserve(c.li); this.forget(c.li); this.cards.delete(key); }
    }
    reconcile(this.list, desired);

    const loading = !hasData && !paging.error;
    this.list.setAttribute('aria-busy', loading ? 'true' : 'false');
    this.list.classList.toggle('is-loading', loading && desired.length === 0);
    if (loading && desired.length === 0) this.list.append(...skeletons(6));

    // Empty / error states
    const showEmpty = hasData && desired.length === 0;
    this.empty.hidden = !showEmpty && !(!hasData && paging.error);
    if (!hasData && paging.error) {
      this.empty.dataset.kind = 'error';
      const needsToken = paging.error.status === 401;
      this.emptyTitle.textContent = needsToken ? 'This server needs its API token' : 'Could not load jobs';
      this.emptyText.textContent = needsToken
        ? 'Press Enter token above; the jobs load as soon as it is accepted.'
        : `${paging.error.message} Retrying automatically…`;
      this.retry.hidden = false;
    } else if (showEmpty) {
      this.empty.dataset.kind = 'empty';
      this.retry.hidden = true;
      if (filter === 'all') {
        this.emptyTitle.textContent = 'No jobs yet — press Create job';
        this.emptyText.textContent = 'Each job waits a few seconds to a few minutes, then fetches a random food photo.';
      } else {
        this.emptyTitle.textContent = `No ${filter} jobs`;
        this.emptyText.textContent = filter === 'pending'
          ? 'Everything has finished. Press Create job to start another one.'
          : `Jobs that ${filter === 'cancelled' ? 'were cancelled' : `have ${filter}`} will show up here.`;
      }
    }

    // Load more
    this.loadMore.hidden = !canLoadMore;
    this.loadMore.disabled = paging.loading;
    this.loadMore.textContent = paging.loading && paging.loaded ? 'Loading…' : 'Load more';

    // Summary line
    const n = entries.length;
    const q = showQueued ? queued.length : 0;
    let text = '';
    if (hasData) {
      text = `${n.toLocaleString()} ${n === 1 ? 'job' : 'jobs'}${canLoadMore ? ' shown · more available' : ''}`;
      if (q) text += ` · ${q} queued`;
    } else if (loading) text = 'Loading jobs…';
    if (this.status.textContent !== text) this.status.textContent = text;
  }

  jobCard(key, entry, fresh) {
    const job = entry.job;
    let c = this.cards.get(key);
    if (!c) {
      const a = h('a', { class: 'card', 'data-testid': 'job-item' });
      const li = h('li', { class: 'card-slot' }, a);
      c = { li, a, rev: -1, status: null };
      this.cards.set(key, c);
      this.io?.observe(li);
      if (fresh?.has(job.id)) li.classList.add('enter');
    }
    if (c.rev !== entry.rev) {
      if (c.status === 'pending' && job.status !== 'pending') {
        c.li.classList.remove('flash');
        void c.li.offsetWidth; // restart the animation
        c.li.classList.add('flash');
      }
      c.rev = entry.rev;
      c.status = job.status;
      buildJobCard(c.a, c.li, job);
      const action = jobAction(job);
      c.li.classList.toggle('has-action', Boolean(action));
      c.li.replaceChildren(c.a, ...(action ? [this.actionButton(action, job.id)] : []));
    }
    return c;
  }

  actionButton(action, id) {
    const btn = h('button', {
      type: 'button', class: `btn btn-small card-action card-action-${action.kind}`,
      'data-testid': `card-${action.kind}`, 'aria-label': `${action.label} job ${id}`,
    }, icon(action.icon), h('span', { text: action.label }));
    btn.addEventListener('click', () => this.onAction(action.kind, id, btn));
    return btn;
  }

  queuedCard(key, q) {
    let c = this.cards.get(key);
    if (!c) {
      const tick = () => { when.textContent = relTime(q.pressedAt); };
      const when = h('time', { class: 'card-time', datetime: new Date(q.pressedAt).toISOString(), title: fullTime(q.pressedAt) });
      const li = h('li', { class: 'card-slot' },
        h('div', { class: 'card card-queued', 'data-testid': 'queued-item', 'data-key': q.key, tabindex: '0' },
          h('div', { class: 'thumb thumb-queued' }, icon('cloudOff', 'icon-xl')),
          h('div', { class: 'card-body' },
            h('div', { class: 'card-row' },
              h('span', { class: 'badge badge-queued' }, icon('cloudOff'), h('span', { class: 'badge-text', text: 'queued (offline)' })),
              when),
            h('div', { class: 'card-title', text: 'Waiting to be sent' }),
            h('div', { class: 'card-meta', text: 'Will be created as soon as the connection is back.' }))));
      li._tick = tick;
      tick();
      c = { li, rev: 0 };
      this.cards.set(key, c);
      this.io?.observe(li);
    }
    return c;
  }
}

function buildJobCard(a, li, job) {
  a.setAttribute('href', jobHref(job.id));
  a.dataset.jobId = job.id;
  a.dataset.status = job.status;
  const created = parseTime(job.created_at);
  const due = parseTime(job.due_at);
  const img = job.image && typeof job.image === 'object' ? job.image : null;

  const thumb = h('div', { class: 'thumb' });
  const color = safeColor(img?.color);
  if (color) thumb.style.backgroundColor = color;
  let countdown = null;
  let bigCount = null;
  let bar = null;

  if (job.status === 'resolved') {
    const src = safeUrl(img?.thumb_url) || safeUrl(img?.url) || safeUrl(job.result);
    if (img?.blur_hash) applyBlurhash(thumb, img.blur_hash);
    if (src) thumb.append(photo(src, img?.alt, imageSize(img), thumb, true), imageFallback(true));
    else {
      thumb.append(imageFallback(true));
      thumb.classList.add('is-broken');
    }
  } else if (job.status === 'pending') {
    thumb.classList.add('thumb-pending');
    bigCount = h('span', { class: 'thumb-count' });
    thumb.append(icon('clock', 'icon-xl'), bigCount);
  } else if (job.status === 'cancelled') {
    thumb.classList.add('thumb-cancelled');
    thumb.append(icon('ban', 'icon-xl'), h('span', { class: 'thumb-code', text: 'cancelled' }));
  } else {
    thumb.classList.add('thumb-failed');
    thumb.append(icon('alert', 'icon-xl'), h('span', { class: 'thumb-code', text: job.error?.code || 'failed' }));
  }

  const when = timeEl(created, 'card-time');
  let meta;
  if (job.status === 'pending') {
    countdown = h('span', { class: 'countdown', 'data-testid': 'countdown' });
    bar = h('span', { class: 'progress-bar' });
    meta = [h('div', { class: 'card-meta' }, countdown),
      h('div', { class: 'progress', 'aria-hidden': 'true' }, bar)];
  } else if (job.status === 'resolved') {
    const who = photographerName(img);
    const late = latenessMs(job);
    meta = h('div', { class: 'card-meta' },
      img?.source === 'demo' ? 'Demo image' : who ? `Photo by ${who}` : 'Photo ready',
      late != null ? h('span', { class: 'dot-sep', 'data-testid': 'lateness', text: ` · ${lateText(late)}` }) : null);
  } else if (job.status === 'cancelled') {
    meta = h('div', { class: 'card-meta', text: `Cancelled ${relTime(parseTime(job.resolved_at))}` });
  } else {
    meta = h('div', { class: 'card-meta card-error', text: job.error?.message || 'This job failed.' });
  }

  a.replaceChildren(
    thumb,
    h('div', { class: 'card-body' },
      h('div', { class: 'card-row' }, badge(job.status), when),
      h('div', { class: 'card-title' }, h('span', { class: 'card-id', text: job.id })),
      meta),
  );

  li._tick = () => {
    when.textContent = relTime(created);
    if (countdown) {
      const txt = countdownText(due);
      if (countdown.textContent !== txt) countdown.textContent = txt;
      const left = due - now();
      bigCount.textContent = Number.isNaN(due) ? '' : left > 0 ? clockText(left) : 'due';
      countdown.classList.toggle('is-due', !(left > 0));
      bar.style.transform = `scaleX(${progressFraction(job)})`;
    }
  };
  li._tick();
}

function skeletons(n) {
  return Array.from({ length: n }, () => h('li', { class: 'card-slot skeleton', 'aria-hidden': 'true' },
    h('div', { class: 'card' }, h('div', { class: 'thumb' }),
      h('div', { class: 'card-body' }, h('div', { class: 'sk-line w40' }), h('div', { class: 'sk-line w80' })))));
}

/** Make `parent`'s children exactly `desired`, moving as few nodes as possible. */
function reconcile(parent, desired) {
  let cursor = parent.firstChild;
  for (const el of desired) {
    if (el === cursor) { cursor = cursor.nextSibling; continue; }
    parent.insertBefore(el, cursor);
  }
  while (cursor) {
    const next = cursor.nextSibling;
    cursor.remove();
    cursor = next;
  }
}

/* ========================================================== job detail */

export class DetailView {
  constructor({ root, body, onAction }) {
    this.root = root;
    this.body = body;
    this.onAction = onAction; // (kind, id, button) => void
    this.timelineBox = null;
    this.timelineKey = null;
    this.key = null;
    this.tickFn = null;
  }

  tick() { this.tickFn?.(); }

  /** state: {id, job, rev, loading, notFound, error, backHref} */
  render(state) {
    const key = `${state.id}|${state.rev ?? ''}|${state.loading}|${state.notFound}|${state.error?.message ?? ''}|${state.backHref}`;
    if (key === this.key) return;
    const focusHeading = this.key === null || !this.key.startsWith(`${state.id}|`);
    this.key = key;
    this.tickFn = null;
    const back = h('a', { class: 'back-link', href: state.backHref || '#/', 'data-testid': 'back-link' }, icon('back'), 'All jobs');
    let content;
    if (state.job) content = this.jobContent(state.job);
    else if (state.notFound) {
      content = h('div', { class: 'panel notice' },
        h('h1', { class: 'detail-title', tabindex: '-1', text: 'Job not found' }),
        h('p', {}, 'There is no job with id ', h('code', { text: state.id }), '. It may have been created on another server.'));
    } else if (state.error) {
      content = h('div', { class: 'panel notice' },
        h('h1', { class: 'detail-title', tabindex: '-1', text: 'Could not load this job' }),
        h('p', { text: `${state.error.message} It will load when the connection is back.` }));
    } else {
      content = h('div', { class: 'panel notice', 'aria-busy': 'true' },
        h('h1', { class: 'detail-title', tabindex: '-1', text: 'Loading job…' }),
        h('p', { class: 'subtle' }, h('code', { text: state.id })));
    }
    this.body.replaceChildren(back, content);
    this.timelineKey = null;
    if (state.job) this.renderTimeline(state.timeline);
    if (focusHeading) this.body.querySelector('.detail-title')?.focus({ preventScroll: true });
  }

  /** timeline: {events: [...] | null, loading, error, rev} for the job on screen. */
  renderTimeline(timeline) {
    const box = this.timelineBox;
    if (!box || !box.isConnected) return;
    const key = `${timeline?.rev ?? ''}|${timeline?.loading}|${timeline?.error?.message ?? ''}`;
    if (key === this.timelineKey) return;
    this.timelineKey = key;
    const events = timeline?.events;
    if (!events) {
      box.replaceChildren(h('p', { class: 'subtle', text: timeline?.error
        ? `Could not load the timeline: ${timeline.error.message}` : 'Loading the timeline…' }));
      return;
    }
    if (!events.length) {
      box.replaceChildren(h('p', { class: 'subtle', text: 'No events kept for this job (they are pruned after the retention period).' }));
      return;
    }
    box.replaceChildren(h('ol', { class: 'timeline', 'data-testid': 'timeline' }, events.map(timelineItem)));
  }

  jobContent(job) {
    const img = job.image && typeof job.image === 'object' ? job.image : null;
    const created = parseTime(job.created_at);
    const due = parseTime(job.due_at);
    const resolved = parseTime(job.resolved_at);
    const ticks = [];

    // ----- media column
    let media;
    if (job.status === 'resolved') {
      const src = safeUrl(img?.url) || safeUrl(img?.thumb_url) || safeUrl(job.result);
      const size = imageSize(img);
      const color = safeColor(img?.color);
      const frame = h('div', { class: 'photo-frame', style: { 'background-color': color, 'aspect-ratio': size ? `${size[0]} / ${size[1]}` : null } });
      if (img?.blur_hash) applyBlurhash(frame, img.blur_hash);
      if (src) frame.append(photo(src, img?.alt, size, frame, false));
      else frame.classList.add('is-broken');
      frame.append(imageFallback(false));
      media = h('figure', { class: 'photo' }, frame, attribution(img));
    } else if (job.status === 'pending') {
      const big = h('div', { class: 'wait-count', 'data-testid': 'countdown' });
      const sub = h('div', { class: 'wait-sub' });
      const bar = h('span', { class: 'progress-bar' });
      media = h('div', { class: 'wait-card' },
        icon('clock', 'icon-xxl'), big, sub,
        h('div', { class: 'progress progress-lg', 'aria-hidden': 'true' }, bar));
      ticks.push(() => {
        const left = due - now();
        big.textContent = Number.isNaN(due) ? 'Pending' : left > 0 ? clockText(left) : 'Due now…';
        sub.textContent = left > 0 ? 'until the photo is fetched' : 'the photo is on its way';
        bar.style.transform = `scaleX(${progressFraction(job)})`;
      });
    } else if (job.status === 'cancelled') {
      media = h('div', { class: 'fail-card cancel-card' },
        icon('ban', 'icon-xxl'),
        h('h2', { text: 'This job was cancelled' }),
        h('p', { class: 'fail-msg', text: `Cancelled ${fullTime(resolved)}, before its photo was fetched.` }));
    } else {
      media = h('div', { class: 'fail-card', role: 'alert', 'data-testid': 'job-error' },
        icon('alert', 'icon-xxl'),
        h('h2', { text: 'This job failed' }),
        h('p', { class: 'fail-msg', text: job.error?.message || 'No photo could be fetched.' }),
        h('p', { class: 'fail-code' }, 'Error code: ', h('code', { text: job.error?.code || 'unknown' })));
    }

    // ----- facts column
    const rows = [];
    const row = (label, ...value) => rows.push(h('div', { class: 'fact' }, h('dt', { text: label }), h('dd', {}, ...value)));
    const relCreated = h('span', { class: 'subtle' });
    ticks.push(() => { relCreated.textContent = ` (${relTime(created)})`; });
    row('Job ID', h('code', { class: 'break', text: job.id }));
    row('Status', badge(job.status));
    row('Created', fullTime(created), relCreated);
    if (job.status === 'pending') {
      const cd = h('span', { class: 'subtle' });
      ticks.push(() => { cd.textContent = ` (${countdownText(due)})`; });
      row('Due', fullTime(due), cd);
    } else row('Due', fullTime(due));
    const late = job.status === 'resolved' ? latenessMs(job) : null;
    row({ failed: 'Failed', cancelled: 'Cancelled' }[job.status] || 'Resolved', job.resolved_at ? fullTime(resolved) : '—',
      late != null ? h('span', { class: 'subtle', 'data-testid': 'detail-lateness', text: ` (${lateText(late)})` }) : null);
    row('Delay', durationText(job.delay_seconds));
    row('Attempts', String(Number.isFinite(Number(job.attempts)) ? Number(job.attempts) : '—'));
    const resultUrl = safeUrl(job.result);
    row('Result', resultUrl
      ? h('a', { class: 'break', href: resultUrl, target: '_blank', rel: 'noopener', 'data-testid': 'result-link', text: job.result })
      : job.result ? h('span', { class: 'break', text: String(job.result) }) : '—');
    if (img) {
      const size = imageSize(img);
      row('Image size', size ? `${size[0]} × ${size[1]} px` : '—');
      const color = safeColor(img.color);
      row('Colour', color ? h('span', { class: 'swatch', style: { 'background-color': color } }) : null, img.color ? String(img.color) : '—');
      row('Alt text', img.alt ? String(img.alt) : '—');
      row('Source', img.source === 'demo' ? 'Demo image' : img.source === 'unsplash' ? 'Unsplash' : String(img.source ?? '—'));
      const page = withUtm(img.unsplash_url);
      if (page) row('Photo page', h('a', { href: page, target: '_blank', rel: 'noopener' }, 'View on Unsplash ', icon('external')));
    }
    if (job.error && job.status !== 'failed') {
      row('Last error', h('code', { text: String(job.error.code ?? '') }), ' ', String(job.error.message ?? ''));
    }

    const tick = () => { for (const t of ticks) t(); };
    this.tickFn = tick;
    tick();

    const action = jobAction(job);
    let actionBtn = null;
    if (action) {
      actionBtn = h('button', {
        type: 'button', class: `btn ${action.kind === 'retry' ? 'btn-primary' : 'btn-secondary'} detail-action`,
        'data-testid': `detail-${action.kind}`,
      }, icon(action.icon), action.kind === 'retry' ? 'Retry job' : 'Cancel job');
      actionBtn.addEventListener('click', () => this.onAction(action.kind, job.id, actionBtn));
    }
    this.timelineBox = h('div', { class: 'timeline-box', 'aria-live': 'polite' });
    return h('article', { class: `detail detail-${job.status}`, 'data-job-id': job.id, 'data-status': job.status },
      h('header', { class: 'detail-head' },
        h('h1', { class: 'detail-title', tabindex: '-1' }, 'Job ', h('code', { text: job.id })),
        badge(job.status), actionBtn),
      h('div', { class: 'detail-grid' },
        h('div', { class: 'detail-media' }, media,
          h('section', { class: 'panel timeline-panel', 'aria-labelledby': 'timeline-title' },
            h('h2', { class: 'panel-title', id: 'timeline-title' }, 'Timeline ',
              h('span', { class: 'subtle zone-note', 'data-testid': 'timeline-zone', text: `times in ${zoneName()}` })),
            this.timelineBox)),
        h('section', { class: 'panel', 'aria-label': 'Job details' }, h('dl', { class: 'facts' }, rows))));
  }
}

/** One event of a job's timeline as a list item: when, what, and the detail that matters. */
function timelineItem(event) {
  const job = event.job;
  const at = parseTime(event.at);
  const error = job.error ? `${job.error.code ?? ''}: ${job.error.message ?? ''}` : '';
  const tries = (n) => `${n} ${n === 1 ? 'try' : 'tries'}`;
  let title = event.type;
  let detail = '';
  let kind = 'info';
  switch (event.type) {
    case 'job.created':
      title = 'Created';
      detail = `due ${durationText(job.delay_seconds)} later, at ${clockTime(parseTime(job.due_at))}`;
      break;
    case 'job.updated':
      if (job.error?.code === 'rate_limited') { title = 'Waiting for the rate limit'; detail = String(job.error.message ?? ''); kind = 'wait'; } else { title = `Try ${job.attempts} failed`; detail = `${error} — it will be tried again`; kind = 'warn'; }
      break;
    case 'job.failed':
      title = `Failed after ${tries(Number(job.attempts) || 0)}`; detail = error; kind = 'bad';
      break;
    case 'job.retried':
      title = 'Retried'; detail = 'pending again, due now'; kind = 'info';
      break;
    case 'job.cancelled':
      title = 'Cancelled'; detail = 'before its photo was fetched'; kind = 'muted';
      break;
    case 'job.resolved': {
      const late = latenessMs(job);
      title = 'Resolved'; kind = 'good';
      detail = [late != null ? lateText(late) : '', Number(job.attempts) > 1 ? `on try ${job.attempts}` : ''].filter(Boolean).join(', ');
      break;
    }
    default:
      break;
  }
  return h('li', { class: `tl-item tl-${kind}`, 'data-type': event.type, 'data-seq': event.seq },
    h('span', { class: 'tl-dot', 'aria-hidden': 'true' }),
    h('div', { class: 'tl-body' },
      h('div', { class: 'tl-head' },
        h('span', { class: 'tl-title', text: title }),
        h('time', { class: 'tl-time', datetime: Number.isNaN(at) ? null : new Date(at).toISOString(), title: fullTime(at), text: clockTime(at) })),
      detail ? h('div', { class: 'tl-detail', text: detail }) : null));
}

/** "Photo by <name> on Unsplash" (both linked, with referral params) or the demo note. */
function attribution(img) {
  if (!img) return null;
  if (img.source === 'demo') {
    return h('figcaption', { class: 'credit', 'data-testid': 'photographer', text: 'Demo image (no Unsplash key configured)' });
  }
  const name = photographerName(img);
  if (img.source !== 'unsplash' && !name) return null;
  const profile = withUtm(img.photographer?.profile_url);
  const unsplash = h('a', { href: withUtm('https://unsplash.com/'), target: '_blank', rel: 'noopener' }, 'Unsplash');
  const who = name ? (profile ? h('a', { href: profile, target: '_blank', rel: 'noopener' }, name) : h('span', { text: name })) : null;
  return h('figcaption', { class: 'credit', 'data-testid': 'photographer' },
    who ? ['Photo by ', who, ' on '] : 'Photo on ', unsplash);
}

/* ======================================================= chrome pieces */

const CONN_TITLES = {
  live: 'Connected — updates arrive live',
  reconnecting: 'Connection lost — reconnecting and catching up',
  offline: 'You are offline — new jobs are queued and sent when you are back',
};

export function renderConnection({ wrap, label }, state) {
  wrap.dataset.state = state;
  label.textContent = state; // exactly live | reconnecting | offline
  wrap.title = CONN_TITLES[state] || '';
}

export class Toasts {
  constructor(root) { this.root = root; }

  show(message, { kind = 'info', timeout = 5000 } = {}) {
    for (const t of this.root.children) {
      if (t.dataset.msg === message) return t._handle; // already showing
    }
    const close = h('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss', text: '×' });
    const el = h('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status', 'data-testid': 'toast', 'data-msg': message },
      icon(kind === 'error' ? 'alert' : kind === 'success' ? 'check' : 'cloudOff'),
      h('span', { class: 'toast-text', text: message }), close);
    const remove = () => { el.classList.add('leaving'); setTimeout(() => el.remove(), 200); };
    close.addEventListener('click', remove);
    this.root.append(el);
    if (timeout) setTimeout(remove, timeout);
    el._handle = { remove };
    return el._handle;
  }
}
