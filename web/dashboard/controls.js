// Proctor actions from the dashboard: the row menu, the bulk bar on a
// selection, and what became of each action, per student.
//
// Every action is `POST /v1/exams/{id}/actions` (PROTOCOL.md 4.14) with an
// id chosen here (api.js newId(), which works on plain http too): the server stores it under that id
// before applying it, so after a network error the very same request is
// sent again (same id, same body) and applies once. The answer lists each
// target with its `delivery` (`pending`, `delivered`, `none`, `superseded`)
// and any per-student `error` (`untimed`, `already_paused`, …); after it,
// the exam's stream carries `delivery` events when a student acknowledges
// the frame, and `action` events for actions taken from another dashboard
// or instance. So a row shows its latest action's state going from pending
// to delivered as it happens, without polling. A refused action (403 for a
// role without the right, 409, 422) says the server's code and message in
// the status line, never silently.
//
// The row menu is one shared element (role=menu) opened from a row's
// button: Enter or Space opens it with the focus on its first item, arrows
// move, Escape closes it and gives the focus back to the button. Items the
// role may not use are not there at all.

import { t } from '../i18n/i18n.js';
import { request, examPath, ApiError, newId, postAction } from './api.js';
import { ask } from './dialog.js';
import { KIND_RIGHT } from './rights.js';

const $ = (sel) => document.querySelector(sel);
const MAX_ACTIONS_LISTED = 50;

/** The row menu's items, in order: [kind, label key]. */
const ROW_ITEMS = [
  ['extend', 'dash.act.extend'],
  ['pause', 'dash.act.pause'],
  ['resume', 'dash.act.resume'],
  ['message', 'dash.act.message'],
  ['terminate', 'dash.act.terminate'],
  ['deny', 'dash.act.deny'],
  ['allow', 'dash.act.allow'],
  ['reset_session', 'dash.act.reset_session'],
];
/** The bulk bar's: [kind, label key]. */
const BULK_ITEMS = [
  ['extend', 'dash.act.extend'],
  ['message', 'dash.act.message'],
  ['pause', 'dash.act.pause'],
  ['resume', 'dash.act.resume'],
];
const RANK = { sending: 0, none: 1, superseded: 1, pending: 2, delivered: 3 };

export class Controls {
  /** `view`: the table; `may(right)`: the role's rights. */
  constructor({ view, may }) {
    this.view = view;
    this.may = may;
    this.exam = null;
    /** action id -> { id, kind, at, students: Map(student_id -> {delivery, error}) } */
    this.actions = new Map();
    /** student_id -> the id of the latest action that targeted them. */
    this.latest = new Map();
    /** student_id -> { terminated, denied, extensionMs, fromControl } */
    this.flags = new Map();
    this.selected = new Set();
    this._anchor = null;
    this._menuFor = null;
    this._menuButton = null;
    this._buildMenu();
    this._buildBulk();
    this._wireTable();
  }

  watch(exam) {
    this.exam = exam;
    this.actions.clear();
    this.latest.clear();
    this.flags.clear();
    this.selected.clear();
    $('#actions').replaceChildren();
    this._status('');
    this._paintBulk();
  }

  /** After a snapshot: the exam's recent actions, their deliveries as they are now. */
  async load() {
    const exam = this.exam;
    try {
      const { actions } = await request('GET', examPath(exam, '/actions?limit=500'));
      if (this.exam !== exam) return;
      for (const a of [...actions].reverse()) this.applyAction(a);
    } catch {
      // Not fatal: the live events still come.
    }
  }

  /** Stream events: `action`, `delivery`, and `student` states with a `control`. */
  event(ev) {
    if (ev.type === 'action' && ev.action) this.applyAction(ev.action);
    else if (ev.type === 'delivery') this._delivered(ev.action_id, ev.student_id, ev.state);
    else if (ev.type === 'student' && ev.control) this._control(ev.student.student_id, ev.control);
    else if (ev.type === 'student_control' && ev.control) this._control(ev.student_id, ev.control);
  }

  /** What the row of `id` shows besides its state. */
  info(id) {
    const latest = this.latest.get(id);
    const action = latest ? this.actions.get(latest) : null;
    const entry = action?.students.get(id);
    return {
      flags: this.flags.get(id) ?? null,
      last: action && entry ? { kind: action.kind, delivery: entry.delivery, error: entry.error } : null,
      selected: this.selected.has(id),
    };
  }

  /**
   * Sends an action; `targets` is a list of student ids or 'all'. Resolves
   * with the server's answer, or null when it was refused (reported).
   */
  async run(kind, targets, fields = {}) {
    try {
      return await this._run(kind, targets, fields);
    } catch (err) {
      // A fault of the page itself (not the server's answer): said, never silent.
      this._status(t('dash.act.error', { action: t(`dash.kind.${kind}`), message: String(err?.message ?? err) }), 'error');
      return null;
    }
  }

