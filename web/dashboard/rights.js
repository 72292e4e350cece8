// What the token's role may do, as the server's matrix says
// (src/auth/rights.rs, PROTOCOL.md 1.2.2), so the page shows no control
// the role may not use. The server stays the authority: a refusal (403)
// is still reported wherever it happens.

const PROCTOR = new Set(['watch', 'message', 'answer_hands', 'pause_student', 'file_report', 'resolve_alert']);
const ALL = new Set([...PROCTOR, 'announce', 'set_phase', 'extend', 'terminate', 'access', 'reset_session', 'edit_exam']);

/** The right each action kind needs (PROTOCOL.md 4.14). */
export const KIND_RIGHT = {
  extend: 'extend',
  pause: 'pause_student',
  resume: 'pause_student',
  message: 'message',
  terminate: 'terminate',
  deny: 'access',
  allow: 'access',
  reset_session: 'reset_session',
  lower_hand: 'answer_hands',
};

/** `may(right)` for a token role. */
export function rightsOf(role) {
  const set = role === 'teacher' || role === 'admin' ? ALL : role === 'proctor' ? PROCTOR : new Set();
  return (right) => set.has(right);
}
