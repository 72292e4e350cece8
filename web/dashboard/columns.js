// The table's exam-control columns: selection, time left, extra time,
// raised hand, open alerts by category, the latest action's delivery, and
// the row's action menu button. view.js builds and paints the rows; these
// are the cells it delegates, painted with the same "only what changed"
// rule (`set`), so the 300-student budget holds. Every state is text (and
// an icon), never colour alone; the icons are symbols every system font
// has (DejaVu included: no emoji, which Debian's chromium draws as a box).

import { t, formatDuration } from '../i18n/i18n.js';
import { timeLeft } from './clock.js';
import { CATEGORIES } from './opencount.js';

const el = (tag, className, text) => {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
};

/** A per-student error code's words (PROTOCOL.md 4.14), the code itself if unknown. */
export function errorText(code) {
  const key = `dash.error.${code}`;
  const s = t(key);
  return s === key ? String(code) : s;
}

export class Columns {
  /** `controls`: per-row info; `alerts`: OpenAlerts; `pauses()`: exam pause spans. */
  constructor({ controls, alerts, pauses }) {
    this.controls = controls;
    this.alerts = alerts;
    this.pauses = pauses;
  }

  build(cells) {
    cells.selectBox = el('input');
    cells.selectBox.type = 'checkbox';
    cells.select.append(cells.selectBox);
    cells.timeText = el('span', 'time-text');
    cells.time.append(cells.timeText);
    cells.handMark = el('span', 'hand-mark');
    cells.hand.append(cells.handMark);
    cells.alertBadges = {};
    for (const c of CATEGORIES) {
      const b = el('span', `alert-badge cat-${c}`);
      b.hidden = true;
      cells.alertBadges[c] = b;
      cells.alerts.append(b);
    }
    cells.flag = el('span', 'flag');
    cells.flag.hidden = true;
    cells.status.append(cells.flag);
    cells.menuButton = el('button', 'menu-btn', '⋯');
    cells.menuButton.type = 'button';
    cells.menuButton.setAttribute('aria-haspopup', 'menu');
    cells.menuButton.setAttribute('aria-expanded', 'false');
    cells.menu.append(cells.menuButton);
  }

  /** After the row's own cells: `set(key, node, text)` writes only on change. */
  paint(view, row, set) {
    const s = row.student;
    const c = row.cells;
    const info = this.controls.info(s.student_id);
    const name = s.name || s.student_id;
    const labelKey = `${name}\u0000${document.documentElement.lang}`;
    if (row.text.label !== labelKey) {
      row.text.label = labelKey;
      c.selectBox.setAttribute('aria-label', t('dash.row.select', { name }));
      c.menuButton.setAttribute('aria-label', t('dash.row.menu', { name }));
      c.menuButton.title = t('dash.row.menu', { name });
    }
    if (c.selectBox.checked !== info.selected) c.selectBox.checked = info.selected;
    const extra = s.extra_minutes ?? 0;
    const ext = Math.round((info.flags?.extensionMs ?? 0) / 60000);
    const parts = [];
    if (extra) parts.push(t('dash.extra.accommodation', { n: extra }));
    if (ext) parts.push(t('dash.extra.extension', { n: ext > 0 ? `+${ext}` : String(ext) }));
    set('extra', c.extra, parts.join(' ') || '—');
    const extraTitle = extra || ext ? t('dash.extra.title', { a: extra, e: ext }) : '';
    if (c.extra.title !== extraTitle) c.extra.title = extraTitle;
    set('hand', c.handMark, s.hand_raised ? `☝ ${t('dash.hand.up')}` : '');
    const handTitle = s.hand_raised ? t('dash.hand.title') : '';
    if (c.handMark.title !== handTitle) c.handMark.title = handTitle;
    row.tr.dataset.hand = s.hand_raised ? 'up' : '';
    const open = this.alerts.of(s.student_id);
    for (const cat of CATEGORIES) {
      const b = c.alertBadges[cat];
      const n = open[cat];
      if (b.hidden !== (n === 0)) b.hidden = n === 0;
      set(`alert-${cat}`, b, n ? `⚠ ${t(`dash.category.short.${cat}`)} ${n}` : '');
      const title = n ? t('dash.alerts.open', { n, category: t(`dash.category.${cat}`) }) : '';
      if (b.title !== title) b.title = title;
    }
    const flag = info.flags?.terminated ? `✖ ${t('dash.flag.terminated')}` : info.flags?.denied ? `⊘ ${t('dash.flag.denied')}` : '';
    set('flag', c.flag, flag);
    if (c.flag.hidden !== !flag) c.flag.hidden = !flag;
    row.tr.dataset.access = info.flags?.terminated ? 'terminated' : info.flags?.denied ? 'denied' : '';
    const last = info.last;
    let lastText = '';
    let state = '';
    if (last) {
      state = last.error ? 'failed' : last.delivery;
      const icon = { sending: '…', pending: '◔', delivered: '✓', none: '✓', superseded: '↷', failed: '✗' }[state] ?? '';
      const what = last.error ? t('dash.delivery.error', { code: errorText(last.error) }) : t(`dash.delivery.${state}`);
      lastText = `${t(`dash.kind.${last.kind}`)}: ${icon} ${what}`;
    }
    set('last', c.last, lastText);
    if (c.last.dataset.state !== state) c.last.dataset.state = state;
    this.tick(view, row, set, info);
  }

  /** The time left (every second, and with each paint). */
  tick(view, row, set, info = this.controls.info(row.student.student_id)) {
    const s = row.student;
    let text;
    let state;
    if (info.flags?.terminated) [text, state] = [t('dash.time.terminated'), 'ended'];
    else if (s.submitted_at) [text, state] = [t('dash.time.submitted'), 'ended'];
    else {
      const left = timeLeft(s, row.stateAt ?? view.now(), this.pauses(), view.now());
      if (!left) [text, state] = ['—', 'untimed'];
      else if (left.paused) [text, state] = [`❚❚ ${t('dash.time.paused', { left: formatDuration(left.ms) })}`, 'paused'];
      else if (left.ms <= 0) [text, state] = [t('dash.time.up'), 'ended'];
      else [text, state] = [formatDuration(left.ms), 'running'];
    }
    set('time', row.cells.timeText, text);
    if (row.cells.time.dataset.state !== state) row.cells.time.dataset.state = state;
  }
}
