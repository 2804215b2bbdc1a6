// live.js — owns the WebSocket to /ws and gap-free catch-up:
//   * connect / reconnect by itself with exponential backoff + full jitter
//     (base 500 ms, cap 15 s), reset on a successful hello;
//   * the last applied event seq (in memory), sent back as ?since=<seq> on
//     every reconnect so the server replays what we missed;
//   * snapshots: after a hello on a connection opened WITHOUT since (first
//     load), after {"type":"reset"}, or when the server's seq went backwards,
//     take lastSeq = S from that message, buffer every event, GET the first
//     page (loadSnapshot), then apply the buffered events with seq > S.
//     Jobs are upserted by id and never regress, so the overlap is harmless;
//   * de-duplication: events with seq <= lastSeq are ignored; a message may be
//     one event object or a JSON array of them;
//   * the connection state shown to the user: live | reconnecting | offline;
//   * a heartbeat: while live, {"type":"ping"} every 20 s; a connection that
//     sends nothing at all (no pong, no event) within 10 s is dropped and
//     replaced, so a silently dead network shows as "reconnecting" in
//     seconds instead of after TCP's minutes.

import { webSocketProtocols } from './auth.js';
import { backoffDelay } from './util.js';

const HELLO_TIMEOUT_MS = 10_000;
const PING_EVERY_MS = 20_000;
const PONG_WITHIN_MS = 10_000;

export class LiveSync {
  /**
   * loadSnapshot({clear}) async: GET the first page and replace list state.
   * applyEvent(event)     apply one job.* event (already de-duplicated).
   * onState(state)        'live' | 'reconnecting' | 'offline'.
   * onHello()             a connection became live (flush queues, refresh).
   * onSnapshotError(err)  a snapshot failed; it will be retried.
   */
  constructor({ loadSnapshot, applyEvent, onState, onHello, onSnapshotError }) {
    this.loadSnapshot = loadSnapshot;
    this.applyEvent = applyEvent;
    this.onStateCb = onState;
    this.onHello = onHello || (() => {});
    this.onSnapshotError = onSnapshotError || (() => {});

    // A reload starts from a fresh snapshot (job state lives in memory).
    this.lastSeq = null;
    this.ws = null;
    this.helloed = false;
    this.sinceUsed = null;
    this.attempt = 0;
    this.reconnectTimer = null;
    this.helloTimer = null;

    this.syncing = false; // a snapshot is in flight: buffer events
    this.buffer = [];
    this.snapGen = 0;
    this.snapClear = false;
    this.snapFails = 0;
    this.snapTimer = null;
    this.inFlightGen = null; // gen of the snapshot whose GET is running

    this.state = null;
    this.started = false;
    this.pingTimer = null;
    this.pongTimer = null;
  }

