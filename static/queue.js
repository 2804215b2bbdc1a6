// queue.js — owns the offline "Create job" queue. Every press gets a fresh
// Idempotency-Key and is written to localStorage BEFORE the first request, so
// it survives a reload. Presses are sent in order; a press that fails with a
// network error, timeout, 5xx or 429 stays queued and is retried with the SAME
// key (on `online`, on a WebSocket hello, and on a jittered backoff timer), so
// one press makes exactly one job even if a timed-out request had committed.

import { createJob } from './api.js';
import { backoffDelay, readJSON, uuid, writeJSON } from './util.js';

const STORAGE_KEY = 'calo.createQueue.v1';

export class CreateQueue {
  /**
   * onCreated(job, entry)   the server answered 201/200 for this press
   * onRejected(err, entry)  the server refused it for good (4xx): dropped
   * onFailure(err)          a retryable failure; the queue will retry
   * onChange()              the list of queued presses changed
   * A 401 keeps the press queued (it is sent once the API token is given: flush()).
   */
  constructor({ onCreated, onRejected, onFailure, onChange }) {
    this.onCreated = onCreated;
    this.onRejected = onRejected;
    this.onFailure = onFailure;
    this.onChange = onChange;
    this.entries = this.load();
    this.flushing = false;
    this.again = false;
    this.failStreak = 0;
    this.timer = null;
    // Another tab changed the queue: adopt its view (keys are idempotent anyway).
    window.addEventListener('storage', (e) => {
      if (e.key !== STORAGE_KEY) return;
      this.entries = this.load();
      this.onChange();
    });
  }

  load() {
    const raw = readJSON('localStorage', STORAGE_KEY, []);
    if (!Array.isArray(raw)) return [];
    return raw
      .filter((e) => e && typeof e.key === 'string' && e.key.length >= 1 && e.key.length <= 200)
      // Anything still stored from before this page load is by definition queued.
      .map((e) => ({ key: e.key, pressedAt: Number(e.pressedAt) || Date.now(), tries: Number(e.tries) || 0, queued: true }));
  }

  save() {
    writeJSON('localStorage', STORAGE_KEY, this.entries);
  }

  /** Presses that failed at least once (shown as "queued (offline)"). */
  get queued() {
    return this.entries.filter((e) => e.queued);
  }

  get size() {
    return this.entries.length;
  }

  /** One press of "Create job". */
  press({ queued = false } = {}) {
    const entry = { key: uuid(), pressedAt: Date.now(), tries: 0, queued };
    this.entries.push(entry);
    this.save();
    if (queued) this.onChange();
    this.flush();
    return entry;
  }

  /** Try to send every queued press now (in press order). Safe to call often. */
  async flush() {
    if (this.flushing) { this.again = true; return; }
    if (!this.entries.length) return;
    this.flushing = true;
    clearTimeout(this.timer);
    this.timer = null;
    let retryIn = null;
    try {
      for (const entry of [...this.entries]) {
        if (!this.entries.includes(entry)) continue; // removed meanwhile (other tab)
        entry.tries += 1;
        try {
          const { job } = await createJob(entry.key);
          this.remove(entry);
          this.failStreak = 0;
          this.onCreated(job, entry);
        } catch (err) {
          if (err && err.status === 401) {
            // Not the press's fault: keep it (and those after it) until the token is given.
            for (const e of this.entries) e.queued = true;
            this.save();
            this.onChange();
            break;
          }
          if (err && err.retryable) {
            // Keep order: stop at the first press that cannot go out yet.
            let changed = false;
            for (const e of this.entries) { if (!e.queued) { e.queued = true; changed = true; } }
            this.save();
            if (changed) this.onChange();
            retryIn = Math.max(err.retryAfterMs || 0, 1000 + backoffDelay(this.failStreak++, 1000, 30000));
            this.onFailure(err);
            break;
          }
          this.remove(entry);
          this.onRejected(err, entry);
        }
      }
    } finally {
      this.flushing = false;
    }
    if (this.again) {
      this.again = false;
      this.flush();
    } else if (retryIn != null && this.entries.length) {
      this.timer = setTimeout(() => this.flush(), retryIn);
    }
  }

  remove(entry) {
    const i = this.entries.indexOf(entry);
    if (i >= 0) this.entries.splice(i, 1);
    this.save();
    this.onChange();
  }
}
