// examwatch client library: one ES module, no dependencies.
//
// Every exam client needs the same hard parts, and gets them wrong when it
// writes them itself: reconnecting with capped exponential backoff and full
// jitter, resuming after a reconnect (students with `previous_session` and
// `resume`, teachers with `?last_seq=`, which replays what they missed or
// sends a snapshot), and never losing an answer: answers and the submit go
// to an outbox kept in localStorage (shared by the student's tabs) and are
// re-sent, paced to stay within the server's rate limit, until the server
// acks them (an ack means "committed to the database", docs/PROTOCOL.md
// 2.1), so closing the tab or losing Wi-Fi loses nothing; what the server
// refuses for good is reported, never dropped silently. The teacher
// dashboard uses this very module for its own connection. API and example:
// docs/CLIENT.md.
//
// It also keeps what a student must see of the exam itself (PROTOCOL.md
// 4.13, 4.14): the phase, their own deadline and whether they are paused,
// from `welcome` and every `exam_update`, with the time left counted from
// the server's clock (`remaining()`), never from the browser's alone; the
// waiting room and pauses hold the outbox (the server would refuse the
// answers; they go out once the exam runs); private messages, a
// teacher's `terminate` and a `deny` are events, each acknowledged with
// `received {id}` as the protocol asks; after close 4003 it stops instead
// of reconnecting; and the end of their time (the server's `time_up`, the
// exam ended, an `exam_ended` refusal, or the deadline passing on the
// server's clock) is one `timeup` event.
//
// Tokens expire: `refresh(token)` hands the live socket a new one (the
// server closes with 4401 at the old token's `exp` plus its grace
// otherwise) and uses it for every later ticket; a 4401 is a
// `token_expired` event and a reconnect (with whatever token it has by
// then), a revoked token (close 4403, or a ticket refused `token_revoked`)
// a `token_revoked` event and a stop (PROTOCOL.md 1.2.3).
//
// Students whose network refuses WebSocket upgrades (or swallows what
// follows them) while plain HTTP works fall back by themselves to the HTTP
// transport: an SSE stream for the server's frames and batched POSTs for
// theirs, carrying the very same session (outbox, acks, resume), and move
// back to the socket once a background attempt gets through. The session
// logic is written once, above two transports that only carry frames
// (SocketLink, HttpLink); `transport` says which one is in use.

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

/** The server's default frame limit (PROTOCOL.md 1.7, `limits.max_message_bytes`). */
export const MAX_MESSAGE_BYTES = 16384;

/** Close codes after which reconnecting cannot help (PROTOCOL.md 5). */
const FATAL_CLOSES = new Set([1002, 1003, 1007, 4001, 4003, 4403]);
/** Close 4003's reason for a `deny` (PROTOCOL.md 5); anything else is a `terminate`. */
const REVOKED_REASON = 'access revoked';
/** Ticket refusals (403) that stay until a teacher's `allow`: stop, do not retry. */
const STOPPING_REFUSALS = new Set(['terminated', 'access_revoked']);
/** The longest `raise_hand` text the server takes, in characters (PROTOCOL.md 2). */
export const MAX_HAND_TEXT = 500;
/** The exam's view before the server described it. */
const UNKNOWN_EXAM = Object.freeze({ phase: null, deadline: null, paused: false, opensAt: null, closesAt: null, extraMinutes: 0, serverTime: null, cause: null, id: null });
/** Phases in which nothing more is taken (PROTOCOL.md 4.13). */
const OVER_PHASES = new Set(['ended', 'grading']);
/** Close codes that ask for a long backoff before trying again. */
const SLOW_CLOSES = new Set([1008, 4009]);
/**
 * Close 1012, "service restart": a rolling restart closes an instance's
 * sockets one by one over its drain window (PROTOCOL.md 5). Not a failure:
 * the client waits a random share of `restartJitterMs`, so the clients of
 * one instance do not all reconnect to the others in the same second, and
 * its backoff does not grow.
 */
const RESTART_CLOSE = 1012;
/**
 * Outbox pacing. The server allows 20 messages/s with bursts of 40, and
 * closes the socket (1008) at the 10th refused message in a minute; a page
 * re-sending a long outbox at once would be refused before the acks of the
 * accepted answers arrive, and do it again after every reconnect. So the
 * outbox goes out at most 10 a second, with at most 10 entries waiting for
 * their ack, leaving the other half of the rate to progress, focus and
 * heartbeats.
 */
const OUTBOX_PER_SECOND = 10;
const MAX_IN_FLIGHT = 10;

/** Bytes of `text` in UTF-8 (what the server's size limit counts). */
function utf8Length(text) {
  return new TextEncoder().encode(text).length;
}

/** An outbox entry as sent and stored: without the in-memory bookkeeping. */
function wire(m) {
  const { sentAt: _s, retryAt: _r, ...w } = m;
  return w;
}

// ---- transports -----------------------------------------------------------
//
// The session logic (outbox, acks by `ref`, resume, `previous_session`,
// welcome, exam updates, close codes) lives in ExamwatchClient and is
// written once. A transport only carries frames: `send(text)` takes a client
// message, `onframe(frame)` gives a server frame (a JSON string, or an
// object for a result the HTTP transport got back from a POST), `onopen()`
// says the connection is up, `onclose({code, reason, opened, ...})` says it
// ended, with the socket's close code (PROTOCOL.md 5). `close(code, reason)`
// ends it from our side without any further callback.

/**
 * The WebSocket (PROTOCOL.md 1). `opened` is true once the handshake
 * completed or a frame arrived: a close before that (the browser reports
 * 1006) is a failed handshake, which is what counts toward the HTTP fallback.
 */
class SocketLink {
  constructor(url, protocol) {
    this.kind = 'websocket';
    /** Resume is a `resume` message after the welcome (not a header). */
    this.resumesAtOpen = false;
    this.opened = false;
    this.onopen = this.onframe = this.onclose = null;
    const ws = new WebSocket(url, protocol);
    this._ws = ws;
    ws.onopen = () => {
      this.opened = true;
      this.onopen?.();
    };
    ws.onmessage = (e) => {
      this.opened = true;
      this.onframe?.(e.data);
    };
    ws.onclose = (e) => {
      const onclose = this.onclose;
      this._forget();
      onclose?.({ code: e.code, reason: e.reason, opened: this.opened });
    };
  }

  send(text) {
    this._ws.send(text);
  }

  close(code, reason) {
    const ws = this._ws;
    this._forget();
    try {
      ws.close(code, reason);
    } catch {
      // Already closed, or a code the browser refuses: the socket is gone anyway.
    }
  }

  _forget() {
    this.onopen = this.onframe = this.onclose = null;
    this._ws.onopen = this._ws.onmessage = this._ws.onclose = null;
  }
}

/** Whole-request refusals of the HTTP transport that stop the client, as the socket's close codes. */
const HTTP_STOPS = { terminated: [4003, 'terminated'], access_revoked: [4003, REVOKED_REASON], token_revoked: [4403, 'token revoked'] };

/**
 * The HTTP transport (PROTOCOL.md 8, the student's session stream): frames
 * from the server on an SSE stream, `GET me/events?transport=http`, read
 * with `fetch` and a streaming body reader rather than `EventSource`, which
 * can set neither `Authorization` nor `Last-Event-ID`, reconnects on its own
 * behind our back, and hides the stream's `event: close`. Messages to the
 * server go as JSON arrays to `POST me/messages` with the stream's session
 * id (`X-Examwatch-Session`): what is sent while a POST is out waits and
 * goes in the next one (one POST in flight, at most `batchMax` messages),
 * and the POST's results, one per message in order, are the frames the
 * socket would have sent back (`ack`, `error`). A 409 `no_session` ends the
 * transport (the session opens a new stream); a 429 waits `Retry-After` and
 * sends the batch again; a network error keeps the batch and sends it again
 * after a growing wait (re-sending is harmless: answers are stored by id,
 * PROTOCOL.md 2.1). A resume is the `Last-Event-ID` header of the stream
 * request, so `resumesAtOpen` is true.
 */
class HttpLink {
  /**
   * @param {object} o
   * @param {Function} o.fetch
   * @param {string} o.base      `…/v1/exams/{exam}` (http or https)
   * @param {Function} o.token   the current JWT (a refresh changes it)
   * @param {string|null} o.previousSession @param {number|null} o.lastEventId
   * @param {number} o.batchMax  @param {number} o.idleMs a stream silent this long is dead
   */
  constructor(o) {
    this.kind = 'http';
    this.resumesAtOpen = true;
    this.opened = false;
    this.onopen = this.onframe = this.onclose = null;
    this._o = o;
    this._sessionId = null;
    this.handover = null;
    /** Client messages not yet POSTed, as objects. */
    this._queue = [];
    this._posting = false;
    this._postFailures = 0;
    this._batchMax = o.batchMax;
    this._abort = new AbortController();
    this._timers = new Set();
    this._closed = false;
    /** The stream's `event: close` (the socket's close code), if it sent one. */
    this._closeFrame = null;
    // Not from the constructor: a fetch that throws at once must reach an
    // `onclose` that is set by then.
    queueMicrotask(() => this._open());
  }