  start() {
    if (this.started) return;
    this.started = true;
    window.addEventListener('online', () => {
      this.updateState();
      this.reconnectNow();
    });
    window.addEventListener('offline', () => {
      // Don't trust a socket across a network change; replay covers the gap.
      this.drop('offline');
      this.updateState();
    });
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible' && !this.ws) this.reconnectNow();
    });
    window.addEventListener('pageshow', (e) => {
      if (e.persisted) this.reconnectNow(); // restored from the back/forward cache
    });
    this.connect();
    this.updateState();
  }

  get isLive() {
    return this.helloed && this.ws?.readyState === WebSocket.OPEN;
  }

  updateState() {
    const s = navigator.onLine === false ? 'offline' : this.isLive ? 'live' : 'reconnecting';
    if (s !== this.state) {
      this.state = s;
      this.onStateCb(s);
    }
  }

  url() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const q = this.lastSeq != null ? `?since=${encodeURIComponent(this.lastSeq)}` : '';
    return `${proto}//${location.host}/ws${q}`;
  }

  connect() {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    if (this.ws) return;
    this.helloed = false;
    this.sinceUsed = this.lastSeq;
    let ws;
    try {
      ws = new WebSocket(this.url(), webSocketProtocols()); // the token, if any, never in the URL
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      clearTimeout(this.pongTimer); // anything the server sends proves the connection
      this.onMessage(ev.data);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.helloed = false;
      clearTimeout(this.helloTimer);
      this.updateState();
      this.scheduleReconnect();
    };
    ws.onerror = () => { /* a close event follows */ };
    clearTimeout(this.helloTimer);
    this.helloTimer = setTimeout(() => {
      if (this.ws === ws && !this.helloed) this.drop('no hello');
    }, HELLO_TIMEOUT_MS);
  }

  /** Close the current socket (if any) and let the backoff reconnect. */
  drop(reason) {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    this.helloed = false;
    clearTimeout(this.helloTimer);
    try { ws.close(4000, reason); } catch { /* already closing */ }
    this.updateState();
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    if (this.reconnectTimer || this.ws) return;
    const delay = backoffDelay(this.attempt++, 500, 15000);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.connect();
    }, delay);
  }

  reconnectNow() {
    if (this.ws) return;
    this.attempt = 0;
    this.connect();
  }

  /** The credentials changed (a token was entered): open a fresh connection now. */
  restart() {
    const ws = this.ws;
    this.ws = null;
    this.helloed = false;
    clearTimeout(this.helloTimer);
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    if (ws) { try { ws.close(4001, 'new credentials'); } catch { /* already closing */ } }
    this.attempt = 0;
    this.connect();
    this.updateState();
  }

  /** While live: ask the server for a sign of life now and then (it answers pong). */
  heartbeat() {
    clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => {
      const ws = this.ws;
      if (!ws || !this.isLive) return;
      try { ws.send('{"type":"ping"}'); } catch { return; }
      clearTimeout(this.pongTimer);
      this.pongTimer = setTimeout(() => { if (this.ws === ws) this.drop('no pong'); }, PONG_WITHIN_MS);
    }, PING_EVERY_MS);
  }

  onMessage(text) {
    let msg;
    try { msg = JSON.parse(text); } catch { return; }
    const list = Array.isArray(msg) ? msg : [msg];
    for (const m of list) {
      if (m && typeof m === 'object') this.handle(m);
    }
  }

  handle(m) {
    const type = typeof m.type === 'string' ? m.type : '';
    const seq = Number(m.seq);
    if (type === 'hello') {
      this.helloed = true;
      this.heartbeat();
      this.attempt = 0;
      clearTimeout(this.helloTimer);
      this.updateState();
      if (this.sinceUsed == null) this.startSnapshot(seq, false); // first connect
      else if (Number.isFinite(seq) && seq < this.sinceUsed) this.startSnapshot(seq, true); // server lost history
      else if (this.syncing && this.inFlightGen == null) this.runSnapshot(this.snapGen); // a failed snapshot: retry now
      // Otherwise the server now replays everything after `since`.
      this.onHello();
      return;
    }
    if (type === 'reset') {
      this.startSnapshot(seq, false);
      return;
    }
    if (!type.startsWith('job.')) return; // unknown message kinds are ignored
    if (this.syncing) this.buffer.push(m);
    else this.applyOne(m);
  }

  applyOne(m) {
    const seq = Number(m.seq);
    if (Number.isFinite(seq)) {
      if (this.lastSeq != null && seq <= this.lastSeq) return; // duplicate
      this.setSeq(seq);
    }
    this.applyEvent(m);
  }

  setSeq(seq) {
    this.lastSeq = seq;
  }

  /** "Try again": re-run a failed snapshot now instead of waiting for its timer. */
  retryNow() {
    if (this.syncing && this.inFlightGen == null) this.runSnapshot(this.snapGen);
    else if (!this.ws) this.reconnectNow();
  }

  startSnapshot(seq, clear) {
    if (Number.isFinite(seq)) this.setSeq(seq);
    this.syncing = true;
    this.snapClear = this.snapClear || clear;
    this.snapFails = 0;
    this.buffer = this.buffer.filter((e) => !(Number(e.seq) <= this.lastSeq));
    this.runSnapshot(++this.snapGen);
  }

  async runSnapshot(gen) {
    clearTimeout(this.snapTimer);
    this.inFlightGen = gen;
    try {
      await this.loadSnapshot({ clear: this.snapClear });
    } catch (err) {
      if (this.inFlightGen === gen) this.inFlightGen = null;
      if (gen !== this.snapGen) return;
      // Keep buffering (nothing is lost) and try again.
      this.onSnapshotError(err);
      this.snapTimer = setTimeout(() => {
        if (gen === this.snapGen) this.runSnapshot(gen);
      }, 500 + backoffDelay(this.snapFails++, 1000, 15000));
      return;
    }
    if (this.inFlightGen === gen) this.inFlightGen = null;
    if (gen !== this.snapGen) return; // a newer snapshot superseded this one
    this.snapClear = false;
    this.syncing = false;
    const buffered = this.buffer.sort((a, b) => (Number(a.seq) || 0) - (Number(b.seq) || 0));
    this.buffer = [];
    for (const m of buffered) this.applyOne(m);
  }
}
