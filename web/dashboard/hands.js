// The raised hands panel: every hand up, oldest first, each answered
// privately (a `message` action with `reply_to`, which lowers the hand) or
// dismissed (`lower_hand`), PROTOCOL.md 4.14.
//
// What is up comes from the events alone (`hand` raises, `hand_lowered`
// lowers), fed in seq order by the dashboard: the live ones, and after a
// snapshot the REST timeline before it (history.js), so a page opened
// mid-exam lists the hands raised before it opened. The snapshot says who
// has a hand up (`hand_raised`): a hand of someone whose hand is down is
// dropped, and a student whose hand is up but whose `hand` event the
// timeline could not give (it was cut short) is looked up in their record
// (GET …/students/{id}, its `hands`).
//
// A new hand is noticeable without noise: the count leads the tab's title,
// "(2) examwatch — live exam", the line is marked new for a few seconds,
// and a polite live region names the student; no sound.

import { formatTime, onLanguage, t } from '../i18n/i18n.js';
import { button, el, examPath, ms, placeChildren, say, user } from './panels.js';
import { ApiError, newId, postAction } from './api.js';

const NEW_MS = 8000;

export class HandsPanel {
  /**
   * `root`: the panel's (empty) container. `rest`: panels.js restClient.
   * `name(id)`: a student's display name.
   */
  constructor(root, { rest, name }) {
    this.rest = rest;
    this.name = name;
    this.exam = null;
    this.hands = new Map(); // hand_id -> { hand_id, student_id, text, at, li?, busy }
    this.lowered = new Set(); // hand_ids seen lowered: a late `hand` for one is stale
    this.raised = null; // student ids with a hand up, from the last snapshot
    this.looked = new Set(); // students whose record was read for a hand
    this._timer = null;
    this._build(root);
    onLanguage(() => this._relabel());
  }

  /** Another exam (or none): nothing is up. */
  reset(exam) {
    this.exam = exam;
    this.hands.clear();
    this.lowered.clear();
    this.looked.clear();
    this.raised = null;
    this.status.textContent = '';
    this._schedule();
  }

  /** A whole snapshot: hands of students whose hand is down go. */
  snapshot(students) {
    this.raised = new Set(students.filter((s) => s.hand_raised).map((s) => s.student_id));
    for (const [id, h] of this.hands) if (!this.raised.has(h.student_id)) this.hands.delete(id);
    this._schedule();
  }

  /** The events before the snapshot (oldest first), then the live ones. */
  history(events) {
    for (const ev of events) this.event(ev, { quiet: true });
    // A timeline cut short may end with a hand that was lowered since: the
    // snapshot has the last word on whose hand is up.
    if (this.raised) for (const [id, h] of this.hands) if (!this.raised.has(h.student_id)) this.hands.delete(id);
    this._lookUpMissing();
  }

  /** One event, in seq order (`quiet`: from the past, not a new hand). */
  event(ev, { quiet = false } = {}) {
    if (ev.type === 'hand') {
      if (this.lowered.has(ev.hand_id) || this.hands.has(ev.hand_id)) return;
      // At most one hand per student is up: a new one replaces any other.
      for (const [id, h] of this.hands) if (h.student_id === ev.student_id) this.hands.delete(id);
      this.hands.set(ev.hand_id, { hand_id: ev.hand_id, student_id: ev.student_id, text: ev.text ?? '', at: ev.at, seq: ev.seq ?? Infinity, fresh: !quiet && Date.now() });
      if (!quiet) this.raised?.add(ev.student_id);
      if (!quiet) say(this.status, 'hands.new', { name: this.name(ev.student_id) });
    } else if (ev.type === 'hand_lowered') {
      this.lowered.add(ev.hand_id);
      this.hands.delete(ev.hand_id);
    } else if (ev.type === 'student' && ev.student?.hand_raised === false) {
      // (The snapshot, newer than any past event, keeps its word on `raised`.)
      if (!quiet) this.raised?.delete(ev.student.student_id);
      for (const [id, h] of this.hands) if (h.student_id === ev.student.student_id) this.hands.delete(id);
    } else return;
    this._schedule();
  }

