// The client library's rules, in node with a scripted fake WebSocket (no
// browser, no server): full-jitter backoff bounds; the outbox is stored
// before anything is sent, re-sent after a reconnect with the same ids and
// emptied only by acks; it survives a new client on the same storage (a
// closed tab); a reconnect carries previous_session and sends resume from
// the last announcement seen, and its `resumed` answer is an event (lost
// or not); the clock offset comes from server_time; a
// 4001 close stops the client. Then the rules that keep answers safe under
// the server's limits: the outbox is paced (10 a second, 10 in flight, a
// pause after rate_limited) and answer() sends only the new entry; a submit
// waits for every answer before it; what is refused for good is reported
// (`rejected`), never dropped silently; oversized answers throw, and the
// entry behind a 1009 is set aside; a welcome does not reset the backoff;
// two tabs share one outbox; a taken-over client refuses answers; storage
// failures are reported; a missed heartbeat goes offline at once; focus is
// re-sent on every reconnect; 1008/4009 wait at least a floor; 1012 waits
// a random share of restartJitterMs; teachers
// resume with ?last_seq=; announce() settles on a drop or a timeout; a
// snapshot in parts is applied only whole, never from a dropped socket;
// refresh(token) is sent and settled by its ack or error, 4401 reconnects
// with the latest token, 4403 and a ticket refused token_revoked stop. The
// HTTP fallback against a scripted fetch: failed handshakes while HTTP
// works switch to SSE + POST (batches, one POST in flight, results by
// position, 429, 409, Last-Event-ID, `event: close`), the socket is tried
// in the background and its welcome moves the session back; no switch
// while HTTP fails too, nor for watchers. Run by tests/api/browser.rs.

import { ExamwatchClient, backoffDelay } from '../../web/client/examwatch.js';

function check(cond, message) {
  if (!cond) {
    console.error(`check failed: ${message}`);
    process.exit(1);
  }
}

class FakeSocket {
  static all = [];
  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    this.sent = [];
    this.sentAt = [];
    FakeSocket.all.push(this);
  }
  send(data) {
    this.sent.push(JSON.parse(data));
    this.sentAt.push(Date.now());
  }
  /** The client calling close(): recorded, then the close event (if still listened to). */
  close(code = 1000) {
    this.closedWith = code;
    this.onclose?.({ code, reason: '' });
  }
  /** The server (or the network) ending the connection. */
  drop(code, reason = '') {
    this.onclose?.({ code, reason });
  }
  receive(msg) {
    this.onmessage({ data: JSON.stringify(msg) });
  }
  static last() {
    return FakeSocket.all[FakeSocket.all.length - 1];
  }
}
globalThis.WebSocket = FakeSocket;
globalThis.location = { protocol: 'http:', host: 'exams.test' };

class MemoryStorage {
  map = new Map();
  getItem(k) {
    return this.map.has(k) ? this.map.get(k) : null;
  }
  setItem(k, v) {
    this.map.set(k, String(v));
  }
}