  async _run(kind, targets, fields) {
    const id = newId('act');
    const body = { id, kind, ...fields };
    if (targets === 'all') body.all = true;
    else body.students = [...targets];
    const action = this._action({ id, kind, at: null });
    if (Array.isArray(targets)) for (const s of targets) this._entry(action, s, { delivery: 'sending' });
    this._status(t('dash.act.sending', { action: t(`dash.kind.${kind}`) }), 'pending');
    let answer = null;
    let failure = null;
    try {
      answer = await postAction(this.exam, body);
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      failure = err;
    }
    if (answer) {
      this.applyAction(answer);
      const failed = answer.students.filter((s) => s.error).length;
      this._status(
        failed
          ? t('dash.act.partly', { action: t(`dash.kind.${kind}`), n: answer.students.length, failed })
          : t('dash.act.done', { action: t(`dash.kind.${kind}`), n: answer.students.length }),
        failed ? 'error' : 'ok',
      );
      return answer;
    }
    const why = t('dash.refused', { status: failure.status, code: failure.code, message: failure.message });
    for (const entry of action.students.values()) {
      entry.delivery = 'failed';
      entry.error = failure.code;
    }
    action.refused = why;
    for (const s of action.students.keys()) this.view.touch(s);
    this._paintActions();
    this._status(t('dash.act.refused', { action: t(`dash.kind.${kind}`), why }), 'error');
    return null;
  }

  /** The answer, an `action` event or a listed action: merged by id. */
  applyAction(a) {
    const action = this._action(a);
    const first = !action.applied;
    action.applied = true;
    for (const s of a.students ?? []) {
      this._entry(action, s.student_id, { delivery: s.delivery, error: s.error ?? null });
      if (first && !s.error) this._effect(a.kind, s);
    }
    this._paintActions();
  }

  redraw() {
    this._buildMenu();
    this._buildBulk();
    this._paintActions();
  }

  // ---- state ------------------------------------------------------------

  _action({ id, kind, at }) {
    let action = this.actions.get(id);
    if (!action) {
      action = { id, kind, at, students: new Map(), applied: false };
      this.actions.set(id, action);
      // Oldest first: forget the oldest beyond a bound (they stay on the server).
      if (this.actions.size > 1000) this.actions.delete(this.actions.keys().next().value);
    }
    if (at) action.at = at;
    return action;
  }

  _entry(action, studentId, { delivery, error }) {
    const old = action.students.get(studentId);
    // Never back: an answer or an event "as first stored" can arrive after
    // the student's `delivery` event.
    const keep = old && (RANK[old.delivery] ?? 0) > (RANK[delivery] ?? 0);
    action.students.set(studentId, { delivery: keep ? old.delivery : delivery, error: error ?? old?.error ?? null });
    const prev = this.latest.get(studentId);
    if (!prev || prev === action.id || (this.actions.get(prev)?.at ?? '') <= (action.at ?? '\uffff')) this.latest.set(studentId, action.id);
    this.view.touch(studentId);
  }

  _delivered(actionId, studentId, state) {
    const action = this.actions.get(actionId);
    if (!action) return;
    this._entry(action, studentId, { delivery: state, error: null });
    this._paintActions();
  }

  _flags(id) {
    let f = this.flags.get(id);
    if (!f) this.flags.set(id, (f = { terminated: false, denied: false, extensionMs: 0, fromControl: false }));
    return f;
  }

  /** What an applied action changed for one student (until a control record says). */
  _effect(kind, s) {
    const f = this._flags(s.student_id);
    if (kind === 'terminate') f.terminated = true;
    if (kind === 'deny') f.denied = true;
    if (kind === 'allow') f.denied = false;
    if (kind === 'extend' && !f.fromControl && Number.isFinite(s.applied_ms)) f.extensionMs += s.applied_ms;
    this.view.touch(s.student_id);
  }

  /** A student's control record (PROTOCOL.md 4.13): the truth, when it comes. */
  _control(id, control) {
    const f = this._flags(id);
    if (Number.isFinite(control.clock?.extension_ms)) {
      f.extensionMs = control.clock.extension_ms;
      f.fromControl = true;
    }
    if (typeof control.denied === 'boolean') f.denied = control.denied;
    if (Array.isArray(control.finished)) f.terminated = control.finished[0] === 'terminated';
    this.view.touch(id);
  }

  _status(text, kind = '') {
    const s = $('#control-status');
    s.textContent = text;
    s.dataset.kind = kind;
  }

