// The student demo page: a five-question exam built on the client library,
// so the whole loop (student page → server → dashboard) can be seen and
// tested in a browser. The token comes from `?token=` (then kept in this
// tab's sessionStorage and removed from the address bar); the exam is
// `?exam=` or the first one the token grants.

import { ExamwatchClient, decodeToken } from '/client/examwatch.js';

export const QUESTIONS = [
  { id: 'q1', text: '2 + 2 × 2 =', options: ['6', '8', '4'] },
  { id: 'q2', text: 'The derivative of x² is', options: ['2x', 'x', 'x³/3'] },
  { id: 'q3', text: 'log₁₀ 1000 =', options: ['3', '10', '100'] },
  { id: 'q4', text: 'The square root of 144 is', options: ['12', '14', '72'] },
  { id: 'q5', text: 'A prime number:', options: ['91', '97', '99'] },
];

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
const answered = new Set();
/** The id of each question's latest answer: its state is the question's. */
const latest = new Map();

function renderQuestions(client) {
  const form = $('#questions');
  for (const q of QUESTIONS) {
    const fs = document.createElement('fieldset');
    fs.dataset.question = q.id;
    const legend = document.createElement('legend');
    legend.textContent = `${q.id.toUpperCase()}. ${q.text}`;
    const saved = document.createElement('span');
    saved.className = 'saved';
    legend.append(' ', saved);
    fs.append(legend);
    for (const option of q.options) {
      const label = document.createElement('label');
      const input = document.createElement('input');
      input.type = 'radio';
      input.name = q.id;
      input.value = option;
      input.addEventListener('change', () => {
        try {
          latest.set(q.id, client.answer(q.id, option));
        } catch (e) {
          saved.textContent = `not saved: ${e.message}`;
          saved.dataset.state = 'rejected';
          return;
        }
        answered.add(q.id);
        client.progress(q.id, answered.size);
        showPending(client);
      });
      label.append(input, ` ${option}`);
      fs.append(label);
    }
    form.append(fs);
  }
}

function showPending(client) {
  const pending = client.pending();
  const node = $('#pending');
  node.dataset.count = String(pending.length);
  node.textContent = pending.length ? `${pending.length} waiting to be saved.` : 'All answers saved.';
  const waiting = new Set(pending.filter((m) => m.type === 'answer').map((m) => m.id));
  const refused = new Map(client.rejected().map((r) => [r.message.id, r]));
  for (const fs of document.querySelectorAll('fieldset[data-question]')) {
    const q = fs.dataset.question;
    const id = latest.get(q);
    const mark = fs.querySelector('.saved');
    let state = answered.has(q) ? 'saved' : '';
    if (waiting.has(id)) state = 'saving';
    else if (refused.has(id)) state = 'rejected';
    mark.dataset.state = state;
    mark.textContent = { saved: 'saved', saving: 'saving…', rejected: `not saved (${refused.get(id)?.code})`, '': '' }[state];
  }
}

function start() {
  if (!token || !exam) {
    $('#notice').hidden = false;
    $('#notice').textContent = 'Open this page with #token=<student token> (see `examwatch demo`).';
    return;
  }
  $('#who').textContent = claims.name || claims.sub || '';
  const client = new ExamwatchClient({ exam, token });
  window.examwatch = { client };
  renderQuestions(client);
  for (const m of client.pending()) {
    if (m.type !== 'answer') continue;
    answered.add(String(m.question));
    latest.set(String(m.question), m.id);
  }
  const closePage = (text) => {
    $('#notice').hidden = false;
    $('#notice').textContent = text;
    for (const input of document.querySelectorAll('#questions input, #submit')) input.disabled = true;
  };
  client.addEventListener('connection', (e) => {
    const { state } = e.detail;
    $('#conn').dataset.state = state;
    $('#conn').textContent = state === 'live' ? 'online' : state;
    if (state === 'closed') {
      // 4001 comes with session_invalidated, which says why.
      if (e.detail.code && e.detail.code !== 4001) closePage(`The connection was closed (${e.detail.code}). Reload the page.`);
      return;
    }
    $('#notice').hidden = state === 'live' || state === 'connecting';
    if (state === 'offline') $('#notice').textContent = 'Offline — your answers are kept here and sent when the connection is back.';
  });
  client.addEventListener('rejected', (e) => {
    if (e.detail.message.type === 'submit') $('#submit-status').textContent = `not submitted (${e.detail.code})`;
    showPending(client);
  });
  client.addEventListener('session_rejected', () => {
    $('#notice').hidden = false;
    $('#notice').textContent = 'This exam is open somewhere else; trying again in a while.';
  });
  client.addEventListener('storage_error', () => {
    $('#storage').hidden = false;
    $('#storage').textContent = 'This browser does not let the page keep your answers: do not close this tab until all are saved.';
  });
  client.addEventListener('status', (e) => {
    const s = e.detail.student;
    if (s.status === 'submitted') $('#submit-status').textContent = 'Submitted.';
  });
  client.addEventListener('outbox', () => showPending(client));
  client.addEventListener('ack', (e) => {
    if (e.detail.message?.type === 'submit') {
      $('#submit-status').textContent = 'Submitted.';
      $('#submit').disabled = true;
    }
  });
  client.addEventListener('announcement', (e) => {
    const li = document.createElement('li');
    li.dataset.seq = String(e.detail.seq);
    li.textContent = `${new Date(e.detail.at).toLocaleTimeString([], { hour12: false })} ${e.detail.from ? `${e.detail.from}: ` : ''}${e.detail.text}`;
    $('#announcements').prepend(li);
  });
  client.addEventListener('session_invalidated', () => closePage('This exam was opened somewhere else; this page is closed.'));
  $('#submit').addEventListener('click', () => {
    try {
      client.submit();
      $('#submit-status').textContent = 'submitting…';
    } catch (e) {
      $('#submit-status').textContent = `not submitted: ${e.message}`;
    }
  });
  client.watchFocus();
  client.connect();
  showPending(client);
}

start();
