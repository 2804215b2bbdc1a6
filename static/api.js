// api.js — owns every HTTP call to the Calo Jobs REST API: a 10 s
// AbortController timeout on each request, decoding of JSON error bodies
// ({"error": {"code", "message"}}) into ApiError, Retry-After, and paging via
// the Link: <...>; rel="next" header, and the API token on every call (a 401
// is reported to auth.js's listener, which asks for it). No DOM here.

import { reportUnauthorized, token } from './auth.js';
import { noteServerDate } from './util.js';

export const TIMEOUT_MS = 10_000;
export const PAGE_SIZE = 100;

export class ApiError extends Error {
  constructor(message, { status = 0, code = 'network_error', retryAfterMs = null, network = false } = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.retryAfterMs = retryAfterMs;
    this.network = network;
  }

  /** True when the same request may succeed later (offline, timeout, 5xx, 429). */
  get retryable() {
    return this.network || this.status >= 500 || this.status === 429 || this.status === 408;
  }
}

function parseRetryAfter(value) {
  if (!value) return null;
  const secs = Number(value);
  if (Number.isFinite(secs)) return Math.max(0, secs * 1000);
  const t = Date.parse(value);
  return Number.isNaN(t) ? null : Math.max(0, t - Date.now());
}

async function request(path, { method = 'GET', headers = {}, body, timeout = TIMEOUT_MS } = {}) {
  const sentToken = token();
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), timeout);
  try {
    let res;
    let text;
    try {
      res = await fetch(path, {
        method,
        headers: { Accept: 'application/json', ...(sentToken ? { Authorization: `Bearer ${sentToken}` } : {}), ...headers },
        body,
        signal: ctrl.signal,
        cache: 'no-store',
        credentials: 'same-origin',
      });
      text = await res.text();
    } catch {
      const timedOut = ctrl.signal.aborted;
      throw new ApiError(timedOut ? 'The server took too long to answer.' : 'Cannot reach the server.', {
        network: true,
        code: timedOut ? 'timeout' : 'network_error',
      });
    }
    const date = res.headers.get('Date');
    if (date) noteServerDate(date);
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch { data = null; }
    }
    if (!res.ok) {
      const e = data && typeof data === 'object' ? data.error : null;
      const err = new ApiError(
        (e && typeof e.message === 'string' && e.message) || `The server answered ${res.status}.`,
        {
          status: res.status,
          code: (e && typeof e.code === 'string' && e.code) || `http_${res.status}`,
          retryAfterMs: parseRetryAfter(res.headers.get('Retry-After')),
        },
      );
      if (res.status === 401) reportUnauthorized(err, sentToken);
      throw err;
    }
    return { data, res };
  } finally {
    clearTimeout(timer);
  }
}

function isJob(x) {
  return x && typeof x === 'object' && typeof x.id === 'string' && typeof x.status === 'string';
}

function badShape() {
  return new ApiError('The server sent an unexpected response.', { status: 200, code: 'bad_response' });
}

/** Parses an RFC 8288 Link header; returns the URL of rel="next" or null. */
export function parseNextLink(header) {
  if (!header) return null;
  for (const part of header.split(/,(?=\s*<)/)) {
    const m = /^\s*<([^>]*)>(.*)$/.exec(part);
    if (!m) continue;
    const rel = /;\s*rel\s*=\s*(?:"([^"]*)"|([^\s;,]+))/i.exec(m[2]);
    const rels = rel ? (rel[1] ?? rel[2]).toLowerCase().split(/\s+/) : [];
    if (rels.includes('next')) return m[1];
  }
  return null;
}

/**
 * The server's next link is absolute (its idea of the host, which may differ
 * from ours behind a proxy): keep only path + query and fetch it from our
 * own origin. Only /jobs URLs are followed.
 */
function toJobsPath(link) {
  const path = sameOriginPath(link);
  return path && new URL(path, location.origin).pathname.endsWith('/jobs') ? path : null;
}

/** Path + query of a server link, to be fetched from our own origin (null if unusable). */
function sameOriginPath(link) {
  if (!link) return null;
  try {
    const u = new URL(link, location.origin);
    return u.pathname + u.search;
  } catch {
    return null;
  }
}

/**
 * GET /jobs. Either {status, limit} for a first page, or {url} to follow a
 * next link. Resolves to {jobs: [...], next: "/jobs?...cursor=..." | null}.
 */
export async function listJobs({ status = null, limit = PAGE_SIZE, url = null } = {}) {
  let path = url && toJobsPath(url);
  if (!path) {
    const q = new URLSearchParams();
    if (status) q.set('status', status);
    q.set('limit', String(limit));
    path = `/jobs?${q}`;
  }
  const { data, res } = await request(path);
  if (!Array.isArray(data)) throw badShape();
  return { jobs: data.filter(isJob), next: toJobsPath(parseNextLink(res.headers.get('Link'))) };
}

/** GET /jobs/{id} → job (ApiError with status 404 when unknown). */
export async function getJob(id) {
  const { data } = await request(`/jobs/${encodeURIComponent(id)}`);
  if (!isJob(data)) throw badShape();
  return data;
}

/**
 * POST /jobs with an Idempotency-Key. Resolves to {job, created}; created is
 * false when the server recognised the key (200 with the same job).
 */
export async function createJob(idempotencyKey) {
  const { data, res } = await request('/jobs', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'Idempotency-Key': idempotencyKey },
    body: '{}',
  });
  if (!isJob(data)) throw badShape();
  return { job: data, created: res.status === 201 };
}

/** POST /jobs/{id}/retry → the job, pending again (409 unless it failed). */
export async function retryJob(id) {
  const { data } = await request(`/jobs/${encodeURIComponent(id)}/retry`, { method: 'POST' });
  if (!isJob(data)) throw badShape();
  return data;
}

/** POST /jobs/{id}/cancel → the job, cancelled (409 unless it is pending and not resolving). */
export async function cancelJob(id) {
  const { data } = await request(`/jobs/${encodeURIComponent(id)}/cancel`, { method: 'POST' });
  if (!isJob(data)) throw badShape();
  return data;
}

/** POST /jobs/retry-failed → how many failed jobs were put back to pending. */
export async function retryFailed() {
  const { data } = await request('/jobs/retry-failed', { method: 'POST' });
  if (!data || typeof data.retried !== 'number') throw badShape();
  return data.retried;
}

/** GET /jobs/{id}/events → the job's timeline, oldest first (every page of it). */
export async function getJobEvents(id) {
  const events = [];
  let path = `/jobs/${encodeURIComponent(id)}/events`;
  for (let page = 0; path && page < 20; page++) {
    const { data, res } = await request(path);
    if (!Array.isArray(data)) throw badShape();
    events.push(...data.filter((e) => e && typeof e === 'object' && typeof e.type === 'string' && isJob(e.job)));
    const next = parseNextLink(res.headers.get('Link'));
    path = next ? sameOriginPath(next) : null;
  }
  return events;
}

/** GET /stats → counts, the last hour per minute, the upstream's state. */
export async function getStats() {
  const { data } = await request('/stats');
  if (!data || typeof data !== 'object' || !data.counts || !Array.isArray(data.minutes)) throw badShape();
  return data;
}
