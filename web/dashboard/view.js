// The dashboard's rendering: the student table, counts and timeline (the
// panels: hands.js, alerts.js, record.js).
//
// With 300 students a busy exam sends hundreds of events a second, so the
// view never re-renders the table: events mark students dirty, and at most
// ten times a second only the dirty rows' cells are written (and only the
// cells whose text changed). Rows move only when a sort key changed. Every
// frame's cost is measured into `stats`, which the browser test reads for
// the 300-student measurement (docs/CLIENT.md). All text goes in through
// textContent: names come from tokens and are never parsed as HTML. Every
// user-supplied string (names, ids, question ids, announcement texts) sits
// in its own <bdi>, so a bidi control in it (U+202E) cannot reorder the text
// around it.
//
// Its strings are keys of the i18n catalogue (web/i18n); `relabel()`
// repaints every row and timeline line after a language switch. The
// exam-control cells (time left, extra time, hand, alerts, the latest
// action, the row menu) are painted by columns.js through `columns`.

import { t, formatTime } from '../i18n/i18n.js';
import { say } from './panels.js';

const STATUS_ORDER = { disconnected: 0, idle: 1, active: 2, submitted: 3 };
const MAX_LIST = 200;
const RENDER_MS = 100;

/** "12 s ago", "3 min ago", "1 h ago" (in the page's language). */
export function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return t('dash.ago.s', { n: s });
  if (s < 3600) return t('dash.ago.min', { n: Math.floor(s / 60) });
  return t('dash.ago.h', { n: Math.floor(s / 3600) });
}

/** A cause's or an alert kind's words, or the raw name for one the catalogue lacks. */
function words(prefix, name) {
  const key = `${prefix}.${name}`;
  const s = t(key);
  return s === key ? String(name) : s;
}

/** The table's cells, in column order (columns.js paints the control ones). */
const CELLS = ['select', 'name', 'status', 'time', 'extra', 'hand', 'alerts', 'question', 'progress', 'active', 'focus', 'conn', 'last', 'menu'];

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function clock(at) {
  const d = new Date(at);
  return Number.isNaN(d.getTime()) ? '' : formatTime(d.getTime());
}

export class View {
  constructor(root, now) {
    this.root = root;
    this.now = now; // () => server time in ms
    this.tbody = root.querySelector('#students .rows');
    this.rows = new Map(); // student_id -> { tr, cells, student, sortKey, visible }
    this.dirty = new Set();
    this.moved = new Set(); // rows whose sort key changed since the last _order
    this.reorder = false;
    this.totalQuestions = null;
    this.filter = { status: '', name: '' };
    this.sort = { key: 'status', dir: 1 };
    this.stats = { frames: 0, rowUpdates: 0, frameMs: [] };
    this.timelineSeq = 0;
    this.lists = new Map(); // list selector -> items waiting for the next frame
    this._frame = null;
    this._lastRender = 0;
    /** Paints the exam-control cells (columns.js); set by the dashboard. */
    this.columns = null;
    // The 1 Hz texts ("last active", time left) are written only for rows
    // on screen: with 300 students about 20 are, and a row coming into
    // view is brought up to date at once. (No IntersectionObserver, as in
    // the node tests: every row counts as on screen.)
    this._io = typeof IntersectionObserver === 'function'
      ? new IntersectionObserver((entries) => {
        for (const e of entries) {
          const row = this.rows.get(e.target.dataset.student);
          if (!row || row.tr !== e.target) continue;
          row.onScreen = e.isIntersecting;
          if (row.onScreen && row.student) this._tickRow(row);
        }
      })
      : null;
    setInterval(() => this._tickAges(), 1000);
  }

  /**
   * Replaces everything (a snapshot is authoritative); `at` is the server
   * time the states are from (the snapshot's `server_time`).
   */
  reset(students, at) {
    this._io?.disconnect();
    this.tbody.replaceChildren();
    this.rows.clear();
    this.dirty.clear();
    this.moved.clear();
    for (const s of students) this.upsert(s, at);
    this.reorder = true;
    // At once, not at the next tick: the "not live" banner goes away right
    // after this, and must never uncover the old state.
    clearTimeout(this._frame);
    this._render();
  }

  /** A student's new state, received at server time `at` (default: now). */
  upsert(student, at) {
    let row = this.rows.get(student.student_id);
    if (!row) {
      row = this._newRow(student.student_id);
      // Into the document at the next render, filled in and in its place.
      this.rows.set(student.student_id, row);
      this.reorder = true;
    }
    row.student = student;
    row.stateAt = Number.isFinite(at) ? at : this.now();
    this.dirty.add(student.student_id);
    this._schedule();
  }