  send(text) {
    if (this._closed) return;
    this._queue.push(JSON.parse(text));
    if (this._queue.length === 1) queueMicrotask(() => this._flush());
  }

  close() {
    this._closed = true;
    this.onopen = this.onframe = this.onclose = null;
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
    this._abort.abort();
  }

  /** Ends the transport from here, telling the session (once). */
  _end(detail) {
    if (this._closed) return;
    const onclose = this.onclose;
    this.close();
    onclose?.({ opened: this.opened, ...detail });
  }

  _later(fn, ms) {
    const t = setTimeout(() => {
      this._timers.delete(t);
      fn();
    }, ms);
    this._timers.add(t);
    return t;
  }

  _headers(extra = {}) {
    return { authorization: `Bearer ${this._o.token()}`, ...extra };
  }

  async _open() {
    const o = this._o;
    const query = new URLSearchParams({ transport: 'http' });
    if (o.previousSession) query.set('previous_session', o.previousSession);
    if (o.previousSession && o.handover) query.set('handover', o.handover);
    const headers = this._headers({ accept: 'text/event-stream' });
    if (Number.isFinite(o.lastEventId)) headers['last-event-id'] = String(o.lastEventId);
    let res;
    try {
      res = await o.fetch(`${o.base}/me/events?${query}`, { headers, cache: 'no-store', signal: this._abort.signal });
    } catch (e) {
      return this._end({ code: 1006, reason: `stream: ${e?.message ?? e}` });
    }
    if (this._closed) return;
    if (!res.ok || !res.body) {
      const body = await res.json().catch(() => ({}));
      const code = body?.error?.code ?? '';
      const stop = res.status === 403 ? HTTP_STOPS[code] : null;
      return this._end({
        code: stop ? stop[0] : res.status === 429 ? 1008 : 1006,
        reason: stop ? stop[1] : `stream refused: ${res.status} ${code}`.trim(),
        refusal: { status: res.status, code },
        // A server without session streams (404, 400 for the parameter).
        unsupported: res.status === 404 || res.status === 400 || res.status === 405,
      });
    }
    this.opened = true;
    /** The stream's handover token (PROTOCOL.md 8.4): a later connection of this client presents it. */
    this.handover = res.headers?.get?.('x-examwatch-handover') ?? null;
    this.onopen?.();
    await this._read(res.body.getReader());
  }

  /** Reads the SSE stream until it ends, dispatching each event (WHATWG SSE parsing). */
  async _read(reader) {
    const decoder = new TextDecoder();
    let buf = '';
    let event = { type: '', data: [] };
    let idle = null;
    const alive = () => {
      if (idle !== null) {
        clearTimeout(idle);
        this._timers.delete(idle);
      }
      idle = this._later(() => this._end({ code: 4000, reason: 'stream silent' }), this._o.idleMs);
    };
    const line = (text) => {
      if (text === '') {
        if (event.data.length) this._dispatch(event.type || 'message', event.data.join('\n'));
        event = { type: '', data: [] };
        return;
      }
      if (text.startsWith(':')) return; // a comment: the `: ping` heartbeat
      const colon = text.indexOf(':');
      const field = colon < 0 ? text : text.slice(0, colon);
      let value = colon < 0 ? '' : text.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') event.type = value;
      else if (field === 'data') event.data.push(value);
      // `id` is the seq the stream delivered; the session keeps its own (`lastSeq`).
    };
    alive();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (this._closed) return;
        if (done) break;
        alive();
        buf += decoder.decode(value, { stream: true });
        for (;;) {
          const i = buf.search(/[\r\n]/);
          if (i < 0) break;
          // A CR at the end of a chunk may be the first half of a CRLF.
          if (buf[i] === '\r' && i === buf.length - 1) break;
          const next = buf[i] === '\r' && buf[i + 1] === '\n' ? i + 2 : i + 1;
          line(buf.slice(0, i));
          buf = buf.slice(next);
          if (this._closed) return;
        }
      }
    } catch (e) {
      return this._end({ code: 1006, reason: `stream: ${e?.message ?? e}` });
    }
    const c = this._closeFrame;
    this._end(c ? { code: c.code, reason: c.reason } : { code: 1006, reason: 'stream ended' });
  }

  _dispatch(type, data) {
    if (type === 'close') {
      try {
        const c = JSON.parse(data);
        this._closeFrame = { code: Number(c.code) || 1006, reason: String(c.reason ?? '') };
      } catch {
        this._closeFrame = { code: 1006, reason: 'stream closed' };
      }
      return;
    }
    if (!this._sessionId) {
      // The first event of a session stream is the welcome; a server
      // without session streams sends a listener stream (its `exam_update`).
      let msg = null;
      try {
        msg = JSON.parse(data);
      } catch {
        // not JSON: not our stream
      }
      if (msg?.type !== 'welcome' || typeof msg.session_id !== 'string') {
        return this._end({ code: 1006, reason: 'no session stream here', unsupported: true });
      }
      this._sessionId = msg.session_id;
      this.onframe?.(data);
      return this._flush();
    }
    this.onframe?.(data);
  }

  /** POSTs what is queued, one request at a time. */
  async _flush() {
    if (this._closed || this._posting || !this._sessionId || this._queue.length === 0) return;
    const batch = this._queue.splice(0, this._batchMax);
    this._posting = true;
    let retryIn = null;
    try {
      const res = await this._o.fetch(`${this._o.base}/me/messages`, {
        method: 'POST',
        headers: this._headers({ 'content-type': 'application/json', 'x-examwatch-session': this._sessionId }),
        body: JSON.stringify(batch),
        cache: 'no-store',
        signal: this._abort.signal,
      });
      if (this._closed) return;
      retryIn = await this._results(res, batch);
    } catch (e) {
      if (this._closed) return;
      // Network error: nothing is known of this batch; it goes again.
      this._postFailures += 1;
      retryIn = Math.min(10000, 250 * 2 ** Math.min(this._postFailures, 6));
      this._queue.unshift(...batch);
    } finally {
      this._posting = false;
    }
    if (this._closed) return;
    if (retryIn !== null) this._later(() => this._flush(), retryIn);
    else this._flush();
  }

  /** Handles a POST's answer; returns a wait before the next POST, or null. */
  async _results(res, batch) {
    const body = await res.json().catch(() => null);
    if (this._closed) return null;
    if (res.ok && Array.isArray(body)) {
      this._postFailures = 0;
      for (const r of body) {
        // A message without `ref` (progress, focus, received) still gets a
        // result so positions match; the socket would have said nothing.
        if (r && typeof r === 'object' && !(r.type === 'ack' && (r.ref === undefined || r.ref === null))) this.onframe?.(r);
      }
      return null;
    }
    const code = body?.error?.code ?? '';
    if (res.status === 429) {
      this._queue.unshift(...batch);
      const s = Number(res.headers?.get?.('retry-after'));
      return Number.isFinite(s) && s > 0 ? Math.min(60000, s * 1000) : 1000;
    }
    if (res.status === 413 || res.status === 422) {
      // Too big or too many for this server: smaller batches; a single
      // message refused is refused for good (the socket would close 1009).
      if (batch.length > 1) {
        this._batchMax = Math.max(1, Math.floor(batch.length / 2));
        this._queue.unshift(...batch);
        return null;
      }
      const [m] = batch;
      const error = { type: 'error', code: res.status === 413 ? 'message_too_big' : 'invalid_message', message: `refused: ${res.status} ${code}`.trim() };
      if (m?.ref !== undefined) error.ref = m.ref;
      this.onframe?.(error);
      return null;
    }
    if (res.status === 409 || res.status === 401) {
      // No such session (any more), or the token ran out: a new stream.
      this._end({ code: res.status === 401 ? 4401 : 1006, reason: `messages refused: ${res.status} ${code}`.trim() });
      return null;
    }
    if (res.status === 403) {
      const stop = HTTP_STOPS[code];
      this._end({ code: stop ? stop[0] : 1008, reason: stop ? stop[1] : `messages refused: 403 ${code}`.trim() });
      return null;
    }
    // 503 shutting_down (the stream's `event: close` 1012 follows), a 5xx,
    // anything else: keep the batch and try again a little later.
    this._postFailures += 1;
    this._queue.unshift(...batch);
    return Math.min(10000, 250 * 2 ** Math.min(this._postFailures, 6));
  }
}