  // ---- row menu ---------------------------------------------------------

  _buildMenu() {
    const menu = $('#row-menu');
    menu.replaceChildren();
    for (const [kind, key] of ROW_ITEMS) {
      if (!this.may(KIND_RIGHT[kind])) continue;
      const item = document.createElement('button');
      item.type = 'button';
      item.setAttribute('role', 'menuitem');
      item.dataset.kind = kind;
      item.tabIndex = -1;
      item.textContent = t(key);
      if (kind === 'terminate' || kind === 'deny') item.classList.add('danger');
      menu.append(item);
    }
    if (!menu.dataset.wired) {
      menu.dataset.wired = '1';
      menu.addEventListener('click', (e) => {
        const item = e.target.closest('[role="menuitem"]');
        if (!item) return;
        const id = this._menuFor;
        this._closeMenu(false);
        this._rowAction(item.dataset.kind, id);
      });
      menu.addEventListener('keydown', (e) => this._menuKey(e));
      document.addEventListener('pointerdown', (e) => {
        if (!menu.hidden && !menu.contains(e.target) && e.target !== this._menuButton) this._closeMenu(false);
      });
    }
  }

  _openMenu(button) {
    const menu = $('#row-menu');
    if (!menu.firstElementChild) return;
    if (this._menuButton === button && !menu.hidden) return this._closeMenu(true);
    this._closeMenu(false);
    this._menuFor = button.closest('.row').dataset.student;
    this._menuButton = button;
    button.setAttribute('aria-expanded', 'true');
    menu.setAttribute('aria-label', t('dash.menu.label', { name: this.view.name(this._menuFor) }));
    const r = button.getBoundingClientRect();
    menu.hidden = false;
    menu.style.top = `${window.scrollY + r.bottom + 2}px`;
    menu.style.left = `${Math.max(4, window.scrollX + r.right - menu.offsetWidth)}px`;
    menu.firstElementChild.focus();
  }

  _closeMenu(refocus) {
    const menu = $('#row-menu');
    if (menu.hidden) return;
    menu.hidden = true;
    const button = this._menuButton;
    this._menuButton = null;
    if (button) {
      button.setAttribute('aria-expanded', 'false');
      if (refocus && button.isConnected) button.focus();
    }
  }

  _menuKey(e) {
    const items = [...$('#row-menu').querySelectorAll('[role="menuitem"]')];
    const i = items.indexOf(document.activeElement);
    const go = (j) => items[(j + items.length) % items.length]?.focus();
    if (e.key === 'ArrowDown') go(i + 1);
    else if (e.key === 'ArrowUp') go(i - 1);
    else if (e.key === 'Home') go(0);
    else if (e.key === 'End') go(items.length - 1);
    else if (e.key === 'Escape') this._closeMenu(true);
    else if (e.key === 'Tab') return this._closeMenu(true);
    else return;
    e.preventDefault();
  }

  /** One student's action from the menu: asks what it needs, then runs it. */
  async _rowAction(kind, id) {
    const fields = await this._ask(kind, [id]);
    // The focus goes back to the row's button (the dialog's own return
    // target was the menu item, which is gone).
    this._focusRowButton(id);
    if (fields) await this.run(kind, [id], fields);
  }

  _focusRowButton(id) {
    const row = this.view.rows.get(id);
    row?.cells.menuButton?.focus();
  }

  /**
   * The fields `kind` needs, asked in the dialog (and the confirmation of a
   * terminate or deny); null when cancelled. `ids` are the targets.
   */
  async _ask(kind, ids) {
    const about = ids.length === 1 ? this.view.name(ids[0]) : null;
    const title = ids.length === 1 ? t(`dash.ask.${kind}.one`) : t(`dash.ask.${kind}.many`, { n: ids.length });
    switch (kind) {
      case 'extend': {
        const v = await ask({ title, about, fields: [{ name: 'minutes', label: t('dash.ask.minutes'), type: 'number', value: 5, min: -10000, max: 10000, step: 1, required: true }], confirm: t('dash.act.extend.go') });
        return v && { minutes: Number(v.minutes) };
      }
      case 'message': {
        const v = await ask({ title, about, fields: [{ name: 'text', label: t('dash.ask.text'), type: 'textarea', maxLength: 2000, required: true }], confirm: t('dash.act.message.go') });
        return v && v.text.trim() ? { text: v.text.trim() } : null;
      }
      case 'terminate': {
        const v = await ask({ title, about, text: t('dash.ask.terminate.text'), fields: [{ name: 'reason', label: t('dash.ask.reason'), type: 'text', maxLength: 500 }], confirm: t('dash.act.terminate.go'), danger: true });
        return v && (v.reason.trim() ? { reason: v.reason.trim() } : {});
      }
      case 'deny': {
        const v = await ask({ title, about, text: t('dash.ask.deny.text'), confirm: t('dash.act.deny.go'), danger: true });
        return v && {};
      }
      default:
        return {};
    }
  }

