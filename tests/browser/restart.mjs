// The server is killed (SIGKILL) while a student page has an answer in
// flight, and restarted on the same port:
// - the dashboard shows the "not live" banner while it is down, then
//   reconnects on its own, drops the banner and shows the true state (the
//   student's socket is gone: not connected);
// - the student page keeps the in-flight answer and those given while the
//   server is down, even across closing the tab, and delivers them after
//   the restart;
// - a second student's page stays open through it all and comes back by
//   itself (backoff, then `previous_session`, `resume`, and its unacked
//   answers re-sent).
// The answer ids are printed on a RESULT line; the Rust side checks that
// each is in the database exactly once.

import { SECOND, SLOW, check, kill9, launch, log, page, patience, row, scenario, startServer, stop, token, within } from './lib.mjs';

const rowState = (sel) => { const r = document.querySelector(sel); return r ? `${r.dataset.conn} ${r.textContent}` : 'no row'; };

// A slow writer: an answer's ack waits ~1.5 s, so an answer sent right
// before the kill is certainly unacknowledged.
// Both intervals: a batch goes at the earlier of its deadlines, and the
// answer's event would otherwise take the answer along after 25 ms.
const env = { EXAMWATCH__DATABASE__FLUSH_INTERVAL: '1500ms', EXAMWATCH__DATABASE__EVENTS_FLUSH_INTERVAL: '1500ms' };

