// util.js — owns small, dependency-free helpers shared by the other modules:
// safe DOM construction (never innerHTML), URL vetting for href/src, time and
// duration formatting, a server-clock offset, random Idempotency-Keys,
// jittered backoff and fail-safe Web Storage access.

/* ------------------------------------------------------------------ URLs */

/**
 * Returns an absolute http(s) URL string for `value`, or null when the value
 * must not be used in href/src. Accepted: absolute http:/https: URLs and
 * same-origin relative paths starting with "/". Everything else
 * (javascript:, data:, bare relative paths, garbage) is rejected.
 */
export function safeUrl(value) {
  if (typeof value !== 'string') return null;
  const v = value.trim();
  if (!v) return null;
  let url;
  try {
    if (/^[a-zA-Z][a-zA-Z0-9+.-]*:/.test(v)) url = new URL(v);
    else if (v.startsWith('/')) url = new URL(v, location.origin);
    else return null;
  } catch {
    return null;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return null;
  return url.href;
}

/** safeUrl + Unsplash referral parameters (existing query strings are kept). */
export function withUtm(value) {
  const s = safeUrl(value);
  if (!s) return null;
  const url = new URL(s);
  url.searchParams.set('utm_source', 'calo_jobs');
  url.searchParams.set('utm_medium', 'referral');
  return url.href;
}

/** A CSS colour from the API, or null if it is not a plain hex colour. */
export function safeColor(value) {
  return typeof value === 'string' && /^#(?:[0-9a-fA-F]{3,4}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})$/.test(value.trim())
    ? value.trim()
    : null;
}

/* ------------------------------------------------------------------- DOM */

/**
 * h('a', {class: 'x', href: url, text: 'label'}, child, 'text', ...)
 * Attributes go through setAttribute, text through text nodes, and href/src
 * through safeUrl (internal "#/..." links are allowed as they are).
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = String(v);
      else if (k === 'dataset') for (const [dk, dv] of Object.entries(v)) { if (dv != null) el.dataset[dk] = String(dv); }
      else if (k === 'style') for (const [p, sv] of Object.entries(v)) { if (sv != null) el.style.setProperty(p, String(sv)); }
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'href' || k === 'src') {
        const s = String(v);
        const u = k === 'href' && s.startsWith('#') ? s : safeUrl(s);
        if (u) el.setAttribute(k, u);
      } else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  appendAll(el, children);
  return el;
}

export function appendAll(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : String(c)); // strings become text nodes
  }
  return el;
}

const SVGNS = 'http://www.w3.org/2000/svg';
// Static icon geometry (24x24, stroked). Never built from API data.
const ICONS = {
  clock: ['M12 7v5l3 2', 'circle:12,12,9'],
  check: ['M5 12.5l4.5 4.5L19 7.5'],
  alert: ['M12 8v5', 'M12 16.5v.01', 'M10.3 3.9L2.4 18a2 2 0 0 0 1.7 3h15.8a2 2 0 0 0 1.7-3L13.7 3.9a2 2 0 0 0-3.4 0z'],
  cloudOff: ['M3 3l18 18', 'M8.5 8.6A5 5 0 0 0 6 18h10.5', 'M10.2 5.3A6 6 0 0 1 18 9.5a4.5 4.5 0 0 1 2.4 7.9'],
  back: ['M15 18l-6-6 6-6'],
  external: ['M14 4h6v6', 'M20 4l-9 9', 'M18 14v5a1 1 0 0 1-1 1H5a1 1 0 0 1-1-1V7a1 1 0 0 1 1-1h5'],
  image: ['rect:3,5,18,14,2', 'M3 16l5-5 4 4 3-3 6 6', 'circle:15.5,9.5,1.5'],
  ban: ['circle:12,12,9', 'M5.6 5.6l12.8 12.8'],
  retry: ['M4 12a8 8 0 0 1 13.7-5.7L20 8.6', 'M20 4v4.6h-4.6', 'M20 12a8 8 0 0 1-13.7 5.7L4 15.4', 'M4 20v-4.6h4.6'],
  key: ['circle:8,15,4', 'M10.8 12.2L20 3', 'M16 7l3 3', 'M14 9l2 2'],
  globe: ['circle:12,12,9', 'M3 12h18', 'M12 3a14 14 0 0 1 0 18', 'M12 3a14 14 0 0 0 0 18'],
};

export function icon(name, cls = '') {
  const svg = document.createElementNS(SVGNS, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('class', cls ? `icon ${cls}` : 'icon');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  for (const d of ICONS[name] || []) {
    let node;
    if (d.startsWith('circle:')) {
      const [cx, cy, r] = d.slice(7).split(',');
      node = document.createElementNS(SVGNS, 'circle');
      node.setAttribute('cx', cx); node.setAttribute('cy', cy); node.setAttribute('r', r);
    } else if (d.startsWith('rect:')) {
      const [x, y, w, hh, rx] = d.slice(5).split(',');
      node = document.createElementNS(SVGNS, 'rect');
      node.setAttribute('x', x); node.setAttribute('y', y); node.setAttribute('width', w);
      node.setAttribute('height', hh); node.setAttribute('rx', rx);
    } else {
      node = document.createElementNS(SVGNS, 'path');
      node.setAttribute('d', d);
    }
    svg.append(node);
  }
  return svg;
}

/* ------------------------------------------------------------------ time */

let skewMs = 0; // server clock minus client clock, only when clearly off

/** Feed a response's Date header; corrects countdowns on badly-set clients. */
export function noteServerDate(header) {
  const t = Date.parse(header);
  if (Number.isNaN(t)) return;
  const d = t - Date.now(); // Date has 1 s resolution: ignore small offsets
  skewMs = Math.abs(d) > 2500 ? d : 0;
}

export const now = () => Date.now() + skewMs;

export function parseTime(iso) {
  if (typeof iso !== 'string') return NaN;
  return Date.parse(iso);
}

const pad2 = (n) => String(n).padStart(2, '0');

/** "2:35" for 155 000 ms (rounded up so it never shows 0:00 early). */
export function clockText(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  const hrs = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return hrs ? `${hrs}:${pad2(m)}:${pad2(s % 60)}` : `${m}:${pad2(s % 60)}`;
}

/** "resolves in 2:35" or "due now…" */
export function countdownText(dueMs) {
  if (Number.isNaN(dueMs)) return 'pending';
  const left = dueMs - now();
  return left > 0 ? `resolves in ${clockText(left)}` : 'due now…';
}

/** Short relative time: "just now", "12s ago", "5m ago", "3h ago", "Nov 22". */
export function relTime(ms) {
  if (Number.isNaN(ms)) return '—';
  const diff = Math.round((now() - ms) / 1000);
  if (diff < 5) return 'just now';
  if (diff < 60) return `${diff}s ago`;
  if (diff < 3600) return `${Math.floor(diff / 60)}m ago`;
  if (diff < 86400) return `${Math.floor(diff / 3600)}h ago`;
  dayFmt ??= new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });
  return dayFmt.format(ms);
}

