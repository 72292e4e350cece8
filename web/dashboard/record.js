// A student's record in a side panel (PROTOCOL.md 1.8.1): their state,
// deadline and accommodations, sessions (IP, device), alerts, actions and
// hands from GET …/students/{id}, and their own timeline from
// GET …/students/{id}/timeline, a page at a time ("More").
//
// Opened by clicking a student's row (anywhere but on a control of the
// row: a checkbox, a menu, a button) or, from the keyboard, with the
// student's name, which is a button. It is a non-modal dialog: focus goes
// into it when it opens, Escape or its close button closes it, and focus
// then goes back to the name button of the row it came from. While open,
// the student's live `student` events keep its state line current; the
// rest is what the REST answer said, until "Refresh".

import { formatDateTime, formatDuration, formatTime, onLanguage, t } from '../i18n/i18n.js';
import { button, categoryText, el, examPath, kindText, ms, tOr, user } from './panels.js';
import { deliveryText } from './hands.js';

export const TIMELINE_PAGE = 25;
/** What, inside a row, is a control of its own (not "open the record"). */
const ROW_CONTROLS = 'button, input, select, textarea, a, label, summary, [role="menu"], [role="menuitem"], [role="checkbox"], [contenteditable]';

const when = (at) => (Number.isNaN(ms(at)) ? '—' : formatDateTime(ms(at)));
const clock = (at) => (Number.isNaN(ms(at)) ? '' : formatTime(ms(at)));

export class RecordPanel {
  /** `rest`: panels.js restClient; `name(id)`: a student's display name. */
  constructor({ rest, name }) {
    this.rest = rest;
    this.name = name;
    this.exam = null;
    this.student = null; // the open student's id, or null
    this.opener = null;
    this.record = null;
    this.events = [];
    this.next = 0;
    this.hasMore = false;
    this._load = 0; // bumped on every open: late answers of an older one are dropped
    this._build();
    onLanguage(() => {
      this._relabel();
      if (this.record) this._paint();
    });
  }

  /** Row clicks (and the name buttons) of the table open the record. */
  attach(rows) {
    rows.addEventListener('click', (e) => {
      const row = e.target.closest('.row[data-student]');
      if (!row || !rows.contains(row)) return;
      const nameButton = e.target.closest('.open-record');
      if (!nameButton && e.target.closest(ROW_CONTROLS)) return;
      // Selecting text in a row is not a click on it.
      if (!nameButton && String(window.getSelection?.() ?? '') !== '') return;
      this.open(row.dataset.student);
    });
  }

  reset(exam) {
    this.exam = exam;
    if (this.student) this.close({ restoreFocus: false });
  }

  /** Opens (or switches to) a student's record. */
  async open(studentId) {
    this.student = studentId;
    this.record = null;
    this.events = [];
    this.next = 0;
    this.hasMore = false;
    const load = ++this._load;
    this.root.hidden = false;
    this.root.dataset.student = studentId;
    this.nameNode.textContent = this.name(studentId);
    this.idNode.textContent = studentId;
    this.body.replaceChildren();
    this.timeline.replaceChildren();
    this.more.hidden = true;
    this.status.textContent = t('record.loading');
    this.heading.focus();
    const exam = this.exam;
    const base = examPath(exam, `/students/${encodeURIComponent(studentId)}`);
    try {
      const [record, page] = await Promise.all([
        this.rest.get(base),
        this.rest.get(`${base}/timeline?after_seq=0&limit=${TIMELINE_PAGE}`),
      ]);
      if (load !== this._load) return;
      this.record = record;
      this._page(page);
      this.status.textContent = '';
      this._paint();
    } catch (err) {
      if (load === this._load) this.status.textContent = t('record.unreadable', { why: err.message });
    }
  }

  close({ restoreFocus = true } = {}) {
    const id = this.student;
    this.student = null;
    this._load += 1;
    this.root.hidden = true;
    delete this.root.dataset.student;
    if (!restoreFocus || id == null) return;
    // Back to the row it came from (its name button; the row element is
    // kept by the table across renders, but look it up in case it went).
    const row = [...document.querySelectorAll('#students .rows .row')].find((r) => r.dataset.student === id);
    const target = row?.querySelector('.open-record') ?? row;
    if (target) target.focus();
  }

  /** Live events: the open student's state line follows them. */
  event(ev) {
    if (!this.record || ev.type !== 'student' || ev.student?.student_id !== this.student) return;
    this.record.state = ev.student;
    this._paintState();
  }

  // ---- internals --------------------------------------------------------

