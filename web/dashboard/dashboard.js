// The teacher dashboard's controller: token, exam choice, and the live
// connection (through the same client library students use), feeding the
// view in view.js.
//
// The token comes from `?token=` (then moved to sessionStorage and removed
// from the address bar, so it is not bookmarked or shared by accident) or
// from the paste field. The exam list is what the token grants: its `exams`
// claim, plus the exams the REST API lists for it (titles; every exam for
// an admin). The view is never stale silently: whenever the connection is
// not live a banner says so and the table is greyed, and it goes away only
// when the state is current again: the events it missed were replayed (it
// reconnects with `?last_seq=`), or a fresh snapshot replaced the state.
//
// Alerts and timeline hold the whole exam, not only what happened since the
// page opened: after each snapshot the events up to its seq are loaded from
// the REST timeline (history.js), and the live events that arrive meanwhile
// wait until they are in, so both lists are merged by seq (each event once,
// in order, no gap between what the REST call returned and the socket).

import { ExamwatchClient, decodeToken } from '/client/examwatch.js';
import { View } from './view.js';
import { loadTimeline } from './history.js';
import { restClient } from './panels.js';
import { HandsPanel } from './hands.js';
import { AlertsPanel } from './alerts.js';
import { RecordPanel } from './record.js';

const TOKEN_KEY = 'examwatch.dashboard.token';
const $ = (sel) => document.querySelector(sel);

// `#token=` (preferred: a fragment is never sent to the server, so no
// proxy or server log ever holds it) or `?token=` (older links).
const params = new URLSearchParams(location.search);
const fragment = new URLSearchParams(location.hash.slice(1));
const given = fragment.get('token') ?? params.get('token');
if (given) {
  sessionStorage.setItem(TOKEN_KEY, given);
  params.delete('token');
  fragment.delete('token');
  const rest = params.toString();
  const frag = fragment.toString();
  history.replaceState(null, '', location.pathname + (rest ? `?${rest}` : '') + (frag ? `#${frag}` : ''));
}

let client = null;
const view = new View(document.body, () => (client ? client.serverNow().getTime() : Date.now()));
// The side panels (raised hands, alerts, a student's record): each takes
// the events in seq order (toLists) and the timeline before a snapshot.
const rest = restClient(() => token());
const studentName = (id) => (id == null ? '' : view.rows.get(id)?.student?.name || id);
const hands = new HandsPanel($('#hands-panel'), { rest, name: studentName });
const alerts = new AlertsPanel($('#alerts-panel'), {
  rest,
  name: studentName,
  students: () => [...view.rows.values()].filter((r) => r.student).map((r) => ({ id: r.student.student_id, name: r.student.name || r.student.student_id })),
});
const record = new RecordPanel({ rest, name: studentName });
record.attach($('#students .rows'));
// Read by the browser tests (and handy in the console).
window.examwatch = { view, hands, alerts, record, stats: view.stats, get client() { return client; } };

function token() {
  return sessionStorage.getItem(TOKEN_KEY) ?? '';
}

async function api(path) {
  const res = await fetch(path, { headers: { authorization: `Bearer ${token()}` } });
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  return res.json();
}

/**
 * The exams the REST API listed (id -> settings); `null` when the list
 * could not be read. An exam missing from a list that was read was never
 * created through the API: it has no settings, and asking for it would be a
 * 404 (a console error) for nothing.
 */
let listed = null;

/** The exams this token grants, with titles where the server knows them. */
async function grantedExams() {
  const claims = decodeToken(token());
  const exams = new Map((Array.isArray(claims.exams) ? claims.exams : []).map((id) => [String(id), String(id)]));
  try {
    const found = new Map();
    // FSI … PDI around the title: an <option> cannot hold a <bdi>, and a
    // title with a bidi override must not reorder the id after it.
    for (const e of (await api('/v1/exams')).exams) {
      exams.set(e.id, e.title ? `\u2068${e.title}\u2069 (\u2068${e.id}\u2069)` : e.id);
      found.set(e.id, e.settings ?? {});
    }
    listed = found;
  } catch {
    // Not fatal: the claim alone is enough to watch.
  }
  return exams;
}

async function start() {
  if (!token()) {
    $('#token-form').hidden = false;
    return;
  }
  $('#token-form').hidden = true;
  const claims = decodeToken(token());
  $('#who').textContent = claims.name || claims.sub || '';
  const exams = await grantedExams();
  const picker = $('#exam');
  picker.replaceChildren(...[...exams].map(([id, label]) => new Option(label, id)));
  const wanted = params.get('exam') ?? sessionStorage.getItem('examwatch.dashboard.exam');
  if (wanted && exams.has(wanted)) picker.value = wanted;
  if (exams.size === 0) {
    showBanner('This token grants no exam.', 'error');
    return;
  }
  watch(picker.value);
}

function showBanner(text, kind) {
  const b = $('#banner');
  b.textContent = text;
  b.className = `banner ${kind}`;
  b.hidden = !text;
  document.body.classList.toggle('stale', Boolean(text) && kind !== 'info');
}