  /** Something shown in a student's row changed outside their state. */
  touch(id) {
    if (!this.rows.get(id)?.student) return;
    this.dirty.add(id);
    this._schedule();
  }

  /** Every state the view holds. */
  students() {
    return [...this.rows.values()].filter((r) => r.student).map((r) => r.student);
  }

  /** After a language switch: every row and timeline line in the new words. */
  relabel() {
    for (const [id, row] of this.rows) {
      row.text = {};
      row.tr.dataset.status = '';
      row.tr.dataset.conn = '';
      if (row.student) this.dirty.add(id);
    }
    for (const li of this.root.querySelectorAll('#timeline li')) li.redraw?.();
    this.reorder = true;
    this._schedule();
  }

  name(id) {
    // A room's alert (network_incident, a report about nobody) has no student.
    if (id == null) return t('dash.room');
    return this.rows.get(id)?.student.name || id;
  }

  setFilter(filter) {
    this.filter = { ...this.filter, ...filter };
    this.reorder = true;
    this._schedule();
  }

  setSort(key) {
    this.sort = { key, dir: this.sort.key === key ? -this.sort.dir : 1 };
    for (const th of this.root.querySelectorAll('[data-sort]')) {
      th.dataset.dir = th.dataset.sort === key ? (this.sort.dir > 0 ? 'asc' : 'desc') : '';
      th.setAttribute('aria-sort', th.dataset.sort === key ? (this.sort.dir > 0 ? 'ascending' : 'descending') : 'none');
    }
    this.reorder = true;
    this._schedule();
  }

  setTotal(total) {
    this.totalQuestions = Number.isInteger(total) && total > 0 ? total : null;
    for (const id of this.rows.keys()) this.dirty.add(id);
    this._schedule();
  }

  /** Adds an event to the timeline, once per seq. */
  timeline(ev) {
    if (ev.seq <= this.timelineSeq) return;
    this.timelineSeq = ev.seq;
    // Student events carry no time: now, or for a replayed (or loaded) one
    // the last activity it reports.
    const at = ev.at ?? (ev.stale ? ev.student?.last_activity : undefined) ?? this.now();
    const li = el('li', `ev ev-${ev.type}`);
    li.redraw = () => li.replaceChildren(el('time', '', clock(at)), el('span', 'seq', `#${ev.seq}`), this._what(ev));
    li.redraw();
    this._queue('#timeline', li);
  }

  /** A timeline line's words; the user's strings each in a <bdi>. */
  _what(ev) {
    const what = el('span', 'what');
    const user = (text) => el('bdi', '', text);
    const name = (id) => user(this.name(id));
    if (ev.type === 'student') what.append(user(ev.student.name || ev.student.student_id), `: ${words('dash.cause', ev.cause)}`);
    else if (ev.type === 'alert') what.append(`${t('dash.tl.alert')} `, name(ev.student_id), ` ${words('dash.alert', ev.kind)}`);
    else if (ev.type === 'alert_resolved') what.append(`${t('dash.tl.resolved')} `, user(ev.by), ...(ev.note ? [': ', user(ev.note)] : []));
    else if (ev.type === 'announcement') what.append(t('dash.tl.announcement'), ...(ev.from ? [` ${t('dash.tl.from')} `, user(ev.from)] : []), ': ', user(ev.text));
    else if (ev.type === 'exam_update') what.append(t('dash.tl.phase', { phase: words('dash.phase', ev.phase) }));
    else if (ev.type === 'action') what.append(t('dash.tl.action', { action: words('dash.kind', ev.action?.kind), n: ev.action?.students?.length ?? 0 }));
    else if (ev.type === 'delivery') what.append(`${t('dash.tl.delivery')} `, name(ev.student_id), `: ${words('dash.delivery', ev.state)}`);
    else if (ev.type === 'hand') what.append(`${t('dash.tl.hand')} `, name(ev.student_id));
    else if (ev.type === 'hand_lowered') what.append(`${t('dash.tl.hand_lowered')} `, name(ev.student_id));
    else if (ev.type === 'student_control') say(what, 'dash.tl.student_control', { name: this.name(ev.student_id) });
    else what.append(String(ev.type));
    return what;
  }

