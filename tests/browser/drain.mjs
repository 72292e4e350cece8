// A rolling restart with two instances, Redis and the client library
// (issue 16 item 4): two `examwatch serve` processes sharing one SQLite
// file and the redis-server tests/api/browser.rs started (REDIS_URL). Every
// client reaches the servers through `failover`, a small TCP forwarder
// standing in for a load balancer: each new connection goes to A, or to B
// once A refuses it (a draining instance stops accepting). Three students
// and a teacher, all the client library in chromium, are on A; a second
// teacher on B (directly). A is stopped (SIGTERM) with a 1.5 s drain window
// while the students keep answering. Checked: every client of A gets 1012
// and the closes are spread over the window (their times span most of it,
// with a generous tolerance: not one instant); every client resumes on B;
// both teachers saw every student's every answer (A's teacher by its
// `last_seq` replay on B: no second snapshot); no `second_session` (nor any
// other) alert, no `disconnected`; A exits 0. browser.rs then checks that
// the database holds each answer once.

import net from 'node:net';
import { SECOND, SLOW, check, kill9, launch, log, page, rest, scenario, startServer, stop, token } from './lib.mjs';

const REDIS = process.env.REDIS_URL;
const WINDOW_MS = 1500;
const ANSWERS = 6;
const STUDENTS = ['s1', 's2', 's3'];

/** A TCP forwarder: each connection to A, or to B if A refuses. Counts where they went. */
function failover(a, b) {
  const went = { a: 0, b: 0 };
  const server = net.createServer((client) => {
    client.pause();
    client.on('error', () => {});
    const attempt = (targets) => {
      const [[name, addr], ...rest] = targets;
      const [host, port] = addr.split(':');
      const upstream = net.connect({ host, port: Number(port) });
      let connected = false;
      upstream.once('connect', () => {
        connected = true;
        went[name] += 1;
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
        upstream.on('close', () => client.destroy());
        client.on('close', () => upstream.destroy());
      });
      upstream.on('error', () => {
        if (!connected && rest.length) return attempt(rest);
        client.destroy();
      });
    };
    attempt([['a', a], ['b', b]]);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, went, addr: `127.0.0.1:${server.address().port}` })));
}