let fullFmt = null; // building an Intl formatter is slow: do it once (per time zone)
let shortFmt = null;
let dayFmt = null;
const ZONE_KEY = 'calo.timeZone';
let zone = readJSON('localStorage', ZONE_KEY, 'local') === 'utc' ? 'utc' : 'local';

/** 'local' or 'utc': how times are shown (the user's choice, kept in localStorage). */
export const timeZoneMode = () => zone;

export function setTimeZoneMode(mode) {
  zone = mode === 'utc' ? 'utc' : 'local';
  fullFmt = shortFmt = null;
  writeJSON('localStorage', ZONE_KEY, zone);
}

const zoneOption = () => (zone === 'utc' ? { timeZone: 'UTC' } : {});

/** "Nov 30, 2026, 09:41:05 UTC" (or the local zone's short name), with the zone always. */
export function fullTime(ms) {
  if (Number.isNaN(ms)) return '—';
  fullFmt ??= new Intl.DateTimeFormat(undefined, {
    year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
    timeZoneName: 'short', ...zoneOption(),
  });
  return fullFmt.format(ms);
}

/** The chosen zone's short name: "UTC", "GMT+9", "CET"... */
export function zoneName() {
  const parts = new Intl.DateTimeFormat(undefined, { timeZoneName: 'short', ...zoneOption() }).formatToParts(Date.now());
  return parts.find((p) => p.type === 'timeZoneName')?.value ?? (zone === 'utc' ? 'UTC' : 'local time');
}

/** "09:41:05.214" in the chosen zone: for timelines, where milliseconds matter. */
export function clockTime(ms) {
  if (Number.isNaN(ms)) return '—';
  shortFmt ??= new Intl.DateTimeFormat(undefined, {
    hour: '2-digit', minute: '2-digit', second: '2-digit', fractionalSecondDigits: 3, hourCycle: 'h23',
    ...zoneOption(),
  });
  return shortFmt.format(ms);
}

/** 40 → "40 ms", 1234 → "1.23 s", 125000 → "2m 5s": how late, or how long. */
export function msText(ms) {
  const v = Number(ms);
  if (!Number.isFinite(v)) return '—';
  if (Math.abs(v) < 1000) return `${Math.round(v)} ms`;
  if (Math.abs(v) < 60_000) return `${(v / 1000).toFixed(v < 10_000 ? 2 : 1)} s`;
  return durationText(v / 1000);
}

/** 155.4 → "2m 35s", 7.25 → "7.3s" */
export function durationText(seconds) {
  const s = Number(seconds);
  if (!Number.isFinite(s)) return '—';
  if (s < 60) return `${Math.round(s * 10) / 10}s`;
  const m = Math.floor(s / 60);
  const rest = Math.round(s - m * 60);
  return rest ? `${m}m ${rest}s` : `${m}m`;
}

/* ------------------------------------------------------------ randomness */

/** RFC 4122 v4 id; works in non-secure contexts (no randomUUID) too. */
export function uuid() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') {
    try { return c.randomUUID(); } catch { /* non-secure context: fall through */ }
  }
  const b = new Uint8Array(16);
  if (c && typeof c.getRandomValues === 'function') c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const x = Array.from(b, (n) => n.toString(16).padStart(2, '0')).join('');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

/** Exponential backoff with full jitter: random in [0, min(cap, base·2^n)). */
export function backoffDelay(attempt, base = 500, cap = 15000) {
  return Math.random() * Math.min(cap, base * 2 ** Math.min(attempt, 20));
}

/* --------------------------------------------------------------- storage */

function store(kind) {
  try { return globalThis[kind] || null; } catch { return null; } // may throw when blocked
}

export function readJSON(kind, key, fallback) {
  try {
    const raw = store(kind)?.getItem(key);
    return raw == null ? fallback : JSON.parse(raw);
  } catch {
    return fallback;
  }
}

export function writeJSON(kind, key, value) {
  try { store(kind)?.setItem(key, JSON.stringify(value)); return true; } catch { return false; }
}
