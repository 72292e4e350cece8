// Open alerts per student and category, for the table's badges.
//
// Every `alert` is its own alert (a fold's flush included, PROTOCOL.md
// 3.3) and stays open until an `alert_resolved` names it. What is open at
// load comes from GET /v1/exams/{id}/alerts?state=open; after that the
// live `alert` and `alert_resolved` events (and those the timeline load
// replays) keep it current. All three may name the same alert: it is
// counted once, by `alert_id`, and a resolution seen first wins.

export const CATEGORIES = ['environment', 'test_taker', 'technical'];

export class OpenAlerts {
  constructor(changed) {
    this.changed = changed; // (student_id) => void
    this.open = new Map(); // alert_id -> { student_id, category }
    this.resolved = new Set();
    this.counts = new Map(); // student_id -> {environment, test_taker, technical}
  }

  clear() {
    this.open.clear();
    this.resolved.clear();
    this.counts.clear();
  }

  _count(a, by) {
    if (!a.student_id) return;
    let c = this.counts.get(a.student_id);
    if (!c) this.counts.set(a.student_id, (c = { environment: 0, test_taker: 0, technical: 0 }));
    if (a.category in c) c[a.category] += by;
    this.changed(a.student_id);
  }

  /** An alert (event or REST row) that is open. */
  add(a) {
    if (!a?.alert_id || this.resolved.has(a.alert_id) || this.open.has(a.alert_id)) return;
    if (a.state && a.state !== 'open') return;
    const entry = { student_id: a.student_id ?? null, category: a.category };
    this.open.set(a.alert_id, entry);
    this._count(entry, 1);
  }

  resolve(alertId) {
    this.resolved.add(alertId);
    const a = this.open.get(alertId);
    if (!a) return;
    this.open.delete(alertId);
    this._count(a, -1);
  }

  /** Any event: alerts and resolutions are taken, the rest ignored. */
  event(ev) {
    if (ev.type === 'alert') this.add(ev);
    else if (ev.type === 'alert_resolved') this.resolve(ev.alert_id);
  }

  /** `{environment, test_taker, technical}` open counts of one student. */
  of(studentId) {
    return this.counts.get(studentId) ?? { environment: 0, test_taker: 0, technical: 0 };
  }
}
