// The client library falls back to HTTP by itself (issue 18 item 2). The
// student page reaches the server through `gate`, a small proxy in this
// test standing in for a network that refuses WebSocket upgrades: it
// forwards every HTTP request (SSE streams unbuffered) and, while
// `blocked`, answers every `Upgrade` with 403. Two students (the library,
// in chromium) on it: after their failed handshakes each switches to the
// HTTP transport (SSE + POST) and sits the exam on it: progress, answers,
// focus lost and regained, and s1 submits. A teacher (the library,
// directly on the server) sees all of it live, and the students
// `connected`. A third student, s3, is terminated by the teacher while on
// HTTP: their client stops, and the action shows `delivered` (the library
// acknowledges the frame with POST me/received, since the stream and its
// session end with it). Then the gate lets upgrades through: each library
// returns to the socket by itself (its background attempt,
// `previous_session` = the HTTP session, with the stream's handover token:
// the server's probe is set to a minute, so only the token gets it
// through in time), s2 answering across the move and after it, then
// submitting. Checked: `transport` went `http` then `websocket` (event and
// property); nothing is left in an outbox or set aside; no
// `session_invalidated`; the teacher saw every answer, no `disconnected`
// and no `second_session` alert. browser.rs then checks that the database
// holds each answer and each submission once, and each `answered` count
// once. Without the fallback the students never go live (the first wait
// fails).

import http from 'node:http';
import net from 'node:net';
import { SLOW, check, kill9, launch, log, page, rest, scenario, startServer, stop, token, within } from './lib.mjs';

const STUDENTS = ['s1', 's2'];

/** A proxy to `target` that refuses WebSocket upgrades while `gate.blocked`. */
function upgradeGate(target) {
  const [host, port] = target.split(':');
  const gate = { blocked: true, refused: 0, upgrades: 0, streams: 0 };
  const open = new Set();
  const server = http.createServer((req, res) => {
    if (req.url.includes('/me/events')) gate.streams += 1;
    const upstream = http.request({ host, port: Number(port), method: req.method, path: req.url, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode, answer.headers);
      answer.pipe(res);
    });
    upstream.on('error', () => res.destroy());
    // The page gone (a stream it ended): the server's side ends too.
    res.on('close', () => upstream.destroy());
    req.pipe(upstream);
  });
  server.on('upgrade', (req, client, head) => {
    client.on('error', () => {});
    if (gate.blocked) {
      gate.refused += 1;
      client.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
      return;
    }
    gate.upgrades += 1;
    const upstream = net.connect({ host, port: Number(port) }, () => {
      let lines = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) lines += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      upstream.write(`${lines}\r\n`);
      if (head.length) upstream.write(head);
      client.pipe(upstream);
      upstream.pipe(client);
    });
    open.add(upstream);
    upstream.on('error', () => client.destroy());
    upstream.on('close', () => {
      open.delete(upstream);
      client.destroy();
    });
    client.on('close', () => upstream.destroy());
  });
  const close = () => {
    for (const s of open) s.destroy();
    server.closeAllConnections?.();
    server.close();
  };
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ gate, close, addr: `127.0.0.1:${server.address().port}` })));
}