const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
const token = `${b64({ alg: 'HS256' })}.${b64({ sub: 's1', role: 'student', exams: ['e1'] })}.sig`;
const student = { student_id: 's1', name: 'Ada', status: 'active', answered: 0 };
const welcome = (id, lastSeq, skewMs = 0) => ({
  type: 'welcome',
  session_id: id,
  server_time: new Date(Date.now() + skewMs).toISOString(),
  exam_id: 'e1',
  student,
  last_seq: lastSeq,
});
const until = async (what, cond, ms = 2000) => {
  const deadline = Date.now() + ms;
  while (!cond()) {
    check(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
};

// Backoff: uniform in [0, min(cap, base * 2^attempt)].
check(backoffDelay(0, 500, 30000, () => 0.999) <= 500, 'attempt 0 waits at most the base');
check(backoffDelay(3, 500, 30000, () => 0.5) === 2000, 'attempt 3: half of 4 s');
check(backoffDelay(40, 500, 30000, () => 0.999) < 30000, 'capped');
check(backoffDelay(5, 500, 30000, () => 0) === 0, 'full jitter reaches 0');

const storage = new MemoryStorage();
// The rules above hold whatever authenticates the socket; most scenarios
// use `?access_token=` for a synchronous connect, tickets have their own below.
const options = { exam: 'e1', token, storage, backoffBaseMs: 10, backoffCapMs: 40, heartbeatMs: 60000, tickets: false };
const client = new ExamwatchClient(options);
const announcements = [];
client.addEventListener('announcement', (e) => announcements.push(e.detail.seq));
client.connect();
const ws1 = FakeSocket.last();
check(ws1.url === `ws://exams.test/v1/exams/e1/ws?access_token=${encodeURIComponent(token)}`, ws1.url);
check(ws1.protocol === 'examwatch.v1', 'offers the subprotocol');

// An answer before the welcome: stored, not yet sent.
const id = client.answer('q1', 'A');
check(ws1.sent.length === 0, 'nothing is sent before the welcome');
check(storage.getItem('examwatch:outbox:e1:s1').includes(id), 'the answer is stored first');

ws1.receive(welcome('S1', 7, 5000));
check(client.state === 'live', 'live after the welcome');
check(Math.abs(client.clockOffsetMs - 5000) < 200, `clock offset from server_time: ${client.clockOffsetMs}`);
check(!ws1.sent.some((m) => m.type === 'resume'), 'no resume on a first connection');
const sent1 = ws1.sent.find((m) => m.type === 'answer');
check(sent1 && sent1.id === id && sent1.question === 'q1' && sent1.ref, 'the answer is sent with a ref');

ws1.receive({ type: 'announcement', seq: 8, text: 'hi', at: new Date().toISOString(), from: 'T' });
ws1.drop(1006); // network drop: no ack came
check(client.state === 'offline', 'offline after a drop');
await until('a reconnect', () => FakeSocket.all.length === 2);
const ws2 = FakeSocket.last();
check(ws2.url.endsWith('&previous_session=S1'), `reconnects with previous_session: ${ws2.url}`);
ws2.receive(welcome('S2', 9));
check(ws2.sent[0].type === 'resume' && ws2.sent[0].last_seq === 8, `resume from the last announcement: ${JSON.stringify(ws2.sent[0])}`);
const resent = ws2.sent.find((m) => m.type === 'answer');
check(resent && resent.id === id && resent.ref === sent1.ref, 'the unacked answer is re-sent, same id');
// The replayed announcement 8 is not reported twice; 9 is new.
ws2.receive({ type: 'announcement', seq: 8, text: 'hi', at: '', from: 'T' });
ws2.receive({ type: 'announcement', seq: 9, text: 'again', at: '', from: 'T' });
check(JSON.stringify(announcements) === '[8,9]', `each announcement once: ${announcements}`);
// `resumed` is surfaced as an event, both ways (PROTOCOL.md 4.5).
const resumed = [];
client.addEventListener('resumed', (e) => resumed.push(e.detail));
ws2.receive({ type: 'resumed', recovered: true, last_seq: 10, replayed: 0 });
check(resumed.length === 1 && resumed[0].recovered === true, `recovered: ${JSON.stringify(resumed)}`);
ws2.receive({ type: 'resumed', recovered: false, last_seq: 10, replayed: 1 });
check(resumed.length === 2 && resumed[1].recovered === false && resumed[1].last_seq === 10, `state lost: ${JSON.stringify(resumed)}`);
check(client.lastSeq === 9, `a server at or ahead of our seq keeps it: ${client.lastSeq}`);
// A server behind our seq (it lost its data): its kept announcements are new.
ws2.receive({ type: 'resumed', recovered: false, last_seq: 3, replayed: 1 });
ws2.receive({ type: 'announcement', seq: 2, text: 'renumbered', at: '', from: 'T' });
check(JSON.stringify(announcements) === '[8,9,2]', `renumbered announcement reported: ${announcements}`);
check(client.lastSeq === 2, `and followed: ${client.lastSeq}`);

ws2.receive({ type: 'ack', ref: sent1.ref });
check(client.pending().length === 0, 'acked: out of the outbox');
check(storage.getItem('examwatch:outbox:e1:s1') === '[]', 'and out of storage');

// Refused for good vs. busy.
client.answer('q2', 'B');
client.answer('q3', 'C');
const [a2, a3] = ws2.sent.filter((m) => m.type === 'answer').slice(-2);
ws2.receive({ type: 'error', code: 'storage_busy', message: '', ref: a2.ref });
ws2.receive({ type: 'error', code: 'not_stored', message: '', ref: a3.ref });
check(JSON.stringify(client.pending().map((m) => m.question)) === '["q2"]', 'busy is kept, refused is dropped');

// A closed tab: a new client on the same storage still has q2 and sends it.
client.close();
const reopened = new ExamwatchClient(options).connect();
check(reopened.pending().length === 1 && reopened.pending()[0].id === a2.id, 'the outbox survives the tab');
const ws3 = FakeSocket.last();
ws3.receive(welcome('S3', 9));
check(ws3.url.endsWith('&previous_session=S2'), 'the session id survives the tab too');
check(ws3.sent.some((m) => m.type === 'answer' && m.id === a2.id), 'and is delivered');

// Taken over by another device: stop, do not fight back.
let invalidated = 0;
reopened.addEventListener('session_invalidated', () => (invalidated += 1));
ws3.receive({ type: 'session_invalidated', reason: 'second_session' });
ws3.drop(4001);
await new Promise((r) => setTimeout(r, 100));
check(reopened.state === 'closed' && invalidated === 1, `closed after 4001 (${reopened.state}, ${invalidated})`);
check(FakeSocket.last() === ws3, 'no reconnect after 4001');

// ---- The outbox is paced (PROTOCOL.md 1.7: 20/s, bursts of 40, the 10th
// refusal closes 1008) --------------------------------------------------
const stored = (n, q = 'p') =>
  JSON.stringify(Array.from({ length: n }, (_, i) => ({ type: 'answer', id: `${q}${i}`, question: `q${i}`, value: i, ref: `a:${q}${i}` })));
const live = (opts, sessionId = 'L1') => {
  const c = new ExamwatchClient({ ...options, ...opts }).connect();
  const ws = FakeSocket.last();
  ws.receive(welcome(sessionId, 0));
  return { c, ws };
};
const answersSent = (ws) => ws.sent.filter((m) => m.type === 'answer');
const most1s = (ws) => Math.max(0, ...ws.sentAt.map((t) => ws.sentAt.filter((u) => u >= t && u < t + 1000).length));
{
  // 49 answers waiting from an earlier page: not all at once after the welcome.
  const storage49 = new MemoryStorage();
  storage49.setItem('examwatch:outbox:e1:s1', stored(49));
  const { c, ws } = live({ storage: storage49 });
  check(answersSent(ws).length === 10, `10 sent right after the welcome, not all: ${answersSent(ws).length}`);
  // Acks come as the server stores them; the rest follows, paced.
  await until('all 49 delivered', () => {
    for (const m of answersSent(ws)) if (c.pending().some((p) => p.ref === m.ref)) ws.receive({ type: 'ack', ref: m.ref });
    return c.pending().length === 0;
  }, 10000);
  check(answersSent(ws).length === 49, `each sent once: ${answersSent(ws).length}`);
  check(most1s(ws) <= 20, `at most 20 frames in any second (the server's sustained rate): ${most1s(ws)}`);
  // Only the new entry goes out on answer(), whatever else is unacked
  // (after a second, so that the pacing has room again).
  await new Promise((r) => setTimeout(r, 1100));
  const before = answersSent(ws).length;
  const id1 = c.answer('x1', 1);
  const id2 = c.answer('x2', 2);
  check(answersSent(ws).length === before + 2, 'each answer is sent at once');
  c.answer('x3', 3);
  check(answersSent(ws).length === before + 3 && answersSent(ws).at(-1).question === 'x3', 'answer() sends just the new answer');
  check(answersSent(ws).filter((m) => m.id === id1 || m.id === id2).length === 2, 'unacked ones are not re-sent by it');
  c.close();
}
{
  // At most 10 in flight: without acks, nothing more is sent.
  const storage30 = new MemoryStorage();
  storage30.setItem('examwatch:outbox:e1:s1', stored(30));
  const { c, ws } = live({ storage: storage30 });
  await new Promise((r) => setTimeout(r, 1500));
  check(answersSent(ws).length === 10, `no more than 10 unacked in flight: ${answersSent(ws).length}`);
  // rate_limited (no ref): the outbox pauses, then sends again what was in flight.
  ws.receive({ type: 'error', code: 'rate_limited', message: '' });
  c.answer('y', 1);
  check(answersSent(ws).length === 10, 'nothing sent during the pause after rate_limited');
  await until('sending again after the pause', () => answersSent(ws).length > 10, 4000);
  check(answersSent(ws)[10].id === 'p0', `what was in flight is sent again first: ${answersSent(ws)[10].id}`);
  c.close();
}
{
  // rate_limited with retry_after_ms: the pause is the server's, not the
  // library's own 2 s (first refusal) guess.
  const storage3 = new MemoryStorage();
  storage3.setItem('examwatch:outbox:e1:s1', stored(3));
  const { c, ws } = live({ storage: storage3 });
  await until('the stored answers sent', () => answersSent(ws).length === 3, 2000);
  ws.receive({ type: 'error', code: 'rate_limited', message: '', retry_after_ms: 150 });
  const refused = Date.now();
  check(answersSent(ws).length === 3, 'nothing re-sent at once after rate_limited');
  await until('sending again after retry_after_ms', () => answersSent(ws).length > 3, 1500);
  check(Date.now() - refused >= 100, 'not before retry_after_ms');
  c.close();
}

// ---- submit never overtakes an answer; nothing refused is silent --------
{
  const { c, ws } = live({ storage: new MemoryStorage(), retryMs: 200 });
  const rejected = [];
  c.addEventListener('rejected', (e) => rejected.push(e.detail));
  c.answer('q1', 'A');
  c.submit();
  const [a] = answersSent(ws);
  check(!ws.sent.some((m) => m.type === 'submit'), 'the submit waits for the answer before it');
  let threw = false;
  try {
    c.answer('q2', 'late');
  } catch {
    threw = true;
  }
  check(threw, 'answer() after submit() throws instead of queueing a doomed answer');
  ws.receive({ type: 'error', code: 'storage_busy', message: '', ref: a.ref });
  check(!ws.sent.some((m) => m.type === 'submit'), 'still waiting after storage_busy');
  await until('the busy answer re-sent', () => answersSent(ws).length === 2);
  check(!ws.sent.some((m) => m.type === 'submit'), 'still waiting for its ack');
  ws.receive({ type: 'ack', ref: a.ref });
  const submit = ws.sent.find((m) => m.type === 'submit');
  check(submit, 'the submit goes once the answer is acked');
  ws.receive({ type: 'ack', ref: submit.ref });
  check(c.pending().length === 0 && rejected.length === 0, 'both acked');
  c.close();

  // already_submitted (e.g. submitted from another tab): set aside and reported.
  const other = live({ storage: new MemoryStorage() });
  other.c.addEventListener('rejected', (e) => rejected.push(e.detail));
  const id = other.c.answer('q9', 'Z');
  other.ws.receive({ type: 'error', code: 'already_submitted', message: 'submitted', ref: `a:${id}` });
  check(rejected.length === 1 && rejected[0].message.id === id && rejected[0].code === 'already_submitted', `reported: ${JSON.stringify(rejected)}`);
  check(other.c.rejected().length === 1 && other.c.pending().length === 0, 'listed in rejected(), out of the outbox');
  other.c.close();
}

// ---- too big: refused up front; a 1009 sets the culprit aside ----------
{
  const storageBig = new MemoryStorage();
  const { c, ws } = live({ storage: storageBig, maxMessageBytes: 100000 });
  let threw = null;
  try {
    new ExamwatchClient({ ...options, storage: new MemoryStorage() }).answer('q1', 'x'.repeat(17000));
  } catch (e) {
    threw = e;
  }
  check(threw instanceof RangeError, `an answer over 16 KiB throws: ${threw}`);
  // This client believes in 100 KB; the server says 1009.
  const small = c.answer('q1', 'fine');
  const big = c.answer('q2', 'x'.repeat(20000));
  check(answersSent(ws).length === 2, 'both sent');
  const offline = [];
  c.addEventListener('connection', (e) => e.detail.state === 'offline' && offline.push(e.detail));
  const rejected = [];
  c.addEventListener('rejected', (e) => rejected.push(e.detail));
  ws.drop(1009);
  check(rejected.length === 1 && rejected[0].message.id === big && rejected[0].code === 'message_too_big', `the big one is set aside: ${JSON.stringify(rejected.map((r) => r.code))}`);
  await until('a reconnect', () => FakeSocket.last() !== ws);
  const ws2 = FakeSocket.last();
  ws2.receive(welcome('B2', 0));
  check(answersSent(ws2).length === 1 && answersSent(ws2)[0].id === small, 'the reconnect sends only the small one');
  // A server that closes right after each welcome: the backoff keeps growing.
  ws2.drop(1006);
  check(offline.map((d) => d.attempt).join() === '1,2', `the welcome did not reset the backoff: ${offline.map((d) => d.attempt)}`);
  c.close();
}

// ---- two tabs share one outbox; a taken-over tab refuses answers --------
{
  const shared = new MemoryStorage();
  const tabA = new ExamwatchClient({ ...options, storage: shared });
  const tabB = new ExamwatchClient({ ...options, storage: shared });
  const x = tabA.answer('q1', 'from A');
  const y = tabB.answer('q2', 'from B');
  const inStorage = () => JSON.parse(shared.getItem('examwatch:outbox:e1:s1')).map((m) => m.id).sort().join();
  check(inStorage() === [x, y].sort().join(), `B's save kept A's answer: ${inStorage()}`);
  // A learns of B's answer from the storage event.
  const bus = new EventTarget();
  globalThis.addEventListener = bus.addEventListener.bind(bus);
  globalThis.removeEventListener = bus.removeEventListener.bind(bus);
  tabA.connect();
  const wsA = FakeSocket.last();
  const ev = Object.assign(new Event('storage'), { key: 'examwatch:outbox:e1:s1', newValue: shared.getItem('examwatch:outbox:e1:s1'), storageArea: shared });
  bus.dispatchEvent(ev);
  check(tabA.pending().some((m) => m.id === y), 'tab A has B\'s answer too');
  wsA.receive(welcome('A1', 0));
  check(answersSent(wsA).some((m) => m.id === y), 'and delivers it');
  wsA.receive({ type: 'ack', ref: `a:${x}` });
  check(!inStorage().includes(x) && inStorage().includes(y), `an ack removes only its own entry: ${inStorage()}`);
  // Taken over: answers are refused loudly, not queued for nobody.
  wsA.receive({ type: 'session_invalidated', reason: 'second_session' });
  wsA.drop(4001);
  let threw = false;
  try {
    tabA.answer('q3', 'lost?');
  } catch {
    threw = true;
  }
  check(threw && tabA.pending().every((m) => m.question !== 'q3'), 'answer() throws after a takeover');
  delete globalThis.addEventListener;
  delete globalThis.removeEventListener;
}

// ---- storage failures are reported ---------------------------------------
{
  const broken = new MemoryStorage();
  broken.setItem = () => {
    throw new Error('QuotaExceededError');
  };
  const errors = [];
  const { c, ws } = live({ storage: broken });
  c.addEventListener('storage_error', (e) => errors.push(e.detail.what));
  c.answer('q1', 'A');
  check(errors.includes('outbox'), `a failed save is reported: ${errors}`);
  check(answersSent(ws).length === 1, 'the answer is still sent from memory');
  c.close();
}

// ---- a silent network: the heartbeat notices, without waiting for onclose -
{
  const { c, ws } = live({ storage: new MemoryStorage(), heartbeatMs: 50 });
  const states = [];
  c.addEventListener('connection', (e) => states.push(e.detail.state));
  await until('the heartbeat timeout', () => ws.closedWith === 4000, 1000);
  check(c.state === 'offline' || FakeSocket.last() !== ws, `offline at once, not "live" until a close event: ${c.state}`);
  check(states[0] === 'offline', `the page is told: ${states}`);
  await until('a new socket', () => FakeSocket.last() !== ws);
  c.close();
}

// ---- focus: the current state is sent every time the client goes live ----
{
  const doc = Object.assign(new EventTarget(), { visibilityState: 'visible' });
  const win = new EventTarget();
  const c = new ExamwatchClient({ ...options, storage: new MemoryStorage() });
  c.watchFocus(doc, win);
  c.connect();
  const ws = FakeSocket.last();
  ws.receive(welcome('F1', 0));
  const focus = (w) => w.sent.filter((m) => m.type === 'focus').map((m) => m.state).join();
  check(focus(ws) === 'gained', `the state on going live: ${focus(ws)}`);
  win.dispatchEvent(new Event('blur'));
  ws.drop(1006);
  win.dispatchEvent(new Event('focus')); // regained while offline
  await until('a reconnect', () => FakeSocket.last() !== ws);
  const ws2 = FakeSocket.last();
  ws2.receive(welcome('F2', 0));
  check(focus(ws) === 'gained,lost' && focus(ws2) === 'gained', `focus regained offline is sent once live: ${focus(ws)} / ${focus(ws2)}`);
  c.close();
}

// ---- after 1008 or 4009, a floor under the backoff; 4009 is reported -------
{
  const realRandom = Math.random;
  Math.random = () => 0; // full jitter's worst case: no wait at all
  const { c, ws } = live({ storage: new MemoryStorage(), backoffCapMs: 30000, slowBackoffMs: 300 });
  const delays = [];
  const refused = [];
  c.addEventListener('connection', (e) => e.detail.state === 'offline' && delays.push(e.detail.delayMs));
  c.addEventListener('session_rejected', (e) => refused.push(e.detail.code));
  ws.drop(1006);
  await until('a reconnect', () => FakeSocket.last() !== ws);
  const ws2 = FakeSocket.last();
  ws2.drop(4009);
  check(delays[0] === 0 && delays[1] === 300, `a network error may retry at once, 4009 not: ${delays}`);
  check(refused.join() === '4009', 'the page is told about 4009');
  Math.random = realRandom;
  c.close();
  const again = live({ storage: new MemoryStorage(), backoffCapMs: 30000, slowBackoffMs: 300 });
  const d = [];
  again.c.addEventListener('connection', (e) => e.detail.state === 'offline' && d.push(e.detail.delayMs));
  again.ws.drop(1008);
  check(d[0] >= 300, `1008 waits at least the floor: ${d}`);
  again.c.close();
}

// ---- after 1012 (a rolling restart), a random share of restartJitterMs ----
{
  const realRandom = Math.random;
  const draws = [0.999, 0.5, 0];
  Math.random = () => draws.shift() ?? 0;
  const { c, ws } = live({ storage: new MemoryStorage(), backoffBaseMs: 10, backoffCapMs: 20, restartJitterMs: 400 });
  const delays = [];
  c.addEventListener('connection', (e) => e.detail.state === 'offline' && delays.push(e.detail));
  ws.drop(1012, 'service restart');
  check(delays[0].delayMs === 399 && delays[0].code === 1012, `1012 waits its share of the jitter window, not the backoff: ${JSON.stringify(delays)}`);
  check(FakeSocket.last() === ws, 'not at once');
  await until('the reconnect after the jitter', () => FakeSocket.last() !== ws, 2000);
  const ws2 = FakeSocket.last();
  ws2.drop(1012, 'service restart');
  check(delays[1].delayMs === 200 && delays[1].attempt === 0, `uniform, and the attempt count does not grow: ${JSON.stringify(delays[1])}`);
  Math.random = realRandom;
  c.close();
}

// ---- teachers: resume at the handshake; announce() settles ---------------
{
  // Watchers read the server's clock from /healthz's Date header.
  globalThis.fetch = async () => ({ headers: new Map([['date', new Date().toUTCString()]]) });
  const tToken = `${b64({ alg: 'HS256' })}.${b64({ sub: 't1', role: 'teacher', exams: ['e1'] })}.sig`;
  const t = new ExamwatchClient({ ...options, token: tToken, storage: new MemoryStorage(), announceTimeoutMs: 100 }).connect();
  const ws = FakeSocket.last();
  check(!ws.url.includes('last_seq'), 'the first connection takes a snapshot');
  ws.receive({ type: 'snapshot', seq: 5, exam_id: 'e1', students: [], counts: {} });
  check(t.state === 'live', 'live on the snapshot');
  ws.receive({ type: 'alert', seq: 6, student_id: 's1', kind: 'idle', at: '' });
  // The exam-control events come as `message`; they count as applied too,
  // so the reconnect resumes after them (not replaying them).
  const passed = [];
  t.addEventListener('message', (e) => passed.push(e.detail.type));
  ws.receive({ type: 'hand', seq: 7, hand_id: 'h1', student_id: 's1', text: null, at: '' });
  ws.receive({ type: 'hand_lowered', seq: 8, hand_id: 'h1', student_id: 's1', by: 't1', at: '' });
  check(passed.join() === 'hand,hand_lowered' && t.appliedSeq === 8, `control events passed on and applied: ${passed} ${t.appliedSeq}`);
  // announce(): rejected on a lost connection, and on no answer.
  const lost = t.announce('hello').then(() => 'resolved', (e) => e.message);
  const silent = t.announce('anyone?').then(() => 'resolved', (e) => e.message);
  ws.drop(1006);
  check((await lost) === 'connection lost', 'announce() rejects when the connection drops');
  check((await silent) === 'connection lost', 'every pending one');
  await until('a reconnect', () => FakeSocket.last() !== ws);
  const ws2 = FakeSocket.last();
  check(ws2.url.endsWith('&last_seq=8'), `reconnects with ?last_seq=: ${ws2.url}`);
  ws2.onopen();
  const sync = ws2.sent.find((m) => m.type === 'heartbeat');
  check(sync && t.state === 'connecting', 'not live before the replay is known to be complete');
  const events = [];
  t.addEventListener('event', (e) => events.push(`${e.detail.seq}${e.detail.stale ? 's' : ''}`));
  ws2.receive({ type: 'student', seq: 9, student, cause: 'idle' });
  ws2.receive({ type: 'alert', seq: 10, student_id: 's1', kind: 'idle', at: '' });
  ws2.receive({ type: 'ack', ref: sync.ref });
  check(t.state === 'live' && events.join() === '9,10' && t.appliedSeq === 10, `the replay applied, then live: ${events} ${t.state}`);
  const timedOut = await t.announce('anyone?').then(() => 'resolved', (e) => e.message);
  check(timedOut === 'no answer from the server', `announce() times out: ${timedOut}`);
  // A gap too old for a replay: the server sends a snapshot instead.
  ws2.drop(1006);
  await until('a reconnect', () => FakeSocket.last() !== ws2);
  const ws3 = FakeSocket.last();
  check(ws3.url.endsWith('&last_seq=10'), ws3.url);
  ws3.onopen();
  ws3.receive({ type: 'snapshot', seq: 90, exam_id: 'e1', students: [], counts: {} });
  check(t.state === 'live' && t.appliedSeq === 90, 'a snapshot instead of a replay also makes it live');
  const sync3 = ws3.sent.find((m) => m.type === 'heartbeat');
  ws3.receive({ type: 'ack', ref: sync3.ref });
  check(t.state === 'live', 'and the late sync ack changes nothing');
  t.close();
}

// ---- connection tickets (PROTOCOL.md 1.2): the token never in the URL ----
{
  // A scripted POST /v1/tickets: each request waits until the test answers it.
  const requests = [];
  const fetch = (url, init) =>
    new Promise((resolve, reject) => {
      const answer = (status, body) => resolve({ status, ok: status >= 200 && status < 300, json: async () => body });
      requests.push({ url, init, answer, fail: reject });
      init.signal?.addEventListener('abort', () => reject(new Error('aborted')));
    });
  const grant = (n) => requests[n].answer(200, { ticket: `T${n}`, exam_id: 'e1', expires_in_ms: 30000 });
  const sockets = () => FakeSocket.all.length;
  const c = new ExamwatchClient({ ...options, tickets: true, fetch, storage: new MemoryStorage() });
  const n0 = sockets();
  c.connect();
  check(requests.length === 1 && sockets() === n0, 'a ticket is requested before any socket');
  const [req] = requests;
  check(req.url === 'http://exams.test/v1/tickets' && req.init.method === 'POST', `POST /v1/tickets: ${req.url}`);
  check(req.init.headers.authorization === `Bearer ${token}`, 'the token goes in the Authorization header');
  check(req.init.body === JSON.stringify({ exam_id: 'e1' }), `for the exam: ${req.init.body}`);
  grant(0);
  await until('a socket', () => sockets() === n0 + 1);
  const ws = FakeSocket.last();
  check(ws.url === 'ws://exams.test/v1/exams/e1/ws?ticket=T0', `the socket URL carries the ticket only: ${ws.url}`);
  const id = c.answer('q1', 'A');
  ws.receive(welcome('K1', 3));
  const first = ws.sent.find((m) => m.type === 'answer');
  check(first && first.id === id, 'the answer is sent once live');

  // Every reconnect takes a fresh ticket; resume and re-sending are as before.
  ws.drop(1006);
  await until('a second ticket request', () => requests.length === 2);
  check(sockets() === n0 + 1, 'no socket before its ticket');
  grant(1);
  await until('a reconnect', () => sockets() === n0 + 2);
  const ws2 = FakeSocket.last();
  check(ws2.url === 'ws://exams.test/v1/exams/e1/ws?ticket=T1&previous_session=K1', ws2.url);
  ws2.receive(welcome('K2', 3));
  check(ws2.sent[0].type === 'resume' && ws2.sent[0].last_seq === 3, `resume: ${JSON.stringify(ws2.sent[0])}`);
  const again = ws2.sent.find((m) => m.type === 'answer');
  check(again && again.id === id && again.ref === first.ref, 'the unacked answer is re-sent, same id');
  ws2.receive({ type: 'ack', ref: first.ref });
  check(c.pending().length === 0, 'acked');

  // A failed or refused ticket request is a failed attempt: backoff, then a new request.
  const offline = [];
  c.addEventListener('connection', (e) => e.detail.state === 'offline' && offline.push(e.detail.reason));
  ws2.drop(1006);
  await until('a third ticket request', () => requests.length === 3);
  requests[2].fail(new TypeError('Failed to fetch'));
  await until('a fourth ticket request', () => requests.length === 4);
  requests[3].answer(401, { error: { code: 'token_expired', message: 'token expired' } });
  await until('a fifth ticket request', () => requests.length === 5);
  check(sockets() === n0 + 2, 'no socket without a ticket');
  check(offline.length === 3 && /Failed to fetch/.test(offline[1]) && /401 token_expired/.test(offline[2]), `offline, saying why: ${offline}`);
  // An older server without tickets (404): the documented fallback.
  requests[4].answer(404, { error: { code: 'not_found', message: 'no such route' } });
  await until('a fallback socket', () => sockets() === n0 + 3);
  check(FakeSocket.last().url === `ws://exams.test/v1/exams/e1/ws?access_token=${encodeURIComponent(token)}&previous_session=K2`, FakeSocket.last().url);

  // A ticket arriving for a superseded attempt opens nothing.
  c.reconnectNow();
  check(requests.length === 6, 'reconnectNow asks for a ticket');
  c.reconnectNow();
  grant(6);
  grant(5);
  await until('one socket', () => sockets() === n0 + 4);
  await new Promise((r) => setTimeout(r, 20));
  check(sockets() === n0 + 4 && FakeSocket.last().url.includes('ticket=T6'), `only the latest attempt connects: ${FakeSocket.last().url}`);
  c.close();

  // close() while a ticket is on its way: no socket afterwards.
  const d = new ExamwatchClient({ ...options, tickets: true, fetch, storage: new MemoryStorage() }).connect();
  d.close();
  grant(7);
  await new Promise((r) => setTimeout(r, 20));
  check(sockets() === n0 + 4 && d.state === 'closed', 'closed: the ticket is not used');

  // A fetch that throws at once is a failed attempt too: the client retries.
  let throws = 0;
  const throwing = () => { throws += 1; throw new TypeError('Failed to construct Request'); };
  const t2 = new ExamwatchClient({ ...options, tickets: true, fetch: throwing, storage: new MemoryStorage() }).connect();
  await until('a retry after a throwing fetch', () => throws >= 2);
  check(sockets() === n0 + 4 && t2.state !== 'closed', `still trying, no socket: ${t2.state}`);
  t2.close();

  // A ticket request that hangs counts as a failed attempt after ticketTimeoutMs.
  const h = new ExamwatchClient({ ...options, tickets: true, fetch, ticketTimeoutMs: 30, storage: new MemoryStorage() }).connect();
  await until('a retry after the timeout', () => requests.length === 10);
  check(sockets() === n0 + 4 && h.state !== 'live', 'no socket for a hung request');
  h.close();
}

// ---- teachers: a large exam's snapshot comes in parts (PROTOCOL.md 4.12) ----
{
  const tToken = `${b64({ alg: 'HS256' })}.${b64({ sub: 't2', role: 'teacher', exams: ['e1'] })}.sig`;
  const t = new ExamwatchClient({ ...options, token: tToken, storage: new MemoryStorage() }).connect();
  const snapshots = [];
  t.addEventListener('snapshot', (e) => snapshots.push(e.detail));
  const counts = { active: 5, idle: 0, submitted: 0, disconnected: 0 };
  const st = (i) => ({ ...student, student_id: `s${i}` });
  const part = (seq, n, parts, ids) => ({ type: 'snapshot', seq, exam_id: 'e1', part: n, parts, students: ids.map(st), counts });
  const ws = FakeSocket.last();
  ws.receive(part(40, 1, 3, [1, 2]));
  ws.receive(part(40, 2, 3, [3]));
  check(snapshots.length === 0 && t.state === 'connecting', 'nothing is applied before the last part');
  ws.receive(part(40, 3, 3, [4, 5]));
  check(snapshots.length === 1 && t.state === 'live' && t.appliedSeq === 40, 'the whole snapshot on the last part');
  const ids = snapshots[0].students.map((s) => s.student_id).join();
  check(ids === 's1,s2,s3,s4,s5' && snapshots[0].seq === 40, `every part's students, in order: ${ids}`);
  // A part that does not continue the snapshot (another seq) drops it; a
  // new part 1 starts over.
  ws.receive(part(41, 1, 2, [1]));
  ws.receive(part(42, 2, 2, [2]));
  check(snapshots.length === 1 && t.appliedSeq === 40, 'a part of another snapshot is not mixed in');
  // A drop mid-snapshot: the partial one is never applied; the reconnect
  // resumes from the last whole snapshot.
  ws.receive(part(43, 1, 2, [1, 2]));
  ws.drop(1006);
  await until('a reconnect', () => FakeSocket.last() !== ws);
  const ws2 = FakeSocket.last();
  check(ws2.url.endsWith('&last_seq=40'), `resumes from the last whole snapshot: ${ws2.url}`);
  ws2.onopen();
  ws2.receive(part(44, 2, 2, [3]));
  check(snapshots.length === 1 && t.appliedSeq === 40, 'the old partial snapshot is gone with its socket');
  ws2.receive(part(44, 1, 2, [1, 2]));
  ws2.receive(part(44, 2, 2, [3]));
  check(snapshots.length === 2 && snapshots[1].students.length === 3 && t.appliedSeq === 44, 'a fresh snapshot after the reconnect');
  // A one-part snapshot is applied at once, as before.
  ws2.receive({ type: 'snapshot', seq: 45, exam_id: 'e1', part: 1, parts: 1, students: [st(9)], counts });
  check(snapshots.length === 3 && t.appliedSeq === 45, 'a single part is whole');
  t.close();
}

// ---- the exam as a student sees it (PROTOCOL.md 4.13, 4.14) ---------------
// The waiting room holds the outbox; the countdown runs from the server's
// clock, stands still while paused and moves with an extension; every
// frame with an action id is acknowledged with `received`; messages are
// reported once; exam_paused keeps an answer for later.
{
  const c = new ExamwatchClient({ ...options, storage: new MemoryStorage() });
  const exams = [];
  const messages = [];
  const timeups = [];
  c.addEventListener('exam', (e) => exams.push(e.detail));
  c.addEventListener('message', (e) => messages.push(e.detail));
  c.addEventListener('timeup', (e) => timeups.push(e.detail));
  c.connect();
  const ws = FakeSocket.last();
  const skew = 60000; // the server's clock is a minute ahead of ours
  const serverIso = (plusMs = 0) => new Date(Date.now() + skew + plusMs).toISOString();
  check(c.examState() === null && c.remaining() === null, 'nothing known before the welcome');
  ws.receive({ ...welcome('X1', 0, skew), phase: 'scheduled', deadline: null, paused: false, opens_at: null, closes_at: null });
  check(exams.length === 1 && exams[0].waiting && !exams[0].running && exams[0].phase === 'scheduled', `the waiting room: ${JSON.stringify(exams[0])}`);
  check(c.remaining() === null && c.deadline === null, 'no countdown before the start');
  const early = c.answer('q1', 'A');
  check(!answersSent(ws).length, 'the waiting room holds the answer (the server would refuse it)');
  check(c.pending().some((m) => m.id === early), 'kept in the outbox');

  // The start: the countdown is deadline − server time, not our clock.
  const update = (o) => ({ type: 'exam_update', phase: 'in_progress', opens_at: null, closes_at: null, server_time: serverIso(), deadline: serverIso(600000), paused: false, extra_minutes: 0, cause: 'phase', ...o });
  ws.receive(update({}));
  const left = c.remaining();
  check(Math.abs(left - 600000) < 1000, `10 minutes left by the server's clock (ours is a minute behind): ${left}`);
  check(exams.at(-1).running && !exams.at(-1).waiting, 'running once started');
  check(answersSent(ws).some((m) => m.id === early), 'the held answer goes out at the start');
  ws.receive({ type: 'ack', ref: `a:${early}` });

  // Paused (a proctor's action, with its id): acknowledged, the countdown
  // stands still, answers wait.
  ws.receive(update({ paused: true, cause: 'pause', id: 'p-1', deadline: serverIso(500000) }));
  check(ws.sent.some((m) => m.type === 'received' && m.id === 'p-1'), 'the pause frame is acknowledged with received');
  const frozen = c.remaining();
  check(Math.abs(frozen - 500000) < 50 && !exams.at(-1).running && exams.at(-1).paused, `paused with 500 s left: ${frozen}`);
  await new Promise((r) => setTimeout(r, 60));
  check(c.remaining() === frozen, `the countdown stands still while paused: ${c.remaining()} vs ${frozen}`);
  const whilePaused = c.answer('q2', 'B');
  check(!answersSent(ws).some((m) => m.id === whilePaused), 'a pause holds the answer');
  ws.receive(update({ paused: false, cause: 'resume', id: 'r-1', deadline: serverIso(500000) }));
  check(ws.sent.some((m) => m.type === 'received' && m.id === 'r-1'), 'the resume frame is acknowledged');
  check(Math.abs(c.remaining() - 500000) < 1000, `no time lost over the pause: ${c.remaining()}`);
  check(answersSent(ws).some((m) => m.id === whilePaused), 'sent once resumed');

  // A pause the client had not heard of yet: exam_paused keeps the answer.
  const raced = c.answer('q3', 'C');
  ws.receive({ type: 'error', code: 'exam_paused', message: 'paused', ref: `a:${raced}` });
  check(c.pending().some((m) => m.id === raced) && !c.rejected().some((r) => r.message.id === raced), 'exam_paused is not a rejection');
  const before = answersSent(ws).filter((m) => m.id === raced).length;
  ws.receive(update({ cause: 'timing' }));
  check(answersSent(ws).filter((m) => m.id === raced).length === before + 1, 'and re-sent when the exam runs again');

  // Same for exam_not_started (the start not yet heard of).
  const tooSoon = c.answer('q4', 'D');
  ws.receive({ type: 'error', code: 'exam_not_started', message: 'not yet', ref: `a:${tooSoon}` });
  check(c.pending().some((m) => m.id === tooSoon) && c.rejected().length === 0, 'exam_not_started is not a rejection');
  ws.receive(update({ cause: 'phase' }));
  check(answersSent(ws).filter((m) => m.id === tooSoon).length === 2, 'and re-sent on the next update');

  // Extended by 5 minutes: the countdown moves, and the extension is acknowledged.
  ws.receive(update({ cause: 'extend', id: 'x-1', deadline: serverIso(800000), extra_minutes: 0 }));
  check(ws.sent.some((m) => m.type === 'received' && m.id === 'x-1'), 'the extension is acknowledged');
  check(Math.abs(c.remaining() - 800000) < 1000, `extended: ${c.remaining()}`);
  check(exams.every((e) => e.remainingMs === null || e.remainingMs >= 0), 'never negative');

  // A private message: acknowledged every time the server re-sends it, reported once.
  const m = { type: 'message', id: 'm-1', text: 'Question 3 counts double', from: 'Ms Proctor', at: serverIso() };
  ws.receive(m);
  ws.receive(m);
  check(ws.sent.filter((x) => x.type === 'received' && x.id === 'm-1').length === 2, 'each copy acknowledged');
  check(messages.length === 1 && messages[0].text === m.text && messages[0].from === 'Ms Proctor', `reported once: ${JSON.stringify(messages)}`);
  // A hand lowered without a message: its own event, acknowledged, once.
  const lowered = [];
  c.addEventListener('hand_lowered', (e) => lowered.push(e.detail));
  const down = { type: 'hand_lowered', id: 'l-1', hand_id: 'h-9', from: 'Ms Proctor', at: serverIso() };
  ws.receive(down);
  ws.receive(down);
  check(ws.sent.filter((x) => x.type === 'received' && x.id === 'l-1').length === 2, 'each hand_lowered acknowledged');
  check(lowered.length === 1 && lowered[0].hand_id === 'h-9', `hand_lowered reported once: ${JSON.stringify(lowered)}`);
  check(messages.length === 1, 'and not as a message');
  check(timeups.length === 0, 'no timeup yet');
  c.close();
}

// ---- time is up: at the deadline on the server's clock, on time_up, on exam_ended ----
{
  const c = new ExamwatchClient({ ...options, storage: new MemoryStorage() });
  const timeups = [];
  c.addEventListener('timeup', (e) => timeups.push(e.detail));
  c.connect();
  const ws = FakeSocket.last();
  const skew = -30000; // the server is half a minute behind us
  const serverIso = (plusMs = 0) => new Date(Date.now() + skew + plusMs).toISOString();
  ws.receive({ ...welcome('Y1', 0, skew), phase: 'in_progress', deadline: serverIso(200), paused: false, opens_at: null, closes_at: null });
  // The clock offset is learnt from a millisecond timestamp: ±1 ms.
  check(c.remaining() > 0 && c.remaining() <= 201, `200 ms left on the server's clock: ${c.remaining()}`);
  await until('timeup at the deadline', () => timeups.length === 1, 2000);
  check(timeups[0].reason === 'deadline' && c.remaining() === 0 && c.examState().timeUp, `reason deadline: ${JSON.stringify(timeups[0])}`);
  // An extension after our clock ran out takes it back; the next end is reported again.
  ws.receive({ type: 'exam_update', phase: 'in_progress', opens_at: null, closes_at: null, server_time: serverIso(), deadline: serverIso(60000), paused: false, extra_minutes: 0, cause: 'extend', id: 'x-9' });
  check(!c.examState().timeUp && c.remaining() > 50000, 'extended: not up any more');
  const late = c.answer('q1', 'A');
  // The server's own time_up: final, answer() refuses from now on.
  ws.receive({ type: 'exam_update', phase: 'in_progress', opens_at: null, closes_at: null, server_time: serverIso(), deadline: serverIso(), paused: false, extra_minutes: 0, cause: 'time_up' });
  check(timeups.length === 2 && timeups[1].reason === 'time_up', `time_up reported: ${JSON.stringify(timeups)}`);
  check(c.examState().over === 'time_up' && !c.examState().running && c.remaining() === 0, 'over');
  let threw = false;
  try {
    c.answer('q2', 'B');
  } catch {
    threw = true;
  }
  check(threw, 'answer() refuses once the time is up');
  // The in-flight answer the server refuses is reported rejected, never re-sent.
  ws.receive({ type: 'error', code: 'exam_ended', message: 'ended', ref: `a:${late}` });
  check(c.rejected().some((r) => r.message.id === late && r.code === 'exam_ended') && c.pending().length === 0, 'exam_ended: rejected, out of the outbox');
  const sentBefore = answersSent(ws).length;
  ws.drop(1006);
  await until('a reconnect', () => FakeSocket.last() !== ws);
  FakeSocket.last().receive({ ...welcome('Y2', 0, skew), phase: 'ended', deadline: serverIso(-1000), paused: false, opens_at: null, closes_at: null });
  check(answersSent(FakeSocket.last()).length === 0 && sentBefore >= 1, 'nothing is re-sent after the end');
  check(timeups.length === 2, `reported once per end: ${timeups.length}`);
  c.close();

  // exam_ended alone (no update seen) is time up as well.
  const d = new ExamwatchClient({ ...options, storage: new MemoryStorage() });
  const ups = [];
  d.addEventListener('timeup', (e) => ups.push(e.detail.reason));
  d.connect();
  const wd = FakeSocket.last();
  wd.receive({ ...welcome('Z1', 0), phase: 'in_progress', deadline: null, paused: false, opens_at: null, closes_at: null });
  const z = d.answer('q1', 'A');
  wd.receive({ type: 'error', code: 'exam_ended', message: 'ended', ref: `a:${z}` });
  check(ups.join() === 'exam_ended' && d.rejected().length === 1, `exam_ended: ${ups}`);
  d.close();
}

// ---- terminated, revoked: acknowledged, reported, and no reconnect after 4003 ----
{
  const runs = [
    { frame: { type: 'terminated', id: 't-1', reason: 'phone on the desk' }, event: 'terminated', closeReason: 'terminated' },
    { frame: { type: 'session_invalidated', reason: 'access_revoked', id: 'd-1' }, event: 'revoked', closeReason: 'access revoked' },
    { frame: null, event: 'terminated', closeReason: 'terminated' },
    { frame: null, event: 'revoked', closeReason: 'access revoked' },
  ];
  for (const run of runs) {
    const c = new ExamwatchClient({ ...options, storage: new MemoryStorage() });
    const seen = [];
    for (const type of ['terminated', 'revoked', 'session_invalidated']) c.addEventListener(type, (e) => seen.push([type, e.detail]));
    c.connect();
    const ws = FakeSocket.last();
    ws.receive({ ...welcome('W1', 0), phase: 'in_progress', deadline: null, paused: false, opens_at: null, closes_at: null });
    if (run.frame) {
      ws.receive(run.frame);
      check(ws.sent.some((m) => m.type === 'received' && m.id === run.frame.id), `${run.frame.type} acknowledged with received`);
    }
    const n = FakeSocket.all.length;
    ws.drop(4003, run.closeReason);
    check(c.state === 'closed', `closed after 4003 (${run.event})`);
    check(seen.length === 1 && seen[0][0] === run.event, `${run.event} reported once: ${JSON.stringify(seen)}`);
    if (run.frame?.reason === 'phone on the desk') check(seen[0][1].reason === 'phone on the desk' && seen[0][1].id === 't-1', 'with its reason');
    await new Promise((r) => setTimeout(r, 150)); // backoff here is at most 40 ms
    check(FakeSocket.all.length === n, `no reconnect after 4003 (${run.event})`);
    check(c.examState().stopped === run.event && !c.examState().running, 'the exam state says so');
    let threw = false;
    try {
      c.answer('q1', 'A');
    } catch {
      threw = true;
    }
    check(threw, `answer() refuses after ${run.event}`);
    c.connect();
    check(FakeSocket.all.length === n && c.state === 'closed', 'connect() after 4003 does not loop either');
    c.close();
  }
  // A terminated student reloading the page: the ticket is refused (403
  // terminated) until an allow; the client stops instead of retrying.
  const tickets = [];
  const fetch = async () => {
    tickets.push(1);
    return { status: 403, ok: false, json: async () => ({ error: { code: 'terminated', message: 'no' } }) };
  };
  const c = new ExamwatchClient({ ...options, tickets: true, fetch, storage: new MemoryStorage() });
  const ended = [];
  c.addEventListener('terminated', (e) => ended.push(e.detail));
  c.connect();
  await until('the refusal', () => c.state === 'closed');
  await new Promise((r) => setTimeout(r, 150));
  check(tickets.length === 1 && ended.length === 1 && ended[0].refused, `one ticket request, then stopped: ${tickets.length}, ${JSON.stringify(ended)}`);
  check(c.examState()?.stopped === 'terminated' && !c.examState().running, `the exam state says so before any welcome: ${JSON.stringify(c.examState())}`);
}

// ---- raiseHand(text) (PROTOCOL.md 2, 4.14) ----
{
  const c = new ExamwatchClient({ ...options, storage: new MemoryStorage() });
  c.connect();
  const ws = FakeSocket.last();
  ws.receive({ ...welcome('H1', 0), phase: 'in_progress', deadline: null, paused: false, opens_at: null, closes_at: null });
  const raised = c.raiseHand('Is a calculator allowed?');
  const sent = ws.sent.find((m) => m.type === 'raise_hand');
  check(sent && sent.text === 'Is a calculator allowed?' && sent.ref, `raise_hand with its text and a ref: ${JSON.stringify(sent)}`);
  ws.receive({ type: 'ack', ref: sent.ref });
  await raised;
  const bare = c.raiseHand();
  const plain = ws.sent.filter((m) => m.type === 'raise_hand')[1];
  check(plain && !('text' in plain), `no text: none sent: ${JSON.stringify(plain)}`);
  ws.receive({ type: 'error', code: 'invalid_message', message: 'bad', ref: plain.ref });
  let refused = null;
  await bare.catch((e) => (refused = e));
  check(refused, 'an error rejects the promise');
  let tooLong = false;
  try {
    c.raiseHand('é'.repeat(501));
  } catch (e) {
    tooLong = e instanceof RangeError;
  }
  check(tooLong, 'more than 500 characters throws');
  const fits = c.raiseHand('é'.repeat(500));
  check(ws.sent.filter((m) => m.type === 'raise_hand').length === 3, '500 characters (1000 bytes) are fine');
  ws.drop(1006);
  let dropped = null;
  await fits.catch((e) => (dropped = e));
  check(dropped, 'a drop before the ack rejects');
  c.close();
}

// ---- watchers: the snapshot's phase and each exam_update are `exam` events (an update still a `message` too) ----
{
  const teacherToken = `${b64({ alg: 'HS256' })}.${b64({ sub: 't9', role: 'teacher', exams: ['e1'] })}.sig`;
  globalThis.fetch = async () => ({ headers: { get: () => null } });
  const t = new ExamwatchClient({ ...options, token: teacherToken, storage: new MemoryStorage() });
  const got = [];
  t.addEventListener('exam', (e) => got.push(['exam', e.detail.phase]));
  t.addEventListener('message', (e) => got.push(['message', e.detail.type]));
  t.connect();
  const ws = FakeSocket.last();
  ws.receive({ type: 'snapshot', seq: 1, exam_id: 'e1', part: 1, parts: 1, students: [], counts: {}, phase: 'scheduled', server_time: new Date().toISOString() });
  ws.receive({ type: 'exam_update', seq: 2, phase: 'in_progress', opens_at: null, closes_at: null, server_time: new Date().toISOString(), paused: false, cause: 'phase', clock: {}, version: 2 });
  check(JSON.stringify(got) === '[["exam","scheduled"],["exam","in_progress"],["message","exam_update"]]', `watchers: the snapshot's phase, then the update: ${JSON.stringify(got)}`);
  check(!ws.sent.some((m) => m.type === 'received'), 'watchers acknowledge nothing');
  const ups = [];
  t.addEventListener('timeup', () => ups.push(1));
  ws.receive({ type: 'exam_update', seq: 3, phase: 'ended', opens_at: null, closes_at: null, server_time: new Date().toISOString(), paused: false, cause: 'phase', clock: {}, version: 3 });
  check(ups.length === 0 && got.at(-2)[1] === 'ended', `watchers see the end as an exam event, not a timeup: ${JSON.stringify(got)}`);
  t.close();
}

// ---- watchers: the server's clock from the snapshot until the HTTP Date is in ----
{
  const teacherToken = `${b64({ alg: 'HS256' })}.${b64({ sub: 't8', role: 'teacher', exams: ['e1'] })}.sig`;
  let answer;
  globalThis.fetch = () => new Promise((resolve) => { answer = resolve; });
  const t = new ExamwatchClient({ ...options, token: teacherToken, storage: new MemoryStorage() });
  t.connect();
  const ws = FakeSocket.last();
  const hour = 3600 * 1000;
  ws.receive({ type: 'snapshot', seq: 1, exam_id: 'e1', part: 1, parts: 1, students: [], counts: {}, phase: 'in_progress', server_time: new Date(Date.now() + hour).toISOString() });
  check(Math.abs(t.clockOffsetMs - hour) < 1000, `the snapshot's server_time at once: ${t.clockOffsetMs}`);
  // The HTTP Date (the server's clock, an hour and a minute ahead) refines it, and then rules.
  answer({ headers: { get: () => new Date(Date.now() + hour + 60000).toUTCString() } });
  await until('the HTTP clock', () => Math.abs(t.clockOffsetMs - hour - 60000) < 2000, 1000);
  ws.receive({ type: 'snapshot', seq: 2, exam_id: 'e1', part: 1, parts: 1, students: [], counts: {}, phase: 'in_progress', server_time: new Date(Date.now() + hour).toISOString() });
  check(Math.abs(t.clockOffsetMs - hour - 60000) < 2000, `a later snapshot does not undo it: ${t.clockOffsetMs}`);
  t.close();
}

// ---- tokens (PROTOCOL.md 1.2.3): refresh, 4401 reconnects, 4403 stops ----
{
  const requests = [];
  const fetch = (url, init) =>
    new Promise((resolve) => {
      requests.push({ init, answer: (status, body) => resolve({ status, ok: status >= 200 && status < 300, json: async () => body }) });
    });
  const c = new ExamwatchClient({ ...options, tickets: true, fetch, storage: new MemoryStorage() });
  const expired = [];
  const revoked = [];
  c.addEventListener('token_expired', (e) => expired.push(e.detail.code));
  c.addEventListener('token_revoked', (e) => revoked.push(e.detail.code));
  const offline = await c.refresh('before-connecting').then(() => 'resolved');
  check(offline === 'resolved' && c.token === 'before-connecting', 'refresh while not connected: kept for the next ticket');
  c.connect();
  check(requests.at(-1).init.headers.authorization === 'Bearer before-connecting', 'the ticket uses the refreshed token');
  requests.at(-1).answer(200, { ticket: 'R0', exam_id: 'e1', expires_in_ms: 30000 });
  await until('a socket', () => FakeSocket.last().url.endsWith('ticket=R0'));
  const ws = FakeSocket.last();
  ws.receive(welcome('R1', 1));
  const ok = c.refresh('new-token');
  const sent = ws.sent.find((m) => m.type === 'refresh');
  check(sent && sent.token === 'new-token' && sent.ref, `refresh is sent with a ref: ${JSON.stringify(sent)}`);
  ws.receive({ type: 'ack', ref: sent.ref });
  check((await ok.then(() => 'acked')) === 'acked', 'refresh resolves on its ack');
  const refused = c.refresh('someone-else');
  const sent2 = ws.sent.filter((m) => m.type === 'refresh').at(-1);
  ws.receive({ type: 'error', code: 'forbidden', message: 'not yours', ref: sent2.ref });
  check((await refused.then(() => 'resolved', (e) => e.message)) === 'not yours', 'refresh rejects on its error');
  // 4401: reported, then a reconnect with a fresh ticket for the latest token.
  ws.receive({ type: 'error', code: 'token_expired', message: 'expired' });
  ws.drop(4401, 'token expired');
  check(expired.length === 1 && c.state === 'offline', `4401: token_expired, then offline (${c.state})`);
  await until('a ticket request after 4401', () => requests.length === 2);
  check(requests[1].init.headers.authorization === 'Bearer someone-else', 'the latest token is used');
  requests[1].answer(200, { ticket: 'R1', exam_id: 'e1', expires_in_ms: 30000 });
  await until('a reconnect after 4401', () => FakeSocket.last().url.includes('ticket=R1'));
  const ws2 = FakeSocket.last();
  ws2.receive(welcome('R2', 1));
  // 4403: reported, and no reconnect.
  ws2.drop(4403, 'token revoked');
  check(revoked.length === 1 && c.state === 'closed', `4403: token_revoked, closed (${c.state})`);
  await new Promise((r) => setTimeout(r, 60));
  check(requests.length === 2 && FakeSocket.last() === ws2, 'no reconnect after 4403');
  // A ticket refused as token_revoked stops too, after one request.
  const d = new ExamwatchClient({ ...options, tickets: true, fetch, storage: new MemoryStorage() });
  d.addEventListener('token_revoked', (e) => revoked.push(e.detail.code));
  d.connect();
  requests.at(-1).answer(403, { error: { code: 'token_revoked', message: 'revoked' } });
  await until('the refused ticket', () => d.state === 'closed');
  await new Promise((r) => setTimeout(r, 60));
  check(revoked.length === 2 && requests.length === 3, `a revoked ticket: reported once, no retry (${requests.length})`);
}

// ---- the HTTP fallback (issue 18 item 2): failed handshakes while HTTP works
// switch to SSE + POST; batches, 429, 409; back to the socket in the background ----
{
  // A scripted fetch: tickets are granted at once, /healthz answers as
  // `health` says, every other request waits for the test.
  const calls = [];
  let health = 'up';
  let tickets = 0;
  const fetch = (url, init = {}) => {
    if (url.endsWith('/v1/tickets')) {
      tickets += 1;
      return Promise.resolve({ status: 200, ok: true, json: async () => ({ ticket: `T${tickets}` }) });
    }
    if (url.endsWith('/healthz')) {
      return health === 'up' ? Promise.resolve({ status: 200, ok: true, json: async () => ({}) }) : Promise.reject(new TypeError('Failed to fetch'));
    }
    return new Promise((resolve, reject) => {
      const call = { url, init, resolve, reject, aborted: false };
      init.signal?.addEventListener('abort', () => {
        call.aborted = true;
        reject(new Error('aborted'));
      });
      calls.push(call);
    });
  };
  const json = (status, body, headers = {}) => ({ status, ok: status >= 200 && status < 300, headers: new Map(Object.entries(headers)), json: async () => body });
  /** An SSE response whose body the test writes. */
  const stream = (handover = null) => {
    const chunks = [];
    let waiting = null;
    const reader = {
      read: () => new Promise((resolve) => {
        if (chunks.length) resolve(chunks.shift());
        else waiting = resolve;
      }),
    };
    const give = (chunk) => (waiting ? (waiting(chunk), (waiting = null)) : chunks.push(chunk));
    return {
      res: { status: 200, ok: true, headers: new Map(handover ? [['x-examwatch-handover', handover]] : []), body: { getReader: () => reader } },
      write: (text) => give({ value: new TextEncoder().encode(text), done: false }),
      end: () => give({ done: true }),
    };
  };
  const streams = () => calls.filter((k) => k.url.includes('/me/events'));
  const posts = () => calls.filter((k) => k.url.endsWith('/me/messages'));
  const bodyOf = (k) => JSON.parse(k.init.body);
  const tick = () => new Promise((r) => setTimeout(r, 5));
  /** Connects `k`, refuses its two handshakes, and welcomes its session stream as `session`. */
  const ontoHttp = async (k, session, handover = null) => {
    const m0 = FakeSocket.all.length;
    const s0 = streams().length;
    k.connect();
    await until('socket 1', () => FakeSocket.all.length === m0 + 1);
    FakeSocket.last().drop(1006);
    await until('socket 2', () => FakeSocket.all.length === m0 + 2);
    FakeSocket.last().drop(1006);
    await until('its stream', () => streams().length === s0 + 1);
    const b = stream(handover);
    streams().at(-1).resolve(b.res);
    await tick();
    b.write(`event: welcome\ndata: ${JSON.stringify(welcome(session, 0))}\n\n`);
    await until('on HTTP', () => k.state === 'live' && k.transport === 'http');
    return b;
  };

  const c = new ExamwatchClient({ ...options, tickets: true, fetch, storage: new MemoryStorage(), wsRetryMs: 100000 });
  const transports = [];
  const lives = [];
  c.addEventListener('transport', (e) => transports.push(`${e.detail.transport}:${c.transport}`));
  c.addEventListener('connection', (e) => e.detail.state === 'live' && lives.push(e.detail.transport));
  check(c.transport === 'websocket', 'the socket first');
  const n0 = FakeSocket.all.length;
  c.connect();
  // Two handshakes refused (the browser's 1006 before any open) after a granted ticket.
  await until('a first socket', () => FakeSocket.all.length === n0 + 1);
  FakeSocket.last().drop(1006);
  await until('a second socket', () => FakeSocket.all.length === n0 + 2);
  FakeSocket.last().drop(1006);
  await until('a session stream', () => streams().length === 1);
  check(FakeSocket.all.length === n0 + 2, 'no third socket: the HTTP transport instead');
  const [s1] = streams();
  check(s1.url === 'http://exams.test/v1/exams/e1/me/events?transport=http', `the stream: ${s1.url}`);
  check(s1.init.headers.authorization === `Bearer ${token}` && s1.init.headers.accept === 'text/event-stream', 'the token in a header');
  check(!('last-event-id' in s1.init.headers), 'nothing to resume yet');
  const body1 = stream();
  s1.resolve(body1.res);
  await tick();
  // The welcome, split anywhere, CRLF lines, then a comment.
  body1.write('event: welcome\r');
  body1.write(`\ndata: ${JSON.stringify(welcome('H1', 3))}\r\nid: 3\r\n\r\n: ping\n\n`);
  await until('live over HTTP', () => c.state === 'live');
  check(c.transport === 'http' && transports.join() === 'http:http' && lives.join() === 'http', `transport http: ${transports} ${lives}`);
  check(c.sessionId === 'H1' && c.lastSeq === 3, 'the welcome is the session');
  body1.write(`event: announcement\ndata: ${JSON.stringify({ type: 'announcement', seq: 4, text: 'hi', at: '', from: 'T' })}\nid: 4\n\n`);
  await until('the announcement', () => c.lastSeq === 4);

  // Messages of one moment go in one POST, with the session's id; one POST at a time.
  const a1 = c.answer('q1', 'A');
  const a2 = c.answer('q2', 'B');
  c.progress('q2', 2);
  await until('a POST', () => posts().length === 1);
  const [p1] = posts();
  check(p1.init.method === 'POST' && p1.init.headers['x-examwatch-session'] === 'H1' && p1.init.headers.authorization === `Bearer ${token}`, 'POST with the session and the token');
  check(bodyOf(p1).map((m) => m.id ?? m.type).join() === `${a1},${a2},progress`, `one batch, in order: ${p1.init.body}`);
  const a3 = c.answer('q3', 'C');
  await tick();
  check(posts().length === 1, 'the next message waits for the POST in flight');
  p1.resolve(json(200, [{ type: 'ack', ref: `a:${a1}` }, { type: 'error', code: 'not_stored', retry: true, message: 'no result in time', ref: `a:${a2}` }, { type: 'ack', ref: null }]));
  await until('the next POST', () => posts().length === 2);
  check(c.pending().map((m) => m.id).join() === `${a2},${a3}`, `results by position: ${c.pending().map((m) => m.question)}`);
  check(bodyOf(posts()[1]).map((m) => m.id).join() === a3, 'then what waited');
  // 429: the same batch again after Retry-After.
  const t429 = Date.now();
  posts()[1].resolve(json(429, { error: { code: 'rate_limited' } }, { 'retry-after': '0.1' }));
  await until('the batch again', () => posts().length === 3, 1000);
  check(Date.now() - t429 >= 80 && bodyOf(posts()[2]).map((m) => m.id).join() === a3, 'after Retry-After, the same messages');
  // 409 no_session: a new stream, as a reconnect that resumes.
  posts()[2].resolve(json(409, { error: { code: 'no_session' } }));
  await until('a new stream', () => streams().length === 2);
  const s2 = streams()[1];
  check(s2.url.endsWith('?transport=http&previous_session=H1') && s2.init.headers['last-event-id'] === '4', `previous_session and Last-Event-ID: ${s2.url} ${JSON.stringify(s2.init.headers)}`);
  const body2 = stream('HT2');
  s2.resolve(body2.res);
  await tick();
  body2.write(`event: welcome\ndata: ${JSON.stringify(welcome('H2', 4))}\nid: 4\n\n`);
  await until('a POST on the new session', () => posts().length === 4);
  const p4 = posts()[3];
  check(p4.init.headers['x-examwatch-session'] === 'H2', 'the new session id');
  check(!bodyOf(p4).some((m) => m.type === 'resume'), 'no resume message: the header did it');
  check(bodyOf(p4).some((m) => m.id === a3), `the unacked answer is sent again: ${p4.init.body}`);
  p4.resolve(json(200, bodyOf(p4).map((m) => ({ type: 'ack', ref: m.ref }))));
  await until('the answer acked', () => !c.pending().some((m) => m.id === a3));
  check(transports.join() === 'http:http', 'still http: no transport event for a new stream');

  // The stream's `event: close` is the socket's close code: 1012, a new stream after the restart jitter.
  c.wsRetryMs = 20;
  c.wsRetryCapMs = 40;
  body2.write('event: close\ndata: {"code":1012,"reason":"service restart"}\n\n');
  body2.end();
  await until('offline with 1012', () => c.state !== 'live');
  await until('a third stream', () => streams().length === 3, 6000);
  const s3 = streams()[2];
  check(s3.url.endsWith('&previous_session=H2&handover=HT2'), `a new stream presents the last one's handover token: ${s3.url}`);
  const body3 = stream('HT3');
  s3.resolve(body3.res);
  await tick();
  body3.write(`event: welcome\ndata: ${JSON.stringify(welcome('H3', 4))}\n\n`);
  await until('live again', () => c.state === 'live');
  const a4 = c.answer('q4', 'D');
  // Meanwhile the socket is tried in the background, with the HTTP session's id.
  const before = FakeSocket.all.length;
  await until('a background socket', () => FakeSocket.all.length === before + 1, 1000);
  check(FakeSocket.last().url.includes('&previous_session=H3&handover=HT3'), `a reconnect of the HTTP session, with its token: ${FakeSocket.last().url}`);
  FakeSocket.last().drop(1006);
  check(c.state === 'live' && c.transport === 'http', 'a failed attempt changes nothing');
  await until('another background socket', () => FakeSocket.all.length === before + 2, 1000);
  const back = FakeSocket.last();
  back.receive(welcome('W1', 4));
  check(c.transport === 'websocket' && transports.join() === 'http:http,websocket:websocket', `back on the socket: ${transports}`);
  check(c.sessionId === 'W1' && c.state === 'live', 'its welcome is the session');
  check(s3.aborted, 'the stream is ended');
  check(back.sent[0].type === 'resume' && back.sent[0].last_seq === 4, `resume on the socket: ${JSON.stringify(back.sent[0])}`);
  check(back.sent.some((m) => m.id === a4), 'what was unacked over HTTP is sent on the socket');
  back.receive({ type: 'ack', ref: `a:${a4}` });
  check(c.pending().length === 0, 'all acked');
  // A handshake failure now counts anew: one is not enough to fall back.
  back.drop(1006);
  await until('a socket again', () => FakeSocket.last() !== back);
  let n1 = streams().length;
  FakeSocket.last().receive(welcome('W2', 4));
  check(c.transport === 'websocket' && streams().length === n1, 'the socket works: it stays');
  c.close();

  // The server retires the HTTP session as it admits the background socket
  // (a reconnect: close 4001 with no `session_invalidated`, before the
  // socket's welcome): not a takeover; the socket's welcome carries on.
  {
    const k = new ExamwatchClient({ ...options, tickets: true, fetch, storage: new MemoryStorage(), wsRetryMs: 20, wsRetryCapMs: 40 });
    const invalidated = [];
    k.addEventListener('session_invalidated', () => invalidated.push(1));
    const m0 = FakeSocket.all.length;
    const s0 = streams().length;
    const b = await ontoHttp(k, 'K1');
    const q = k.answer('q1', 'A');
    await until('the background socket', () => FakeSocket.all.length === m0 + 3, 1000);
    const bg = FakeSocket.last();
    check(bg.url.includes('previous_session=K1'), bg.url);
    b.write('event: close\ndata: {"code":4001,"reason":"session taken over by a new connection"}\n\n');
    b.end();
    await tick();
    check(invalidated.length === 0 && k.state !== 'closed' && !k._invalidated, `not a second session: ${k.state}`);
    check(streams().length === s0 + 1, 'no new stream: the socket is on its way');
    bg.receive(welcome('K2', 0));
    check(k.state === 'live' && k.transport === 'websocket' && k.sessionId === 'K2', `on the socket: ${k.state} ${k.transport}`);
    check(bg.sent.some((m) => m.id === q), 'the unacked answer goes on the socket');
    k.close();
  }

  // A background socket with the token, given up before its welcome (slow):
  // the server may have retired the HTTP session for it, so the 4001 that
  // follows is our own move, a reconnect, not a second session.
  {
    const k = new ExamwatchClient({ ...options, tickets: true, fetch, storage: new MemoryStorage(), wsRetryMs: 20, wsRetryCapMs: 40, wsOpenTimeoutMs: 30 });
    const invalidated = [];
    k.addEventListener('session_invalidated', () => invalidated.push(1));
    const m0 = FakeSocket.all.length;
    const s0 = streams().length;
    const b = await ontoHttp(k, 'M1', 'HTM');
    await until('the background socket', () => FakeSocket.all.length === m0 + 3, 1000);
    const bg = FakeSocket.last();
    check(bg.url.includes('previous_session=M1&handover=HTM'), bg.url);
    bg.onopen(); // upgraded, then no welcome in time
    await until('given up', () => bg.closedWith === 1000, 1000);
    b.write('event: close\ndata: {"code":4001,"reason":"session taken over by a new connection"}\n\n');
    b.end();
    await until('the stream ended', () => k.state !== 'live', 1000);
    check(invalidated.length === 0 && k.state !== 'closed', `our own move, not a second session: ${k.state} ${invalidated.length}`);
    // A reconnect is under way: a new link (the ended stream's was
    // dropped). Not counted by sockets and streams: the reconnect's own
    // may have started, after a backoff of up to 10 ms, before the state
    // above was polled.
    await until('a reconnect', () => k._link !== null && k.state === 'connecting', 2000);
    k.close();
  }

  // `terminated` over HTTP: the stream (and its session) end with it, so
  // its `received` goes to POST me/received, not to the session's POST;
  // a 503 is retried. On the socket the handover token is not sent again.
  {
    const k = new ExamwatchClient({ ...options, tickets: true, fetch, storage: new MemoryStorage(), wsRetryMs: 100000 });
    const p0 = posts().length;
    const b = await ontoHttp(k, 'X1', 'HTX');
    const received = () => calls.filter((x) => x.url === 'http://exams.test/v1/exams/e1/me/received');
    const r0 = received().length;
    b.write(`event: terminated\ndata: ${JSON.stringify({ type: 'terminated', id: 'act-9', reason: 'bye' })}\n\n`);
    b.write('event: close\ndata: {"code":4003,"reason":"exam terminated"}\n\n');
    b.end();
    await until('POST me/received', () => received().length === r0 + 1);
    const r = received().at(-1);
    check(r.init.method === 'POST' && JSON.parse(r.init.body).id === 'act-9' && r.init.headers.authorization === `Bearer ${token}`, `me/received with the id and the token: ${r.init.body}`);
    r.resolve(json(503, { error: { code: 'database_unavailable' } }));
    await until('sent again after a 503', () => received().length === r0 + 2, 3000);
    received().at(-1).resolve(json(200, { id: 'act-9', recorded: true }));
    check(!posts().slice(p0).some((x) => bodyOf(x).some((m) => m.type === 'received')), 'not on the ended session');
    check(k.state === 'closed', `terminated stops the client: ${k.state}`);
    k.close();
  }
  n1 = streams().length;

  // The server down (HTTP fails too): handshake failures do not switch.
  health = 'down';
  const d = new ExamwatchClient({ ...options, fetch, storage: new MemoryStorage() }).connect();
  for (let i = 0; i < 4; i += 1) {
    const ws = FakeSocket.last();
    ws.drop(1006);
    await until('a retry', () => FakeSocket.last() !== ws);
  }
  await tick();
  check(streams().length === n1 && d.transport === 'websocket', 'no HTTP stream while HTTP fails too');
  d.close();
  // Without tickets, /healthz says whether HTTP works; a socket with no welcome in time failed too.
  health = 'up';
  const e = new ExamwatchClient({ ...options, fetch, storage: new MemoryStorage(), wsOpenTimeoutMs: 30 }).connect();
  await until('a stream after two silent sockets', () => streams().length === n1 + 1, 3000);
  check(e.state === 'connecting', 'connecting over HTTP');
  e.close();
  check(streams().at(-1).aborted, 'close() ends the stream');
  // Watchers never fall back.
  const wToken = `${b64({ alg: 'HS256' })}.${b64({ sub: 't3', role: 'teacher', exams: ['e1'] })}.sig`;
  const w = new ExamwatchClient({ ...options, token: wToken, fetch, storage: new MemoryStorage() }).connect();
  for (let i = 0; i < 3; i += 1) {
    const ws = FakeSocket.last();
    ws.drop(1006);
    await until('a watcher retry', () => FakeSocket.last() !== ws);
  }
  check(streams().length === n1 + 1, 'a watcher stays on sockets');
  w.close();
}

console.log('client library: ok');