  /**
   * Events from before the snapshot (the REST timeline), oldest first, as
   * if they had come live: only the last MAX_LIST make timeline lines (the
   * rest would be trimmed at once). The alerts are the alerts panel's
   * (alerts.js).
   */
  history(events) {
    const past = events.filter((ev) => ev.seq > this.timelineSeq).sort((a, b) => a.seq - b.seq);
    for (const ev of past.slice(-MAX_LIST)) this.timeline({ ...ev, stale: true });
  }

  counts() {
    const c = { active: 0, idle: 0, submitted: 0, disconnected: 0 };
    for (const { student } of this.rows.values()) if (student.status in c) c[student.status] += 1;
    return c;
  }

  // ---- internals --------------------------------------------------------

  /** List items wait for the next frame, then go in as one fragment. */
  _queue(list, li) {
    let items = this.lists.get(list);
    if (!items) this.lists.set(list, (items = []));
    items.push(li);
    if (items.length > MAX_LIST) items.shift();
    this._schedule();
  }

  _flushLists() {
    for (const [sel, items] of this.lists) {
      const list = this.root.querySelector(sel);
      const fragment = document.createDocumentFragment();
      for (let i = items.length - 1; i >= 0; i--) fragment.append(items[i]);
      list.prepend(fragment);
      while (list.childElementCount > MAX_LIST) list.lastElementChild.remove();
    }
    this.lists.clear();
  }

  _newRow(id) {
    const tr = el('div', 'row');
    tr.setAttribute('role', 'row');
    tr.dataset.student = id;
    const cells = {};
    for (const c of CELLS) {
      cells[c] = el('div', `c-${c}`);
      cells[c].setAttribute('role', 'cell');
      tr.append(cells[c]);
    }
    // The user's strings, each isolated in a <bdi> of its own. The name is
    // a button: the keyboard's way to the student's record (record.js).
    cells.nameText = el('bdi');
    const open = el('button', 'open-record');
    open.type = 'button';
    open.setAttribute('aria-describedby', 'record-hint');
    open.append(cells.nameText);
    cells.name.append(open);
    cells.questionText = el('bdi');
    cells.question.append(cells.questionText);
    cells.statusBadge = el('span', 'badge');
    cells.status.append(cells.statusBadge);
    const bar = el('span', 'bar');
    cells.barBox = bar;
    cells.bar = el('span', 'fill');
    bar.append(cells.bar);
    cells.barText = el('span', 'bar-text');
    cells.progress.append(bar, cells.barText);
    cells.dot = el('span', 'dot');
    cells.connText = el('span', 'conn-text');
    cells.conn.append(cells.dot, cells.connText);
    this.columns?.build(cells);
    this._io?.observe(tr);
    return { tr, cells, student: null, sortKey: null, text: {}, stateAt: null, onScreen: !this._io };
  }

  /**
   * At most one render per RENDER_MS: a busy exam sends hundreds of events
   * a second, and painting them in ten batches a second instead of sixty
   * leaves the browser free for scrolling, while still being well within
   * the "on screen within a second" promise.
   */
  _schedule() {
    if (this._frame !== null) return;
    const wait = Math.max(0, this._lastRender + RENDER_MS - performance.now());
    // A timer, not requestAnimationFrame: a dashboard in a background tab
    // or a second window gets no animation frames but must stay current.
    this._frame = setTimeout(() => this._render(), wait);
  }

  _render() {
    const t0 = performance.now();
    this._frame = null;
    this._lastRender = t0;
    for (const id of this.dirty) {
      const row = this.rows.get(id);
      if (row) this._paintRow(row);
    }
    this.stats.rowUpdates += this.dirty.size;
    this.dirty.clear();
    if (this.reorder) this._order();
    this._paintCounts();
    this._flushLists();
    const ms = performance.now() - t0;
    this.stats.frames += 1;
    this.stats.frameMs.push(ms);
    if (this.stats.frameMs.length > 5000) this.stats.frameMs.splice(0, 1000);
  }

  /** Writes `text` (or the style `width`) only when it changed. */
  _set(row, key, node, text, width) {
    const value = width ?? text;
    if (row.text[key] !== value) {
      row.text[key] = value;
      if (width === undefined) node.textContent = text;
      else node.width = width;
    }
  }