await scenario('fallback', async ({ cleanup, problems }) => {
  // A probe far longer than the test waits: the move back to the socket
  // must come from the HTTP session's handover token (PROTOCOL.md 8.4).
  const app = await startServer(['serve'], { env: { EXAMWATCH__EXAM__PROBE_TIMEOUT: '60s' } });
  cleanup.push(() => kill9(app));
  const { gate, close, addr } = await upgradeGate(app.addr);
  cleanup.push(close);
  const teacher = token('t1', 'teacher', 'e1', 'Ms Rivera');
  const created = await rest(`http://${app.addr}`, teacher, 'POST', '/v1/exams', { id: 'e1', title: 'Behind a proxy', phase: 'in_progress' });
  check(created.status === 201, `exam created: ${created.status} ${created.text}`);

  const browser = await launch();
  cleanup.push(() => browser.close());
  // The teacher, directly on the server.
  const tp = await page(browser, `http://${app.addr}/healthz`, problems);
  await tp.evaluate(async (tok) => {
    const { ExamwatchClient } = await import('/client/examwatch.js');
    window.seen = { causes: {}, answered: {}, alerts: [] };
    const c = new ExamwatchClient({ exam: 'e1', token: tok });
    c.addEventListener('status', (e) => {
      const s = e.detail.student;
      (window.seen.causes[s.student_id] ??= []).push(e.detail.cause);
      if (e.detail.cause === 'answered') (window.seen.answered[s.student_id] ??= []).push(s.answered);
    });
    c.addEventListener('alert', (e) => window.seen.alerts.push(`${e.detail.student_id}:${e.detail.kind}`));
    window.t = c;
    c.connect();
  }, teacher);
  await tp.waitForFunction(() => window.t.state === 'live', null, { timeout: SLOW });

  // The students, through the gate: sockets refused.
  const sp = await page(browser, `http://${addr}/healthz`, problems);
  // s3 sits on HTTP too, until a teacher terminates their exam.
  const who = [...STUDENTS, 's3'].map((id) => ({ id, token: token(id, 'student', 'e1', id.toUpperCase()) }));
  await sp.evaluate(async (who) => {
    const { ExamwatchClient } = await import('/client/examwatch.js');
    window.c = {};
    window.seen = {};
    for (const w of who) {
      const c = new ExamwatchClient({
        exam: 'e1',
        token: w.token,
        wsFailuresBeforeFallback: 2,
        // Far below the server's exam.probe_timeout (60 s here): a socket
        // taking over the HTTP session is welcomed at once, by the token.
        wsOpenTimeoutMs: 4000,
        wsRetryMs: 1000,
        wsRetryCapMs: 2000,
        backoffBaseMs: 100,
        backoffCapMs: 500,
      });
      const seen = { transports: [], states: [], invalidated: 0, errors: [], ids: {} };
      c.addEventListener('transport', (e) => seen.transports.push(`${e.detail.transport}:${c.transport}`));
      c.addEventListener('connection', (e) => seen.states.push(`${e.detail.state}${e.detail.transport ? `/${e.detail.transport}` : ''}${e.detail.code ? `:${e.detail.code}` : ''}`));
      c.addEventListener('session_invalidated', () => (seen.invalidated += 1));
      c.addEventListener('error', (e) => seen.errors.push(e.detail.code));
      c.addEventListener('terminated', () => (seen.terminated = true));
      window.c[w.id] = c;
      window.seen[w.id] = seen;
      c.connect();
    }
  }, who);
  const show = () => JSON.stringify(Object.entries(window.c).map(([id, c]) => [id, c.state, c.transport, c.pending().length, window.seen[id].states.slice(-8), window.seen[id].errors]));
  const onHttp = (ids) => ids.every((id) => window.c[id].state === 'live' && window.c[id].transport === 'http');
  await within(sp, 10000, 'both students live over HTTP', onHttp, STUDENTS, show);
  check(gate.upgrades === 0 && gate.refused >= 2 * STUDENTS.length, `the gate refused their sockets: ${JSON.stringify(gate)}`);
  log(`on HTTP: ${JSON.stringify(gate)}`);
  const connected = (ids) => ids.every((s) => (window.seen.causes[s] ?? []).includes('connected'));
  await within(tp, 1000, 'the teacher sees both students connected', connected, STUDENTS, () => JSON.stringify(window.seen));

  // The exam, over HTTP: progress, answers, focus; s1 submits.
  await sp.evaluate((ids) => {
    for (const id of ids) {
      const c = window.c[id];
      const ids = window.seen[id].ids;
      for (let n = 1; n <= 3; n += 1) {
        c.progress(`q${n}`, n - 1);
        ids[`q${n}`] = c.answer(`q${n}`, { choice: n });
        if (n === 2) {
          c.focus(true);
          c.focus(false);
        }
      }
    }
    window.c.s1.submit();
  }, STUDENTS);
  const settled = (ids) => ids.every((id) => window.c[id].pending().length === 0);
  await within(sp, 5000, 'the outboxes are empty over HTTP', settled, STUDENTS, show);
  const sawAll = ([ids, n]) => ids.every((s) => [...new Set(window.seen.answered[s] ?? [])].length === n && (window.seen.causes[s] ?? []).includes('focus_lost'));
  await within(tp, 1000, "the teacher sees each student's three answers and focus loss", sawAll, [STUDENTS, 3], () => JSON.stringify(window.seen));
  await within(tp, 1000, "the teacher sees s1's submission", () => window.seen.causes.s1.includes('submitted'), null, () => JSON.stringify(window.seen.causes.s1));
  check(await sp.evaluate(onHttp, STUDENTS), `still on HTTP: ${await sp.evaluate(show)}`);
  check(gate.upgrades === 0, 'no socket got through');

  // Terminated over HTTP: the stream ends right after the frame, so the
  // library acknowledges it with POST me/received, and the action shows
  // `delivered` (not `pending` for ever).
  await within(sp, 10000, 's3 live over HTTP', onHttp, ['s3'], show);
  const term = await rest(`http://${app.addr}`, teacher, 'POST', '/v1/exams/e1/actions', { id: 'end-s3', kind: 'terminate', students: ['s3'] });
  check(term.status === 200, `terminate: ${term.status} ${term.text}`);
  await within(sp, 2000, "s3's client stops: terminated", () => window.seen.s3.terminated === true && window.c.s3.state === 'closed', null, show);
  const delivery = async () => {
    const list = await rest(`http://${app.addr}`, teacher, 'GET', '/v1/exams/e1/actions');
    const action = list.json?.actions?.find((a) => a.id === 'end-s3');
    return action?.students?.find((st) => st.student_id === 's3')?.delivery;
  };
  const deadline = Date.now() + 5000;
  let delivered = await delivery();
  while (delivered !== 'delivered' && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
    delivered = await delivery();
  }
  check(delivered === 'delivered', `the terminate frame was acknowledged over HTTP: ${delivered}`);

  // Upgrades get through again: back to the socket, s2 answering across the move.
  gate.blocked = false;
  log('unblocked');
  await sp.evaluate(() => {
    const c = window.c.s2;
    window.seen.s2.ids.q4 = c.answer('q4', { choice: 4 });
    window.seen.s2.ids.q5 = c.answer('q5', { choice: 5 });
  });
  const onSocket = (ids) => ids.every((id) => window.c[id].state === 'live' && window.c[id].transport === 'websocket');
  // The next background attempt is at most wsRetryCapMs (2 s) away, and
  // its welcome comes at once (the handover token: no probe to wait for).
  await within(sp, 3000, 'both students back on the socket', onSocket, STUDENTS, show);
  await sp.evaluate(() => {
    const c = window.c.s2;
    window.seen.s2.ids.q6 = c.answer('q6', { choice: 6 });
    c.submit();
  });
  await within(sp, 3000, 'the outboxes are empty on the socket', settled, STUDENTS, show);
  await within(tp, 1000, "the teacher sees s2's six answers and submission", () => [...new Set(window.seen.answered.s2 ?? [])].length === 6 && window.seen.causes.s2.includes('submitted'), null, () => JSON.stringify(window.seen));

  const students = await sp.evaluate((ids) => Object.fromEntries(ids.map((id) => [id, { ...window.seen[id], transport: window.c[id].transport, rejected: window.c[id].rejected(), pending: window.c[id].pending() }])), STUDENTS);
  const t = await tp.evaluate(() => window.seen);
  for (const s of STUDENTS) {
    const st = students[s];
    check(st.transports.join() === 'http:http,websocket:websocket', `${s}: transport http, then websocket: ${st.transports}`);
    check(st.invalidated === 0, `${s}: never taken over`);
    check(st.rejected.length === 0 && st.pending.length === 0, `${s}: nothing set aside or left: ${JSON.stringify(st.rejected)}`);
    check(!t.causes[s].includes('disconnected') && !t.causes[s].includes('second_session'), `the teacher never saw ${s} disconnect: ${t.causes[s]}`);
    const answered = t.answered[s];
    check(new Set(answered).size === answered.length, `each answer of ${s} counted once: ${answered}`);
  }
  check(!t.alerts.some((a) => a.endsWith(':second_session')), `no second_session alert: ${t.alerts}`);
  check(gate.upgrades >= STUDENTS.length, `the sockets went through the gate: ${JSON.stringify(gate)}`);
  log(`teacher saw: ${JSON.stringify(t.causes)}`);
  const ids = Object.fromEntries(STUDENTS.map((s) => [s, students[s].ids]));
  // A graceful stop writes every event (they are written after delivery).
  await browser.close();
  await stop(app);
  console.log(`RESULT ${JSON.stringify({ answers: ids, gate })}`);
});
