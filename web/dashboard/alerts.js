// The alerts panel: the exam's irregularities (PROTOCOL.md 3.2-3.5),
// filtered by category and state, each resolved with a note, and a form
// to file a report about a student or the whole room.
//
// The panel holds every alert it has heard of, by `alert_id`, from three
// sources that may arrive in any order: `GET …/alerts` (loaded after each
// snapshot: the stored list, both states, with resolutions), the REST
// timeline before the snapshot and the live `alert` / `alert_resolved`
// events. Each alert counts once whatever told of it, and a resolution
// heard before its alert waits for it, so the order does not matter.
//
// Lines are derived from that set (groupAlerts): one line per student and
// kind while open, as the server folds them (3.3: a repeat updates the
// line's time and "×count" instead of adding one, so one student's flood
// cannot push anyone else's alerts off the list). Resolving a line
// resolves every open alert in it with the same note; resolved alerts
// resolved together stay one line. A report and a `network_incident`
// (the room's, "12 students dropped") are one line each.
//
// Rendering is batched like the table's (at most every 100 ms) and moves
// only the lines whose place changed, so the button a keyboard user is on
// keeps its focus when alerts arrive.

import { formatTime, onLanguage, t } from '../i18n/i18n.js';
import { button, categoryText, el, examPath, kindText, ms, placeChildren, say, user } from './panels.js';
import { CATEGORIES } from './opencount.js';

const MAX_LINES = 200;
const RENDER_MS = 100;
const NEVER_FOLDED = new Set(['report', 'network_incident']);

/** Writes `text` only when it changed (no needless DOM mutation). */
function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

/** The line an alert belongs to. */
function lineKey(a) {
  if (NEVER_FOLDED.has(a.kind) || a.student_id == null) return `id\u0000${a.alert_id}`;
  if (!a.resolution) return `open\u0000${a.student_id}\u0000${a.kind}`;
  const r = a.resolution;
  return `res\u0000${a.student_id}\u0000${a.kind}\u0000${r.by ?? ''}\u0000${r.note ?? ''}`;
}

/**
 * The lines for a set of alerts, newest first: `{ key, ids, openIds,
 * student_id, kind, category, count, at, seq, state, resolution, text, by,
 * students }`. `count` is the largest the alerts carry (the student's
 * total of that kind so far, 3.3).
 */
export function groupAlerts(alerts) {
  const lines = new Map();
  for (const a of alerts) {
    const key = lineKey(a);
    let line = lines.get(key);
    if (!line) {
      line = { key, ids: [], openIds: [], student_id: a.student_id ?? null, kind: a.kind, category: a.category, count: 0, at: null, seq: 0, resolution: null, text: a.text, by: a.by, students: a.students };
      lines.set(key, line);
    }
    line.ids.push(a.alert_id);
    if (!a.resolution) line.openIds.push(a.alert_id);
    line.count = Math.max(line.count, Number.isInteger(a.count) ? a.count : 1);
    if (!line.at || ms(a.at) > ms(line.at)) line.at = a.at;
    line.seq = Math.max(line.seq, a.seq ?? 0);
    if (a.resolution && (!line.resolution || ms(a.resolution.at) > ms(line.resolution.at))) line.resolution = a.resolution;
  }
  for (const line of lines.values()) line.state = line.openIds.length ? 'open' : 'resolved';
  return [...lines.values()].sort((x, y) => ms(y.at) - ms(x.at) || y.seq - x.seq || (x.key < y.key ? -1 : 1));
}

/**
 * The lines a filter (`{category, state}`, '' for any) lets through,
 * newest first, at most MAX_LINES.
 */
export function visibleLines(alerts, { category = '', state = '' } = {}) {
  return groupAlerts(alerts)
    .filter((l) => (!category || l.category === category) && (!state || l.state === state))
    .slice(0, MAX_LINES);
}