await scenario('drain', async ({ cleanup, problems }) => {
  check(REDIS, 'REDIS_URL is set (run through cargo test)');
  const node = (id) => ({
    EXAMWATCH__BROKER__REDIS_URL: REDIS,
    EXAMWATCH__DATABASE__INSTANCE_ID: id,
    EXAMWATCH__SERVER__DRAIN_WINDOW: `${WINDOW_MS}ms`,
  });
  const a = await startServer(['serve'], { env: node('node-a') });
  cleanup.push(() => kill9(a));
  const b = await startServer(['serve'], { env: node('node-b') });
  cleanup.push(() => kill9(b));
  const lb = await failover(a.addr, b.addr);
  cleanup.push(() => lb.server.close());
  const base = `http://${lb.addr}`;
  const teacher = token('t1', 'teacher', 'e1', 'Ms Rivera');
  const created = await rest(`http://${a.addr}`, teacher, 'POST', '/v1/exams', { id: 'e1', title: 'Rolling restart', phase: 'in_progress' });
  check(created.status === 201, `exam created: ${created.status} ${created.text}`);

  const browser = await launch();
  cleanup.push(() => browser.close());
  // One page through the forwarder (students and teacher A), one on B (teacher B).
  const clients = async (p, who) => {
    await p.evaluate(async (who) => {
      const { ExamwatchClient } = await import('/client/examwatch.js');
      window.seen = {};
      window.c = {};
      for (const w of who) {
        const c = new ExamwatchClient({ exam: 'e1', token: w.token, restartJitterMs: 800 });
        const seen = { closes: [], states: [], answered: {}, alerts: [], causes: [], snapshots: 0 };
        c.addEventListener('connection', (e) => {
          seen.states.push(`${e.detail.state}${e.detail.code ? `:${e.detail.code} ${e.detail.reason ?? ''}` : ''}`);
          if (e.detail.code === 1012) seen.closes.push(Date.now());
        });
        c.addEventListener('status', (e) => {
          const s = e.detail.student;
          seen.causes.push(e.detail.cause);
          if (e.detail.cause === 'answered') (seen.answered[s.student_id] ??= []).push(s.answered);
        });
        c.addEventListener('snapshot', () => (seen.snapshots += 1));
        c.addEventListener('alert', (e) => seen.alerts.push(e.detail.kind));
        window.seen[w.id] = seen;
        window.c[w.id] = c;
        c.connect();
      }
    }, who);
    await p.waitForFunction((ids) => ids.every((id) => window.c[id].state === 'live'), who.map((w) => w.id), { timeout: SLOW });
  };
  const viaLb = await page(browser, `${base}/healthz`, problems);
  const onB = await page(browser, `http://${b.addr}/healthz`, problems);
  await clients(onB, [{ id: 'tB', token: teacher }]);
  await clients(viaLb, [{ id: 'tA', token: token('t2', 'teacher', 'e1', 'Mr Okafor') }, ...STUDENTS.map((id) => ({ id, token: token(id, 'student', 'e1', id.toUpperCase()) }))]);
  check(lb.went.b === 0, `everyone on A so far (${JSON.stringify(lb.went)})`);
  log(`connected: ${JSON.stringify(lb.went)} via the forwarder`);
  const answer = (n) => viaLb.evaluate(([ids, n]) => ids.forEach((id) => window.c[id].answer(`q${n}`, { choice: n })), [STUDENTS, n]);
  await answer(1);

  // Stop A while the students keep answering (before, during and after the drain).
  const stopped = stop(a);
  const t0 = Date.now();
  for (let n = 2; n <= ANSWERS; n += 1) {
    await new Promise((r) => setTimeout(r, 400));
    await answer(n);
  }
  await stopped;
  log(`A exited 0 after ${Date.now() - t0} ms`);
  const ids = ['tA', ...STUDENTS];
  const show = () => viaLb.evaluate((ids) => JSON.stringify(ids.map((id) => [id, window.c[id].state, window.c[id].pending().length, window.seen[id].states.slice(-6)])), ids);
  await viaLb.waitForFunction((ids) => ids.every((id) => window.c[id].state === 'live' && window.c[id].pending().length === 0), ids, { timeout: SLOW }).catch(async (e) => {
    throw new Error(`every client of A live on B with its outbox empty: ${e.message}; ${await show()}; ${JSON.stringify(lb.went)}; B said: ${b.logs.slice(-8).join('\n')}`);
  });
  check(lb.went.b >= ids.length, `every client of A came back through B (${JSON.stringify(lb.went)})`);
  // Both teachers have every answer of every student, as events.
  const complete = (ids) => ids.every((t) => ['s1', 's2', 's3'].every((s) => new Set(window.seen[t].answered[s] ?? []).size === 6));
  await viaLb.waitForFunction(complete, ['tA'], { timeout: 5 * SECOND * 3 });
  await onB.waitForFunction(complete, ['tB'], { timeout: 5 * SECOND * 3 });
  const seenA = await viaLb.evaluate(() => window.seen);
  const seenB = await onB.evaluate(() => window.seen);
  const seen = { ...seenA, ...seenB };
  const closes = ids.map((id) => seen[id].closes);
  check(closes.every((c) => c.length === 1), `each client of A closed once with 1012: ${JSON.stringify(closes)}`);
  check(seen.tB.closes.length === 0, "B's teacher was never closed");
  const times = closes.flat();
  const span = Math.max(...times) - Math.min(...times);
  // 4 closes at 0, 375, 750, 1125 ms: a span of 1125 ms; half of it is the tolerance.
  check(span >= (WINDOW_MS * 3) / 4 / 2, `closes spread over the window, not at one instant: ${span} ms`);
  log(`closes spread over ${span} ms (window ${WINDOW_MS} ms)`);
  for (const t of ['tA', 'tB']) {
    check(seen[t].alerts.length === 0, `${t}: no alert at all (second_session, network_incident): ${seen[t].alerts}`);
    check(!seen[t].causes.includes('disconnected') && !seen[t].causes.includes('second_session'), `${t}: nobody disconnected or a second session: ${seen[t].causes}`);
    for (const s of STUDENTS) {
      const got = [...new Set(seen[t].answered[s])].sort();
      check(got.join() === '1,2,3,4,5,6', `${t} saw every answer of ${s}: ${got}`);
    }
  }
  check(seen.tA.snapshots === 1, `A's teacher resumed on B by replay, not a new snapshot (${seen.tA.snapshots} snapshots)`);
  check(seen.tA.causes.filter((c) => c === 'reconnected').length >= STUDENTS.length, `A's teacher saw the students reconnect: ${seen.tA.causes}`);
  console.log(`RESULT ${JSON.stringify({ span_ms: span, went: lb.went, answers: ANSWERS, students: STUDENTS })}`);
});
