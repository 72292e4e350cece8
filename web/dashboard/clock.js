// A student's time left, from the server's numbers only.
//
// A StudentState carries the student's `deadline` as the server computed
// it when it produced that state ("while paused, as if the pause ended at
// this state", PROTOCOL.md 3.1). The server does not send every student a
// new state when the whole exam is paused or resumed: it sends one
// `exam_update` with the exam's clock, whose `pauses` are the exam-wide
// pause spans in server milliseconds. So the time left now is the state's
// deadline, pushed back by the part of the exam's pauses that fell after
// the state was received, minus the server's time now (the client
// library's serverNow(), never the browser's clock alone).

/** Milliseconds of `spans` ({from, to|null}) inside [a, b]; an open span runs to `b`. */
export function pausedBetween(spans, a, b) {
  let total = 0;
  for (const s of spans) {
    const from = Math.max(s.from, a);
    const to = Math.min(s.to ?? b, b);
    if (to > from) total += to - from;
  }
  return total;
}

/** Whether `t` falls inside one of `spans`. */
export function pausedAt(spans, t) {
  return spans.some((s) => s.from <= t && (s.to === null || s.to === undefined || t < s.to));
}

/**
 * `{ ms, paused }`: the time left of `student` (a StudentState received at
 * server time `stateAt`), at server time `now`, given the exam's pause
 * spans; `null` when the student has no deadline (untimed, not started).
 * A student paused on their own (not by the exam) keeps the time left
 * they had: their state's deadline already counts the pause up to
 * `stateAt`, and a resume sends a new state.
 */
export function timeLeft(student, stateAt, examPauses, now) {
  const deadline = Date.parse(student.deadline ?? '');
  if (!Number.isFinite(deadline)) return null;
  const examPaused = pausedAt(examPauses, now);
  if (student.paused && !pausedAt(examPauses, stateAt)) {
    // Their own pause: frozen at what it was when the state came.
    return { ms: Math.max(0, deadline - stateAt), paused: true };
  }
  const pushed = deadline + pausedBetween(examPauses, stateAt, now);
  return { ms: Math.max(0, pushed - now), paused: examPaused };
}