  /** Hands up now, oldest first. */
  list() {
    return [...this.hands.values()].sort((a, b) => ms(a.at) - ms(b.at) || a.seq - b.seq || (a.hand_id < b.hand_id ? -1 : 1));
  }

  // ---- internals --------------------------------------------------------

  _build(root) {
    root.setAttribute('aria-labelledby', 'hands-title');
    const h2 = el('h2');
    h2.id = 'hands-title';
    // Focusable by script (the skip link, a hand gone with the focus in it).
    h2.tabIndex = -1;
    this.heading = h2;
    this.title = el('span', '', t('hands.title'));
    this.count = el('span', 'hands-count');
    h2.append(this.title, ' ', this.count);
    this.status = el('p', 'panel-status');
    this.status.setAttribute('role', 'status');
    this.empty = el('p', 'empty', t('hands.none'));
    this.ul = el('ul', 'list hands');
    this.ul.id = 'hands';
    this.ul.setAttribute('aria-labelledby', 'hands-title');
    root.replaceChildren(h2, this.status, this.empty, this.ul);
  }

  _relabel() {
    this.title.textContent = t('hands.title');
    this.empty.textContent = t('hands.none');
    for (const h of this.hands.values()) h.li = null; // rebuilt in the new language
    this._schedule();
  }

  _schedule() {
    if (this._timer !== null) return;
    this._timer = setTimeout(() => this._render(), 50);
  }

  _render() {
    this._timer = null;
    const hands = this.list();
    const now = Date.now();
    for (const h of hands) {
      if (!h.li) h.li = this._line(h);
      const isNew = h.fresh && now - h.fresh < NEW_MS;
      h.li.classList.toggle('new', Boolean(isNew));
      const who = this.name(h.student_id);
      if (h.whoNode.textContent !== who) h.whoNode.textContent = who;
    }
    // A line that goes with the keyboard focus in it (or just acted on,
    // its buttons disabled meanwhile) hands the focus on: to the next
    // hand's Reply, else the panel's heading, never to <body>.
    const kept = new Set(hands.map((h) => h.li));
    const before = [...this.ul.children];
    const lost = document.activeElement === document.body || !document.activeElement;
    const gone = before.findIndex((li) => !kept.has(li) && (li.contains(document.activeElement) || (lost && li.dataset.hand === this._acted)));
    placeChildren(this.ul, hands.map((h) => h.li));
    if (gone >= 0) {
      this._acted = null;
      const next = before.slice(gone + 1).find((li) => kept.has(li)) ?? before.slice(0, gone).reverse().find((li) => kept.has(li));
      (next?.querySelector('button.reply') ?? this.heading).focus();
    }
    this.empty.hidden = hands.length > 0;
    this.count.textContent = hands.length ? t('hands.count', { n: hands.length }) : '';
    // The tab's title: "(2) examwatch — live exam", whatever the title is.
    const base = document.title.replace(/^\(\d+\) /, '');
    document.title = hands.length ? `(${hands.length}) ${base}` : base;
    // Take the "new" mark off once it is old.
    if (hands.some((h) => h.fresh && now - h.fresh < NEW_MS)) setTimeout(() => this._schedule(), NEW_MS);
  }