function watch(exam) {
  if (client) client.close();
  sessionStorage.setItem('examwatch.dashboard.exam', exam);
  view.reset([]);
  view.setTotal(null);
  view.timelineSeq = 0;
  view.lists.clear();
  catchUp = null;
  hands.reset(exam);
  alerts.reset(exam);
  record.reset(exam);
  $('#timeline').replaceChildren();
  if (listed) view.setTotal(listed.get(exam)?.total_questions);
  else {
    api(`/v1/exams/${encodeURIComponent(exam)}`)
      .then((e) => view.setTotal(e.settings?.total_questions))
      .catch(() => {}); // An exam not created through the API: total unknown.
  }
  client = new ExamwatchClient({ exam, token: token() });
  client.addEventListener('connection', (e) => onConnection(e.detail));
  // Always a whole snapshot: the library collects a large exam's parts and
  // emits it once (PROTOCOL.md 4.12), so the table is rendered once.
  client.addEventListener('snapshot', (e) => {
    view.reset(e.detail.students);
    hands.snapshot(e.detail.students);
    alerts.load();
    loadPast(exam, e.detail.seq);
  });
  client.addEventListener('event', (e) => {
    const ev = e.detail;
    // Events replayed after a reconnect are applied like live ones; any
    // already in the view (`stale`) still belong in the timeline and
    // alerts if unseen there.
    if (ev.type === 'student' && !ev.stale) {
      view.upsert(ev.student);
      record.event(ev);
    }
    if (catchUp) catchUp.events.push(ev);
    else toLists(ev);
  });
  // The numbered events the library has no event of its own for (`hand`,
  // `hand_lowered`, `alert_resolved`, …) come as `message`: the panels
  // take them in the same seq order.
  client.addEventListener('message', (e) => {
    const ev = e.detail;
    if (!Number.isFinite(ev?.seq)) return;
    if (catchUp) catchUp.events.push(ev);
    else toLists(ev);
  });
  client.addEventListener('session_invalidated', () => showBanner('Closed: this token was used elsewhere.', 'error'));
  client.connect();
}

/**
 * While the timeline before a snapshot loads: `{ events }`, the live events
 * that arrived meanwhile (all after the snapshot), applied once it is in.
 */
let catchUp = null;

/** An event into the alerts and the timeline, unless they have it already. */
function toLists(ev) {
  if (ev.seq <= view.timelineSeq) return;
  hands.event(ev);
  alerts.event(ev);
  view.timeline(ev);
}

/** Loads what the lists miss before the snapshot at `upTo`, then the live rest. */
function loadPast(exam, upTo) {
  const from = view.timelineSeq;
  if (!(upTo > from)) {
    hands.history([]);
    return;
  }
  const waiting = { events: [] };
  catchUp = waiting;
  loadTimeline(api, exam, from, upTo)
    // Unreadable (database down): the lists go on from the snapshot.
    .catch(() => [])
    .then((past) => {
      // A newer snapshot or another exam took over; its own load covers this.
      if (catchUp !== waiting) return;
      catchUp = null;
      const unseen = past.filter((ev) => ev.seq > view.timelineSeq).sort((a, b) => a.seq - b.seq);
      hands.history(unseen);
      alerts.history(unseen);
      view.history(past);
      for (const ev of waiting.events) toLists(ev);
    });
}

function onConnection(d) {
  const dot = $('#live');
  dot.dataset.state = d.state;
  dot.textContent = d.state === 'live' ? 'live' : d.state;
  if (d.state === 'live') showBanner('', 'info');
  else if (d.state === 'offline') {
    const secs = Math.ceil((d.delayMs ?? 0) / 1000);
    showBanner(`Not live — reconnecting… (attempt ${d.attempt}, next in ${secs} s). The table shows the last known state.`, 'warn');
  } else if (d.state === 'connecting' && dot.dataset.everLive) {
    showBanner('Not live — reconnecting…', 'warn');
  } else if (d.state === 'closed' && d.code) {
    showBanner(`Not live: the connection was closed (${d.code}). Reload to try again.`, 'error');
  }
  if (d.state === 'live') dot.dataset.everLive = '1';
}

$('#token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const value = $('#token-input').value.trim();
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  start();
});
$('#signout').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  if (client) client.close();
  location.reload();
});
$('#exam').addEventListener('change', (e) => watch(e.target.value));
$('#filter-status').addEventListener('change', (e) => view.setFilter({ status: e.target.value }));
$('#filter-name').addEventListener('input', (e) => view.setFilter({ name: e.target.value }));
for (const th of document.querySelectorAll('[data-sort]')) {
  th.addEventListener('click', () => view.setSort(th.dataset.sort));
}
$('#announce-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const text = $('#announce-text').value.trim();
  const status = $('#announce-status');
  if (!text || !client) return;
  status.textContent = 'sending…';
  try {
    await client.announce(text);
    $('#announce-text').value = '';
    status.textContent = 'sent';
  } catch (err) {
    status.textContent = `not sent: ${err.message}`;
  }
});

start();