  _paintRow(row) {
    const s = row.student;
    const c = row.cells;
    this._set(row, 'name', c.nameText, s.name || s.student_id);
    this._set(row, 'status', c.statusBadge, t(`dash.status.${s.status}`));
    if (row.tr.dataset.status !== s.status) {
      row.tr.dataset.status = s.status;
      c.statusBadge.className = `badge status-${s.status}`;
    }
    this._set(row, 'question', c.questionText, s.current_question === null ? '—' : String(s.current_question));
    // Without the exam's total a bar would have nothing to be a share of
    // (drawing it full would claim the student is done): the count alone.
    const total = this.totalQuestions;
    if (c.barBox.hidden !== !total) c.barBox.hidden = !total;
    const share = total ? Math.min(1, s.answered / total) : 0;
    this._set(row, 'bar', c.bar.style, null, `${Math.round(share * 100)}%`);
    this._set(row, 'progress', c.barText, total ? `${s.answered} / ${total}` : String(s.answered));
    this._set(row, 'focus', c.focus, String(s.focus_lost_count));
    c.focus.classList.toggle('warn', !s.focused);
    // Not by colour alone: "⚠ away" after the count (CSS, from this attribute).
    const away = s.focused ? '' : t('dash.focus.away');
    if ((c.focus.dataset.away ?? '') !== away) c.focus.dataset.away = away;
    const conn = s.connected ? 'connected' : 'offline';
    if (row.tr.dataset.conn !== conn) {
      row.tr.dataset.conn = conn;
      c.dot.className = `dot ${conn}`;
      c.dot.title = t(`dash.conn.${conn}`);
    }
    this._set(row, 'conn', c.connText, t(`dash.conn.${conn}`));
    this.columns?.paint(this, row, (key, node, text) => this._set(row, key, node, text));
    this._paintAge(row);
    const key = this._sortKey(s);
    if (key !== row.sortKey) {
      row.sortKey = key;
      if (row.tr.isConnected) this.moved.add(row);
      this.reorder = true;
    }
    const visible = this._matches(s);
    if (visible !== !row.tr.hidden) this.reorder = true;
  }

  _paintAge(row) {
    const last = Date.parse(row.student.last_activity);
    this._set(row, 'age', row.cells.active, Number.isNaN(last) ? '—' : ago(this.now() - last));
  }

  _tickAges() {
    const t0 = performance.now();
    for (const row of this.rows.values()) if (row.student && row.onScreen) this._tickRow(row);
    this.stats.tickMs = performance.now() - t0;
  }

  /** The texts that change with time alone. */
  _tickRow(row) {
    this._paintAge(row);
    this.columns?.tick(this, row, (key, node, text) => this._set(row, key, node, text));
  }

  _sortKey(s) {
    switch (this.sort.key) {
      case 'name':
        return (s.name || s.student_id).toLowerCase();
      case 'question':
        return String(s.current_question ?? '');
      case 'progress':
        return String(s.answered).padStart(6, '0');
      case 'active':
        return s.last_activity;
      case 'focus':
        return String(s.focus_lost_count).padStart(6, '0');
      default:
        return `${STATUS_ORDER[s.status] ?? 9}:${(s.name || s.student_id).toLowerCase()}`;
    }
  }

  _matches(s) {
    const { status, name } = this.filter;
    if (status && s.status !== status) return false;
    if (name) {
      const needle = name.toLowerCase();
      return (s.name || '').toLowerCase().includes(needle) || s.student_id.toLowerCase().includes(needle);
    }
    return true;
  }

  /**
   * Sorts and filters, moving only the rows whose sort key changed: they
   * are taken out first, so the others are already in order and a single
   * pass puts each moved row back before the first row that sorts after it.
   */
  _order() {
    this.reorder = false;
    const rows = [...this.rows.values()].filter((r) => r.student);
    for (const r of rows) r.sortKey = this._sortKey(r.student);
    const dir = this.sort.dir;
    rows.sort((a, b) => (a.sortKey < b.sortKey ? -dir : a.sortKey > b.sortKey ? dir : a.student.student_id < b.student.student_id ? -1 : 1));
    for (const r of this.moved) r.tr.remove();
    this.moved.clear();
    let cursor = this.tbody.firstElementChild;
    let shown = 0;
    for (const r of rows) {
      const visible = this._matches(r.student);
      if (r.tr.hidden === visible) r.tr.hidden = !visible;
      if (visible) shown += 1;
      if (r.tr === cursor) cursor = cursor.nextElementSibling;
      else this.tbody.insertBefore(r.tr, cursor);
    }
    this.root.querySelector('#shown').textContent = t('dash.shown', { shown, total: rows.length });
  }

  _paintCounts() {
    const c = this.counts();
    for (const k of Object.keys(c)) {
      const node = this.root.querySelector(`#count-${k}`);
      if (node.textContent !== String(c[k])) node.textContent = String(c[k]);
    }
  }
}
