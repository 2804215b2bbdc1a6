// store.js — owns client-side job state: the Map of jobs by id, the rule that
// a job is never replaced by an older state of itself (event seq when both
// sides have one, else lifecycle: pending < resolved/failed, then attempts),
// and per-filter paging (next cursor + "frontier") that decides which jobs a
// filter may show without leaving gaps between loaded pages. No DOM here.

export const FILTERS = ['all', 'pending', 'resolved', 'failed', 'cancelled'];

const LOADED_ALL = -Infinity; // frontier when the last page has been loaded
const NOTHING = Infinity; //     frontier before the first page has arrived

function lifecycle(job) {
  return [job.status === 'pending' ? 0 : 1, Number(job.attempts) || 0];
}

function olderLifecycle(a, b) {
  // A failed job retried is pending again, due no earlier than it failed: newer, not older.
  if (a.status === 'pending' && b.status === 'failed' && Date.parse(a.due_at) >= Date.parse(b.resolved_at)) return false;
  const [ra, xa] = lifecycle(a);
  const [rb, xb] = lifecycle(b);
  return ra < rb || (ra === rb && xa < xb);
}

function createdMs(job) {
  const t = Date.parse(job.created_at);
  return Number.isNaN(t) ? 0 : t;
}

/** Newest first; ties broken by id so the order is stable. */
export function newestFirst(a, b) {
  return b.t - a.t || (a.job.id < b.job.id ? 1 : a.job.id > b.job.id ? -1 : 0);
}

export class JobStore {
  constructor() {
    /** @type {Map<string, {job: object, seq: number|null, t: number, rev: number}>} */
    this.jobs = new Map();
    this.listeners = new Set();
    this.pagingGen = 0;
    this.paging = {};
    this.resetPaging();
    this.revCounter = 0;
  }

  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  emit(change) {
    for (const fn of this.listeners) fn(change);
  }

  entry(id) {
    return this.jobs.get(id) ?? null;
  }

  resetPaging() {
    this.pagingGen += 1;
    for (const f of FILTERS) {
      this.paging[f] = { loaded: false, loading: false, next: null, frontier: NOTHING, error: null };
    }
  }

  /**
   * Insert or update one job. `seq` is the event seq when the job came from a
   * WebSocket event (null for REST answers). Returns true if state changed.
   */
  put(job, seq = null) {
    const cur = this.jobs.get(job.id);
    if (cur) {
      if (seq != null && cur.seq != null) {
        if (seq <= cur.seq) return false; // same or older event
      } else if (olderLifecycle(job, cur.job)) {
        return false; // e.g. a page read before the job resolved
      }
      const same = JSON.stringify(cur.job) === JSON.stringify(job);
      if (seq != null) cur.seq = seq;
      if (same) return false;
      cur.job = job;
      cur.t = createdMs(job);
      cur.rev = ++this.revCounter;
      return true;
    }
    this.jobs.set(job.id, { job, seq, t: createdMs(job), rev: ++this.revCounter });
    return true;
  }

  /** put() + notify. `origin` is passed to listeners ("event", "local", ...). */
  upsert(job, { seq = null, origin = 'rest' } = {}) {
    const changed = this.put(job, seq);
    if (changed) this.emit({ ids: [job.id], origin });
    return changed;
  }

  /** Apply one page of GET /jobs for `filter`; gen guards against stale pages. */
  applyPage(filter, jobs, next, gen = this.pagingGen) {
    if (gen !== this.pagingGen) return false;
    const p = this.paging[filter];
    const ids = [];
    let oldest = Infinity;
    for (const job of jobs) {
      if (this.put(job)) ids.push(job.id);
      oldest = Math.min(oldest, createdMs(job));
    }
    if (!next) p.frontier = LOADED_ALL;
    else if (jobs.length) p.frontier = Math.min(p.frontier, oldest);
    p.next = next;
    p.loaded = true;
    p.loading = false;
    p.error = null;
    this.emit({ ids, origin: 'page', filter });
    return true;
  }

  /**
   * A fresh first page taken after a WebSocket hello/reset: forget all paging
   * (and with clear=true every job: the server lost its history) and apply it
   * in one synchronous step so the UI never flashes empty.
   */
  applySnapshot(filter, jobs, next, { clear = false } = {}) {
    if (clear) this.jobs.clear();
    this.resetPaging();
    this.applyPage(filter, jobs, next);
  }

  setLoading(filter, loading, error = null) {
    const p = this.paging[filter];
    p.loading = loading;
    p.error = error;
    this.emit({ ids: [], origin: 'paging', filter });
  }

  /**
   * Frontier for a filter: every job of that status created at or after it
   * is known. The "all" pages cover every status, so a status filter can use
   * whichever of the two reaches further back.
   */
  frontier(filter) {
    const own = this.paging[filter].frontier;
    return filter === 'all' ? own : Math.min(own, this.paging.all.frontier);
  }

  /** True when something can be shown for `filter` (a page arrived). */
  hasData(filter) {
    return this.paging[filter].loaded || this.paging.all.loaded;
  }

  /** Entries to show for `filter`, newest first. */
  visible(filter) {
    const f = this.frontier(filter);
    const out = [];
    for (const e of this.jobs.values()) {
      if (filter !== 'all' && e.job.status !== filter) continue;
      if (e.t < f) continue;
      out.push(e);
    }
    out.sort(newestFirst);
    return out;
  }
}
