// The student demo page: a five-question exam built on the client library,
// so the whole loop (student page → server → dashboard) can be seen and
// tested in a browser. The token comes from `#token=` or `?token=` (then
// kept in this tab's sessionStorage and removed from the address bar); the
// exam is `?exam=` or the first one the token grants.
//
// Everything a student must see of the exam comes from the library's
// events and accessors, so an exam client built on it gets the same for
// free: the waiting room (`exam` with `waiting`), the countdown
// (`remaining()`, the server's clock; still while paused), pauses, private
// messages (`message`, acknowledged by the library), the end screens
// (`terminated`, `revoked`, `timeup`), and a raised hand (`raiseHand`).
// Every string is in web/i18n (section "student demo page"); user strings
// (names, messages, reasons) are put in <bdi> with textContent only.

import { ExamwatchClient, decodeToken, MAX_HAND_TEXT } from '/client/examwatch.js';
import { formatDuration, formatTime, languageSwitch, onLanguage, t, translate } from '/i18n/i18n.js';

export const QUESTIONS = [
  { id: 'q1', key: 'student.q1', options: ['6', '8', '4'] },
  { id: 'q2', key: 'student.q2', options: ['2x', 'x', 'x³/3'] },
  { id: 'q3', key: 'student.q3', options: ['3', '10', '100'] },
  { id: 'q4', key: 'student.q4', options: ['12', '14', '72'] },
  { id: 'q5', key: 'student.q5', options: ['91', '97', '99'] },
];

/** A minute or less left: the countdown says so (in words too, for screen readers). */
const LOW_MS = 60000;

const $ = (sel) => document.querySelector(sel);
// `#token=` (preferred: a fragment never reaches the server or a proxy's
// log) or `?token=` (older links).
const params = new URLSearchParams(location.search);
const fragment = new URLSearchParams(location.hash.slice(1));
const given = fragment.get('token') ?? params.get('token');
if (given) {
  sessionStorage.setItem('examwatch.student.token', given);
  params.delete('token');
  fragment.delete('token');
  const rest = params.toString();
  const frag = fragment.toString();
  history.replaceState(null, '', location.pathname + (rest ? `?${rest}` : '') + (frag ? `#${frag}` : ''));
}
const token = sessionStorage.getItem('examwatch.student.token') ?? '';
const claims = decodeToken(token);
const exam = params.get('exam') ?? (Array.isArray(claims.exams) ? claims.exams[0] : null);

/**
 * What the page shows that is not in the client's own state, kept as
 * i18n keys and values so a language switch redraws it all.
 */
const page = {
  answered: new Set(),
  /** The id of each question's latest answer: its state is the question's. */
  latest: new Map(),
  /** Questions whose answer() threw: the reason, shown until the next try. */
  unsaved: new Map(),
  /** `{key, vars}` of the banner under the header, or null. */
  notice: null,
  storageWarning: false,
  /** This page was taken over by another tab or device. */
  invalidated: false,
  submit: null,
  submitted: false,
  /** The teacher's reason for ending this student's exam (a user string). */
  terminatedReason: null,
  hand: null,
  messages: [],
  announcements: [],
};

/**
 * Sets an element's text only when it changes: the page redraws four times
 * a second, and rewriting a live region with the same words would make
 * some screen readers announce them again.
 */
function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

/** `text` in an isolated element (a user's string: never markup). */
function bdi(text) {
  const b = document.createElement('bdi');
  b.textContent = String(text ?? '');
  return b;
}

function renderQuestions(client) {
  const form = $('#questions');
  for (const q of QUESTIONS) {
    const fs = document.createElement('fieldset');
    fs.dataset.question = q.id;
    const legend = document.createElement('legend');
    const text = document.createElement('span');
    text.className = 'qtext';
    const saved = document.createElement('span');
    saved.className = 'saved';
    saved.setAttribute('role', 'status');
    legend.append(text, ' ', saved);
    fs.append(legend);
    for (const option of q.options) {
      const label = document.createElement('label');
      const input = document.createElement('input');
      input.type = 'radio';
      input.name = q.id;
      input.value = option;
      input.addEventListener('change', () => {
        try {
          page.latest.set(q.id, client.answer(q.id, option));
          page.unsaved.delete(q.id);
        } catch (e) {
          page.unsaved.set(q.id, e.message);
          showPending(client);
          return;
        }
        page.answered.add(q.id);
        client.progress(q.id, page.answered.size);
        showPending(client);
      });
      label.append(input, ' ', bdi(option));
      fs.append(label);
    }
    form.append(fs);
  }
}

