// The dashboard's alerts panel stays fair: one line per student and kind
// while open; a repeat updates that line's "×count" (from the alert's
// `count`) and moves it to the top, so one student's flood of alerts cannot
// push anyone else's off the list. Resolved alerts leave the open line and
// a later repeat opens a new one; a report and a network incident are a
// line each; filters keep their category and state; the order in which the
// sources tell of an alert (live event, REST list, timeline) changes
// nothing. In node, on the panel's own line logic (web/dashboard/alerts.js:
// groupAlerts, visibleLines), no browser, no server. Run by
// tests/api/browser.rs.

function check(cond, message) {
  if (!cond) {
    console.error(`check failed: ${message}`);
    process.exit(1);
  }
}

// alerts.js reads the page's language through the i18n module at load.
globalThis.navigator ??= { languages: ['en'] };
globalThis.document = { documentElement: {} };
const { groupAlerts, visibleLines } = await import('../../web/dashboard/alerts.js');

let n = 0;
let clock = Date.parse('2026-11-22T10:00:00Z');
/** An alert as the server sends it; each one a little later. */
const alert = (student_id, kind, count, extra = {}) => {
  n += 1;
  clock += 10;
  return { alert_id: `a${n}`, seq: n, student_id, kind, category: extra.category ?? 'test_taker', state: 'open', at: new Date(clock).toISOString(), count, resolution: null, ...extra };
};
const open = (alerts) => visibleLines(alerts, { state: 'open' });
const describe = (lines) => JSON.stringify(lines.map((l) => `${l.student_id}:${l.kind}×${l.count}:${l.state}`));

// s2's alert, then 50 of s1's (the worst case: a server that folds nothing).
const alerts = [alert('s2', 'idle', 1)];
for (let i = 1; i <= 50; i++) alerts.push(alert('s1', 'focus_lost', i));
let lines = open(alerts);
check(lines.length === 2, `one line per student and kind: ${describe(lines)}`);
check(lines[0].student_id === 's1' && lines[0].count === 50 && lines[0].ids.length === 50, `s1's line counts 50: ${describe(lines)}`);
check(lines[1].student_id === 's2' && lines[1].count === 1, `s2's alert is still listed: ${describe(lines)}`);

// A repeat moves its line to the top, with the new count.
alerts.push(alert('s2', 'idle', 2));
lines = open(alerts);
check(lines.length === 2 && lines[0].student_id === 's2' && lines[0].count === 2, `repeat on top: ${describe(lines)}`);
// Another kind is a line of its own.
alerts.push(alert('s1', 'disconnected', 1, { category: 'technical' }));
check(open(alerts).length === 3, `a new kind, a new line: ${describe(open(alerts))}`);

// A full list: 199 other students' alerts survive 1000 more from s1.
for (let i = 0; i < 199; i++) alerts.push(alert(`o${i}`, 'idle', 1));
for (let i = 51; i <= 1050; i++) alerts.push(alert('s1', 'focus_lost', i));
lines = open(alerts);
check(lines.length === 200, `at most 200 lines: ${lines.length}`);
const others = lines.filter((l) => l.student_id.startsWith('o')).length;
check(others >= 197, `others' alerts stay on the list: ${others} of 199`);
check(lines.filter((l) => l.student_id === 's1' && l.kind === 'focus_lost').length === 1 && lines[0].count === 1050, 's1 holds one focus line, ×1050');

// Resolving s1's focus line (every alert in it, with one note) moves it to
// "resolved" as one line; a later repeat is a new open line.
const resolution = { by: 'p1', note: 'spoke to them', at: new Date(clock).toISOString() };
for (const a of alerts) if (a.student_id === 's1' && a.kind === 'focus_lost') a.resolution = resolution;
const resolved = visibleLines(alerts, { state: 'resolved' });
check(resolved.length === 1 && resolved[0].ids.length === 1050 && resolved[0].resolution.note === 'spoke to them', `one resolved line: ${describe(resolved)}`);
check(!open(alerts).some((l) => l.student_id === 's1' && l.kind === 'focus_lost'), 'no open focus line for s1 once resolved');
alerts.push(alert('s1', 'focus_lost', 1051));
lines = open(alerts);
check(lines[0].student_id === 's1' && lines[0].kind === 'focus_lost' && lines[0].ids.length === 1 && lines[0].state === 'open', `a repeat after the resolution opens a new line: ${describe(lines.slice(0, 2))}`);

// Reports and network incidents never fold: a line each, the room's too.
const room = [
  alert(null, 'network_incident', 1, { category: 'technical', students: 12 }),
  alert(null, 'network_incident', 1, { category: 'technical', students: 4 }),
  alert(null, 'report', 1, { category: 'environment', text: 'fire alarm', by: 'p1' }),
  alert('s2', 'report', 1, { category: 'environment', text: 'phone rang', by: 'p1' }),
  alert('s2', 'report', 1, { category: 'environment', text: 'phone rang again', by: 'p1' }),
];
lines = groupAlerts(room);
check(lines.length === 5 && lines.filter((l) => l.student_id === null).length === 3, `a line per report and incident: ${describe(lines)}`);
check(lines.find((l) => l.kind === 'network_incident' && l.students === 12), 'an incident keeps how many dropped');

// Filters: a category, a state, both.
const all = [...alerts, ...room];
const technical = visibleLines(all, { category: 'technical' });
check(technical.length > 0 && technical.every((l) => l.category === 'technical'), `technical only: ${describe(technical)}`);
check(visibleLines(all, { category: 'environment', state: 'open' }).length === 3, 'open environment lines: the three reports');

// The order the sources tell of the alerts changes nothing.
const shuffled = [...alerts].reverse();
check(describe(open(shuffled)) === describe(open(alerts)), 'the same lines whatever the order');

console.log('alerts list: ok');
process.exit(0);
