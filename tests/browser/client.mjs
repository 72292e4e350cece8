// The client library's rules, in node with a scripted fake WebSocket (no
// browser, no server): full-jitter backoff bounds; the outbox is stored
// before anything is sent, re-sent after a reconnect with the same ids and
// emptied only by acks; it survives a new client on the same storage (a
// closed tab); a reconnect carries previous_session and sends resume from
// the last announcement seen; the clock offset comes from server_time; a
// 4001 close stops the client. Run by tests/api/browser.rs.

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
    FakeSocket.all.push(this);
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close(code = 1000) {
    this.onclose?.({ code, reason: '' });
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
const until = async (what, cond) => {
  const deadline = Date.now() + 2000;
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
const options = { exam: 'e1', token, storage, backoffBaseMs: 10, backoffCapMs: 40, heartbeatMs: 60000 };
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
ws1.close(1006); // network drop: no ack came
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
ws3.close(4001);
await new Promise((r) => setTimeout(r, 100));
check(reopened.state === 'closed' && invalidated === 1, `closed after 4001 (${reopened.state}, ${invalidated})`);
check(FakeSocket.last() === ws3, 'no reconnect after 4001');
console.log('client library: ok');