export class ExamwatchClient extends EventTarget {
  /**
   * @param {object} o
   * @param {string} o.exam   exam id
   * @param {string} o.token  JWT: sent in a header to get a connection ticket, never in the socket URL
   * @param {string} [o.url]  WebSocket URL (default: this page's origin)
   * @param {boolean} [o.tickets=true] connect with `?ticket=` from POST /v1/tickets; false: `?access_token=`
   * @param {string} [o.ticketUrl] where to POST for tickets (default: /v1/tickets on the socket URL's host)
   * @param {Function} [o.fetch] the fetch used for tickets (default: globalThis.fetch)
   * @param {number} [o.ticketTimeoutMs=10000] a ticket request taking longer counts as a failed connect
   * @param {Storage} [o.storage] where the outbox lives (default: localStorage)
   * @param {number} [o.backoffBaseMs=500] @param {number} [o.backoffCapMs=30000]
   * @param {number} [o.slowBackoffMs=5000] least wait after close 1008 or 4009
   * @param {number} [o.restartJitterMs=5000] after close 1012 (a rolling restart) reconnect after a random wait in [0, this)
   * @param {number} [o.stableMs=15000] live this long before the backoff starts over
   * @param {number} [o.heartbeatMs=15000] heartbeat period; no ack within it: reconnect
   * @param {number} [o.retryMs=10000] re-send an unacked outbox entry after this long
   * @param {number} [o.announceTimeoutMs=10000] `announce()` rejects without an ack by then
   * @param {number} [o.maxMessageBytes=16384] the server's `limits.max_message_bytes`
   * @param {boolean} [o.httpFallback=true] students: fall back to the HTTP transport when sockets cannot be opened
   * @param {number} [o.wsFailuresBeforeFallback=2] that many failed socket handshakes in a row (while HTTP works) switch to HTTP
   * @param {number} [o.wsOpenTimeoutMs=4000] a student's socket without its welcome by then has failed
   * @param {number} [o.wsRetryMs=5000] @param {number} [o.wsRetryCapMs=60000] on HTTP, try the socket again after this, doubling up to the cap
   * @param {string} [o.httpUrl] the exam's HTTP base, `…/v1/exams/{exam}` (default: from the socket URL)
   * @param {number} [o.httpBatchMax=32] the server's `limits.http_batch_max`
   * @param {number} [o.sseIdleMs=45000] an HTTP event stream silent this long (no event, no `: ping`) is dead
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
    this.tickets = o.tickets ?? true;
    this.ticketUrl = o.ticketUrl ?? this.url.replace(/^ws/, 'http').replace(/\/v1\/exams\/.*$/, '/v1/tickets');
    this._fetch = o.fetch ?? globalThis.fetch?.bind(globalThis);
    this.ticketTimeoutMs = o.ticketTimeoutMs ?? 10000;
    /** Counts connection attempts, so a ticket arriving for a superseded one is dropped. */
    this._opening = 0;
    this.baseMs = o.backoffBaseMs ?? 500;
    this.capMs = o.backoffCapMs ?? 30000;
    this.slowBackoffMs = o.slowBackoffMs ?? 5000;
    this.restartJitterMs = o.restartJitterMs ?? 5000;
    this.stableMs = o.stableMs ?? 15000;
    this.heartbeatMs = o.heartbeatMs ?? 15000;
    this.retryMs = o.retryMs ?? 10000;
    this.announceTimeoutMs = o.announceTimeoutMs ?? 10000;
    this.maxMessageBytes = o.maxMessageBytes ?? MAX_MESSAGE_BYTES;
    this.httpFallback = o.httpFallback ?? true;
    this.wsFailuresBeforeFallback = o.wsFailuresBeforeFallback ?? 2;
    this.wsOpenTimeoutMs = o.wsOpenTimeoutMs ?? 4000;
    this.wsRetryMs = o.wsRetryMs ?? 5000;
    this.wsRetryCapMs = o.wsRetryCapMs ?? 60000;
    this.httpUrl = o.httpUrl ?? `${this.url.replace(/^ws/, 'http').replace(/\/v1\/exams\/.*$/, '')}/v1/exams/${encodeURIComponent(o.exam)}`;
    this.httpBatchMax = o.httpBatchMax ?? 32;
    this.sseIdleMs = o.sseIdleMs ?? 45000;
    /** 'idle' | 'connecting' | 'live' | 'offline' | 'closed' */
    this.state = 'idle';
    /** Estimated server clock minus local clock, in ms. */
    this.clockOffsetMs = 0;
    /**
     * Highest event seq seen (teachers: every event; students: their
     * welcome's, then announcements'); null until the first welcome or
     * snapshot. Students keep it in storage, to resume across page loads.
     */
    const stored = this.role === 'student' ? this._load('seq') : null;
    this.lastSeq = stored === null || Number.isNaN(Number(stored)) ? null : Number(stored);
    /** Teachers: the seq the current view reflects (PROTOCOL.md 4.1). */
    this.appliedSeq = 0;
    /** Teachers: a snapshot was applied, so a reconnect can resume with `?last_seq=`. */
    this._synced = false;
    this.sessionId = this._load('session');
    /** Refs this tab saw acked or set aside: never merged back from storage. */
    this._done = new Set();
    /** Entries the server refused for good (or too big to send), with why. */
    this._rejected = [];
    this.outbox = [];
    this._mergeStored(this._readStoredOutbox());
    this._attempt = 0;
    /** The transport carrying the session now (SocketLink or HttpLink), or null. */
    this._link = null;
    /** `websocket` or `http`: the transport of the last welcome (read as `transport`). */
    this._transport = 'websocket';
    /**
     * Failed socket handshakes in a row while HTTP worked (a ticket was
     * granted for the attempt, or a probe of /healthz answered): at
     * `wsFailuresBeforeFallback` the next attempt is the HTTP transport.
     */
    this._wsFailures = 0;
    /** The server has no HTTP session streams (an older one): never try again. */
    this._httpUnsupported = false;
    /** On HTTP: the background socket attempt under way, and how many failed. */
    this._probe = null;
    this._probeFailures = 0;
    /** The last HTTP session's handover token, `{session, token}` (PROTOCOL.md 8.4), or null. */
    this._handover = null;
    /** When a background socket that presented the token was given up (ms), or null. */
    this._movedAt = null;
    /** Bumped when a background attempt is dropped, so one still asking for its ticket gives up. */
    this._probeGen = 0;
    this._timers = new Set();
    this._pumpTimer = null;
    this._pendingPing = null;
    this._syncRef = null;
    /** Teachers: the parts of a snapshot received so far (PROTOCOL.md 4.12). */
    this._snapshotParts = null;
    /** Outbox send budget (token bucket) and the pause after `rate_limited`. */
    this._tokens = OUTBOX_PER_SECOND;
    this._tokensAt = Date.now();
    this._pauseUntil = 0;
    this._rateLimited = 0;
    /** announce() promises waiting for their ack, by ref. */
    this._announces = new Map();
    this._onOnline = () => this.state === 'offline' && this.reconnectNow();
    this._onStorage = (e) => this._storageChanged(e);
    this._invalidated = false;
    /**
     * The exam as the server last described it to this client (`welcome`,
     * `exam_update`): phase, deadline and pause, with the server time they
     * were true at. Null until the first.
     */
    this._examView = null;
    /**
     * Why this student's exam is over, as the server said it: `time_up`,
     * `ended` (the phase), `exam_ended` (a refusal); null while it is not.
     * Unlike a deadline passing on our clock estimate, this never reverts.
     */
    this._over = null;
    /** A `timeup` was emitted and not taken back by a later update. */
    this._timeUpSent = false;
    /** `terminated` or `revoked` once a teacher ended this student's exam or access. */
    this._stopped = null;
    /** Action ids already reported (the server re-sends until `received`). */
    this._seenActions = new Set();
    /** Fires at the deadline (on the server's clock); survives reconnects. */
    this._deadlineTimer = null;
  }

  // ---- public API -------------------------------------------------------

  /** Opens the connection; reconnects on its own until close(). */
  connect() {
    if (this.state !== 'idle' && this.state !== 'closed') return this;
    // Taken over, terminated or denied: connecting again cannot help.
    if (this._invalidated || this._stopped) return this;
    globalThis.addEventListener?.('online', this._onOnline);
    globalThis.addEventListener?.('storage', this._onStorage);
    this._open();
    return this;
  }

  /** Closes for good (no reconnect). The outbox stays stored for next time. */
  close() {
    globalThis.removeEventListener?.('online', this._onOnline);
    globalThis.removeEventListener?.('storage', this._onStorage);
    clearTimeout(this._deadlineTimer);
    this._deadlineTimer = null;
    this._detach(1000);
    this._connectionLost('closed');
    this._setState('closed', {});
  }

  /** Skips the backoff wait (e.g. after the browser reports it is online). */
  reconnectNow() {
    if (this.state === 'closed') return;
    this._detach(1000);
    this._connectionLost('reconnecting');
    this._open();
  }

  /** Server time now, as a Date, from the estimated clock offset. */
  serverNow() {
    return new Date(Date.now() + this.clockOffsetMs);
  }

  /**
   * The exam as this student sees it, or null before the first `welcome`:
   * `{phase, deadline, paused, opensAt, closesAt, extraMinutes, cause, id,
   * remainingMs, waiting, running, timeUp, over, stopped}`. Times are ms
   * since the epoch (or null); `deadline` is this student's own (null while
   * untimed or not started); `remainingMs` is `remaining()`; `waiting` is
   * the waiting room (phase `scheduled`); `running` means answers are taken
   * now (in progress, not paused, time not up, not stopped); `over` is why
   * the server says their exam is over (`time_up`, `ended`, `exam_ended`)
   * or null; `stopped` is `terminated` or `revoked` or null.
   */
  examState() {
    // Stopped before any welcome (a ticket refused as terminated): say so.
    const v = this._examView ?? (this._stopped ? UNKNOWN_EXAM : null);
    if (!v) return null;
    const timeUp = this._timeUp();
    return {
      phase: v.phase,
      deadline: v.deadline,
      paused: v.paused,
      opensAt: v.opensAt,
      closesAt: v.closesAt,
      extraMinutes: v.extraMinutes,
      cause: v.cause,
      id: v.id,
      remainingMs: this.remaining(),
      waiting: v.phase === 'scheduled',
      running: v.phase === 'in_progress' && !v.paused && !timeUp && !this._stopped,
      timeUp,
      over: this._over,
      stopped: this._stopped,
    };
  }

  /**
   * This student's time left in ms, counted from the server's clock
   * (PROTOCOL.md 4.13: `deadline − (server_time + (now − received_at))`),
   * or null without a deadline. While paused it stands still at what was
   * left when the pause was reported: no time is lost.
   */
  remaining() {
    const v = this._examView;
    if (!v || v.deadline === null) return null;
    if (this._over) return 0;
    if (v.paused) return Math.max(0, v.deadline - v.serverTime);
    return Math.max(0, v.deadline - this.serverNow().getTime());
  }

  /** This student's deadline (ms since the epoch, server clock) or null. */
  get deadline() {
    return this._examView?.deadline ?? null;
  }

  /**
   * The transport of the current (or last) session: `websocket`, or `http`
   * after the fallback (SSE + POST). Changes are `transport` events.
   */
  get transport() {
    return this._transport;
  }

  /**
   * Students: raises a hand (`raise_hand`, PROTOCOL.md 4.14), with an
   * optional question of at most 500 characters. Resolves once the server
   * has stored it (its ack); rejects on an error, a drop before the ack,
   * or after `announceTimeoutMs`. Throws a RangeError for a longer text.
   * While the hand is up, raising it again changes nothing (acked).
   */
  raiseHand(text = '') {
    const t = String(text ?? '');
    if ([...t].length > MAX_HAND_TEXT) {
      throw new RangeError(`a raised hand's text is at most ${MAX_HAND_TEXT} characters`);
    }
    const ref = `hand:${newId()}`;
    const msg = t.trim() ? { type: 'raise_hand', text: t, ref } : { type: 'raise_hand', ref };
    return this._request(msg, ref);
  }

  /**
   * Stores an answer in the outbox and sends it; re-sent until acked (the
   * ack means it is in the database). Returns the answer's id. Throws if
   * the client was closed or taken over (nothing would ever send it), after
   * `submit()`, or if the message would exceed the server's size limit
   * (the server would close the connection instead of storing it).
   */
  answer(question, value) {
    this._usable();
    if (this.outbox.some((m) => m.type === 'submit')) throw new Error('the exam is being submitted');
    if (value === undefined) throw new TypeError('an answer needs a value (null is allowed)');
    const id = newId();
    const m = { type: 'answer', id, question, value, ref: `a:${id}` };
    const bytes = utf8Length(JSON.stringify(m));
    if (bytes > this.maxMessageBytes) {
      throw new RangeError(`answer too big: ${bytes} bytes, the server accepts ${this.maxMessageBytes}`);
    }
    this._enqueue(m);
    return id;
  }

  /**
   * Submits the exam: durable like answers, and sent only once every
   * answer before it is acked (a submit that overtook an answer would make
   * the server refuse that answer).
   */
  submit() {
    this._usable();
    if (this.outbox.some((m) => m.type === 'submit')) return;
    this._enqueue({ type: 'submit', ref: `submit:${newId()}` });
  }

  /** Answers and submit not yet acked. */
  pending() {
    return this.outbox.map(wire);
  }

  /**
   * Outbox entries set aside for good: `{message, code, reason}`, where
   * `code` is the server's error code (`not_stored`, `invalid_message`,
   * `already_submitted`, …) or `message_too_big` (the server closed 1009).
   */
  rejected() {
    return this._rejected.slice();
  }

  /** Sends a non-durable message (progress, focus, activity, announce, …) if live. */
  send(msg) {
    if (this.state !== 'live' || !this._link) return false;
    const text = JSON.stringify(msg);
    if (utf8Length(text) > this.maxMessageBytes) throw new RangeError('message too big for the server');
    this._link.send(text);
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
   * window change) as `focus` messages, and the current state every time
   * the client goes live (a change while offline is not lost). Returns a
   * function that stops watching.
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
    const onLive = (e) => e.detail.state === 'live' && this.focus(lost);
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

  /**
   * Gives the connection a new token (same `sub`, `role` and exam; PROTOCOL.md
   * 1.2.3), before the current one expires: sent as `refresh` on the live
   * socket, and used for every later ticket. Resolves once the server acks
   * it (or at once while not connected: the next connection uses it);
   * rejects with the server's error (`forbidden`, `invalid_token`,
   * `token_expired`: the socket keeps its old token) or on a drop.
   */
  refresh(token) {
    this.token = token;
    // Over HTTP every request carries the token: the next one has the new
    // one (the stream, at the old one's expiry, ends with 4401 and is
    // opened again with it).
    if (this.state !== 'live' || !this._link || this._link.kind === 'http') return Promise.resolve();
    const ref = `tok:${newId()}`;
    return this._request({ type: 'refresh', token, ref }, ref);
  }

  /**
   * Teachers: sends an announcement; resolves on its ack, rejects on an
   * error, on losing the connection before the ack, or after
   * `announceTimeoutMs` without one.
   */
  announce(text) {
    const ref = `ann:${newId()}`;
    return this._request({ type: 'announce', text, ref }, ref);
  }

  /** Sends `msg`; a promise settled by its ack or error (see `announce`). */
  _request(msg, ref) {
    return new Promise((resolve, reject) => {
      if (!this.send(msg)) {
        reject(new Error('not connected'));
        return;
      }
      const timer = setTimeout(() => this._settleAnnounce(ref, new Error('no answer from the server')), this.announceTimeoutMs);
      this._announces.set(ref, { resolve, reject, timer });
    });
  }

  // ---- connection -------------------------------------------------------

  _open() {
    const http = this._fallsBack();
    this._setState('connecting', { attempt: this._attempt, transport: http ? 'http' : 'websocket' });
    const opening = ++this._opening;
    if (http) return this._openHttp();
    const current = () => opening === this._opening && this.state === 'connecting';
    const credential = this._credential();
    // Without tickets, whether HTTP works is learnt by a probe if the socket fails.
    if (typeof credential === 'string') return this._openSocket(credential, false);
    credential.then(
      (c) => current() && this._openSocket(c, true),
      (e) => {
        if (!current()) return;
        // HTTP fails too: the socket's failures say nothing about a proxy.
        this._wsFailures = 0;
        if (e?.revokedToken) return this._tokenRevoked(4403, String(e.message));
        if (e?.stop) return this._stop(e.stop === 'terminated' ? 'terminated' : 'revoked', { refused: true, id: null, reason: null }, 4003, String(e.message));
        this._scheduleReconnect(1006, String(e?.message ?? e));
      },
    );
  }

  /**
   * Whether the next attempt is the HTTP transport: a student's, after
   * `wsFailuresBeforeFallback` failed socket handshakes in a row while HTTP
   * worked (something between here and the server refuses WebSocket
   * upgrades, or lets them through and then nothing: a buffering proxy).
   */
  _fallsBack() {
    return this.httpFallback && this.role === 'student' && !this._httpUnsupported && typeof this._fetch === 'function' && this._wsFailures >= Math.max(1, this.wsFailuresBeforeFallback);
  }

  /**
   * What authenticates the next socket, as a query parameter: a fresh
   * single-use ticket (PROTOCOL.md 1.2), fetched with the token in a header
   * so the token never appears in a URL that proxies may log; or, when
   * tickets are turned off or the server has none (404, an older server),
   * the token itself as `access_token`. A promise when a ticket is fetched;
   * it rejects (a failed attempt, retried with the usual backoff) when the
   * request fails or is refused.
   */
  _credential() {
    const fallback = `access_token=${encodeURIComponent(this.token)}`;
    if (!this.tickets || typeof this._fetch !== 'function') return fallback;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), this.ticketTimeoutMs);
    let request;
    try {
      request = this._fetch(this.ticketUrl, {
        method: 'POST',
        headers: { authorization: `Bearer ${this.token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ exam_id: this.exam }),
        signal: abort.signal,
      });
    } catch (e) {
      // A fetch that throws at once (a bad URL, a polyfill) is a failed
      // attempt with a backoff like any other, not a client that stops.
      clearTimeout(timer);
      return Promise.reject(e);
    }
    return Promise.resolve(request)
      .then(async (res) => {
        if (res.status === 404) return fallback;
        const body = await res.json().catch(() => ({}));
        if (!res.ok || typeof body.ticket !== 'string') {
          const error = new Error(`no ticket: ${res.status} ${body.error?.code ?? ''}`.trim());
          // Terminated or denied: refused until a teacher allows them again.
          if (res.status === 403 && STOPPING_REFUSALS.has(body.error?.code)) error.stop = body.error.code;
          // A revoked token stays refused: a new one must come from the page.
          if (res.status === 403 && body.error?.code === 'token_revoked') error.revokedToken = true;
          throw error;
        }
        return `ticket=${encodeURIComponent(body.ticket)}`;
      })
      .finally(() => clearTimeout(timer));
  }

  /** The socket URL for `credential`, resuming as the role does. */
  _socketUrl(credential) {
    let url = `${this.url}?${credential}`;
    if (this.role === 'student' && this.sessionId) {
      url += `&previous_session=${encodeURIComponent(this.sessionId)}`;
      const handover = this._handoverFor(this.sessionId);
      if (handover) url += `&handover=${encodeURIComponent(handover)}`;
    }
    // Teachers resume atomically at the handshake (PROTOCOL.md 4.4 form 1):
    // the server sends what was missed, or a snapshot, instead of a snapshot
    // followed by a `resume` that a live event could turn into a snapshot.
    if (this.role !== 'student' && this._synced) url += `&last_seq=${this.appliedSeq}`;
    return url;
  }

  /** `viaHttp`: a ticket was just granted for this attempt (so HTTP works). */
  _openSocket(credential, viaHttp) {
    const resuming = this.role !== 'student' && this._synced;
    let link;
    try {
      link = new SocketLink(this._socketUrl(credential), PROTOCOL);
    } catch (e) {
      this._scheduleReconnect(0, String(e));
      return;
    }
    this._attach(link);
    link.onclose = (e) => {
      if (this._link !== link) return;
      this._link = null;
      if (e.code === 1009) this._setAsideTooBig();
      this._connectionLost('connection lost');
      // A handshake that failed (the browser says only 1006).
      if (!e.opened && e.code === 1006) this._socketFailed(viaHttp);
      this._scheduleReconnect(e.code, e.reason);
    };
    if (resuming) {
      // A replay may be empty, so nothing might arrive: a heartbeat's ack
      // comes after the replay (same queue), and then the view is current.
      link.onopen = () => {
        if (this._link !== link) return;
        this._syncRef = `sync:${newId()}`;
        link.send(JSON.stringify({ type: 'heartbeat', ref: this._syncRef }));
      };
    }
    if (this.role === 'student' && this.httpFallback) {
      // A student's socket without its welcome by then has failed too (a
      // proxy that holds upgraded connections silent). Watchers wait:
      // a large exam's snapshot may take longer.
      this._later(() => {
        if (this._link !== link || this.state !== 'connecting') return;
        this._detach(1000);
        this._connectionLost('no welcome');
        this._socketFailed(viaHttp);
        this._scheduleReconnect(1006, `no welcome within ${this.wsOpenTimeoutMs} ms`);
      }, this.wsOpenTimeoutMs);
    }
  }

  /** Makes `link` the session's transport: its frames are the session's. */
  _attach(link) {
    this._link = link;
    link.onframe = (data) => this._link === link && this._onMessage(data);
  }

  /**
   * A student's socket handshake failed. It counts toward the fallback
   * only if HTTP works: known when a ticket was granted for the attempt,
   * else asked of `/healthz` (the server down, or the network gone, fails
   * both, and then HTTP would not help).
   */
  _socketFailed(viaHttp) {
    if (!this.httpFallback || this.role !== 'student' || this._httpUnsupported) return;
    if (viaHttp) {
      this._wsFailures += 1;
      return;
    }
    const probe = this._probeHttp();
    probe.then((works) => {
      if (works) this._wsFailures += 1;
      else this._wsFailures = 0;
    });
  }

  /** Whether a plain HTTP request reaches the server (`GET /healthz`, any answer). */
  async _probeHttp() {
    if (typeof this._fetch !== 'function') return false;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), this.wsOpenTimeoutMs);
    try {
      const url = this.httpUrl.replace(/\/v1\/exams\/.*$/, '/healthz');
      const res = await this._fetch(url, { cache: 'no-store', signal: abort.signal });
      return typeof res?.status === 'number' && res.status < 500;
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * The fallback: this attempt is an HTTP session (SSE + POST), opened with
   * `previous_session` (a reconnect, PROTOCOL.md 4.3) and `Last-Event-ID`
   * (the resume). A failure to open it (a refusal, the network) sends the
   * next attempts back to the socket, as does a server without session
   * streams (for good).
   */
  _openHttp() {
    const link = new HttpLink({
      fetch: this._fetch,
      base: this.httpUrl,
      token: () => this.token,
      previousSession: this.sessionId,
      handover: this._handoverFor(this.sessionId),
      lastEventId: this.lastSeq,
      batchMax: this.httpBatchMax,
      idleMs: this.sseIdleMs,
    });
    this._attach(link);
    // A stream that gives no welcome in time (held by a proxy) has failed.
    this._later(() => {
      if (this._link !== link || this.state !== 'connecting') return;
      this._detach(1000);
      this._connectionLost('no welcome');
      this._wsFailures = 0;
      this._scheduleReconnect(1006, `no welcome over HTTP within ${this.ticketTimeoutMs} ms`);
    }, this.ticketTimeoutMs);
    link.onclose = (e) => {
      if (this._link !== link) return;
      this._link = null;
      if (this._probe instanceof SocketLink && e.opened && !this._invalidated && !this._stopped) {
        // The background socket is taking this session over: the server
        // retires the HTTP session as it admits the socket (4001 without a
        // `session_invalidated`, or a POST's 409). Its welcome decides;
        // until then nothing is sent (quietly: the page was told nothing).
        this.state = 'connecting';
        return;
      }
      if (e.code === 1009) this._setAsideTooBig();
      this._connectionLost('connection lost');
      // Retired for a background socket of ours that we gave up on (its
      // welcome late): not a second session, a reconnect.
      const ours = e.code === 4001 && !this._invalidated && this._movedAt !== null && Date.now() - this._movedAt < 60000;
      if (ours) e = { ...e, code: 1006, reason: 'moved to a socket that was given up' };
      if (e.unsupported) this._httpUnsupported = true;
      if (!e.opened || e.unsupported) this._wsFailures = 0;
      if (e.refusal?.code === 'token_revoked') return this._tokenRevoked(4403, e.reason);
      if (e.refusal && e.code === 4003) {
        return this._stop(e.reason === REVOKED_REASON ? 'revoked' : 'terminated', { refused: true, id: null, reason: null }, 4003, e.reason);
      }
      this._scheduleReconnect(e.code, e.reason);
    };
  }

  /** On HTTP: the next background socket attempt, later each time (up to `wsRetryCapMs`). */
  _scheduleProbe() {
    const ceiling = Math.min(this.wsRetryCapMs, this.wsRetryMs * 2 ** Math.min(this._probeFailures, 30));
    // Half jitter: never at once, not all of a room's students together.
    this._later(() => this._probeSocket(), Math.floor(ceiling / 2 + (Math.random() * ceiling) / 2));
  }

  /**
   * On HTTP, in the background: a socket opened with `previous_session` =
   * the HTTP session's id, so the server takes that session over as a
   * reconnect (no second session, no disconnect). Its welcome moves the
   * session onto it; a failure waits longer for the next try.
   */
  async _probeSocket() {
    const onHttp = () => this.state === 'live' && this._link?.kind === 'http';
    if (!onHttp() || this._probe) return;
    const gen = ++this._probeGen;
    // Holds the place while the ticket is asked for: one attempt at a time.
    this._probe = { close() {} };
    const current = () => gen === this._probeGen && onHttp();
    let credential;
    try {
      credential = await this._credential();
    } catch {
      credential = null;
    }
    if (!current()) return;
    this._probe = null;
    let probe = null;
    try {
      if (credential !== null) probe = new SocketLink(this._socketUrl(credential), PROTOCOL);
    } catch {
      // A URL the browser refuses: as a failed attempt.
    }
    if (!probe) {
      this._probeFailures += 1;
      this._scheduleProbe();
      return;
    }
    this._probe = probe;
    const failed = () => {
      if (this._probe !== probe) return;
      this._probe = null;
      probe.close(1000);
      // Upgraded, so the server may have taken the HTTP session over for
      // it already (at once with the token, or when its probe ran out): a
      // quiet 4001 that follows is our own move. (A refused upgrade never
      // reached a room.)
      if (probe.opened) this._movedAt = Date.now();
      this._probeFailures += 1;
      if (this._link) return this._scheduleProbe();
      // The HTTP session ended while this attempt was under way: a reconnect as usual.
      this._connectionLost('connection lost');
      this._scheduleReconnect(1006, 'the background socket failed');
    };
    probe.onclose = failed;
    this._later(failed, this.wsOpenTimeoutMs);
    probe.onframe = (data) => {
      if (this._probe !== probe) return;
      let msg = null;
      try {
        msg = JSON.parse(data);
      } catch {
        // not a welcome
      }
      // Anything but a welcome first (a refusal before its close): not usable.
      if (msg?.type !== 'welcome') return failed();
      this._probe = null;
      this._switchToSocket(probe, msg);
    };
  }

  /** The background socket is up: end the HTTP session and carry on on the socket. */
  _switchToSocket(socket, first) {
    const http = this._link;
    this._link = null;
    http?.close();
    // As after a reconnect: what was in flight over HTTP goes again on the
    // socket (harmless), waiting requests are settled.
    this._connectionLost('moved to the socket');
    // Not live until the socket's welcome is handled (so the resume goes
    // first, as on any reconnect), without telling the page: to it the
    // session never went away, and the welcome's `live` follows at once.
    this.state = 'connecting';
    this._attach(socket);
    socket.onclose = (e) => {
      if (this._link !== socket) return;
      this._link = null;
      if (e.code === 1009) this._setAsideTooBig();
      this._connectionLost('connection lost');
      this._scheduleReconnect(e.code, e.reason);
    };
    this._onMessage(first);
  }

  /** Drops the current transport (and a background socket) without waiting for a close event. */
  _detach(code, reason) {
    this._dropProbe();
    const link = this._link;
    this._link = null;
    link?.close(code, reason);
  }

  _dropProbe() {
    this._probeGen += 1;
    const probe = this._probe;
    this._probe = null;
    probe?.close(1000);
  }

  /** The transport of a welcome: a `transport` event when it changed. */
  _setTransport(kind) {
    if (this._transport === kind) return;
    this._transport = kind;
    this._emit('transport', { transport: kind });
  }

  /** Whatever waited on the connection that just ended. */
  _connectionLost(why) {
    this._clearTimers();
    this._dropProbe();
    this._syncRef = null;
    this._snapshotParts = null;
    for (const m of this.outbox) m.sentAt = 0;
    for (const ref of [...this._announces.keys()]) this._settleAnnounce(ref, new Error(why));
  }

  _scheduleReconnect(code, reason) {
    if (this.state === 'closed') return;
    if (FATAL_CLOSES.has(code)) {
      globalThis.removeEventListener?.('online', this._onOnline);
      globalThis.removeEventListener?.('storage', this._onStorage);
      if (code === 4403) return this._tokenRevoked(code, reason);
      if (code === 4001 && !this._invalidated) {
        this._invalidated = true;
        this._emit('session_invalidated', { reason: 'second_session', code });
      }
      if (code === 4003) {
        // Its frame (`terminated` / `session_invalidated`) normally came
        // first and was reported; it is dropped when the queue was full.
        const how = reason === REVOKED_REASON ? 'revoked' : 'terminated';
        return this._stop(how, { id: null, reason: null }, code, reason);
      }
      this._setState('closed', { code, reason });
      return;
    }
    if (code === 4009) this._emit('session_rejected', { code, reason });
    // The token ran out: reconnect with whatever token the page gives by
    // then (`refresh(token)` from this event's listener is in time).
    if (code === 4401) this._emit('token_expired', { code, reason });
    let delayMs;
    if (code === RESTART_CLOSE) {
      // Uniform over the window, whatever the attempt: a restart is not a
      // failure of ours (and the attempt count does not grow).
      delayMs = Math.floor(Math.random() * Math.max(0, this.restartJitterMs));
      this._setState('offline', { code, reason, delayMs, attempt: this._attempt });
      this._later(() => this._open(), delayMs);
      return;
    }
    if (SLOW_CLOSES.has(code)) {
      // Full jitter can be 0: never retry at once after a refusal.
      const floor = Math.min(this.slowBackoffMs, this.capMs);
      delayMs = Math.max(floor, backoffDelay(Math.max(this._attempt, 8), this.baseMs, this.capMs));
    } else {
      delayMs = backoffDelay(this._attempt, this.baseMs, this.capMs);
    }
    this._attempt += 1;
    this._setState('offline', { code, reason, delayMs, attempt: this._attempt });
    this._later(() => this._open(), delayMs);
  }

  /**
   * Live again: start heartbeats and the outbox. The backoff starts over
   * only once the connection has held for `stableMs`, so a connection the
   * server closes right after its welcome does not reconnect in a tight loop.
   */
  _live(detail) {
    this._setState('live', detail);
    this._later(() => {
      this._attempt = 0;
      this._rateLimited = 0;
    }, this.stableMs);
    this._every(() => this._heartbeat(), this.heartbeatMs);
    this._every(() => this._pump(), 1000);
  }

  /** A revocation covers the token: stop, and say so (a new token, a new client). */
  _tokenRevoked(code, reason) {
    globalThis.removeEventListener?.('online', this._onOnline);
    globalThis.removeEventListener?.('storage', this._onStorage);
    this._emit('token_revoked', { code, reason });
    this._setState('closed', { code, reason });
  }

  _heartbeat() {
    if (this._pendingPing) {
      // The previous heartbeat was never acked: the connection is dead even
      // though the browser has not noticed. Its close event may come only
      // after a long closing handshake, so do not wait for it.
      this._detach(4000, 'heartbeat timeout');
      this._connectionLost('heartbeat timeout');
      this._scheduleReconnect(4000, 'heartbeat timeout');
      return;
    }
    this._pendingPing = { ref: `hb:${newId()}`, sentAt: performance.now() };
    this.send({ type: 'heartbeat', ref: this._pendingPing.ref });
  }

  _onMessage(data) {
    let msg;
    try {
      // A frame, or (HTTP) one of a POST's results, already parsed.
      msg = typeof data === 'string' ? JSON.parse(data) : data;
    } catch {
      return;
    }
    switch (msg.type) {
      case 'welcome': {
        this.sessionId = msg.session_id;
        this._store('session', msg.session_id);
        this._syncClock(Date.parse(msg.server_time));
        const kind = this._link?.kind ?? 'websocket';
        if (kind === 'websocket') this._wsFailures = this._probeFailures = 0;
        this._movedAt = null;
        // Kept in memory only (not in the tabs' shared storage): it proves
        // this tab is the HTTP session's client when it moves (8.4).
        const token = kind === 'http' ? this._link.handover : null;
        this._handover = token ? { session: msg.session_id, token } : null;
        this._setTransport(kind);
        this._emit('welcome', msg);
        this._emit('status', { student: msg.student, cause: 'welcome' });
        this._examChanged(msg, 'welcome');
        this._live({ sessionId: msg.session_id, transport: kind });
        // The announcements this client missed (over HTTP the stream
        // request's Last-Event-ID asked for them), then everything unacked.
        if (this.lastSeq === null) this._setSeq(msg.last_seq);
        else if (!this._link?.resumesAtOpen) this.send({ type: 'resume', last_seq: this.lastSeq });
        this._pump();
        if (kind === 'http') this._scheduleProbe();
        break;
      }
      case 'snapshot':
        // A large exam's snapshot comes in parts (PROTOCOL.md 4.12): only
        // the whole one is applied and reported.
        msg = this._assembleSnapshot(msg);
        if (!msg) break;
        this.appliedSeq = msg.seq;
        this._synced = true;
        // A first estimate of the server's clock from the snapshot (made
        // as it was sent; a large one's parts may take a moment, hence
        // only until the HTTP Date header, which refines it, is known).
        if (!this._httpClock) this._syncClock(Date.parse(msg.server_time));
        this._syncClockOverHttp();
        this._emit('snapshot', msg);
        // The exam's phase as of the snapshot (watchers' `exam` events).
        if (msg.phase) this._examChanged({ phase: msg.phase, server_time: msg.server_time, paused: msg.phase === 'paused' }, 'snapshot');
        if (this.state !== 'live') this._live({});
        this._setSeq(msg.seq);
        break;
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
      case 'resumed':
        // The answer to our `resume` (PROTOCOL.md 4.5), before its replay.
        // Not recovered: announcements were lost, tell the page. A server
        // behind our seq (it lost its data) numbers anew: start over so its
        // replayed announcements are not taken for ones already seen.
        if (!msg.recovered && this.lastSeq !== null && msg.last_seq < this.lastSeq) {
          this.lastSeq = null;
          this._setSeq(msg.replayed > 0 ? 0 : msg.last_seq);
        }
        this._emit('resumed', msg);
        break;
      case 'ack':
        this._onAck(msg.ref);
        break;
      case 'error':
        this._onError(msg);
        break;
      case 'session_invalidated':
        if (msg.reason === 'access_revoked') {
          this._receivedFinal(msg.id);
          // A teacher's `deny`: close 4003 follows (and stops the client).
          this._stopped = 'revoked';
          this._emit('revoked', { id: msg.id ?? null, reason: msg.reason });
          this._examChanged(null, 'revoked');
          break;
        }
        this._received(msg.id);
        this._invalidated = true;
        this._emit('session_invalidated', msg);
        break;
      case 'exam_update':
        this._received(msg.id);
        if (this.role !== 'student') {
          // Watchers: the exam's clock (no deadline of their own). Its
          // `server_time` may be old (a replay after a resume), so the
          // clock estimate stays the HTTP one. Also a `message`, as every
          // frame without an event of its own was before.
          this._examChanged(msg, msg.cause);
          this._emit('message', msg);
          this._watcherSeq(msg);
          break;
        }
        // A student's frames are built when sent (re-sent ones too): their
        // `server_time` is now.
        this._syncClock(Date.parse(msg.server_time));
        this._examChanged(msg, msg.cause);
        break;
      case 'message':
        // A private message (PROTOCOL.md 4.14): re-sent until acknowledged,
        // so acknowledge every copy and report it once.
        this._received(msg.id);
        if (msg.id !== undefined && this._seenActions.has(msg.id)) break;
        if (msg.id !== undefined) this._seenActions.add(msg.id);
        this._emit('message', msg);
        break;
      case 'hand_lowered':
        if (this.role !== 'student') {
          // Watchers: the exam's numbered event, like every other one.
          this._emit('message', msg);
          this._watcherSeq(msg);
          break;
        }
        // A proctor lowered this student's hand without a message: re-sent
        // until acknowledged, reported once.
        this._received(msg.id);
        if (msg.id !== undefined && this._seenActions.has(msg.id)) break;
        if (msg.id !== undefined) this._seenActions.add(msg.id);
        this._emit('hand_lowered', msg);
        break;
      case 'terminated':
        this._receivedFinal(msg.id);
        this._stopped = 'terminated';
        this._emit('terminated', { id: msg.id ?? null, reason: msg.reason ?? null });
        this._examChanged(null, 'terminated');
        break;
      default:
        this._emit('message', msg);
        this._watcherSeq(msg);
    }
  }

  /**
   * Watchers: a numbered event passed on as `message` (`action`,
   * `delivery`, `hand`, …) was applied like the others, so a reconnect
   * resumes after it instead of replaying it.
   */
  _watcherSeq(msg) {
    if (this.role !== 'watcher' || !Number.isInteger(msg.seq)) return;
    if (msg.seq > this.appliedSeq) this.appliedSeq = msg.seq;
    this._setSeq(msg.seq);
  }

  /** Acknowledges a frame that carries an action's id (PROTOCOL.md 2, `received`). */
  _received(id) {
    if (typeof id === 'string' && id.length > 0) this.send({ type: 'received', id });
  }

  /**
   * Acknowledges the frame that ends the session (`terminated`, a `deny`'s
   * `session_invalidated`). On a socket, as any other. On HTTP the stream
   * ends right after it, and with it the session a POST would need (409
   * `no_session`): so `POST me/received` instead (PROTOCOL.md 7.1, any
   * instance, harmless twice), retried a few times on a network error or
   * a 5xx.
   */
  _receivedFinal(id) {
    if (typeof id !== 'string' || id.length === 0) return;
    if (this._link?.kind !== 'http' || typeof this._fetch !== 'function') return this._received(id);
    // Its own timers: the session's are cleared as the stream ends, which
    // it does right after this frame.
    const retry = (attempt) => setTimeout(() => send(attempt + 1), 500 * 2 ** attempt);
    const send = (attempt) => {
      Promise.resolve()
        .then(() =>
          this._fetch(`${this.httpUrl}/me/received`, {
            method: 'POST',
            headers: { authorization: `Bearer ${this.token}`, 'content-type': 'application/json' },
            body: JSON.stringify({ id }),
            cache: 'no-store',
          }),
        )
        .then((res) => {
          if (res.status >= 500 && attempt < 5) retry(attempt);
        })
        .catch(() => {
          if (attempt < 5) retry(attempt);
        });
    };
    send(0);
  }

  /** The handover token of this client's HTTP session `sessionId`, if it had one (PROTOCOL.md 8.4). */
  _handoverFor(sessionId) {
    const h = this._handover;
    return h && sessionId && h.session === sessionId ? h.token : null;
  }

  /**
   * A new description of the exam (`welcome`, `exam_update`; null when
   * only this client's own state changed): keep it, emit `exam`, re-arm the
   * deadline timer, and emit `timeup` when the time has just run out.
   */
  _examChanged(msg, cause) {
    if (msg) {
      const time = (v) => {
        const ms = Date.parse(v ?? '');
        return Number.isFinite(ms) ? ms : null;
      };
      const prev = this._examView;
      const extra = msg.extra_minutes ?? msg.student?.extra_minutes ?? prev?.extraMinutes ?? 0;
      this._examView = {
        phase: msg.phase ?? prev?.phase ?? null,
        deadline: time(msg.deadline ?? msg.student?.deadline),
        paused: Boolean(msg.paused ?? msg.student?.paused),
        opensAt: time(msg.opens_at),
        closesAt: time(msg.closes_at),
        extraMinutes: Number(extra) || 0,
        serverTime: time(msg.server_time) ?? this.serverNow().getTime(),
        cause: cause ?? null,
        id: msg.id ?? null,
      };
      if (cause === 'time_up') this._over ??= 'time_up';
      if (OVER_PHASES.has(this._examView.phase)) this._over ??= 'ended';
      // Held by `exam_not_started` / `exam_paused`: try again now.
      for (const m of this.outbox) if (!m.sentAt) m.retryAt = 0;
    }
    if (!this._examView) return;
    this._armDeadline();
    const state = this.examState();
    this._emit('exam', { ...state, update: msg });
    this._checkTimeUp(state);
    this._pump();
  }

  /** The server said the time is over, or the deadline passed on its clock. */
  _timeUp() {
    if (this._over) return true;
    const v = this._examView;
    return Boolean(v && v.phase === 'in_progress' && !v.paused && v.deadline !== null && this.remaining() === 0);
  }

  _checkTimeUp(state = this.examState()) {
    // A watcher's time is never up: the exam's end is its `exam` event.
    if (!state || this.role !== 'student') return;
    if (state.timeUp && !this._timeUpSent && !this._stopped) {
      this._timeUpSent = true;
      this._emit('timeup', { reason: this._over ?? 'deadline', deadline: state.deadline });
    } else if (!state.timeUp) {
      // An extension after our clock ran out: the time is not up after all.
      this._timeUpSent = false;
    }
  }

  /** A timer at the deadline, so `timeup` comes even without a frame from the server. */
  _armDeadline() {
    clearTimeout(this._deadlineTimer);
    this._deadlineTimer = null;
    const v = this._examView;
    if (!v || v.paused || v.deadline === null || this._over || this.state === 'closed') return;
    const left = this.remaining();
    if (left === null || left <= 0) return;
    // setTimeout's limit is 2^31 - 1 ms (24.8 days): wake up and re-arm.
    this._deadlineTimer = setTimeout(() => {
      this._deadlineTimer = null;
      if (this.remaining() > 0) return this._armDeadline();
      this._emit('exam', { ...this.examState(), update: null });
      this._checkTimeUp();
    }, Math.min(left + 20, 2 ** 31 - 1));
  }

  /**
   * A teacher ended this student's exam (`terminated`) or access
   * (`revoked`): no reconnect, nothing more is sent. Emits the event if its
   * frame did not (close 4003 without it, or a ticket refused for it).
   */
  _stop(how, detail, code, reason) {
    globalThis.removeEventListener?.('online', this._onOnline);
    globalThis.removeEventListener?.('storage', this._onStorage);
    if (this._stopped !== how) {
      this._stopped = how;
      this._emit(how, detail);
    }
    clearTimeout(this._deadlineTimer);
    this._deadlineTimer = null;
    this._setState('closed', { code, reason });
    this._emit('exam', { ...this.examState(), update: null });
  }

  /**
   * Collects a snapshot's parts; returns the whole snapshot once its last
   * part arrived (with every part's students, in order), else null. A
   * part 1 always starts over; a part that does not continue the one being
   * collected (another seq, a number out of order) drops what was
   * collected, and the client waits for a fresh part 1. What was collected
   * is dropped with the connection too (`_connectionLost`): a partial
   * snapshot is never applied.
   */
  _assembleSnapshot(msg) {
    const parts = Number.isInteger(msg.parts) ? msg.parts : 1;
    const part = Number.isInteger(msg.part) ? msg.part : 1;
    if (part === 1) this._snapshotParts = null;
    if (parts <= 1) return msg;
    const got = this._snapshotParts;
    if (part === 1) {
      this._snapshotParts = { ...msg, students: [...(msg.students ?? [])] };
      return null;
    }
    if (!got || got.seq !== msg.seq || got.parts !== parts || got.part + 1 !== part) {
      this._snapshotParts = null;
      return null;
    }
    for (const s of msg.students ?? []) got.students.push(s);
    got.part = part;
    if (part < parts) return null;
    this._snapshotParts = null;
    return got;
  }

  _onAck(ref) {
    if (this._pendingPing && this._pendingPing.ref === ref) {
      this._rtt = performance.now() - this._pendingPing.sentAt;
      this._pendingPing = null;
      return;
    }
    if (this._syncRef !== null && ref === this._syncRef) {
      // Resumed with ?last_seq= and the replay (if any) is applied.
      this._syncRef = null;
      if (this.state !== 'live') this._live({ resumed: true });
      return;
    }
    if (this._announces.has(ref)) this._settleAnnounce(ref, null);
    const i = this.outbox.findIndex((m) => m.ref === ref);
    if (i >= 0) {
      const [m] = this.outbox.splice(i, 1);
      this._done.add(ref);
      this._rateLimited = 0;
      this._saveOutbox();
      this._emit('ack', { ref, message: wire(m) });
      this._emit('outbox', { pending: this.outbox.length });
      this._pump();
      return;
    }
    this._emit('ack', { ref });
  }

  _onError(msg) {
    if (msg.code === 'rate_limited') {
      // Refused unprocessed, and the error names no ref: pause the outbox
      // for as long as the server says (`retry_after_ms`), or, from a
      // server that does not say, longer each time; then send what was in
      // flight again (duplicates are harmless, a lost answer is not).
      this._rateLimited += 1;
      const told = Number(msg.retry_after_ms);
      const wait = Number.isFinite(told) && told > 0
        ? Math.min(60000, told)
        : Math.min(30000, 2000 * this._rateLimited);
      this._pauseUntil = Date.now() + wait;
      for (const m of this.outbox) if (m.sentAt) m.sentAt = 0;
      // The refused message may have been the heartbeat: do not take its
      // missing ack for a dead connection.
      this._pendingPing = null;
      this._emit('error', msg);
      return;
    }
    if (this._announces.has(msg.ref)) this._settleAnnounce(msg.ref, new Error(msg.message || msg.code));
    const m = this.outbox.find((e) => e.ref === msg.ref);
    if (msg.code === 'exam_ended' && !this._over) {
      // Nothing more is taken from this student (PROTOCOL.md 3.2).
      this._over = 'exam_ended';
      this._examChanged(null, 'exam_ended');
    }
    if (m && (msg.code === 'storage_busy' || (msg.code === 'not_stored' && msg.retry === true))) {
      // Nothing stored (or, over HTTP, no result in time: `retry`): keep
      // it and try again later; a duplicate is harmless.
      m.sentAt = 0;
      m.retryAt = Date.now() + this.retryMs;
      this._pumpIn(this.retryMs);
    } else if (m && (msg.code === 'exam_not_started' || msg.code === 'exam_paused')) {
      // The waiting room or a pause: nothing is lost, it goes out when the
      // next `exam_update` says the exam runs (or after `retryMs`, should
      // that update have been missed).
      m.sentAt = 0;
      m.retryAt = Date.now() + this.retryMs;
      this._pumpIn(this.retryMs);
    } else if (m) {
      // Any other error for an outbox entry (already_submitted, not_stored,
      // invalid_message) will not change by re-sending: set it aside, and
      // say so, so the page never shows it as saved.
      this._setAside(m, msg.code, msg.message);
    }
    this._emit('error', msg);
  }

  _settleAnnounce(ref, error) {
    const p = this._announces.get(ref);
    if (!p) return;
    this._announces.delete(ref);
    clearTimeout(p.timer);
    if (error) p.reject(error);
    else p.resolve();
  }

  // ---- outbox -----------------------------------------------------------

  _usable() {
    if (this._invalidated) throw new Error('this exam was opened somewhere else; this page is closed');
    if (this._stopped === 'terminated') throw new Error('a teacher ended this exam for you');
    if (this._stopped === 'revoked') throw new Error('your access to this exam was removed');
    if (this._over) throw new Error('the exam is over: nothing more is taken');
    if (this.state === 'closed') throw new Error('the client is closed');
  }

  _enqueue(m) {
    this.outbox.push({ ...m, sentAt: 0 });
    this._saveOutbox();
    this._emit('outbox', { pending: this.outbox.length });
    this._pump();
  }

  _setAside(m, code, reason) {
    const i = this.outbox.indexOf(m);
    if (i < 0) return; // already set aside
    this.outbox.splice(i, 1);
    this._done.add(m.ref);
    const entry = { message: wire(m), code, reason: reason ?? '' };
    this._rejected.push(entry);
    this._saveOutbox();
    this._emit('rejected', entry);
    this._emit('outbox', { pending: this.outbox.length });
    this._pump();
  }

  /** After close 1009: the biggest entry in flight caused it; never send it again. */
  _setAsideTooBig() {
    let culprit = null;
    let size = -1;
    for (const m of this.outbox) {
      if (!m.sentAt) continue;
      const n = utf8Length(JSON.stringify(wire(m)));
      if (n > size) [culprit, size] = [m, n];
    }
    if (culprit) this._setAside(culprit, 'message_too_big', `${size} bytes: more than the server accepts`);
  }

  /**
   * Sends what is due, paced: entries not yet sent on this connection (and
   * past their `storage_busy` wait), and entries unacked for `retryMs`; at
   * most MAX_IN_FLIGHT awaiting their ack and OUTBOX_PER_SECOND a second. A
   * submit waits until every answer before it is acked.
   */
  _pump() {
    if (this.state !== 'live' || !this._link) return;
    const now = Date.now();
    // The waiting room or a pause: the server would refuse answers and the
    // submit (`exam_not_started`, `exam_paused`), so they wait, stored.
    const v = this._examView;
    if (this.role === 'student' && v && (v.phase === 'scheduled' || v.paused)) return;
    if (now < this._pauseUntil) return this._pumpIn(this._pauseUntil - now);
    this._tokens = Math.min(OUTBOX_PER_SECOND, this._tokens + ((now - this._tokensAt) * OUTBOX_PER_SECOND) / 1000);
    this._tokensAt = now;
    let inFlight = this.outbox.filter((m) => m.sentAt).length;
    let answersBefore = 0;
    const tooBig = [];
    for (const m of this.outbox) {
      const fresh = !m.sentAt && now >= (m.retryAt ?? 0);
      const stale = m.sentAt && now - m.sentAt >= this.retryMs;
      const blocked = (fresh && inFlight >= MAX_IN_FLIGHT) || (m.type === 'submit' && answersBefore > 0);
      if (m.type === 'answer') answersBefore += 1;
      if ((!fresh && !stale) || blocked) continue;
      if (this._tokens < 1) {
        this._pumpIn(Math.ceil(((1 - this._tokens) * 1000) / OUTBOX_PER_SECOND));
        break;
      }
      const text = JSON.stringify(wire(m));
      if (utf8Length(text) > this.maxMessageBytes) {
        // Stored by an older page: the server would close the socket.
        tooBig.push(m);
        continue;
      }
      this._tokens -= 1;
      this._link.send(text);
      if (fresh) inFlight += 1;
      m.sentAt = now;
      m.retryAt = 0;
    }
    for (const m of tooBig) this._setAside(m, 'message_too_big', 'more than the server accepts');
  }

  _pumpIn(ms) {
    if (this._pumpTimer !== null) return;
    this._pumpTimer = setTimeout(() => {
      this._timers.delete(this._pumpTimer);
      this._pumpTimer = null;
      this._pump();
    }, ms);
    this._timers.add(this._pumpTimer);
  }

  _key(what) {
    return `examwatch:${what}:${this.exam}:${this.userId}`;
  }
  _load(what) {
    try {
      return this.storage?.getItem(this._key(what)) ?? null;
    } catch (e) {
      this._emit('storage_error', { what, error: String(e) });
      return null;
    }
  }
  _store(what, value) {
    try {
      this.storage?.setItem(this._key(what), String(value));
    } catch (e) {
      // Storage full or forbidden: the outbox still works in memory, but
      // does not survive the tab. The page should say so.
      this._emit('storage_error', { what, error: String(e) });
    }
  }
  _readStoredOutbox() {
    if (this.role !== 'student') return [];
    try {
      const list = JSON.parse(this._load('outbox') ?? '[]');
      return Array.isArray(list) ? list : [];
    } catch {
      return [];
    }
  }
  /**
   * Adds the stored entries this tab does not have (another tab of the same
   * student wrote them) and has not itself seen acked. Union by ref, never
   * a removal: an entry another tab got acked is sent once more from here,
   * which is harmless; dropping one that tab had not yet seen would lose it.
   */
  _mergeStored(list) {
    const known = new Set(this.outbox.map((m) => m.ref));
    let added = 0;
    for (const m of list) {
      if (!m || typeof m.ref !== 'string' || known.has(m.ref) || this._done.has(m.ref)) continue;
      known.add(m.ref);
      const entry = { ...wire(m), sentAt: 0 };
      // Answers go before a submit, which waits for them.
      const submit = this.outbox.findIndex((e) => e.type === 'submit');
      if (entry.type === 'answer' && submit >= 0) this.outbox.splice(submit, 0, entry);
      else this.outbox.push(entry);
      added += 1;
    }
    return added;
  }
  _saveOutbox() {
    if (this.role !== 'student') return;
    // Re-read first: another tab may have stored answers since.
    this._mergeStored(this._readStoredOutbox());
    this._store('outbox', JSON.stringify(this.outbox.map(wire)));
  }
  /** Another tab changed the stored outbox. */
  _storageChanged(e) {
    if (e.key !== this._key('outbox')) return;
    if (e.storageArea && e.storageArea !== this.storage) return;
    let list;
    try {
      list = JSON.parse(e.newValue ?? '[]');
    } catch {
      return;
    }
    if (!Array.isArray(list) || this._mergeStored(list) === 0) return;
    this._emit('outbox', { pending: this.outbox.length });
    this._pump();
  }

  // ---- clock, seq, helpers ---------------------------------------------

  _syncClock(serverMs) {
    if (!Number.isFinite(serverMs)) return;
    // The welcome left the server about half a round trip ago.
    this.clockOffsetMs = serverMs + (this._rtt ?? 0) / 2 - Date.now();
    this._emit('clock', { offsetMs: this.clockOffsetMs });
  }

  /**
   * Watchers: the snapshot's `server_time` is a first estimate; the HTTP
   * Date header (1 s resolution) of a request made now is steadier.
   */
  async _syncClockOverHttp() {
    try {
      const httpUrl = this.url.replace(/^ws/, 'http').replace(/\/v1\/exams\/.*$/, '/healthz');
      const t0 = Date.now();
      const res = await fetch(httpUrl, { cache: 'no-store' });
      const date = Date.parse(res.headers.get('date') ?? '');
      if (Number.isFinite(date)) {
        this._httpClock = true;
        this._syncClock(date + 500 - (Date.now() - t0) / 2);
      }
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
    this._pumpTimer = null;
    this._pendingPing = null;
  }
}
