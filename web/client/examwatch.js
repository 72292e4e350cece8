// examwatch client library: one ES module, no dependencies.
//
// Every exam client needs the same hard parts, and gets them wrong when it
// writes them itself: reconnecting with capped exponential backoff and full
// jitter, resuming after a reconnect (students with `previous_session` and
// `resume`, teachers with a fresh snapshot then `resume` for what they
// missed), and never losing an answer: answers and the submit go to an
// outbox kept in localStorage and are re-sent until the server acks them
// (an ack means "committed to the database", docs/PROTOCOL.md 2.1), so
// closing the tab or losing Wi-Fi loses nothing. The teacher dashboard uses
// this very module for its own connection. API and example: docs/CLIENT.md.

const PROTOCOL = 'examwatch.v1';

/** The claims of a JWT, decoded without verification (the server verifies). */
export function decodeToken(token) {
  try {
    const part = String(token).split('.')[1] || '';
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const json = decodeURIComponent(
      Array.from(atob(b64), (c) => '%' + c.charCodeAt(0).toString(16).padStart(2, '0')).join(''),
    );
    const claims = JSON.parse(json);
    return claims && typeof claims === 'object' ? claims : {};
  } catch {
    return {};
  }
}

/** Full-jitter exponential backoff: uniform in [0, min(cap, base * 2^attempt)]. */
export function backoffDelay(attempt, baseMs, capMs, random = Math.random) {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/** A unique id for an answer (the server stores each id once). */
function newId() {
  if (globalThis.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
}

/** Close codes after which reconnecting cannot help (PROTOCOL.md 5). */
const FATAL_CLOSES = new Set([1002, 1003, 1007, 4001]);
/** Close codes that ask for a long backoff before trying again. */
const SLOW_CLOSES = new Set([1008, 4009]);

export class ExamwatchClient extends EventTarget {
  /**
   * @param {object} o
   * @param {string} o.exam   exam id
   * @param {string} o.token  JWT (sent as `access_token`, browsers cannot set headers)
   * @param {string} [o.url]  WebSocket URL (default: this page's origin)
   * @param {Storage} [o.storage] where the outbox lives (default: localStorage)
   * @param {number} [o.backoffBaseMs=500] @param {number} [o.backoffCapMs=30000]
   * @param {number} [o.heartbeatMs=15000] heartbeat period; no ack within it: reconnect
   * @param {number} [o.retryMs=10000] re-send unacked outbox entries this often while live
   */
  constructor(o) {
    super();
    this.exam = o.exam;
    this.token = o.token;
    const claims = decodeToken(o.token);
    this.userId = String(claims.sub ?? '');
    this.role = claims.role === 'student' ? 'student' : 'watcher';
    const scheme = globalThis.location?.protocol === 'https:' ? 'wss' : 'ws';
    this.url = o.url ?? `${scheme}://${globalThis.location?.host}/v1/exams/${encodeURIComponent(o.exam)}/ws`;
    this.storage = o.storage ?? globalThis.localStorage;
    this.baseMs = o.backoffBaseMs ?? 500;
    this.capMs = o.backoffCapMs ?? 30000;
    this.heartbeatMs = o.heartbeatMs ?? 15000;
    this.retryMs = o.retryMs ?? 10000;
    /** 'idle' | 'connecting' | 'live' | 'offline' | 'closed' */
    this.state = 'idle';
    /** Estimated server clock minus local clock, in ms. */
    this.clockOffsetMs = 0;
    /**
     * Highest event seq seen (teachers: every event; students: their
     * welcome's, then announcements'); null until the first welcome or
     * snapshot. Students keep it in storage, to resume across page loads.
     */
    const stored = this._load('seq');
    this.lastSeq = stored === null || Number.isNaN(Number(stored)) ? null : Number(stored);
    /** Teachers: the seq the current view reflects (PROTOCOL.md 4.1). */
    this.appliedSeq = 0;
    this.sessionId = this._load('session');
    this.outbox = this._loadOutbox();
    this._attempt = 0;
    this._ws = null;
    this._timers = new Set();
    this._pendingPing = null;
    this._onOnline = () => this.state === 'offline' && this.reconnectNow();
    this._invalidated = false;
  }

  // ---- public API -------------------------------------------------------

  /** Opens the connection; reconnects on its own until close(). */
  connect() {
    if (this.state !== 'idle' && this.state !== 'closed') return this;
    globalThis.addEventListener?.('online', this._onOnline);
    this._open();
    return this;
  }

  /** Closes for good (no reconnect). The outbox stays stored for next time. */
  close() {
    this._setState('closed', {});
    globalThis.removeEventListener?.('online', this._onOnline);
    this._clearTimers();
    if (this._ws) this._ws.close(1000);
    this._ws = null;
  }

  /** Skips the backoff wait (e.g. after the browser reports it is online). */
  reconnectNow() {
    if (this.state === 'closed') return;
    this._clearTimers();
    if (this._ws) this._ws.close(1000);
    this._ws = null;
    this._open();
  }

  /** Server time now, as a Date, from the estimated clock offset. */
  serverNow() {
    return new Date(Date.now() + this.clockOffsetMs);
  }

  /**
   * Stores an answer in the outbox and sends it; re-sent until acked (the
   * ack means it is in the database). Returns the answer's id.
   */
  answer(question, value) {
    const id = newId();
    this._enqueue({ type: 'answer', id, question, value, ref: `a:${id}` });
    return id;
  }

  /** Submits the exam (durable like answers; sent after the answers before it). */
  submit() {
    if (this.outbox.some((m) => m.type === 'submit')) return;
    this._enqueue({ type: 'submit', ref: `submit:${newId()}` });
  }

  /** Answers and submit not yet acked. */
  pending() {
    return this.outbox.slice();
  }

  /** Sends a non-durable message (progress, focus, activity, announce, …) if live. */
  send(msg) {
    if (this.state !== 'live' || !this._ws) return false;
    this._ws.send(JSON.stringify(msg));
    return true;
  }

  progress(question, answered) {
    return this.send({ type: 'progress', question, answered });
  }

  focus(lost) {
    return this.send({ type: 'focus', state: lost ? 'lost' : 'gained' });
  }

  activity(active) {
    return this.send({ type: 'activity', state: active ? 'active' : 'idle' });
  }

  /**
   * Students: reports the page losing and regaining focus (tab switch,
   * window change) as `focus` messages, and the current state after every
   * reconnect. Returns a function that stops watching.
   */
  watchFocus(doc = globalThis.document, win = globalThis.window) {
    let lost = false;
    const report = (nowLost) => {
      if (nowLost === lost) return;
      lost = nowLost;
      this.focus(lost);
    };
    const onBlur = () => report(true);
    const onFocus = () => report(false);
    const onVisibility = () => report(doc.visibilityState === 'hidden');
    const onLive = (e) => e.detail.state === 'live' && lost && this.focus(true);
    win.addEventListener('blur', onBlur);
    win.addEventListener('focus', onFocus);
    doc.addEventListener('visibilitychange', onVisibility);
    this.addEventListener('connection', onLive);
    return () => {
      win.removeEventListener('blur', onBlur);
      win.removeEventListener('focus', onFocus);
      doc.removeEventListener('visibilitychange', onVisibility);
      this.removeEventListener('connection', onLive);
    };
  }

  /** Teachers: sends an announcement; resolves on its ack, rejects on error. */
  announce(text) {
    const ref = `ann:${newId()}`;
    return new Promise((resolve, reject) => {
      if (!this.send({ type: 'announce', text, ref })) {
        reject(new Error('not connected'));
        return;
      }
      const done = (ev) => {
        if (ev.detail.ref !== ref) return;
        this.removeEventListener('ack', done);
        this.removeEventListener('error', done);
        if (ev.type === 'ack') resolve();
        else reject(new Error(ev.detail.message || ev.detail.code));
      };
      this.addEventListener('ack', done);
      this.addEventListener('error', done);
    });
  }

  // ---- connection -------------------------------------------------------

  _open() {
    this._setState('connecting', { attempt: this._attempt });
    let url = `${this.url}?access_token=${encodeURIComponent(this.token)}`;
    if (this.role === 'student' && this.sessionId) {
      url += `&previous_session=${encodeURIComponent(this.sessionId)}`;
    }
    let ws;
    try {
      ws = new WebSocket(url, PROTOCOL);
    } catch (e) {
      this._scheduleReconnect(0, String(e));
      return;
    }
    this._ws = ws;
    ws.onmessage = (e) => this._onMessage(e.data);
    ws.onclose = (e) => {
      if (this._ws !== ws) return;
      this._ws = null;
      this._clearTimers();
      this._scheduleReconnect(e.code, e.reason);
    };
  }

  _scheduleReconnect(code, reason) {
    if (this.state === 'closed') return;
    if (FATAL_CLOSES.has(code)) {
      if (code === 4001 && !this._invalidated) {
        this._invalidated = true;
        this._emit('session_invalidated', { reason: 'second_session', code });
      }
      this._setState('closed', { code, reason });
      return;
    }
    const attempt = SLOW_CLOSES.has(code) ? Math.max(this._attempt, 8) : this._attempt;
    const delayMs = backoffDelay(attempt, this.baseMs, this.capMs);
    this._attempt += 1;
    this._setState('offline', { code, reason, delayMs, attempt: this._attempt });
    this._later(() => this._open(), delayMs);
  }

  /** Live again: reset backoff, start heartbeats, resume, flush the outbox. */
  _live(detail) {
    this._attempt = 0;
    this._setState('live', detail);
    this._every(() => this._heartbeat(), this.heartbeatMs);
    this._every(() => this._flush(this.retryMs), this.retryMs);
  }

  _heartbeat() {
    if (this._pendingPing) {
      // The previous heartbeat was never acked: the connection is dead
      // even though the browser has not noticed yet.
      this._pendingPing = null;
      if (this._ws) this._ws.close(4000, 'heartbeat timeout');
      return;
    }
    this._pendingPing = { ref: `hb:${newId()}`, sentAt: performance.now() };
    this.send({ type: 'heartbeat', ref: this._pendingPing.ref });
  }

  _onMessage(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    switch (msg.type) {
      case 'welcome':
        this.sessionId = msg.session_id;
        this._store('session', msg.session_id);
        this._syncClock(Date.parse(msg.server_time));
        this._emit('welcome', msg);
        this._emit('status', { student: msg.student, cause: 'welcome' });
        this._live({ sessionId: msg.session_id });
        // The announcements this client missed, then everything unacked.
        if (this.lastSeq !== null) this.send({ type: 'resume', last_seq: this.lastSeq });
        else this._setSeq(msg.last_seq);
        this._flush(0);
        break;
      case 'snapshot': {
        const missedFrom = this.lastSeq;
        this.appliedSeq = msg.seq;
        this._syncClockOverHttp();
        this._emit('snapshot', msg);
        if (this.state !== 'live') {
          this._live({});
          // Events between what we saw and this snapshot: already in the
          // snapshot, but a dashboard lists the alerts it missed.
          if (missedFrom !== null && missedFrom < msg.seq) this.send({ type: 'resume', last_seq: missedFrom });
        }
        this._setSeq(msg.seq);
        break;
      }
      case 'student':
      case 'alert':
      case 'announcement': {
        const stale = this.role === 'watcher' ? msg.seq <= this.appliedSeq : msg.seq <= (this.lastSeq ?? 0);
        if (!stale && this.role === 'watcher') this.appliedSeq = msg.seq;
        const detail = { ...msg, stale };
        this._emit('event', detail);
        if (msg.type === 'student' && !stale) this._emit('status', detail);
        if (msg.type === 'alert') this._emit('alert', detail);
        if (msg.type === 'announcement' && !stale) this._emit('announcement', detail);
        this._setSeq(msg.seq);
        break;
      }
      case 'ack':
        this._onAck(msg.ref);
        break;
      case 'error':
        this._onError(msg);
        break;
      case 'session_invalidated':
        this._invalidated = true;
        this._emit('session_invalidated', msg);
        break;
      default:
        this._emit('message', msg);
    }
  }

  _onAck(ref) {
    if (this._pendingPing && this._pendingPing.ref === ref) {
      this._rtt = performance.now() - this._pendingPing.sentAt;
      this._pendingPing = null;
      return;
    }
    const i = this.outbox.findIndex((m) => m.ref === ref);
    if (i >= 0) {
      const [m] = this.outbox.splice(i, 1);
      this._saveOutbox();
      this._emit('ack', { ref, message: m });
      this._emit('outbox', { pending: this.outbox.length });
      return;
    }
    this._emit('ack', { ref });
  }

  _onError(msg) {
    const i = this.outbox.findIndex((m) => m.ref === msg.ref);
    // storage_busy: keep it, the retry timer re-sends it. Any other error
    // for an outbox entry (already_submitted, not_stored, invalid_message)
    // will not change by re-sending: drop it and tell the page.
    if (i >= 0 && msg.code !== 'storage_busy') {
      this.outbox.splice(i, 1);
      this._saveOutbox();
      this._emit('outbox', { pending: this.outbox.length });
    }
    this._emit('error', msg);
  }

  // ---- outbox -----------------------------------------------------------

  _enqueue(m) {
    m.sentAt = 0;
    this.outbox.push(m);
    this._saveOutbox();
    this._emit('outbox', { pending: this.outbox.length });
    this._flush(0);
  }

  /** (Re-)sends every outbox entry last sent more than `olderThanMs` ago. */
  _flush(olderThanMs) {
    if (this.state !== 'live') return;
    const now = Date.now();
    for (const m of this.outbox) {
      if (olderThanMs && now - m.sentAt < olderThanMs) continue;
      const { sentAt: _unused, ...wire } = m;
      if (this.send(wire)) m.sentAt = now;
    }
  }

  _key(what) {
    return `examwatch:${what}:${this.exam}:${this.userId}`;
  }
  _load(what) {
    try {
      return this.storage?.getItem(this._key(what)) ?? null;
    } catch {
      return null;
    }
  }
  _store(what, value) {
    try {
      this.storage?.setItem(this._key(what), String(value));
    } catch {
      // Storage full or forbidden: the outbox still works in memory.
    }
  }
  _loadOutbox() {
    if (this.role !== 'student') return [];
    try {
      const list = JSON.parse(this._load('outbox') ?? '[]');
      return Array.isArray(list) ? list.map((m) => ({ ...m, sentAt: 0 })) : [];
    } catch {
      return [];
    }
  }
  _saveOutbox() {
    this._store('outbox', JSON.stringify(this.outbox.map(({ sentAt: _unused, ...m }) => m)));
  }

  // ---- clock, seq, helpers ---------------------------------------------

  _syncClock(serverMs) {
    if (!Number.isFinite(serverMs)) return;
    // The welcome left the server about half a round trip ago.
    this.clockOffsetMs = serverMs + (this._rtt ?? 0) / 2 - Date.now();
    this._emit('clock', { offsetMs: this.clockOffsetMs });
  }

  /** Watchers get no `server_time`; the HTTP Date header (1 s resolution) will do. */
  async _syncClockOverHttp() {
    try {
      const httpUrl = this.url.replace(/^ws/, 'http').replace(/\/v1\/exams\/.*$/, '/healthz');
      const t0 = Date.now();
      const res = await fetch(httpUrl, { cache: 'no-store' });
      const date = Date.parse(res.headers.get('date') ?? '');
      if (Number.isFinite(date)) this._syncClock(date + 500 - (Date.now() - t0) / 2);
    } catch {
      // Keep the previous estimate.
    }
  }

  _setSeq(seq) {
    if (Number.isFinite(seq) && (this.lastSeq === null || seq > this.lastSeq)) {
      this.lastSeq = seq;
      if (this.role === 'student') this._store('seq', seq);
    }
  }

  _setState(state, detail) {
    this.state = state;
    this._emit('connection', { state, ...detail });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _later(fn, ms) {
    const t = setTimeout(() => {
      this._timers.delete(t);
      fn();
    }, ms);
    this._timers.add(t);
  }

  _every(fn, ms) {
    const t = setInterval(fn, ms);
    this._timers.add(t);
  }

  _clearTimers() {
    for (const t of this._timers) {
      clearTimeout(t);
      clearInterval(t);
    }
    this._timers.clear();
    this._pendingPing = null;
  }
}