function renderQuestionTexts() {
  for (const q of QUESTIONS) {
    const node = document.querySelector(`fieldset[data-question="${q.id}"] .qtext`);
    if (node) node.textContent = `${q.id.toUpperCase()}. ${t(q.key)}`;
  }
}

function showPending(client) {
  const pending = client.pending();
  const node = $('#pending');
  node.dataset.count = String(pending.length);
  node.textContent = pending.length ? t('student.pending', { count: pending.length }) : t('student.all_saved');
  const waiting = new Set(pending.filter((m) => m.type === 'answer').map((m) => m.id));
  const refused = new Map(client.rejected().map((r) => [r.message.id, r]));
  for (const fs of document.querySelectorAll('fieldset[data-question]')) {
    const q = fs.dataset.question;
    const id = page.latest.get(q);
    const mark = fs.querySelector('.saved');
    let state = page.answered.has(q) ? 'saved' : '';
    if (waiting.has(id)) state = 'saving';
    else if (refused.has(id)) state = 'rejected';
    if (page.unsaved.has(q)) state = 'rejected';
    mark.dataset.state = state;
    mark.textContent = {
      saved: `✓ ${t('student.saved')}`,
      saving: `… ${t('student.saving')}`,
      rejected: page.unsaved.has(q)
        ? `✗ ${t('student.not_saved_because', { reason: page.unsaved.get(q) })}`
        : `✗ ${t('student.not_saved', { code: refused.get(id)?.code })}`,
      '': '',
    }[state];
  }
}

/** The phase line, the countdown, the screens and which inputs work. */
function renderExam(client) {
  const st = client?.examState() ?? null;
  let kind = 'unknown';
  if (page.invalidated) kind = 'invalidated';
  else if (st?.stopped) kind = st.stopped;
  else if (st?.timeUp) kind = 'timeup';
  else if (st?.waiting) kind = 'waiting';
  else if (st?.paused) kind = 'paused';
  else if (st?.phase === 'in_progress') kind = 'running';
  // Symbols every system font has (DejaVu too): no emoji, which a
  // machine without an emoji font shows as empty boxes.
  const icons = { unknown: '…', invalidated: '⚠', terminated: '✖', revoked: '⊘', timeup: '⚑', waiting: '◔', paused: '❚❚', running: '▶' };
  $('#exam-bar').dataset.phase = kind;
  setText($('#phase-icon'), icons[kind]);
  setText($('#phase'), t(`student.phase_${kind}`));

  // The countdown: this student's own deadline, on the server's clock.
  const left = client?.remaining() ?? null;
  const box = $('#countdown-box');
  box.hidden = left === null || kind === 'terminated' || kind === 'revoked';
  if (left !== null) {
    const clock = $('#countdown');
    const state = left === 0 ? 'up' : st?.paused ? 'paused' : left <= LOW_MS ? 'low' : 'running';
    clock.dataset.state = state;
    clock.dataset.ms = String(left);
    const suffix = state === 'paused' ? ` (${t('student.countdown_paused')})` : state === 'low' ? ` (${t('student.countdown_low')})` : '';
    setText(clock, formatDuration(left) + suffix);
  }
  const extra = st?.extraMinutes ?? 0;
  $('#extra').hidden = !(extra > 0);
  if (extra > 0) setText($('#extra'), `+ ${t('student.extra_time', { minutes: extra })}`);

  // Waiting room and the end screens replace nothing: the questions stay
  // visible but disabled, so a student sees what they answered.
  const screen = $('#screen');
  const screens = ['waiting', 'terminated', 'revoked', 'timeup'];
  screen.hidden = !screens.includes(kind);
  if (!screen.hidden) {
    screen.dataset.kind = kind;
    setText($('#screen-title'), t(`student.screen_${kind}_title`));
    const text = $('#screen-text');
    if (kind === 'waiting') {
      setText(text, st.opensAt !== null ? t('student.screen_waiting_at', { time: formatTime(st.opensAt) }) : t('student.screen_waiting_text'));
    } else if (kind === 'terminated' && page.terminatedReason) {
      const label = `${t('student.screen_terminated_reason')} `;
      if (text.textContent !== label + page.terminatedReason || !text.querySelector('bdi')) {
        text.replaceChildren(label, bdi(page.terminatedReason));
      }
    } else {
      setText(text, t(`student.screen_${kind}_text`));
    }
  }
  $('#paused').hidden = kind !== 'paused';
  if (kind === 'paused') setText($('#paused'), `❚❚ ${t('student.paused_banner')}`);

  // Answers only while the exam runs (before the first welcome the state is
  // unknown: answers are kept in the outbox and sent when it runs).
  const locked = page.invalidated || (st !== null && !st.running);
  for (const input of document.querySelectorAll('#questions input')) input.disabled = locked;
  $('#submit').disabled = locked || page.submitted;
  const live = client?.state === 'live';
  const handOpen = live && !page.invalidated && !(st?.stopped || st?.timeUp);
  $('#raise-hand').disabled = !handOpen;
  $('#hand-text').disabled = !handOpen;
}

