// The peer: a Socket.IO exam-room server, the node-ws peer's twin, written the
// way the systems examwatch replaces are (one process, Socket.IO rooms, JSON
// events). Run one instance alone (in-memory adapter) or several sharing rooms
// through @socket.io/redis-adapter (set REDIS_URL). It speaks the subset the
// load generator uses:
//   websocket-only Engine.IO at /socket.io/?EIO=4&transport=websocket
//   &exam=EXAM&access_token=JWT (role/sub read, not verified: this is a
//   performance peer, not a security one);
//   student -> `welcome`; student `progress` -> `student` event to teachers
//   (room `t:EXAM`, across instances via the adapter);
//   teacher -> `snapshot` of this instance's students on join.
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.env.PORT || 9400);
const rooms = new Map(); // exam -> { seq, students: Map } (local to this instance)

function room(exam) {
  let r = rooms.get(exam);
  if (!r) {
    r = { seq: 0, students: new Map() };
    rooms.set(exam, r);
  }
  return r;
}

function claims(token) {
  if (typeof token !== 'string') return null;
  try {
    const c = JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString());
    return c && typeof c === 'object' ? c : null;
  } catch {
    return null;
  }
}

// Socket.IO handles /socket.io/; everything else lands here.
const server = http.createServer((req, res) => {
  res.writeHead(req.url === '/healthz' ? 200 : 404, { 'content-type': 'application/json' });
  res.end(req.url === '/healthz' ? '{"status":"ok"}' : '{"error":"not found"}');
});

const io = new Server(server, {
  transports: ['websocket'],
  perMessageDeflate: false,
  httpCompression: false,
  serveClient: false,
});

io.on('connection', (socket) => {
  const exam = socket.handshake.query.exam;
  const c = claims(socket.handshake.query.access_token);
  if (!c || typeof exam !== 'string' || !exam) {
    socket.disconnect(true);
    return;
  }
  const r = room(exam);
  const teachers = 't:' + exam;
  if (c.role === 'teacher' || c.role === 'admin') {
    socket.join(teachers);
    socket.emit('snapshot', { type: 'snapshot', seq: r.seq, exam_id: exam, students: [...r.students.values()] });
    return;
  }
  const state = {
    student_id: c.sub, name: c.name, status: 'active', current_question: null, answered: 0,
    last_activity: new Date().toISOString(), connected: true, focus_lost_count: 0, connections: 1,
  };
  r.students.set(c.sub, state);
  socket.emit('welcome', { type: 'welcome', session_id: socket.id, server_time: new Date().toISOString(), exam_id: exam, student: state });
  r.seq += 1;
  io.to(teachers).emit('student', { type: 'student', seq: r.seq, student: state, cause: 'connected' });
  socket.on('progress', (msg) => {
    if (!msg || msg.type !== 'progress') return;
    state.current_question = msg.question;
    state.answered = msg.answered;
    state.last_activity = new Date().toISOString();
    r.seq += 1;
    io.to(teachers).emit('student', { type: 'student', seq: r.seq, student: state, cause: 'progress' });
  });
  socket.on('disconnect', () => { state.connected = false; });
});

async function main() {
  if (process.env.REDIS_URL) {
    const { createClient } = require('redis');
    const { createAdapter } = require('@socket.io/redis-adapter');
    const pubClient = createClient({ url: process.env.REDIS_URL });
    const subClient = pubClient.duplicate();
    pubClient.on('error', (e) => console.error('redis pub:', e.message));
    subClient.on('error', (e) => console.error('redis sub:', e.message));
    await Promise.all([pubClient.connect(), subClient.connect()]);
    io.adapter(createAdapter(pubClient, subClient));
  }
  server.listen(port, '127.0.0.1', () =>
    console.log(`socketio peer listening on ${port} (${process.env.REDIS_URL ? 'redis adapter' : 'in-memory adapter'})`));
}

main().catch((e) => { console.error(e); process.exit(1); });