  _build() {
    const root = el('div', 'record-panel');
    root.id = 'record';
    root.hidden = true;
    root.setAttribute('role', 'dialog');
    root.setAttribute('aria-modal', 'false');
    root.setAttribute('aria-labelledby', 'record-title');
    const header = el('div', 'record-header');
    this.heading = el('h2');
    this.heading.id = 'record-title';
    this.heading.tabIndex = -1;
    this.titleText = el('span');
    this.nameNode = user('', 'who');
    this.idNode = user('', 'id');
    this.heading.append(this.titleText, ' ', this.nameNode, ' ', el('span', 'muted'));
    this.heading.lastChild.append('(', this.idNode, ')');
    this.refresh = button('refresh');
    this.refresh.addEventListener('click', () => this.student && this.open(this.student));
    this.closeButton = button('close', '×');
    this.closeButton.addEventListener('click', () => this.close());
    header.append(this.heading, this.refresh, this.closeButton);
    this.status = el('p', 'panel-status');
    this.status.setAttribute('role', 'status');
    this.body = el('div', 'record-body');
    this.timelineTitle = el('h3');
    this.timeline = el('ul', 'list record-timeline');
    this.timeline.id = 'record-timeline';
    this.more = button('more');
    this.more.hidden = true;
    this.more.addEventListener('click', () => this._more());
    root.append(header, this.status, this.body, this.timelineTitle, this.timeline, this.more);
    root.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') {
        e.preventDefault();
        this.close();
      }
    });
    // Described by the name buttons of the table (aria-describedby).
    const hint = el('span');
    hint.id = 'record-hint';
    hint.hidden = true;
    this.hint = hint;
    document.body.append(root, hint);
    this.root = root;
    this._relabel();
  }

  _relabel() {
    this.titleText.textContent = t('record.title');
    this.refresh.textContent = t('record.refresh');
    this.closeButton.setAttribute('aria-label', t('record.close'));
    this.closeButton.title = t('record.close');
    this.timelineTitle.textContent = t('record.timeline');
    this.more.textContent = t('record.more');
    this.hint.textContent = t('record.open_hint');
  }

  _page(page) {
    const fresh = page.events.filter((ev) => ev.seq > this.next);
    this.events.push(...fresh);
    this.next = Math.max(this.next, page.next_after_seq ?? 0);
    this.hasMore = Boolean(page.has_more);
    for (const ev of fresh) this.timeline.append(this._eventLine(ev));
    this.more.hidden = !this.hasMore;
  }

  async _more() {
    const load = this._load;
    this.more.disabled = true;
    const base = examPath(this.exam, `/students/${encodeURIComponent(this.student)}`);
    try {
      const page = await this.rest.get(`${base}/timeline?after_seq=${this.next}&limit=${TIMELINE_PAGE}`);
      if (load !== this._load) return;
      this._page(page);
      this.status.textContent = t('record.shown', { n: this.events.length });
    } catch (err) {
      this.status.textContent = t('record.unreadable', { why: err.message });
    } finally {
      this.more.disabled = false;
      // "More" gone (the last page): keep the keyboard in the panel.
      if (this.more.hidden && load === this._load) this.timeline.lastElementChild?.focus();
    }
  }

  _paint() {
    const r = this.record;
    this.nameNode.textContent = r.name || r.student_id;
    this.stateList = el('dl', 'record-state');
    this.body.replaceChildren(
      this._section('record.state', this.stateList),
      this._section('record.sessions', this._sessions(r.sessions ?? [])),
      this._section('record.alerts', this._list(r.alerts ?? [], (a) => this._alertLine(a), 'record-alerts')),
      this._section('record.actions', this._list(r.actions ?? [], (a) => this._actionLine(a), 'record-actions')),
      this._section('record.hands', this._list(r.hands ?? [], (h) => this._handLine(h), 'record-hands')),
    );
    this._paintState();
    this.timeline.replaceChildren(...this.events.map((ev) => this._eventLine(ev)));
  }

  _section(key, content) {
    const s = el('section', 'record-section');
    s.append(el('h3', '', t(key)), content);
    return s;
  }

  _paintState() {
    const r = this.record;
    const s = r.state;
    const rows = [];
    const add = (key, ...value) => rows.push([t(key), value]);
    if (s) {
      add('record.status', tOr(`panels.status.${s.status}`, s.status), ' · ', s.connected ? `● ${t('record.connected')}` : `○ ${t('record.not_connected')}`);
      add('record.progress', String(s.answered), s.current_question != null ? ` · ${t('record.question')} ` : '', s.current_question != null ? user(String(s.current_question)) : '');
      add('record.focus_lost', String(s.focus_lost_count));
      if (s.hand_raised) add('record.hand', `☝ ${t('record.hand_up')}`);
    } else add('record.status', t('record.never_connected'));
    add('record.deadline', r.deadline ? when(r.deadline) : t('record.untimed'), r.paused ? ` · ‖ ${t('record.paused')}` : '');
    add('record.started', r.started_at ? when(r.started_at) : '—');
    const acc = r.accommodations ?? {};
    add('record.accommodations', t('record.accommodation', { minutes: acc.extra_minutes ?? 0, multiplier: acc.time_multiplier ?? 1 }));
    if (r.extension_ms) add('record.extension', `${r.extension_ms < 0 ? '−' : '+'}${formatDuration(Math.abs(r.extension_ms))}`);
    if (r.finished) add('record.finished', tOr(`record.how.${r.finished.how}`, r.finished.how), ' · ', when(r.finished.at));
    if (r.access?.denied) add('record.access', `✗ ${t('record.denied')}`, r.access.reason ? ': ' : '', r.access.reason ? user(r.access.reason) : '');
    add('record.answers', String(r.answers ?? 0));
    add('record.source', r.live ? t('record.live') : t('record.stored'));
    this.stateList.replaceChildren(...rows.flatMap(([term, value]) => {
      const dd = el('dd');
      dd.append(...value.filter((v) => v !== ''));
      return [el('dt', '', term), dd];
    }));
  }

  _sessions(sessions) {
    if (!sessions.length) return el('p', 'empty', t('record.no_sessions'));
    const table = el('table', 'record-sessions');
    table.id = 'record-sessions';
    const head = el('tr');
    for (const k of ['record.opened', 'record.closed', 'record.ip', 'record.device', 'record.close_code']) {
      const th = el('th', '', t(k));
      th.scope = 'col';
      head.append(th);
    }
    const thead = el('thead');
    thead.append(head);
    const tbody = el('tbody');
    for (const s of sessions) {
      const tr = el('tr');
      const cell = (...content) => {
        const td = el('td');
        td.append(...content);
        tr.append(td);
      };
      cell(when(s.opened_at));
      cell(s.closed_at ? when(s.closed_at) : t('record.open'));
      cell(user(s.ip ?? '—', 'ip'));
      cell(user(s.user_agent ?? '—', 'ua'));
      cell(s.close_code != null ? `${s.close_code} ` : '', user(s.close_reason ?? ''));
      tbody.append(tr);
    }
    table.append(thead, tbody);
    return table;
  }

  _list(items, line, id) {
    if (!items.length) return el('p', 'empty', t('record.none'));
    const ul = el('ul', 'list');
    ul.id = id;
    ul.append(...items.map(line));
    return ul;
  }

  _alertLine(a) {
    const li = el('li', `alert ${a.state}`);
    li.append(el('time', '', clock(a.at)), el('span', 'state', a.state === 'open' ? `⚠ ${t('alerts.state.open')}` : `✓ ${t('alerts.state.resolved')}`),
      el('span', 'what', kindText(a.kind)), el('span', 'category', `[${categoryText(a.category)}]`));
    if (a.count > 1) li.append(el('span', 'count', `×${a.count}`));
    if (a.text) li.append(user(a.text));
    if (a.resolution) {
      li.append(el('span', '', t('alerts.resolved_by')), user(a.resolution.by));
      if (a.resolution.note) li.append(user(a.resolution.note, 'note'));
    }
    return li;
  }

  _actionLine(a) {
    const li = el('li', 'action');
    const mine = a.students?.[0];
    const actor = a.actor?.name || a.actor?.sub || '';
    li.append(el('time', '', clock(a.at)), el('span', 'what', tOr(`record.kind.${a.kind}`, a.kind)));
    const p = a.payload ?? {};
    if (p.text) li.append(user(p.text));
    if (Number.isInteger(p.minutes)) li.append(t('record.minutes', { n: p.minutes }));
    if (p.reason) li.append(user(p.reason));
    li.append(el('span', 'muted', t('record.by')), user(actor));
    if (mine?.delivery) li.append(el('span', `delivery ${mine.delivery}`, deliveryText(mine.delivery)));
    return li;
  }

  _handLine(h) {
    const li = el('li', 'hand');
    li.append(el('time', '', clock(h.raised_at)), '☝ ', h.text ? user(h.text) : el('span', 'muted', t('hands.no_text')));
    li.append(el('span', 'muted', h.lowered_at ? t('record.lowered', { at: clock(h.lowered_at) }) : t('record.hand_up')));
    return li;
  }

  _eventLine(ev) {
    const li = el('li', `ev ev-${ev.type}`);
    li.tabIndex = -1;
    const at = ev.at ?? ev.student?.last_activity;
    const what = el('span', 'what');
    if (ev.type === 'student') what.append(tOr(`panels.cause.${ev.cause}`, ev.cause ?? ''), ' · ', tOr(`panels.status.${ev.student?.status}`, ev.student?.status ?? ''));
    else if (ev.type === 'alert') what.append(`⚠ ${kindText(ev.kind)}`, ...(ev.text ? [': ', user(ev.text)] : []));
    else if (ev.type === 'alert_resolved') what.append(`✓ ${t('record.ev.resolved')} `, user(ev.by ?? ''), ...(ev.note ? [': ', user(ev.note)] : []));
    else if (ev.type === 'hand') what.append(`☝ ${t('record.ev.hand')}`, ...(ev.text ? [': ', user(ev.text)] : []));
    else if (ev.type === 'hand_lowered') what.append(t('record.ev.hand_lowered'), ' ', user(ev.by ?? ''));
    else if (ev.type === 'delivery') what.append(t('record.ev.delivery', { state: deliveryText(ev.state) }));
    else what.append(ev.type);
    li.append(el('time', '', clock(at)), el('span', 'seq', `#${ev.seq}`), what);
    return li;
  }
}