  // ---- selection and bulk bar -------------------------------------------

  _wireTable() {
    const rows = $('#students .rows');
    rows.addEventListener('click', (e) => {
      const button = e.target.closest('.menu-btn');
      if (button) return this._openMenu(button);
      const box = e.target.closest('.c-select input');
      if (box) this._select(box, e.shiftKey);
    });
    $('#select-filtered').addEventListener('click', () => {
      for (const id of this._visibleIds()) this.selected.add(id);
      this._selectionChanged();
    });
    $('#select-none').addEventListener('click', () => {
      this.selected.clear();
      this._anchor = null;
      this._selectionChanged();
    });
  }

  _visibleIds() {
    return [...document.querySelectorAll('#students .rows .row:not([hidden])')].map((r) => r.dataset.student);
  }

  /** A checkbox was clicked: toggles it, or with shift the range from the last one. */
  _select(box, shift) {
    const id = box.closest('.row').dataset.student;
    const on = box.checked;
    if (shift && this._anchor !== null) {
      const ids = this._visibleIds();
      const a = ids.indexOf(this._anchor);
      const b = ids.indexOf(id);
      if (a >= 0 && b >= 0) {
        for (const x of ids.slice(Math.min(a, b), Math.max(a, b) + 1)) {
          if (on) this.selected.add(x);
          else this.selected.delete(x);
        }
      }
    } else if (on) this.selected.add(id);
    else this.selected.delete(id);
    this._anchor = id;
    this._selectionChanged();
  }

  _selectionChanged() {
    for (const [id, row] of this.view.rows) {
      const box = row.cells.selectBox;
      if (box && box.checked !== this.selected.has(id)) box.checked = this.selected.has(id);
    }
    this._paintBulk();
  }

  _buildBulk() {
    const box = $('#bulk-buttons');
    box.replaceChildren();
    for (const [kind, key] of BULK_ITEMS) {
      if (!this.may(KIND_RIGHT[kind])) continue;
      const b = document.createElement('button');
      b.type = 'button';
      b.dataset.kind = kind;
      b.textContent = t(key);
      b.addEventListener('click', () => this._bulk(kind));
      box.append(b);
    }
    this._paintBulk();
  }

  _paintBulk() {
    const n = this.selected.size;
    $('#bulk-count').textContent = t('dash.bulk.count', { n });
    for (const b of document.querySelectorAll('#bulk-buttons button, #select-none')) b.disabled = n === 0;
  }

  async _bulk(kind) {
    const ids = [...this.selected];
    if (ids.length === 0) return;
    const fields = await this._ask(kind, ids);
    if (fields) await this.run(kind, ids, fields);
  }

  // ---- the actions list -------------------------------------------------

  _paintActions() {
    if (this._paintQueued) return;
    this._paintQueued = true;
    setTimeout(() => {
      this._paintQueued = false;
      this._renderActions();
    }, 100);
  }

  _renderActions() {
    const list = $('#actions');
    const recent = [...this.actions.values()].slice(-MAX_ACTIONS_LISTED).reverse();
    list.replaceChildren(
      ...recent.map((a) => {
        const li = document.createElement('li');
        li.className = 'action';
        li.dataset.action = a.id;
        li.dataset.kind = a.kind;
        const counts = {};
        for (const e of a.students.values()) {
          const k = e.error ? 'failed' : e.delivery;
          counts[k] = (counts[k] ?? 0) + 1;
        }
        const head = document.createElement('span');
        head.className = 'what';
        const n = a.students.size;
        head.textContent = n === 1 ? `${t(`dash.kind.${a.kind}`)} · ` : t('dash.actions.head', { action: t(`dash.kind.${a.kind}`), n });
        if (n === 1) {
          const who = document.createElement('bdi');
          who.textContent = this.view.name(a.students.keys().next().value);
          head.append(who);
        }
        const summary = document.createElement('span');
        summary.className = 'summary';
        summary.textContent = Object.entries(counts)
          .map(([k, v]) => t('dash.delivery.count', { n: v, state: t(`dash.delivery.${k}`) }))
          .join(' · ');
        li.append(head, summary);
        if (a.refused) {
          const why = document.createElement('span');
          why.className = 'why';
          why.textContent = a.refused;
          li.append(why);
        }
        return li;
      }),
    );
  }
}
