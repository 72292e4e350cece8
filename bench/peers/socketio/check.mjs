// Checks the Socket.IO peer end to end with raw Engine.IO/Socket.IO framing
// (what the Rust load generator speaks): a teacher on TEACHER_URL_BASE, a
// student on STUDENT_URL_BASE, 100 `progress` events, and each must reach the
// teacher exactly once as a `student` event with cause `progress`.
// Starts nothing itself. Prints `ok` and exits 0, or exits 1 with a message.
import WebSocket from 'ws';

const TEACHER = process.env.TEACHER_URL_BASE || 'ws://127.0.0.1:9400';
const STUDENT = process.env.STUDENT_URL_BASE || TEACHER;
const N = 100;
const EXAM = 'check-' + process.pid;

function fail(msg) {
  console.error('FAIL: ' + msg);
  process.exit(1);
}
setTimeout(() => fail('timed out'), 15000).unref();

const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
const jwt = (claims) => `${b64({ alg: 'none', typ: 'JWT' })}.${b64(claims)}.sig`;

// Connects, does the Engine.IO open + Socket.IO CONNECT handshake, answers
// pings, and hands every `42[...]` event (parsed and raw) to onEvent.
function connect(base, claims, onEvent) {
  const url = `${base}/socket.io/?EIO=4&transport=websocket&exam=${EXAM}&access_token=${jwt(claims)}`;
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    let state = 'open';
    ws.on('error', reject);
    ws.on('close', () => { if (state !== 'done') fail(`${claims.role} socket closed (state ${state})`); });
    ws.on('message', (data) => {
      const s = data.toString();
      if (s === '2') { ws.send('3'); return; }
      if (state === 'open') {
        if (s[0] !== '0') return reject(new Error('expected open packet, got ' + s));
        state = 'connecting';
        ws.send('40');
      } else if (state === 'connecting') {
        if (!s.startsWith('40{')) return reject(new Error('expected 40{...}, got ' + s));
        state = 'connected';
        resolve(ws);
      } else if (s.startsWith('42')) {
        const [name, payload] = JSON.parse(s.slice(2));
        onEvent(name, payload, s);
      } else if (s === '41' || s.startsWith('44')) {
        fail(`${claims.role} got ${s}`);
      }
    });
    ws.finish = () => { state = 'done'; ws.close(); };
  });
}

const seen = new Map(); // question -> count
let snapshot, welcome;
let resolveAll;
const allSeen = new Promise((r) => { resolveAll = r; });

const teacher = await connect(TEACHER, { sub: 't1', name: 'Teacher', role: 'teacher' }, (name, p, raw) => {
  if (name === 'snapshot') { snapshot = p; return; }
  if (name !== 'student' || p.cause !== 'progress') return;
  if (!raw.includes('"cause":"progress"') || !raw.includes(`"current_question":"${p.student.current_question}"`)) {
    fail('wire form lacks expected substrings: ' + raw);
  }
  const q = p.student.current_question;
  seen.set(q, (seen.get(q) || 0) + 1);
  if (seen.size === N) resolveAll();
});
// The teacher is in its room once the snapshot arrives.
while (!snapshot) await new Promise((r) => setTimeout(r, 10));
if (snapshot.type !== 'snapshot' || snapshot.exam_id !== EXAM) fail('bad snapshot ' + JSON.stringify(snapshot));

const student = await connect(STUDENT, { sub: 's1', name: 'Student', role: 'student' }, (name, p) => {
  if (name === 'welcome') welcome = p;
});
while (!welcome) await new Promise((r) => setTimeout(r, 10));
if (welcome.exam_id !== EXAM || welcome.student.student_id !== 's1') fail('bad welcome ' + JSON.stringify(welcome));

for (let i = 1; i <= N; i++) {
  student.send('42' + JSON.stringify(['progress', { type: 'progress', question: 'q' + i, answered: i }]));
}
await allSeen;
await new Promise((r) => setTimeout(r, 500)); // let any duplicates arrive
for (let i = 1; i <= N; i++) {
  const n = seen.get('q' + i) || 0;
  if (n !== 1) fail(`q${i} seen ${n} times`);
}
if (seen.size !== N) fail(`unexpected questions: ${[...seen.keys()].join(',')}`);
teacher.finish();
student.finish();
console.log('ok');
process.exit(0);
