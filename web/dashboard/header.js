// The exam header: the phase and the buttons valid from it, the countdown,
// the waiting room and the report.
//
// The phase and the exam's clock (times, past and open pauses) come from
// the snapshot, then every `exam_update` (PROTOCOL.md 4.13; both carry the
// clock's `version`, so an older one never undoes a newer one), so it follows changes made
// anywhere (another dashboard, the server's own timers). The buttons are
// the diagram's arrows from the current phase (src/control/phase.rs); a
// change is `POST /v1/exams/{id}/phase`, and a refusal (409
// invalid_transition when someone else got there first, 403 for a role
// without the right) is shown with the server's code and message. Ending
// asks for confirmation. The countdown is to `closes_at` pushed back by the
// exam's pauses (before the start: to `opens_at`), by the server's clock
// (the client library's serverNow()).
// Before the start the waiting room lists who is connected. The report is
// `report.csv`, fetched with the token in a header (a plain link could not
// carry it) and handed to the browser as a download.

import { t, formatDuration, formatDateTime } from '../i18n/i18n.js';
import { call, request, examPath } from './api.js';
import { ask } from './dialog.js';
import { pausedBetween } from './clock.js';

const $ = (sel) => document.querySelector(sel);

/** The phase changes a button offers from each phase: [target, label key]. */
const BUTTONS = {
  draft: [['scheduled', 'dash.phase.btn.schedule'], ['ended', 'dash.phase.btn.end']],
  scheduled: [['in_progress', 'dash.phase.btn.start'], ['ended', 'dash.phase.btn.end']],
  in_progress: [['paused', 'dash.phase.btn.pause'], ['ended', 'dash.phase.btn.end']],
  paused: [['in_progress', 'dash.phase.btn.resume'], ['ended', 'dash.phase.btn.end']],
  ended: [],
  grading: [],
};
const PHASES = Object.keys(BUTTONS);

const ms = (v) => {
  if (typeof v === 'number') return v;
  const n = Date.parse(v ?? '');
  return Number.isFinite(n) ? n : null;
};

export class Header {
  /**
   * `now()`: server time in ms; `students()`: the StudentStates the view
   * holds; `may(right)`: whether the token's role holds a right.
   */
  constructor({ now, students, may }) {
    this.now = now;
    this.students = students;
    this.may = may;
    this.exam = null;
    this.phase = null;
    this.opensAt = null;
    this.closesAt = null;
    /** The exam-wide pause spans (server ms), from the latest clock. */
    this.pauses = [];
    /** The version of the exam clock shown (PROTOCOL.md 4.13). */
    this.version = -Infinity;
    this._waitingTimer = null;
    $('#report').addEventListener('click', () => this.download());
    setInterval(() => this._tick(), 500);
  }

  /** A new exam is watched: forget the old one; its snapshot brings the timing. */
  watch(exam) {
    this.exam = exam;
    this.phase = null;
    this.opensAt = this.closesAt = null;
    this.pauses = [];
    this.version = -Infinity;
    this._status('');
    this._paint();
  }

  /**
   * The snapshot's phase and the exam's whole clock (times and pauses, past
   * ones too), so a dashboard opened after a pause counts it.
   */
  snapshot(snap) {
    if (PHASES.includes(snap.phase)) this.phase = snap.phase;
    if (!this._clock(snap.clock, snap.version)) {
      // No clock (an older server): a pause that began before we looked is
      // counted from the snapshot on.
      const at = ms(snap.server_time) ?? this.now();
      if (this.phase === 'paused' && !this.pauses.some((p) => p.to === null)) this.pauses = [{ from: at, to: null }];
    }
    this._paint();
  }

  /**
   * Takes the exam's `clock` unless an update already seen is newer (by
   * `version`); whether there was a clock to take.
   */
  _clock(clock, version) {
    if (!clock || typeof clock !== 'object') return false;
    if (Number.isFinite(version)) {
      if (version < this.version) return true;
      this.version = version;
    }
    if (PHASES.includes(clock.phase)) this.phase = clock.phase;
    this.opensAt = ms(clock.opens_at);
    this.closesAt = ms(clock.closes_at);
    if (Array.isArray(clock.pauses)) this.pauses = clock.pauses.map((p) => ({ from: p.from, to: p.to ?? null }));
    return true;
  }

  /** An `exam_update` (watchers' form, with the exam's whole `clock`). */
  update(ev) {
    if (Number.isFinite(ev.version) && ev.version < this.version) return;
    if (PHASES.includes(ev.phase)) this.phase = ev.phase;
    this.opensAt = ms(ev.opens_at);
    this.closesAt = ms(ev.closes_at);
    if (this._clock(ev.clock, ev.version)) {
      if (PHASES.includes(ev.phase)) this.phase = ev.phase;
    } else if (ev.phase === 'paused' && !this.pauses.some((p) => p.to === null)) this.pauses = [...this.pauses, { from: ms(ev.server_time) ?? this.now(), to: null }];
    else if (ev.phase !== 'paused') this.pauses = this.pauses.map((p) => (p.to === null ? { ...p, to: ms(ev.server_time) ?? this.now() } : p));
    this._paint();
  }