function renderConnection(client) {
  const state = client?.state ?? 'idle';
  $('#conn').dataset.state = state;
  setText($('#conn'), t(`student.conn_${state}`));
  const notice = $('#notice');
  notice.hidden = !page.notice;
  if (page.notice) setText(notice, t(page.notice.key, page.notice.vars));
  $('#storage').hidden = !page.storageWarning;
  if (page.storageWarning) setText($('#storage'), t('student.storage_warning'));
  setText($('#submit-status'), page.submit ? t(page.submit.key, page.submit.vars) : '');
  setText($('#hand-status'), page.hand ? t(page.hand.key, page.hand.vars) : '');
}

function renderLists() {
  const messages = page.messages.map((m) => {
    const li = document.createElement('li');
    li.dataset.id = String(m.id ?? '');
    const head = document.createElement('span');
    const time = document.createElement('time');
    if (Number.isFinite(m.at)) {
      time.dateTime = new Date(m.at).toISOString();
      time.textContent = formatTime(m.at);
    }
    const from = bdi(m.from || t('student.message_from_proctor'));
    from.className = 'from';
    head.append('✉ ', time, ' ', from);
    const text = bdi(m.text);
    text.className = 'text';
    li.append(head, text);
    return li;
  });
  $('#messages').replaceChildren(...messages);
  $('#messages-none').hidden = page.messages.length > 0;
  const announcements = page.announcements.map((a) => {
    const li = document.createElement('li');
    li.dataset.seq = String(a.seq);
    const time = document.createElement('time');
    if (Number.isFinite(a.at)) time.textContent = formatTime(a.at);
    li.append(time, ' ');
    if (a.from) li.append(bdi(a.from), ': ');
    li.append(bdi(a.text));
    return li;
  });
  $('#announcements').replaceChildren(...announcements);
}