await scenario('restart', async ({ cleanup, problems }) => {
  let server = await startServer(['serve'], { env });
  cleanup.push(() => kill9(server));
  const addr = server.addr;
  const base = `http://${addr}`;
  const teacher = token('t1', 'teacher', 'e1', 'Ms Lovelace');
  const created = await fetch(`${base}/v1/exams`, {
    method: 'POST',
    headers: { authorization: `Bearer ${teacher}`, 'content-type': 'application/json' },
    body: JSON.stringify({ id: 'e1', phase: 'in_progress', title: 'Restart test', settings: { total_questions: 5 } }),
  });
  check(created.status === 201, `exam created: ${created.status}`);

  const browser = await launch();
  cleanup.push(() => browser.close());
  // Every socket a page opens, to check how it authenticated.
  const socketUrls = [];
  browser.on('page', (p) => p.on('websocket', (ws) => socketUrls.push(ws.url())));
  const dash = await page(browser, `${base}/dashboard/?token=${teacher}`, problems);
  await dash.waitForSelector('#live[data-state="live"]');
  const studentUrl = `${base}/demo/student#token=${token('s1', 'student', 'e1', 'Ada')}`;
  let student = await page(browser, studentUrl, problems);
  await student.waitForSelector('#conn[data-state="live"]');
  await within(dash, SECOND, 'the student is on the dashboard', (sel) => document.querySelector(sel)?.dataset.conn === 'connected', row('s1'), rowState);

  // The second student's page, which is never closed; every socket it opens is recorded.
  const sockets = [];
  const stayer = await browser.newPage();
  stayer.on('pageerror', (e) => problems.push(`page error on the open student page: ${e.message}`));
  stayer.on('websocket', (ws) => {
    const s = { url: ws.url(), sent: [] };
    ws.on('framesent', (f) => s.sent.push(JSON.parse(f.payload)));
    sockets.push(s);
  });
  await stayer.goto(`${base}/demo/student?token=${token('s2', 'student', 'e1', 'Grace')}`);
  await stayer.waitForSelector('#conn[data-state="live"]');

  // q1 is answered and stored, on both pages.
  await student.check('fieldset[data-question="q1"] input >> nth=0');
  await stayer.check('fieldset[data-question="q1"] input >> nth=0');
  await student.waitForSelector('#pending[data-count="0"]', { timeout: 2 * SLOW });
  await stayer.waitForSelector('#pending[data-count="0"]', { timeout: 2 * SLOW });
  await within(dash, SECOND, 'progress 1 / 5', (sel) => document.querySelector(`${sel} .bar-text`)?.textContent === '1 / 5', row('s1'), rowState);

  // q2 is sent, and the server dies before acking it.
  await student.check('fieldset[data-question="q2"] input >> nth=1');
  await stayer.check('fieldset[data-question="q2"] input >> nth=1');
  await within(student, SECOND, 'q2 waits for its ack', () => document.querySelector('#pending').dataset.count === '1', null, () => document.querySelector('#pending').textContent);
  await within(stayer, SECOND, 'q2 waits for its ack (open page)', () => document.querySelector('#pending').dataset.count === '1', null, () => document.querySelector('#pending').textContent);
  await kill9(server);
  log('server killed with q2 unacked');

  await within(dash, 2 * SECOND, 'the "not live" banner', () => {
    const b = document.querySelector('#banner');
    return !b.hidden && b.textContent.includes('Not live');
  }, null, () => document.querySelector('#banner').outerHTML);
  check(await dash.evaluate(() => document.body.classList.contains('stale')), 'table is marked stale');
  await student.waitForSelector('#conn[data-state="offline"]', { timeout: patience(2 * SECOND) });

  // More answers while the server is down, then the tab is closed.
  await student.check('fieldset[data-question="q3"] input >> nth=2');
  await student.waitForSelector('#pending[data-count="2"]', { timeout: patience(SECOND) });
  const ids = await student.evaluate(() => window.examwatch.client.pending().map((m) => m.id));
  check(ids.length === 2, `two answers wait in the outbox: ${ids}`);
  await student.close();
  log('student tab closed with', ids.length, 'unacked answers');
  await stayer.waitForSelector('#conn[data-state="offline"]', { timeout: patience(2 * SECOND) });
  await stayer.check('fieldset[data-question="q3"] input >> nth=2');
  await stayer.waitForSelector('#pending[data-count="2"]', { timeout: patience(SECOND) });
  const stayerIds = await stayer.evaluate(() => window.examwatch.client.pending().map((m) => m.id));
  const sessionBefore = await stayer.evaluate(() => window.examwatch.client.sessionId);

  server = await startServer(['serve'], { bind: addr, env });
  log('server restarted on', server.addr);
  await within(dash, 2 * SLOW, 'banner gone after the restart', () => document.querySelector('#banner').hidden, null, () => document.querySelector('#banner').outerHTML);
  check(!(await dash.evaluate(() => document.body.classList.contains('stale'))), 'table no longer stale');
  // The true state: the student's socket did not survive the restart.
  await within(dash, SECOND, 'the true state after the restart', (sel) => document.querySelector(sel)?.dataset.conn === 'offline', row('s1'), rowState);

  // The student comes back: the outbox is delivered.
  student = await page(browser, studentUrl, problems);
  await student.waitForSelector('#conn[data-state="live"]', { timeout: SLOW });
  await student.waitForSelector('#pending[data-count="0"]', { timeout: SLOW });
  await within(dash, SECOND, 'the student back on the dashboard', (sel) => document.querySelector(sel)?.dataset.conn === 'connected', row('s1'), rowState);
  await within(dash, SECOND, 'progress 3 / 5', (sel) => document.querySelector(`${sel} .bar-text`)?.textContent === '3 / 5', row('s1'), rowState);
  check(await student.evaluate(() => window.examwatch.client.pending().length === 0), 'outbox empty');
  // The page that stayed open came back by itself (its backoff may have
  // grown to 30 s while the server was down) and delivered its outbox.
  await stayer.waitForSelector('#conn[data-state="live"]', { timeout: 40 * SECOND });
  await stayer.waitForSelector('#pending[data-count="0"]', { timeout: SLOW });
  const back = sockets.at(-1);
  check(back.url.includes(`previous_session=${encodeURIComponent(sessionBefore)}`), `reconnected with previous_session: ${back.url}`);
  check(back.sent.some((m) => m.type === 'resume'), `sent resume: ${JSON.stringify(back.sent.map((m) => m.type))}`);
  const resent = back.sent.filter((m) => m.type === 'answer').map((m) => m.id);
  check(stayerIds.every((id) => resent.includes(id)), `re-sent its unacked answers: ${resent} (wanted ${stayerIds})`);
  await within(dash, SECOND, 'progress 3 / 5 for the open page', (sel) => document.querySelector(`${sel} .bar-text`)?.textContent === '3 / 5', row('s2'), rowState);
  // Each (re)connect of every page took a fresh ticket, before and after the restart.
  const tickets = socketUrls.map((u) => new URL(u).searchParams.get('ticket'));
  check(socketUrls.every((u) => !u.includes('access_token')), `no token in a socket URL: ${socketUrls}`);
  check(tickets.every((t) => /^[0-9a-f]{64}$/.test(t ?? '')) && new Set(tickets).size === tickets.length, `a fresh ticket each time: ${tickets}`);
  check(back.url.includes('ticket='), `the open page came back with a ticket: ${back.url}`);
  // A graceful stop, so that every event is in the database for the check.
  await stop(server);
  console.log(`RESULT ${JSON.stringify({ unacked: ids, stayed_open: stayerIds })}`);
});