  /** The students changed: the waiting room is redrawn soon. */
  studentsChanged() {
    if (this._waitingTimer !== null || !this._waiting()) return;
    this._waitingTimer = setTimeout(() => {
      this._waitingTimer = null;
      this._paintWaiting();
    }, 200);
  }

  /** Redraws every text (after a language switch). */
  redraw() {
    this._paint();
  }

  async setPhase(phase) {
    if (phase === 'ended') {
      const ok = await ask({ title: t('dash.phase.end.title'), text: t('dash.phase.end.text'), confirm: t('dash.phase.end.confirm'), danger: true });
      if (!ok) return;
    }
    this._acted = true;
    this._status(t('dash.phase.sending'), 'pending');
    try {
      const e = await request('POST', examPath(this.exam, '/phase'), { phase });
      if (PHASES.includes(e?.phase)) this.phase = e.phase;
      this._status(t('dash.phase.done', { phase: t(`dash.phase.${this.phase}`) }), 'ok');
      this._paint();
    } catch (err) {
      this._status(t('dash.refused', { status: err.status, code: err.code, message: err.message }), 'error');
    }
  }

  async download() {
    const exam = this.exam;
    this._status(t('dash.report.loading'), 'pending');
    try {
      const blob = await (await call('GET', examPath(exam, '/report.csv'))).blob();
      const url = URL.createObjectURL(blob);
      const a = document.createElement('a');
      a.href = url;
      a.download = `report-${exam}.csv`;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      this._status(t('dash.report.done'), 'ok');
    } catch (err) {
      this._status(t('dash.refused', { status: err.status, code: err.code, message: err.message }), 'error');
    }
  }

  // ---- internals --------------------------------------------------------

  _waiting() {
    return this.phase === 'scheduled' || this.phase === 'draft';
  }

  _status(text, kind = '') {
    const s = $('#phase-status');
    s.textContent = text;
    s.dataset.kind = kind;
  }

  _paint() {
    const value = $('#phase-value');
    value.textContent = this.phase ? t(`dash.phase.${this.phase}`) : '—';
    value.dataset.phase = this.phase ?? '';
    const box = $('#phase-buttons');
    const buttons = this.may('set_phase') ? BUTTONS[this.phase] ?? [] : [];
    // The focus was on a button about to be replaced (or on one just used,
    // lost since): it goes to the new phase's first button, or the phase.
    const active = document.activeElement;
    const refocus = box.contains(active) || (this._acted && (active === document.body || !active));
    box.replaceChildren(
      ...buttons.map(([to, key]) => {
        const b = document.createElement('button');
        b.type = 'button';
        b.dataset.phase = to;
        b.textContent = t(key);
        if (to === 'ended') b.className = 'danger';
        b.addEventListener('click', () => this.setPhase(to));
        return b;
      }),
    );
    box.hidden = buttons.length === 0;
    if (refocus) {
      this._acted = false;
      (box.querySelector('button') ?? value).focus();
    }
    $('#waiting-room').hidden = !this._waiting();
    if (this._waiting()) this._paintWaiting();
    this._tick();
  }

  _tick() {
    const box = $('#countdown');
    const label = $('#countdown-label');
    const time = $('#countdown-time');
    let key = '';
    let left = null;
    let at = null;
    const now = this.now();
    if (this._waiting() && this.opensAt !== null) {
      key = 'dash.countdown.opens';
      left = this.opensAt - now;
      at = this.opensAt;
    } else if ((this.phase === 'in_progress' || this.phase === 'paused') && this.closesAt !== null) {
      key = this.phase === 'paused' ? 'dash.countdown.paused' : 'dash.countdown.closes';
      // Every deadline counts the exam's pauses (PROTOCOL.md 4.13), so the
      // exam closes that much after `closes_at`: a pause stops the countdown.
      at = this.closesAt + pausedBetween(this.pauses, -Infinity, now);
      left = at - now;
    } else if (this.phase === 'ended' || this.phase === 'grading') {
      key = 'dash.countdown.ended';
    }
    box.hidden = !key;
    const text = key ? t(key) : '';
    if (label.textContent !== text) label.textContent = text;
    const clock = left === null ? '' : formatDuration(left);
    if (time.textContent !== clock) time.textContent = clock;
    const title = at === null ? '' : formatDateTime(at);
    if (box.title !== title) box.title = title;
  }

  _paintWaiting() {
    const present = this.students().filter((s) => s.connected);
    present.sort((a, b) => (a.name || a.student_id).localeCompare(b.name || b.student_id));
    $('#waiting-count').textContent = t('dash.waiting.count', { n: present.length });
    const list = $('#waiting-list');
    list.replaceChildren(
      ...present.map((s) => {
        const li = document.createElement('li');
        li.dataset.student = s.student_id;
        const b = document.createElement('bdi');
        b.textContent = s.name || s.student_id;
        li.append(b);
        return li;
      }),
    );
  }
}
