// What a student sees on the demo page (/demo/student), against a real
// server driven through its REST API as a teacher would:
// - before the exam exists: "not open yet", then it connects by itself;
// - the waiting room (phase `scheduled`): said in words, inputs disabled,
//   no countdown; an accommodation (10 minutes extra) shows; then the start: a countdown from the server's clock (the
//   browser's clock is set an hour ahead, so a countdown from it would
//   read 0), inputs enabled;
// - a private message sent by REST shows, and the action's delivery
//   becomes `delivered` (the library acknowledged it with `received`);
// - pause: inputs disabled, the countdown stands still; resume: no time lost;
//   extend: the countdown moves by the minutes given;
// - the "raise hand" button (by keyboard) reaches the server: the exam's
//   timeline holds the `hand` with its text; the proctor's reply shows;
// - the language switch turns the page French and back;
// - terminate: the terminated screen with the reason, no reconnect, and a
//   reload is refused without a reconnect loop; deny: the access-removed
//   screen; a short exam (duration_seconds): "time is up", inputs disabled.
// Run by tests/api/browser.rs.

import { join } from 'node:path';
import { SECOND, artifacts, check, kill9, launch, log, page, scenario, startServer, token, within } from './lib.mjs';

const HOUR = 3600 * 1000;
const text = (sel) => document.querySelector(sel)?.textContent ?? `no ${sel}`;
const pageState = () =>
  JSON.stringify({
    phase: document.querySelector('#exam-bar')?.dataset.phase,
    countdown: document.querySelector('#countdown')?.textContent,
    screen: document.querySelector('#screen')?.hidden ? null : document.querySelector('#screen')?.textContent,
    conn: document.querySelector('#conn')?.dataset.state,
    hand: document.querySelector('#hand-status')?.textContent,
  });
const inputsDisabled = () => [...document.querySelectorAll('#questions input')].every((i) => i.disabled) && document.querySelector('#submit').disabled;
const inputsEnabled = () => [...document.querySelectorAll('#questions input')].every((i) => !i.disabled);
const leftMs = () => Number(document.querySelector('#countdown')?.dataset.ms ?? NaN);

