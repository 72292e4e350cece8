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
//
// Exam control: the header (header.js: phase, countdown, waiting room,
// report), the row menu, bulk bar and deliveries (controls.js), the
// control columns (columns.js), shown as the token's role allows
// (rights.js). Every string is in the i18n catalogue; the language switch
// redraws the page's dynamic text.

import { ExamwatchClient, decodeToken } from '/client/examwatch.js';
import { t, translate, languageSwitch, onLanguage } from '../i18n/i18n.js';
import { View } from './view.js';
import { loadTimeline } from './history.js';
import { useToken, request } from './api.js';
import { Header } from './header.js';
import { Controls } from './controls.js';
import { Columns } from './columns.js';
import { OpenAlerts } from './opencount.js';
import { rightsOf } from './rights.js';
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
// The server's time: the library's estimate (never the browser's clock
// alone). Before the first connection there is nothing better.
const now = () => (client ? client.serverNow().getTime() : Date.now());
const view = new View(document.body, now);

function token() {
  return sessionStorage.getItem(TOKEN_KEY) ?? '';
}
useToken(token);

// The rights of the token in use now: read at every call, so a token pasted
// after the page loaded (or a new one) gets its own controls.
const may = (right) => rightsOf(decodeToken(token()).role)(right);
const openAlerts = new OpenAlerts((id) => view.touch(id));
const header = new Header({ now, students: () => view.students(), may });
const controls = new Controls({ view, may });
view.columns = new Columns({ controls, alerts: openAlerts, pauses: () => header.pauses });
/** A proctor sees no control a proctor may not use: redrawn when the token changes. */
function applyRights() {
  document.querySelector('#announce-section').hidden = !may('announce');
  header.redraw();
  controls.redraw();
}
applyRights();
// The side panels (raised hands, alerts, a student's record): each takes
// the events in seq order (toLists) and the timeline before a snapshot.
const rest = restClient();
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
window.examwatch = { view, header, controls, hands, alerts, record, stats: view.stats, get client() { return client; } };

translate(document);
languageSwitch(document.querySelector('#lang'));
onLanguage(() => {
  view.relabel();
  header.redraw();
  controls.redraw();
  if (lastConnection) onConnection(lastConnection);
});

async function api(path) {
  return request('GET', path);
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
  applyRights();
  const claims = decodeToken(token());
  $('#who').textContent = claims.name || claims.sub || '';
  const exams = await grantedExams();
  const picker = $('#exam');
  picker.replaceChildren(...[...exams].map(([id, label]) => new Option(label, id)));
  const wanted = params.get('exam') ?? sessionStorage.getItem('examwatch.dashboard.exam');
  if (wanted && exams.has(wanted)) picker.value = wanted;
  if (exams.size === 0) {
    showBanner(t('dash.banner.no_exam'), 'error');
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
  controlSeqs.clear();
  openAlerts.clear();
  header.watch(exam);
  controls.watch(exam);
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
    const at = Date.parse(e.detail.server_time ?? '');
    view.reset(e.detail.students, Number.isFinite(at) ? at : undefined);
    header.snapshot(e.detail);
    header.studentsChanged();
    hands.snapshot(e.detail.students);
    // One alerts load: the panel's, whose open ones the badges count.
    alerts.load().then((rows) => {
      if (rows && client?.exam === exam) for (const a of rows) openAlerts.add(a);
    });
    controls.load();
    loadPast(exam, e.detail.seq);
  });
  client.addEventListener('event', (e) => onEvent(e.detail));
  // The exam-control events (exam_update, action, delivery, hand, …): the
  // library passes on what it does not handle itself as `message`.
  client.addEventListener('message', (e) => onEvent(e.detail));
  client.addEventListener('session_invalidated', () => showBanner(t('dash.banner.invalidated'), 'error'));
  client.connect();
}