  /** One hand's line: when, who, what, reply (with its form) and dismiss. */
  _line(h) {
    const li = el('li', 'hand');
    li.dataset.hand = h.hand_id;
    li.dataset.student = h.student_id;
    const head = el('div', 'hand-head');
    const time = el('time', '', Number.isNaN(ms(h.at)) ? '' : formatTime(ms(h.at)));
    if (h.at) time.dateTime = h.at;
    h.whoNode = user(this.name(h.student_id), 'who');
    head.append(el('span', 'icon', '☝'), time, h.whoNode);
    const text = el('p', 'hand-text');
    text.append(h.text ? user(h.text) : el('span', 'muted', t('hands.no_text')));
    const who = () => this.name(h.student_id);
    const reply = button('reply', t('hands.reply'), t('hands.reply_label', { name: who() }));
    const dismiss = button('dismiss', t('hands.dismiss'), t('hands.dismiss_label', { name: who() }));
    const actions = el('div', 'hand-actions');
    actions.append(reply, dismiss);

    const form = el('form', 'reply-form');
    form.hidden = true;
    const inputId = `reply-${h.hand_id}`;
    const label = say(el('label'), 'hands.reply_to', { name: who() });
    label.htmlFor = inputId;
    const input = el('input');
    input.id = inputId;
    input.type = 'text';
    input.maxLength = 2000;
    input.required = true;
    input.autocomplete = 'off';
    const send = el('button', 'send', t('hands.send'));
    send.type = 'submit';
    const cancel = button('cancel', t('hands.cancel'));
    form.append(label, input, send, cancel);

    reply.addEventListener('click', () => {
      form.hidden = false;
      input.focus();
    });
    cancel.addEventListener('click', () => {
      form.hidden = true;
      reply.focus();
    });
    form.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') {
        e.stopPropagation();
        form.hidden = true;
        reply.focus();
      }
    });
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const body = input.value.trim();
      if (!body) return;
      this._act(h, [reply, dismiss, send], ['hands.replying', { name: who() }], {
        kind: 'message', students: [h.student_id], text: body, reply_to: h.hand_id,
      }, (res) => ['hands.replied', { name: who(), delivery: deliveryText(res.students?.[0]?.delivery) }]);
    });
    dismiss.addEventListener('click', () => {
      this._act(h, [reply, dismiss, send], ['hands.dismissing', { name: who() }], { kind: 'lower_hand', hand_id: h.hand_id },
        () => ['hands.dismissed', { name: who() }]);
    });
    li.append(head, text, actions, form);
    return li;
  }

  /**
   * POSTs an action for a hand (`pending`, `done(answer)`: a status line's
   * key and values); the hand goes when its `hand_lowered`
   * arrives (the truth, for every dashboard at once), not on the answer.
   */
  async _act(h, controls, pending, body, done) {
    this._acted = h.hand_id;
    for (const c of controls) c.disabled = true;
    say(this.status, ...pending);
    try {
      const res = await postAction(this.exam, { id: newId(body.kind === 'message' ? 'reply' : 'lower'), ...body });
      say(this.status, ...done(res));
    } catch (err) {
      // The table's wording for a refusal (status, code, the server's message).
      const why = err instanceof ApiError ? t('dash.refused', { status: err.status, code: err.code, message: err.message }) : String(err?.message ?? err);
      say(this.status, 'hands.refused', { name: this.name(h.student_id), why });
      for (const c of controls) c.disabled = false;
    }
  }

  /** Students with a hand up whose `hand` event the timeline did not give. */
  async _lookUpMissing() {
    if (!this.raised) return;
    const exam = this.exam;
    const known = new Set([...this.hands.values()].map((h) => h.student_id));
    for (const sid of this.raised) {
      if (known.has(sid) || this.looked.has(sid)) continue;
      this.looked.add(sid);
      try {
        const record = await this.rest.get(examPath(exam, `/students/${encodeURIComponent(sid)}`));
        if (this.exam !== exam) return;
        const up = (record.hands ?? []).filter((x) => !x.lowered_at).at(-1);
        const alreadyKnown = [...this.hands.values()].some((x) => x.student_id === sid);
        if (up && this.raised.has(sid) && !alreadyKnown) {
          this.event({ type: 'hand', hand_id: up.hand_id, student_id: sid, text: up.text, at: up.raised_at }, { quiet: true });
        }
      } catch (err) {
        say(this.status, 'hands.unreadable', { name: this.name(sid), why: err.message });
      }
    }
  }
}

/** A delivery state's label (delivered, pending, …). */
export function deliveryText(state) {
  const s = t(`panels.delivery.${state}`);
  return s.startsWith('panels.delivery.') ? String(state ?? '') : s;
}
