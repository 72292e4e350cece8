// The peer: a minimal Node.js `ws` exam-room server, written the way the
// systems examwatch replaces are (one process, rooms in a Map, JSON per
// message). It speaks the subset the load generator uses:
//   GET /v1/exams/{exam}/ws with a Bearer JWT (role/sub read, not verified:
//   this is a performance peer, not a security one);
//   student -> welcome; student `progress` -> `student` event to teachers;
//   teacher -> `snapshot` on join.
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');

const port = Number(process.env.PORT || 9300);
const rooms = new Map(); // exam -> { seq, students: Map, teachers: Set }

function room(exam) {
  let r = rooms.get(exam);
  if (!r) {
    r = { seq: 0, students: new Map(), teachers: new Set() };
    rooms.set(exam, r);
  }
  return r;
}

function claims(req) {
  const auth = req.headers['authorization'] || '';
  const token = auth.startsWith('Bearer ') ? auth.slice(7) : new URL(req.url, 'http://x').searchParams.get('access_token');
  if (!token) return null;
  try {
    return JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString());
  } catch {
    return null;
  }
}

// GET /healthz, and the load generator's "create this exam in progress"
// (POST /v1/exams): 201, since every exam here is open.
const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/v1/exams') {
    req.resume();
    res.writeHead(201, { 'content-type': 'application/json' });
    res.end('{}');
    return;
  }
  res.writeHead(req.url === '/healthz' ? 200 : 404, { 'content-type': 'application/json' });
  res.end(req.url === '/healthz' ? '{"status":"ok"}' : '{"error":"not found"}');
});
const wss = new WebSocketServer({ noServer: true });

server.on('upgrade', (req, socket, head) => {
  const m = /^\/v1\/exams\/([^/]+)\/ws/.exec(req.url);
  const c = claims(req);
  if (!m || !c) {
    socket.end('HTTP/1.1 401 Unauthorized\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => join(ws, m[1], c));
});

function broadcast(r, data) {
  for (const t of r.teachers) t.send(data);
}

function join(ws, exam, c) {
  const r = room(exam);
  if (c.role === 'teacher' || c.role === 'admin') {
    r.teachers.add(ws);
    ws.send(JSON.stringify({ type: 'snapshot', seq: r.seq, exam_id: exam, students: [...r.students.values()] }));
    ws.on('close', () => r.teachers.delete(ws));
    return;
  }
  const state = {
    student_id: c.sub, name: c.name, status: 'active', current_question: null, answered: 0,
    last_activity: new Date().toISOString(), connected: true, focus_lost_count: 0, connections: 1,
  };
  r.students.set(c.sub, state);
  ws.send(JSON.stringify({ type: 'welcome', session_id: String(Math.random()), server_time: new Date().toISOString(), exam_id: exam, student: state }));
  r.seq += 1;
  broadcast(r, JSON.stringify({ type: 'student', seq: r.seq, student: state, cause: 'connected' }));
  ws.on('message', (data) => {
    let msg;
    try { msg = JSON.parse(data); } catch { return; }
    if (msg.type === 'progress') {
      state.current_question = msg.question;
      state.answered = msg.answered;
      state.last_activity = new Date().toISOString();
      r.seq += 1;
      broadcast(r, JSON.stringify({ type: 'student', seq: r.seq, student: state, cause: 'progress' }));
    }
  });
  ws.on('close', () => { state.connected = false; });
}

server.listen(port, '127.0.0.1', () => console.log(`node-ws peer listening on ${port}`));