await scenario('student page', async ({ cleanup, problems }) => {
  const server = await startServer(['serve']);
  cleanup.push(() => kill9(server));
  const base = `http://${server.addr}`;
  const teacher = token('t1', 'teacher', 'e1', 'Ms Proctor');
  const teacher2 = token('t1', 'teacher', 'e2', 'Ms Proctor');
  const api = async (method, path, body, bearer = teacher) => {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: { authorization: `Bearer ${bearer}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await res.json().catch(() => null);
    return { status: res.status, json };
  };
  const action = async (body) => {
    const res = await api('POST', '/v1/exams/e1/actions', body);
    check(res.status === 200, `action ${body.kind}: ${res.status} ${JSON.stringify(res.json)}`);
    return res.json;
  };
  /** Polls the server until `fn()` is truthy; fails after `ms`. */
  const until = async (what, fn, ms) => {
    const t0 = Date.now();
    let last;
    while (Date.now() - t0 < ms) {
      last = await fn();
      if (last) {
        log(`${what}: ${Date.now() - t0} ms`);
        return last;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`${what}: not within ${ms} ms`);
  };

  const browser = await launch();
  cleanup.push(() => browser.close());
  // The browser's clock is an hour ahead of the server's: the countdown
  // must come from the server's time, never from this clock alone.
  await browser.addInitScript((skew) => {
    const real = Date.now.bind(Date);
    Date.now = () => real() + skew;
  }, HOUR);
  const sockets = new Map();
  browser.on('page', (p) => p.on('websocket', (ws) => sockets.set(p, (sockets.get(p) ?? 0) + 1)));

  // ---- the waiting room -------------------------------------------------
  const url = `${base}/demo/student#token=${token('s1', 'student', 'e1', 'Ada')}`;
  // Before the exam exists its tickets are refused (403 exam_not_open): the
  // page says it waits for the exam, and connects by itself once it opens.
  const s1 = await page(browser, url, problems);
  await within(s1, SECOND, 'the page waits for the exam to open', () => document.querySelector('#notice').textContent.includes('not open yet'), null, () => text('#notice'));
  const created = await api('POST', '/v1/exams', { id: 'e1', title: 'Student page', phase: 'scheduled', duration_minutes: 30, settings: { total_questions: 5 } });
  check(created.status === 201, `exam e1 created: ${created.status} ${JSON.stringify(created.json)}`);
  await s1.waitForSelector('#conn[data-state="live"]');
  check(await s1.isHidden('#notice'), 'the notice goes once connected');
  await within(s1, SECOND, 'the waiting room', () => document.querySelector('#exam-bar').dataset.phase === 'waiting', null, pageState);
  check((await s1.textContent('#phase')).includes('has not started'), `the waiting room in words: ${await s1.textContent('#phase')}`);
  check(await s1.isVisible('#screen[data-kind="waiting"]'), 'the waiting-room screen');
  check(await s1.evaluate(inputsDisabled), 'inputs disabled in the waiting room');
  check(!(await s1.isVisible('#countdown')), 'no countdown before the start');

  // An accommodation set in the waiting room: 10 minutes extra.
  const extra = await api('PATCH', '/v1/exams/e1/students/s1', { extra_minutes: 10 });
  check(extra.status === 200, `extra time for s1: ${extra.status} ${JSON.stringify(extra.json)}`);
  await within(s1, SECOND, 'the extra time shows', () => !document.querySelector('#extra').hidden && document.querySelector('#extra').textContent.includes('10 min'), null, () => text('#extra'));

  // ---- the start: a countdown from the server's clock --------------------
  check((await api('POST', '/v1/exams/e1/phase', { phase: 'in_progress' })).status === 200, 'started');
  await within(s1, SECOND, 'the exam starts on the page', () => document.querySelector('#exam-bar').dataset.phase === 'running', null, pageState);
  check(await s1.evaluate(inputsEnabled), 'inputs enabled once started');
  const atStart = await s1.evaluate(leftMs);
  check(atStart > 39 * 60000 && atStart <= 40 * 60000, `30 + 10 minutes left by the server's clock (the browser's is an hour ahead): ${atStart}`);
  check(/^(39|40):\d\d$/.test(await s1.textContent('#countdown')), `shown as m:ss: ${await s1.textContent('#countdown')}`);
  await within(s1, 2 * SECOND, 'the countdown ticks', (v) => Number(document.querySelector('#countdown').dataset.ms) < v - 1000, atStart, pageState);
  await s1.check('fieldset[data-question="q1"] input >> nth=0');
  await s1.waitForSelector('#pending[data-count="0"]');
  // By keyboard: Space picks the focused option.
  await s1.focus('fieldset[data-question="q2"] input >> nth=0');
  await s1.keyboard.press('Space');
  await within(s1, SECOND, 'an answer given by keyboard is saved', () => document.querySelector('fieldset[data-question="q2"] .saved').dataset.state === 'saved', null, () => text('fieldset[data-question="q2"] .saved'));

  // ---- a private message, acknowledged ----------------------------------
  await action({ id: 'm-1', kind: 'message', students: ['s1'], text: 'Question 3 counts double' });
  await within(s1, SECOND, 'the message shows', () => document.querySelector('#messages li')?.textContent.includes('Question 3 counts double'), null, () => text('#messages'));
  check((await s1.textContent('#messages li .from')) === 'Ms Proctor', `from the proctor: ${await s1.textContent('#messages li .from')}`);
  const isolated = await s1.evaluate(() => ['#messages li bdi.from', '#messages li bdi.text'].every((sel) => document.querySelector(sel)?.tagName === 'BDI'));
  check(isolated, 'the sender and the text are each in a <bdi>');
  await until('the message is delivered', async () => {
    const list = (await api('GET', '/v1/exams/e1/actions')).json;
    const m = list.actions.find((a) => a.id === 'm-1');
    return m?.students.find((s) => s.student_id === 's1')?.delivery === 'delivered';
  }, 3 * SECOND);

  // ---- paused: inputs disabled, the countdown stands still ---------------
  await action({ id: 'p-1', kind: 'pause', students: ['s1'] });
  await within(s1, SECOND, 'paused on the page', () => document.querySelector('#exam-bar').dataset.phase === 'paused', null, pageState);
  check(await s1.evaluate(inputsDisabled), 'inputs disabled while paused');
  check(await s1.isVisible('#paused'), 'the pause banner');
  check((await s1.getAttribute('#countdown', 'data-state')) === 'paused' && (await s1.textContent('#countdown')).includes('paused'), `the countdown says paused: ${await s1.textContent('#countdown')}`);
  const frozen = await s1.evaluate(leftMs);
  const frozenText = await s1.textContent('#countdown');
  // A freeze can only be seen over time: 1.5 s (the page redraws 4 times a second).
  await s1.waitForTimeout(1500);
  check((await s1.evaluate(leftMs)) === frozen && (await s1.textContent('#countdown')) === frozenText, `the countdown stood still: ${frozen} vs ${await s1.evaluate(leftMs)}`);
  await action({ id: 'r-1', kind: 'resume', students: ['s1'] });
  await within(s1, SECOND, 'resumed on the page', () => document.querySelector('#exam-bar').dataset.phase === 'running', null, pageState);
  const resumed = await s1.evaluate(leftMs);
  check(Math.abs(resumed - frozen) < 2000, `no time lost over the pause: ${frozen} then ${resumed}`);
  check(await s1.evaluate(inputsEnabled), 'inputs enabled again');

  // ---- extend: the countdown moves ---------------------------------------
  const before = await s1.evaluate(leftMs);
  const extended = await action({ id: 'x-1', kind: 'extend', students: ['s1'], minutes: 5 });
  await within(s1, SECOND, 'the extension shows', (v) => Number(document.querySelector('#countdown').dataset.ms) > v + 4 * 60000, before, pageState);
  const after = await s1.evaluate(leftMs);
  check(Math.abs(after - before - 5 * 60000) < 3000, `5 minutes more: ${before} then ${after}`);
  const deadline = Date.parse(extended.students[0].deadline);
  check((await s1.evaluate(() => window.examwatch.client.deadline)) === deadline, `the page's deadline is the server's: ${deadline}`);

  // ---- a raised hand, by keyboard, reaches the server ---------------------
  await s1.focus('#hand-text');
  await s1.keyboard.type('Is a calculator allowed?');
  await s1.keyboard.press('Tab');
  check((await s1.evaluate(() => document.activeElement?.id)) === 'raise-hand', 'Tab reaches the raise-hand button');
  await s1.keyboard.press('Enter');
  await within(s1, SECOND, 'the hand is up', () => document.querySelector('#hand-status').textContent.includes('raised'), null, pageState);
  const hand = await until('the hand is in the timeline', async () => {
    const tl = (await api('GET', '/v1/exams/e1/timeline?limit=1000')).json;
    return tl.events.find((e) => e.type === 'hand' && e.student_id === 's1');
  }, 3 * SECOND);
  check(hand.text === 'Is a calculator allowed?', `with its text: ${JSON.stringify(hand)}`);
  await action({ id: 'm-2', kind: 'message', students: ['s1'], text: 'Yes, a simple one.', reply_to: hand.hand_id });
  await within(s1, SECOND, 'the reply shows and the hand is answered', () => document.querySelector('#messages li')?.textContent.includes('Yes, a simple one.') && document.querySelector('#hand-status').textContent.includes('answered'), null, pageState);
  // Raised again, then lowered without a word: the page says so.
  await s1.fill('#hand-text', 'And a ruler?');
  await s1.click('#raise-hand');
  await within(s1, SECOND, 'the hand is up again', () => document.querySelector('#hand-status').textContent.includes('raised'), null, pageState);
  const again = await until('the second hand is in the timeline', async () => {
    const tl = (await api('GET', '/v1/exams/e1/timeline?limit=1000')).json;
    return tl.events.find((e) => e.type === 'hand' && e.student_id === 's1' && e.hand_id !== hand.hand_id);
  }, 3 * SECOND);
  await action({ id: 'low-1', kind: 'lower_hand', hand_id: again.hand_id });
  await within(s1, SECOND, 'a dismissed hand is shown lowered', () => document.querySelector('#hand-status').textContent.includes('lowered your hand'), null, pageState);

  await s1.screenshot({ path: join(artifacts(), 'student-page.png'), fullPage: true });

  // ---- the language switch ------------------------------------------------
  await s1.selectOption('#lang', 'fr');
  await within(s1, SECOND, 'French', () => document.querySelector('#phase').textContent === 'Examen en cours' && document.documentElement.lang === 'fr' && document.querySelector('#submit').textContent === 'Rendre la copie', null, pageState);
  await s1.selectOption('#lang', 'en');
  await within(s1, SECOND, 'English again', () => document.querySelector('#phase').textContent === 'Exam in progress', null, pageState);

  // ---- terminate: the terminated screen, and no reconnect ----------------
  await action({ id: 't-1', kind: 'terminate', students: ['s1'], reason: 'phone on the desk' });
  await within(s1, SECOND, 'the terminated screen', () => {
    const s = document.querySelector('#screen');
    return !s.hidden && s.dataset.kind === 'terminated' && s.querySelector('bdi')?.textContent === 'phone on the desk';
  }, null, pageState);
  await s1.waitForSelector('#conn[data-state="closed"]');
  check(await s1.evaluate(inputsDisabled), 'inputs disabled once terminated');
  const opened = sockets.get(s1);
  // The library's first reconnect would come within its 500 ms base backoff
  // (plus a ticket): 2 s without a new socket is no reconnect.
  await s1.waitForTimeout(2000);
  check(sockets.get(s1) === opened && (await s1.getAttribute('#conn', 'data-state')) === 'closed', `no reconnect after 4003: ${opened} then ${sockets.get(s1)} sockets`);
  const t1 = (await api('GET', '/v1/exams/e1/actions')).json.actions.find((a) => a.id === 't-1');
  check(t1.students[0].delivery === 'delivered', `the terminate was acknowledged: ${JSON.stringify(t1.students)}`);
  // Reloaded: the ticket is refused (403 terminated), the screen says why, and no socket is opened.
  const n = sockets.get(s1);
  await s1.reload();
  await within(s1, SECOND, 'the terminated screen after a reload', () => document.querySelector('#screen').dataset.kind === 'terminated' && document.querySelector('#conn').dataset.state === 'closed', null, pageState);
  await s1.waitForTimeout(1500);
  check(sockets.get(s1) === n, `no socket after the reload: ${sockets.get(s1)} vs ${n}`);

  // ---- deny: the access-removed screen ------------------------------------
  const s3 = await page(browser, `${base}/demo/student#token=${token('s3', 'student', 'e1', 'Grace')}`, problems);
  await within(s3, SECOND * 5, 'a second student in the exam', () => document.querySelector('#exam-bar').dataset.phase === 'running', null, pageState);
  await action({ id: 'd-1', kind: 'deny', students: ['s3'] });
  await within(s3, SECOND, 'the access-removed screen', () => document.querySelector('#screen').dataset.kind === 'revoked' && !document.querySelector('#screen').hidden && document.querySelector('#conn').dataset.state === 'closed', null, pageState);
  check(await s3.evaluate(inputsDisabled), 'inputs disabled once denied');

  // ---- a short exam: time is up --------------------------------------------
  const short = await api('POST', '/v1/exams', { id: 'e2', title: 'Short', phase: 'in_progress', duration_seconds: 4 }, teacher2);
  check(short.status === 201, `exam e2: ${short.status} ${JSON.stringify(short.json)}`);
  const s2 = await page(browser, `${base}/demo/student?exam=e2#token=${token('s2', 'student', 'e2', 'Alan')}`, problems);
  await s2.waitForSelector('#conn[data-state="live"]');
  await within(s2, SECOND, 'a short countdown', () => Number(document.querySelector('#countdown').dataset.ms) <= 4000, null, pageState);
  check(await s2.evaluate(inputsEnabled), 'open while the time runs');
  await within(s2, 6 * SECOND, 'time is up', () => {
    const s = document.querySelector('#screen');
    return !s.hidden && s.dataset.kind === 'timeup' && document.querySelector('#countdown').textContent.startsWith('0:00');
  }, null, pageState);
  check(await s2.evaluate(inputsDisabled), 'inputs disabled when the time is up');
  await within(s2, 3 * SECOND, "the server's time_up reached the page", () => window.examwatch.client.examState().over === 'time_up', null, () => JSON.stringify(window.examwatch.client.examState()));
});