function start() {
  translate(document);
  languageSwitch($('#lang'));
  if (!token || !exam) {
    page.notice = { key: 'student.notice_no_token' };
    renderConnection(null);
    renderExam(null);
    return;
  }
  $('#who').replaceChildren(bdi(claims.name || claims.sub || ''));
  const client = new ExamwatchClient({ exam, token });
  window.examwatch = { client };
  renderQuestions(client);
  renderQuestionTexts();
  for (const m of client.pending()) {
    if (m.type !== 'answer') continue;
    page.answered.add(String(m.question));
    page.latest.set(String(m.question), m.id);
  }
  const redraw = () => {
    renderConnection(client);
    renderExam(client);
  };
  client.addEventListener('connection', (e) => {
    const { state, code } = e.detail;
    if (state === 'closed') {
      // 4001 comes with session_invalidated and 4003 with terminated or
      // revoked, which say why; anything else is a plain stop.
      if (code && code !== 4001 && code !== 4003) page.notice = { key: 'student.notice_closed', vars: { code } };
    } else if (state === 'offline') {
      // A draft exam refuses tickets (403 exam_not_open) until a teacher
      // opens it: the library retries, the page says what it waits for.
      const notOpen = /exam_not_open/.test(e.detail.reason ?? '');
      page.notice = { key: notOpen ? 'student.notice_not_open' : 'student.notice_offline' };
    } else if (state === 'live' && page.notice?.key !== 'student.notice_invalidated') {
      page.notice = null;
    }
    redraw();
  });
  client.addEventListener('rejected', (e) => {
    if (e.detail.message.type === 'submit') page.submit = { key: 'student.not_submitted', vars: { code: e.detail.code } };
    showPending(client);
    redraw();
  });
  client.addEventListener('session_rejected', () => {
    page.notice = { key: 'student.notice_rejected' };
    redraw();
  });
  client.addEventListener('storage_error', () => {
    page.storageWarning = true;
    redraw();
  });
  const submitted = () => {
    page.submit = { key: 'student.submitted' };
    page.submitted = true;
    redraw();
  };
  client.addEventListener('status', (e) => {
    if (e.detail.student?.status === 'submitted') submitted();
  });
  client.addEventListener('outbox', () => showPending(client));
  client.addEventListener('ack', (e) => {
    if (e.detail.message?.type === 'submit') submitted();
  });
  client.addEventListener('announcement', (e) => {
    page.announcements.unshift({ seq: e.detail.seq, at: Date.parse(e.detail.at), from: e.detail.from, text: e.detail.text });
    renderLists();
  });
  client.addEventListener('message', (e) => {
    page.messages.unshift({ id: e.detail.id, at: Date.parse(e.detail.at), from: e.detail.from, text: e.detail.text });
    // A proctor's answer to the hand lowers it (PROTOCOL.md 4.14).
    if (e.detail.reply_to && page.hand?.key === 'student.hand_up') page.hand = { key: 'student.hand_answered' };
    renderLists();
    redraw();
  });
  client.addEventListener('hand_lowered', () => {
    // Lowered by a proctor without a message.
    page.hand = { key: 'student.hand_dismissed' };
    redraw();
  });
  client.addEventListener('exam', redraw);
  client.addEventListener('timeup', redraw);
  client.addEventListener('terminated', (e) => {
    page.terminatedReason = e.detail.reason;
    redraw();
  });
  client.addEventListener('revoked', redraw);
  client.addEventListener('session_invalidated', () => {
    page.invalidated = true;
    page.notice = { key: 'student.notice_invalidated' };
    redraw();
  });
  $('#submit').addEventListener('click', () => {
    try {
      client.submit();
      page.submit = { key: 'student.submitting' };
    } catch (e) {
      page.submit = { key: 'student.not_submitted_because', vars: { reason: e.message } };
    }
    redraw();
  });
  $('#hand-text').setAttribute('maxlength', String(MAX_HAND_TEXT));
  $('#hand-form').addEventListener('submit', (e) => {
    e.preventDefault();
    let raised;
    try {
      raised = client.raiseHand($('#hand-text').value);
    } catch (err) {
      page.hand = { key: 'student.hand_failed', vars: { reason: err.message } };
      redraw();
      return;
    }
    page.hand = { key: 'student.hand_sending' };
    redraw();
    raised.then(
      () => {
        page.hand = { key: 'student.hand_up' };
        $('#hand-text').value = '';
        redraw();
      },
      (err) => {
        page.hand = { key: 'student.hand_failed', vars: { reason: err.message } };
        redraw();
      },
    );
  });
  onLanguage(() => {
    renderQuestionTexts();
    showPending(client);
    renderLists();
    redraw();
  });
  // The countdown ticks from the server's clock estimate; 4 times a second
  // so a displayed second is never more than a quarter late.
  setInterval(() => renderExam(client), 250);
  client.watchFocus();
  client.connect();
  showPending(client);
  renderLists();
  redraw();
}

start();