export class AlertsPanel {
  /**
   * `root`: the panel's (empty) container. `rest`: panels.js restClient.
   * `name(id)`: a student's display name; `students()`: `[{id, name}]`
   * for the report form.
   */
  constructor(root, { rest, name, students }) {
    this.rest = rest;
    this.name = name;
    this.students = students;
    this.exam = null;
    this.alerts = new Map(); // alert_id -> alert (with `resolution`)
    this.early = new Map(); // alert_id -> resolution heard before its alert
    this.lineNodes = new Map(); // line key -> { li, … }
    this.filter = { category: '', state: 'open' };
    this._timer = null;
    this._last = 0;
    this._build(root);
    onLanguage(() => this._relabel());
  }

  reset(exam) {
    this.exam = exam;
    this.alerts.clear();
    this.early.clear();
    this.lineNodes.clear();
    this.ul.replaceChildren();
    this.status.textContent = '';
    this._schedule();
  }

  /**
   * After a snapshot: the stored alerts, both states (GET …/alerts); resolves
   * with them (null if unreadable or another exam took over), for the
   * table's badges.
   */
  async load() {
    const exam = this.exam;
    try {
      const list = await this.rest.get(examPath(exam, '/alerts?limit=1000'));
      if (exam !== this.exam) return;
      for (const a of list.alerts) this._add(a);
      this._schedule();
      return list.alerts;
    } catch (err) {
      if (exam === this.exam) this.status.textContent = t('alerts.unreadable', { why: err.message });
    }
    return null;
  }

  /** The timeline before the snapshot, oldest first. */
  history(events) {
    for (const ev of events) this.event(ev);
  }

  /** One event (live or from the timeline). */
  event(ev) {
    if (ev.type === 'alert') this._add(ev);
    else if (ev.type === 'alert_resolved') this._resolved(ev.alert_id, { by: ev.by, note: ev.note ?? '', at: ev.at });
    // (A `student` event comes before its alert and the table has the
    // student's name by then: nothing else here needs a repaint.)
    else return;
    this._schedule();
  }

  setFilter(filter) {
    this.filter = { ...this.filter, ...filter };
    this._schedule();
  }

  /** The lines the filters let through, newest first (at most MAX_LINES). */
  lines() {
    return visibleLines(this.alerts.values(), this.filter);
  }

  /** The lines of every alert, and the filtered ones (one grouping). */
  _lines() {
    const all = groupAlerts(this.alerts.values());
    const { category, state } = this.filter;
    const shown = all.filter((l) => (!category || l.category === category) && (!state || l.state === state)).slice(0, MAX_LINES);
    return { all, shown };
  }

  // ---- internals --------------------------------------------------------

  _add(a) {
    const known = this.alerts.get(a.alert_id);
    const resolution = a.resolution ?? this.early.get(a.alert_id) ?? known?.resolution ?? null;
    this.early.delete(a.alert_id);
    const count = Math.max(known?.count ?? 0, a.count ?? 0) || undefined;
    this.alerts.set(a.alert_id, { ...known, ...a, seq: a.seq ?? known?.seq ?? null, count, resolution });
  }

  _resolved(id, resolution) {
    const a = this.alerts.get(id);
    if (!a) this.early.set(id, resolution);
    else if (!a.resolution) this.alerts.set(id, { ...a, resolution, state: 'resolved' });
  }