/** Seqs of the control events applied, so one that comes twice (a replay) counts once. */
const controlSeqs = new Set();
const CONTROL = new Set(['exam_update', 'action', 'delivery', 'hand', 'hand_lowered', 'student_control']);

function onEvent(ev) {
  // Only the exam's numbered events (not a heartbeat's ack or the like).
  if (!ev || typeof ev !== 'object' || !Number.isFinite(ev.seq)) return;
  if (CONTROL.has(ev.type)) {
    if (Number.isFinite(ev.seq)) {
      if (controlSeqs.has(ev.seq)) return;
      controlSeqs.add(ev.seq);
      if (controlSeqs.size > 5000) controlSeqs.delete(controlSeqs.values().next().value);
    }
    if (ev.type === 'exam_update') {
      header.update(ev);
      // Every row's time left follows the exam's pauses.
      for (const id of view.rows.keys()) view.touch(id);
    }
    controls.event(ev);
  } else if (ev.type === 'student') {
    // Events replayed after a reconnect are applied like live ones; any
    // already in the view (`stale`) still belong in the timeline and
    // alerts if unseen there.
    if (!ev.stale) {
      view.upsert(ev.student);
      record.event(ev);
    }
    controls.event(ev);
    header.studentsChanged();
  } else if (ev.type === 'alert' || ev.type === 'alert_resolved') {
    openAlerts.event(ev);
  }
  if (catchUp) catchUp.events.push(ev);
  else toLists(ev);
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
      for (const ev of past) openAlerts.event(ev);
      for (const ev of waiting.events) toLists(ev);
    });
}

let lastConnection = null;

function onConnection(d) {
  lastConnection = d;
  const dot = $('#live');
  dot.dataset.state = d.state;
  dot.textContent = t(`dash.conn.state.${d.state}`);
  if (d.state === 'live') showBanner('', 'info');
  else if (d.state === 'offline') {
    const secs = Math.ceil((d.delayMs ?? 0) / 1000);
    showBanner(t('dash.banner.offline', { attempt: d.attempt, secs }), 'warn');
  } else if (d.state === 'connecting' && dot.dataset.everLive) {
    showBanner(t('dash.banner.reconnecting'), 'warn');
  } else if (d.state === 'closed' && d.code) {
    showBanner(t('dash.banner.closed', { code: d.code }), 'error');
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
// Skip links: past the 900 row controls, straight to a panel's heading.
for (const a of document.querySelectorAll('a.skip')) {
  a.addEventListener('click', (e) => {
    e.preventDefault();
    document.getElementById(a.hash.slice(1))?.focus();
  });
}
$('#exam').addEventListener('change', (e) => watch(e.target.value));
$('#filter-status').addEventListener('change', (e) => view.setFilter({ status: e.target.value }));
$('#filter-name').addEventListener('input', (e) => view.setFilter({ name: e.target.value }));
// Sortable headers: by click, or by keyboard (Tab to one, Enter or Space).
for (const th of document.querySelectorAll('[data-sort]')) {
  th.tabIndex = 0;
  th.setAttribute('aria-sort', th.dataset.dir === 'asc' ? 'ascending' : 'none');
  th.addEventListener('click', () => view.setSort(th.dataset.sort));
  th.addEventListener('keydown', (e) => {
    if (e.key !== 'Enter' && e.key !== ' ') return;
    e.preventDefault();
    view.setSort(th.dataset.sort);
  });
}
$('#announce-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const text = $('#announce-text').value.trim();
  const status = $('#announce-status');
  if (!text || !client) return;
  status.textContent = t('dash.announce.sending');
  status.dataset.state = 'sending';
  try {
    await client.announce(text);
    $('#announce-text').value = '';
    status.textContent = t('dash.announce.sent');
    status.dataset.state = 'sent';
  } catch (err) {
    status.textContent = t('dash.announce.failed', { message: err.message });
    status.dataset.state = 'failed';
  }
});

start();
