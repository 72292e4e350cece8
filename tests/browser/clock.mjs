// The dashboard's time-left arithmetic (web/dashboard/clock.js), in node:
// a running student's time left falls with the server's time; an exam
// pause after their state was received pushes their deadline back (the
// server sends no new state to every student for it); their own pause
// freezes what they had; an untimed student has none. Run by
// tests/api/browser.rs.

import { pausedBetween, pausedAt, timeLeft } from '../../web/dashboard/clock.js';

function check(cond, message) {
  if (!cond) {
    console.error(`check failed: ${message}`);
    process.exit(1);
  }
}

const MIN = 60000;
const at = (ms) => new Date(ms).toISOString();
const t0 = Date.parse('2026-03-01T09:00:00Z');
const running = { deadline: at(t0 + 60 * MIN), paused: false };

check(pausedBetween([{ from: 10, to: 20 }, { from: 30, to: null }], 0, 40) === 20, 'spans inside, an open one up to the end');
check(pausedBetween([{ from: 10, to: 20 }], 15, 40) === 5, 'only the part after the start counts');
check(pausedAt([{ from: 10, to: 20 }], 15) && !pausedAt([{ from: 10, to: 20 }], 20) && pausedAt([{ from: 10, to: null }], 99), 'pausedAt');

let left = timeLeft(running, t0, [], t0 + 10 * MIN);
check(left.ms === 50 * MIN && !left.paused, `50 minutes left after 10: ${JSON.stringify(left)}`);
// The exam paused 5 minutes after the state came, for 3 minutes, then ran 2 more.
const pauses = [{ from: t0 + 5 * MIN, to: t0 + 8 * MIN }];
left = timeLeft(running, t0, pauses, t0 + 10 * MIN);
check(left.ms === 53 * MIN && !left.paused, `an exam pause after the state pushes the deadline: ${JSON.stringify(left)}`);
// While the exam is paused, the time left stands still.
const open = [{ from: t0 + 5 * MIN, to: null }];
const a = timeLeft(running, t0, open, t0 + 6 * MIN);
const b = timeLeft(running, t0, open, t0 + 9 * MIN);
check(a.paused && b.paused && a.ms === 55 * MIN && b.ms === 55 * MIN, `paused: ${JSON.stringify([a, b])}`);
// A state received during the exam's pause already counts it up to then.
const during = { deadline: at(t0 + 62 * MIN), paused: true };
left = timeLeft(during, t0 + 7 * MIN, [{ from: t0 + 5 * MIN, to: t0 + 8 * MIN }], t0 + 10 * MIN);
check(left.ms === 53 * MIN && !left.paused, `a state from inside the pause: ${JSON.stringify(left)}`);
// Their own pause: what they had when the state came, whatever the time.
const own = { deadline: at(t0 + 60 * MIN), paused: true };
left = timeLeft(own, t0 + 20 * MIN, [], t0 + 45 * MIN);
check(left.ms === 40 * MIN && left.paused, `their own pause freezes it: ${JSON.stringify(left)}`);
check(timeLeft({ deadline: null, paused: false }, t0, [], t0) === null, 'untimed: no time left');
check(timeLeft(running, t0, [], t0 + 70 * MIN).ms === 0, 'never negative');
console.log('time left: ok');