  _build(root) {
    root.setAttribute('aria-labelledby', 'alerts-title');
    const h2 = el('h2');
    h2.id = 'alerts-title';
    h2.tabIndex = -1; // the skip link's target
    this.title = el('span', '', t('alerts.title'));
    this.openCount = el('span', 'alerts-count');
    h2.append(this.title, ' ', this.openCount);

    const filters = el('div', 'alert-filters');
    this.categoryLabel = el('label');
    this.categorySelect = el('select');
    this.categorySelect.id = 'alert-category';
    this.categoryLabel.append(el('span'), this.categorySelect);
    this.stateLabel = el('label');
    this.stateSelect = el('select');
    this.stateSelect.id = 'alert-state';
    this.stateLabel.append(el('span'), this.stateSelect);
    filters.append(this.categoryLabel, this.stateLabel);
    this.categorySelect.addEventListener('change', () => this.setFilter({ category: this.categorySelect.value }));
    this.stateSelect.addEventListener('change', () => this.setFilter({ state: this.stateSelect.value }));

    this.status = el('p', 'panel-status');
    this.status.setAttribute('role', 'status');
    this.ul = el('ul', 'list alerts');
    this.ul.id = 'alerts';
    this.ul.setAttribute('aria-labelledby', 'alerts-title');
    this.empty = el('p', 'empty');

    // The report form, behind a disclosure button.
    this.reportToggle = button('report-toggle');
    this.reportToggle.setAttribute('aria-expanded', 'false');
    this.reportToggle.setAttribute('aria-controls', 'report-form');
    this.form = el('form', 'report-form');
    this.form.id = 'report-form';
    this.form.hidden = true;
    this.reportStudent = el('select');
    this.reportStudent.id = 'report-student';
    this.reportCategory = el('select');
    this.reportCategory.id = 'report-category';
    this.reportText = el('textarea');
    this.reportText.id = 'report-text';
    this.reportText.rows = 2;
    this.reportText.maxLength = 2000;
    this.reportText.required = true;
    this.reportLabels = ['report-student', 'report-category', 'report-text'].map((id) => {
      const l = el('label');
      l.htmlFor = id;
      return l;
    });
    this.reportSubmit = el('button', 'file');
    this.reportSubmit.type = 'submit';
    this.form.append(this.reportLabels[0], this.reportStudent, this.reportLabels[1], this.reportCategory, this.reportLabels[2], this.reportText, this.reportSubmit);
    this.reportToggle.addEventListener('click', () => this._toggleReport());
    // Students who joined while the form stayed open are offered too.
    this.reportStudent.addEventListener('focus', () => this._fillStudents());
    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      this._fileReport();
    });
    this.form.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') {
        e.stopPropagation();
        this._toggleReport(false);
      }
    });

    root.replaceChildren(h2, filters, this.status, this.ul, this.empty, this.reportToggle, this.form);
    this._relabel();
  }

  _relabel() {
    this.title.textContent = t('alerts.title');
    this.categoryLabel.firstChild.textContent = t('alerts.category');
    this.stateLabel.firstChild.textContent = t('alerts.state');
    const options = (select, pairs) => {
      const value = select.value;
      select.replaceChildren(...pairs.map(([v, text]) => new Option(text, v)));
      if (pairs.some(([v]) => v === value)) select.value = value;
    };
    options(this.categorySelect, [['', t('alerts.all_categories')], ...CATEGORIES.map((c) => [c, categoryText(c)])]);
    options(this.stateSelect, [['open', t('alerts.state.open')], ['resolved', t('alerts.state.resolved')], ['', t('alerts.state.any')]]);
    this.categorySelect.value = this.filter.category;
    this.stateSelect.value = this.filter.state;
    options(this.reportCategory, CATEGORIES.map((c) => [c, categoryText(c)]));
    this.reportToggle.textContent = t('alerts.report');
    this.reportLabels[0].textContent = t('alerts.report.about');
    this.reportLabels[1].textContent = t('alerts.report.category');
    this.reportLabels[2].textContent = t('alerts.report.text');
    this.reportSubmit.textContent = t('alerts.report.file');
    this.lineNodes.clear();
    this.ul.replaceChildren();
    this._schedule();
  }

  _toggleReport(open = this.form.hidden) {
    this.form.hidden = !open;
    this.reportToggle.setAttribute('aria-expanded', String(open));
    if (!open) {
      this.reportToggle.focus();
      return;
    }
    this._fillStudents();
    this.reportStudent.focus();
  }

  /** The report form's students: the room, then everyone the table has. */
  _fillStudents() {
    const value = this.reportStudent.value;
    const students = [...this.students()].sort((a, b) => a.name.localeCompare(b.name));
    // An <option> cannot hold a <bdi>: FSI … PDI isolate the user's strings.
    this.reportStudent.replaceChildren(new Option(t('alerts.report.room'), ''), ...students.map((s) => new Option(s.name === s.id ? `\u2068${s.id}\u2069` : `\u2068${s.name}\u2069 (\u2068${s.id}\u2069)`, s.id)));
    if (students.some((s) => s.id === value)) this.reportStudent.value = value;
  }

  async _fileReport() {
    const text = this.reportText.value.trim();
    if (!text) return;
    const studentId = this.reportStudent.value;
    const who = studentId ? this.name(studentId) : t('panels.room');
    const body = { category: this.reportCategory.value, text, ...(studentId ? { student_id: studentId } : {}) };
    this.reportSubmit.disabled = true;
    this.status.textContent = t('alerts.report.sending');
    try {
      const stored = await this.rest.post(examPath(this.exam, '/irregularities'), body);
      // Listed now; its `alert` event (the same alert_id) changes nothing.
      if (stored?.alert_id) this._add(stored);
      this.reportText.value = '';
      say(this.status, 'alerts.report.filed', { name: who });
      this._schedule();
    } catch (err) {
      this.status.textContent = t('alerts.report.refused', { why: err.message });
    } finally {
      this.reportSubmit.disabled = false;
    }
  }

  _schedule() {
    if (this._timer !== null) return;
    const wait = Math.max(0, this._last + RENDER_MS - performance.now());
    this._timer = setTimeout(() => this._render(), wait);
  }

  _render() {
    this._timer = null;
    this._last = performance.now();
    const { all, shown: lines } = this._lines();
    const wanted = new Set(lines.map((l) => l.key));
    for (const key of this.lineNodes.keys()) {
      // A line still being resolved keeps its form (and its note) until done.
      if (!wanted.has(key) && !this.lineNodes.get(key).busy) this.lineNodes.delete(key);
    }
    const items = [];
    for (const line of lines) {
      let node = this.lineNodes.get(line.key);
      if (!node) {
        node = this._newLine(line.key);
        this.lineNodes.set(line.key, node);
      }
      this._paint(node, line);
      items.push(node.li);
    }
    placeChildren(this.ul, items);
    const open = all.filter((l) => l.state === 'open').length;
    setText(this.openCount, open ? t('alerts.open_count', { n: open }) : '');
    setText(this.empty, t('alerts.none'));
    this.empty.hidden = lines.length > 0;
  }

  _newLine(key) {
    const li = el('li', 'alert');
    const node = { li, key, line: null, busy: false };
    node.state = el('span', 'state');
    node.time = el('time');
    node.who = user('', 'who');
    node.what = el('span', 'what');
    node.category = el('span', 'category');
    node.count = el('span', 'times');
    node.detail = el('span', 'detail');
    const head = el('div', 'alert-head');
    head.append(node.state, node.time, node.who, node.what, node.category, node.count);
    node.resolveButton = button('resolve', t('alerts.resolve'));
    node.form = el('form', 'resolve-form');
    node.form.hidden = true;
    const noteId = `note-${Math.random().toString(36).slice(2)}`;
    const label = el('label', '', t('alerts.note'));
    label.htmlFor = noteId;
    node.note = el('input');
    node.note.id = noteId;
    node.note.type = 'text';
    node.note.maxLength = 2000;
    node.note.autocomplete = 'off';
    node.confirm = el('button', 'confirm', t('alerts.resolve_confirm'));
    node.confirm.type = 'submit';
    const cancel = button('cancel', t('hands.cancel'));
    node.form.append(label, node.note, node.confirm, cancel);
    node.resolveButton.addEventListener('click', () => {
      node.form.hidden = false;
      node.note.focus();
    });
    const close = () => {
      node.form.hidden = true;
      node.resolveButton.focus();
    };
    cancel.addEventListener('click', close);
    node.form.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') {
        e.stopPropagation();
        close();
      }
    });
    node.form.addEventListener('submit', (e) => {
      e.preventDefault();
      this._resolve(node);
    });
    li.append(head, node.detail, node.resolveButton, node.form);
    return node;
  }

  _paint(node, line) {
    node.line = line;
    // A line that says the same as when it was painted is left alone (a
    // busy exam repaints the list ten times a second).
    const who = line.student_id == null ? '' : this.name(line.student_id);
    const painted = JSON.stringify([line.ids.length, line.openIds.length, line.count, line.at, line.resolution, who]);
    if (node.painted === painted) return;
    node.painted = painted;
    const li = node.li;
    li.dataset.state = line.state;
    li.dataset.student = line.student_id ?? '';
    li.dataset.kind = line.kind;
    li.dataset.category = line.category ?? '';
    li.dataset.ids = line.ids.join(' ');
    const className = `alert alert-${line.kind} ${line.state}`;
    if (li.className !== className) li.className = className;
    // Status by text and icon, never colour alone.
    setText(node.state, line.state === 'open' ? `⚠ ${t('alerts.state.open')}` : `✓ ${t('alerts.state.resolved')}`);
    setText(node.time, Number.isNaN(ms(line.at)) ? '' : formatTime(ms(line.at)));
    if (line.at) node.time.dateTime = line.at;
    setText(node.who, line.student_id == null ? t('panels.room') : this.name(line.student_id));
    setText(node.what, kindText(line.kind));
    setText(node.category, `[${categoryText(line.category)}]`);
    setText(node.count, line.count > 1 ? `×${line.count}` : '');
    // The detail is rebuilt only when what it says changed.
    const r = line.resolution;
    const signature = JSON.stringify([line.kind, line.students, line.text, line.by, r]);
    if (node.signature !== signature) {
      node.signature = signature;
      const detail = [];
      if (line.kind === 'network_incident') detail.push(t('alerts.incident', { n: line.students ?? '?' }));
      if (line.kind === 'report') {
        detail.push(user(line.text ?? '', 'report-text'));
        if (line.by) detail.push(` — ${t('alerts.by')} `, user(line.by));
      }
      if (r) {
        if (detail.length) detail.push(' · ');
        detail.push(t('alerts.resolved_by'), ' ', user(r.by ?? ''));
        if (!Number.isNaN(ms(r.at))) detail.push(` (${formatTime(ms(r.at))})`);
        if (r.note) detail.push(': ', user(r.note, 'note'));
      }
      node.detail.replaceChildren(...detail);
      node.detail.hidden = detail.length === 0;
    }
    const open = line.state === 'open';
    node.resolveButton.hidden = !open;
    node.resolveButton.setAttribute('aria-label', t('alerts.resolve_label', { what: kindText(line.kind), name: node.who.textContent }));
    if (!open && !node.busy) node.form.hidden = true;
  }

  /** Resolves every open alert of a line with the note. */
  async _resolve(node) {
    const line = node.line;
    const note = node.note.value.trim();
    node.busy = true;
    node.confirm.disabled = true;
    this.status.textContent = t('alerts.resolving');
    try {
      for (const id of line.openIds) {
        const row = await this.rest.post(examPath(this.exam, `/alerts/${encodeURIComponent(id)}/resolve`), { note });
        if (row?.resolution) this._resolved(id, row.resolution);
      }
      say(this.status, 'alerts.resolved', { what: kindText(line.kind), name: node.who.textContent });
      node.note.value = '';
      node.form.hidden = true;
      // The resolved line is elsewhere (another key): keep the keyboard in
      // the panel rather than on a button that is about to go.
      this.stateSelect.focus();
    } catch (err) {
      this.status.textContent = t('alerts.refused', { why: err.message });
    } finally {
      node.busy = false;
      node.confirm.disabled = false;
      this._schedule();
    }
  }
}
