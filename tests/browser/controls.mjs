// The dashboard runs the exam (issue 15 items 1, 2, 8, 9), as a teacher,
// against a real server, with three students on plain sockets (so the test
// decides when each acknowledges a frame). The browser's own clock is two
// hours off: every time shown must come from the server's.
//
// Header: the phase with only its valid buttons, the waiting room listing
// who is connected, Start, the countdown to closes_at by server time and
// decreasing, a refused phase change (409) shown, End with a confirmation
// (cancelled once), report.csv downloaded. Rows: time left, extend from the
// row menu used by keyboard only (Enter, arrows, Escape gives the focus
// back) changing the time left, delivery pending until the student's
// `received`, then delivered; pause/resume shown as paused in text; a
// message reaching the student; a failed action saying why; terminate
// (reason, confirmation, cancelled once) shown as terminated; deny/allow;
// reset session. Bulk: extend, message, pause and resume on a shift-click
// range and on "select all filtered". Language: French and back.

import { readFileSync } from 'node:fs';
import { SECOND, ack, check, frame, framesOf, kill9, launch, log, page, patience, rawStudents, rest, row, scenario, startServer, token, within } from './lib.mjs';
import { connectStudent, ensureWebSocket } from './students.mjs';

ensureWebSocket();

const SKEW = 2 * 3600 * 1000;
/** "m:ss" or "h:mm:ss" to ms. */
const parse = (s) => s.split(':').map(Number).reduce((a, n) => a * 60 + n, 0) * 1000;
const timeOf = (p, id) => p.$eval(`${row(id)} .c-time`, (c) => c.textContent);
const lastOf = (sel) => {
  const c = document.querySelector(`${sel} .c-last`);
  return c ? `${c.dataset.state}: ${c.textContent}` : 'no row';
};

await scenario('exam controls', async ({ cleanup, problems }) => {
  // Under `reject`, a second session of a student is refused unless a
  // reset_session lifts it once (PROTOCOL.md 4.14): what the reset checks.
  const server = await startServer(['serve'], { env: { EXAMWATCH__EXAM__SECOND_SESSION: 'reject' } });
  cleanup.push(() => kill9(server));
  const base = `http://${server.addr}`;
  const teacher = token('t1', 'teacher', 'e1', 'Ms Rivera');
  const closesAt = Date.now() + 20 * 60 * 1000;
  const created = await rest(base, teacher, 'POST', '/v1/exams', {
    id: 'e1',
    title: 'Controls',
    phase: 'scheduled',
    opens_at: new Date(Date.now() + 10 * 60 * 1000).toISOString(),
    closes_at: new Date(closesAt).toISOString(),
    settings: { total_questions: 3 },
  });
  check(created.status === 201, `exam created: ${created.status} ${created.text}`);

  const browser = await launch();
  cleanup.push(() => browser.close());
  // What the checks' diagnostics call in the page (`text(sel)`).
  await browser.addInitScript(() => {
    window.text = (sel) => document.querySelector(sel)?.textContent ?? `no ${sel}`;
  });
  // The browser's clock is two hours ahead of the server's.
  await browser.addInitScript((skew) => {
    const real = Date.now;
    Date.now = () => real() + skew;
  }, SKEW);
  const students = [
    { id: 's1', name: 'Ada', ack: false },
    { id: 's2', name: 'Alan' },
    { id: 's3', name: 'Grace' },
  ].map((s) => ({ ...s, token: token(s.id, 'student', 'e1', s.name) }));
  const raw = await rawStudents(browser, base, 'e1', students);
  const dash = await page(browser, `${base}/dashboard/?exam=e1#token=${teacher}`, problems);
  await dash.waitForSelector('#live[data-state="live"]');

  // ---- the waiting room -------------------------------------------------
  await within(dash, SECOND, 'the phase is scheduled', () => document.querySelector('#phase-value').dataset.phase === 'scheduled', null, () => text('#exam-bar'));
  await within(dash, SECOND, 'the waiting room lists the three students', () => [...document.querySelectorAll('#waiting-list li')].map((li) => li.textContent).join(',') === 'Ada,Alan,Grace', null, () => text('#waiting-room'));
  check(!(await dash.$eval('#waiting-room', (e) => e.hidden)), 'the waiting room is shown before the start');
  const buttons = () => dash.$$eval('#phase-buttons button', (bs) => bs.map((b) => b.dataset.phase).join(','));
  check((await buttons()) === 'in_progress,ended', `scheduled offers start and end only: ${await buttons()}`);
  await within(dash, SECOND, 'the countdown to the opening', () => document.querySelector('#countdown-label').textContent === 'Opens in', null, () => text('#countdown'));

  // An accommodation for a student the room does not know yet comes as a
  // `student_control` event: the timeline says it in words.
  const accommodated = await rest(base, teacher, 'PATCH', '/v1/exams/e1/students/s9', { extra_minutes: 10 });
  check(accommodated.status === 200, `accommodation for s9: ${accommodated.status} ${accommodated.text}`);
  await within(dash, SECOND, 'the timeline tells the accommodation', () => [...document.querySelectorAll('#timeline li')].some((li) => /s9: time settings changed$/.test(li.textContent)), null, () => text('#timeline'));

  // ---- start, countdown by the server's clock ---------------------------
  await dash.click('#phase-buttons button[data-phase="in_progress"]');
  await within(dash, SECOND, 'started', () => document.querySelector('#phase-value').dataset.phase === 'in_progress', null, () => text('#exam-bar'));
  check((await buttons()) === 'paused,ended', `in progress offers pause and end: ${await buttons()}`);
  check(await dash.$eval('#waiting-room', (e) => e.hidden), 'the waiting room is gone once started');
  // The countdown agrees with the server's clock (node's, unskewed) within
  // 3 s (the HTTP Date header has 1 s resolution), though the browser's is 2 h off.
  await within(dash, 5 * SECOND, 'the countdown follows the server clock', ([closes, skew]) => {
    const s = document.querySelector('#countdown-time').textContent;
    const left = s.split(':').map(Number).reduce((a, n) => a * 60 + n, 0) * 1000;
    const truth = closes - (Date.now() - skew);
    return document.querySelector('#countdown-label').textContent === 'Closes in' && Math.abs(left - truth) < 3000;
  }, [closesAt, SKEW], () => text('#countdown'));
  const first = parse(await dash.textContent('#countdown-time'));
  check(first > 19 * 60 * 1000 && first <= 20 * 60 * 1000, `about 20 minutes left: ${first}`);
  await within(dash, 2 * SECOND, 'the countdown decreases', (f) => {
    const s = document.querySelector('#countdown-time').textContent;
    return s.split(':').map(Number).reduce((a, n) => a * 60 + n, 0) * 1000 < f;
  }, first, () => text('#countdown'));
  // Every student's own time left, from their deadline.
  await within(dash, SECOND, 'the rows show the time left', () => [...document.querySelectorAll('#students .rows .c-time')].every((c) => /^(19|20):\d\d$/.test(c.textContent)), null, () => text('#students'));

  // A refused phase change (someone else got there first) says why.
  await dash.evaluate(() => window.examwatch.header.setPhase('scheduled'));
  await within(dash, SECOND, 'a 409 is shown', () => /409 invalid_transition/.test(document.querySelector('#phase-status').textContent), null, () => text('#phase-status'));

  // Sort by name, by keyboard: Ada (s1), Alan (s2), Grace (s3).
  await dash.focus('[data-sort="name"]');
  await dash.keyboard.press('Enter');
  await within(dash, SECOND, 'sorted by name', () => [...document.querySelectorAll('#students .rows .row')].map((r) => r.dataset.student).join() === 's1,s2,s3' && document.querySelector('[data-sort="name"]').getAttribute('aria-sort') === 'ascending', null, () => text('#students'));

  // ---- the row menu by keyboard only: extend s1 by 5 minutes -------------
  const before = parse(await timeOf(dash, 's1'));
  await dash.focus(`${row('s1')} .menu-btn`);
  await dash.keyboard.press('Enter');
  await within(dash, SECOND, 'the menu opens on its first item', () => !document.querySelector('#row-menu').hidden && document.activeElement?.dataset.kind === 'extend', null, () => text('#row-menu'));
  const items = await dash.$$eval('#row-menu [role="menuitem"]', (is) => is.map((i) => i.dataset.kind).join());
  check(items === 'extend,pause,resume,message,terminate,deny,allow,reset_session', `a teacher's menu: ${items}`);
  await dash.keyboard.press('ArrowDown');
  check((await dash.evaluate(() => document.activeElement?.dataset.kind)) === 'pause', 'ArrowDown moves to the next item');
  await dash.keyboard.press('Escape');
  check(await dash.evaluate((sel) => document.querySelector('#row-menu').hidden && document.activeElement === document.querySelector(`${sel} .menu-btn`), row('s1')), 'Escape closes the menu and the focus is back on its button');
  await dash.keyboard.press('Space');
  await within(dash, SECOND, 'Space opens it too', () => !document.querySelector('#row-menu').hidden, null, () => text('#row-menu'));
  await dash.keyboard.press('Enter');
  await within(dash, SECOND, 'the extend dialog, focus on the minutes', () => document.querySelector('#dialog').open && document.activeElement?.name === 'minutes', null, () => text('#dialog'));
  await dash.keyboard.press('Control+A');
  await dash.keyboard.type('5');
  await dash.keyboard.press('Enter');
  await within(dash, SECOND, 's1 shows the extension pending (no received yet)', (sel) => /extend/.test(document.querySelector(`${sel} .c-last`).textContent) && document.querySelector(`${sel} .c-last`).dataset.state === 'pending', row('s1'), lastOf);
  check(await dash.evaluate((sel) => document.activeElement === document.querySelector(`${sel} .menu-btn`), row('s1')), 'after the dialog the focus is back on the row button');
  await within(dash, SECOND, 'extend changes the time left by 5 minutes', ([sel, b]) => {
    const s = document.querySelector(`${sel} .c-time`).textContent;
    const left = s.split(':').map(Number).reduce((a, n) => a * 60 + n, 0) * 1000;
    return left > b + 4.5 * 60000 && left < b + 5.5 * 60000;
  }, [row('s1'), before], (sel) => text(`${sel} .c-time`));
  check(/\+5 min/.test(await dash.textContent(`${row('s1')} .c-extra`)), `extra time shows +5 min: ${await dash.textContent(`${row('s1')} .c-extra`)}`);
  const update = await frame(raw, 's1', 's1 got its new deadline', { type: 'exam_update', cause: 'extend' });
  await ack(raw, 's1', update.id);
  await within(dash, SECOND, 'delivery goes pending → delivered', (sel) => document.querySelector(`${sel} .c-last`).dataset.state === 'delivered' && /delivered/.test(document.querySelector(`${sel} .c-last`).textContent), row('s1'), lastOf);
  await raw.evaluate(() => { window.autoAck.s1 = true; });

  // ---- pause / resume, message, a failure -------------------------------
  const menu = async (id, kind) => {
    await dash.click(`${row(id)} .menu-btn`);
    await dash.click(`#row-menu [data-kind="${kind}"]`);
  };
  await menu('s2', 'pause');
  await within(dash, SECOND, 's2 shows paused in text', (sel) => document.querySelector(`${sel} .c-time`).dataset.state === 'paused' && /paused/.test(document.querySelector(`${sel} .c-time`).textContent), row('s2'), (sel) => text(`${sel} .c-time`));
  const pausedAt = await timeOf(dash, 's2');
  await menu('s2', 'pause');
  await within(dash, SECOND, 'a failed action says why', (sel) => /failed: already paused/.test(document.querySelector(`${sel} .c-last`).textContent), row('s2'), lastOf);
  check((await timeOf(dash, 's2')) === pausedAt, `a paused student's time stands still: ${pausedAt} then ${await timeOf(dash, 's2')}`);
  await menu('s2', 'resume');
  await within(dash, SECOND, 's2 runs again', (sel) => document.querySelector(`${sel} .c-time`).dataset.state === 'running', row('s2'), (sel) => text(`${sel} .c-time`));
  await menu('s2', 'message');
  await dash.fill('#dialog textarea', 'Question 3 counts double');
  await dash.click('#dialog button.confirm');
  await frame(raw, 's2', 'the message reached s2', { type: 'message', text: 'Question 3 counts double' });
  await within(dash, SECOND, 'the message is delivered', (sel) => /message: ✓ delivered/.test(document.querySelector(`${sel} .c-last`).textContent), row('s2'), lastOf);

  // ---- bulk on a shift-click range --------------------------------------
  await dash.click(`${row('s1')} .c-select input`);
  await dash.click(`${row('s3')} .c-select input`, { modifiers: ['Shift'] });
  check((await dash.textContent('#bulk-count')) === '3 selected', `shift-click selects the range: ${await dash.textContent('#bulk-count')}`);
  const s3before = parse(await timeOf(dash, 's3'));
  await dash.click('#bulk-buttons [data-kind="extend"]');
  await dash.fill('#dialog input[name="minutes"]', '2');
  await dash.click('#dialog button.confirm');
  await within(dash, SECOND, 'bulk extend: s3 has 2 more minutes', ([sel, b]) => {
    const s = document.querySelector(`${sel} .c-time`).textContent;
    const left = s.split(':').map(Number).reduce((a, n) => a * 60 + n, 0) * 1000;
    return left > b + 1.5 * 60000 && /\+2 min/.test(document.querySelector(`${sel} .c-extra`).textContent);
  }, [row('s3'), s3before], (sel) => text(sel));
  await within(dash, SECOND, 'bulk extend: every row delivered', () => ['s1', 's2', 's3'].every((id) => /extend: ✓ delivered/.test(document.querySelector(`#students .row[data-student="${id}"] .c-last`).textContent)), null, () => text('#students'));
  check(/\+7 min/.test(await dash.textContent(`${row('s1')} .c-extra`)), `s1 now has 7 minutes more: ${await dash.textContent(`${row('s1')} .c-extra`)}`);
  await dash.click('#bulk-buttons [data-kind="pause"]');
  await within(dash, SECOND, 'bulk pause', () => [...document.querySelectorAll('#students .rows .c-time')].every((c) => c.dataset.state === 'paused'), null, () => text('#students'));
  await dash.click('#bulk-buttons [data-kind="resume"]');
  await within(dash, SECOND, 'bulk resume', () => [...document.querySelectorAll('#students .rows .c-time')].every((c) => c.dataset.state === 'running'), null, () => text('#students'));
  await dash.click('#bulk-buttons [data-kind="message"]');
  await dash.fill('#dialog textarea', 'Five minutes of break');
  await dash.click('#dialog button.confirm');
  for (const s of ['s1', 's2', 's3']) await frame(raw, s, `the bulk message reached ${s}`, { type: 'message', text: 'Five minutes of break' });

  // ---- "select all filtered": only Alan ---------------------------------
  await dash.click('#select-none');
  check((await dash.textContent('#bulk-count')) === '0 selected', 'the selection is cleared');
  await dash.fill('#filter-name', 'Al');
  await within(dash, SECOND, 'filtered to Alan', () => document.querySelectorAll('#students .rows .row:not([hidden])').length === 1, null, () => text('#shown'));
  await dash.click('#select-filtered');
  check((await dash.textContent('#bulk-count')) === '1 selected', `select all filtered: ${await dash.textContent('#bulk-count')}`);
  await dash.click('#bulk-buttons [data-kind="message"]');
  await dash.fill('#dialog textarea', 'Only for Alan');
  await dash.click('#dialog button.confirm');
  await frame(raw, 's2', 'the filtered bulk message reached s2', { type: 'message', text: 'Only for Alan' });
  await within(dash, SECOND, 'its delivery is shown', (sel) => /message: ✓ delivered/.test(document.querySelector(`${sel} .c-last`).textContent), row('s2'), lastOf);
  check(!(await framesOf(raw, 's1')).some((m) => m.text === 'Only for Alan'), 'the students filtered out got nothing');
  await dash.fill('#filter-name', '');
  await dash.click('#select-none');

  // ---- terminate (reason, confirmation), deny/allow, reset ----------------
  await menu('s3', 'terminate');
  await dash.fill('#dialog input[name="reason"]', 'phone on the desk');
  await dash.click('#dialog button.cancel');
  check(!(await dash.$eval('#dialog', (d) => d.open)), 'cancel closes the dialog');
  await menu('s3', 'terminate');
  check(/Grace/.test(await dash.textContent('#dialog h2')), 'the confirmation names the student');
  await dash.fill('#dialog input[name="reason"]', 'phone on the desk');
  await dash.click('#dialog button.confirm');
  const ended = await frame(raw, 's3', 's3 was terminated', { type: 'terminated' });
  check(ended.reason === 'phone on the desk', `with the reason: ${JSON.stringify(ended)}`);
  check((await framesOf(raw, 's3')).filter((m) => m.type === 'terminated').length === 1, 'the cancelled terminate sent nothing');
  await within(dash, SECOND, 's3 shows terminated', (sel) => /terminated/.test(document.querySelector(`${sel} .c-status`).textContent) && document.querySelector(`${sel} .c-time`).textContent === 'terminated', row('s3'), (sel) => text(sel));

  await menu('s2', 'deny');
  await dash.click('#dialog button.confirm');
  await frame(raw, 's2', 's2 lost access', { type: 'session_invalidated', reason: 'access_revoked' });
  await within(dash, SECOND, 's2 shows access denied', (sel) => document.querySelector(sel).dataset.access === 'denied' && /access denied/.test(document.querySelector(`${sel} .c-status`).textContent), row('s2'), (sel) => text(sel));
  await menu('s2', 'allow');
  await within(dash, SECOND, 's2 is allowed again', (sel) => document.querySelector(sel).dataset.access === '' && /allow access/.test(document.querySelector(`${sel} .c-last`).textContent), row('s2'), (sel) => text(sel));
  const again = await rest(base, students[1].token, 'POST', '/v1/tickets', { exam_id: 'e1' });
  check(again.status === 200, `s2 may connect again after allow: ${again.status} ${again.text}`);
  // Before the reset a second session of s1 is refused (4009)…
  const wsUrl = `${base.replace(/^http/, 'ws')}/v1/exams/e1/ws?access_token=${encodeURIComponent(students[0].token)}`;
  const refused = await new Promise((resolve) => {
    const ws = new WebSocket(wsUrl, 'examwatch.v1');
    const timer = setTimeout(() => { ws.close(); resolve('still open'); }, patience(3 * SECOND));
    ws.addEventListener('close', (e) => { clearTimeout(timer); resolve(e.code); });
  });
  check(refused === 4009, `before the reset a second session of s1 is refused: ${refused}`);
  await menu('s1', 'reset_session');
  await within(dash, SECOND, 'reset session done', (sel) => /reset session: ✓ done/.test(document.querySelector(`${sel} .c-last`).textContent), row('s1'), lastOf);
  // …after it, one is admitted, and the old session is told it gave way.
  const s1again = await connectStudent(base, 'e1', students[0].token);
  cleanup.push(() => s1again.close());
  await frame(raw, 's1', 'the reset let a new session replace the old one', { type: 'session_invalidated' });

  // ---- report.csv ---------------------------------------------------------
  const [download] = await Promise.all([dash.waitForEvent('download'), dash.click('#report')]);
  const csv = readFileSync(await download.path(), 'utf8');
  check(download.suggestedFilename() === 'report-e1.csv', `the file's name: ${download.suggestedFilename()}`);
  check(csv.startsWith('student_id,name,status') && /\r\ns3,Grace,.*terminated/.test(csv), `the report: ${csv}`);

  // ---- the language switch ----------------------------------------------
  await dash.selectOption('#lang', 'fr');
  await within(dash, SECOND, 'French', () => document.documentElement.lang === 'fr' && document.querySelector('#phase-value').textContent === 'en cours' && document.querySelector('.phase').textContent === 'Phase : en cours' && document.querySelector('[data-i18n="dash.col.time"]').textContent === 'Temps restant', null, () => text('#exam-bar'));
  await within(dash, SECOND, 'the rows in French', (sel) => document.querySelector(`${sel} .c-time`).textContent === 'arrêté' && /arrêt/.test(document.querySelector(`${sel} .c-last`).textContent), row('s3'), (sel) => text(sel));
  await dash.selectOption('#lang', 'en');
  await within(dash, SECOND, 'English again', (sel) => document.documentElement.lang === 'en' && document.querySelector('#phase-value').textContent === 'in progress' && document.querySelector(`${sel} .c-time`).textContent === 'terminated', row('s3'), () => text('#exam-bar'));

  // ---- the whole exam paused: no time lost ------------------------------
  // By keyboard: the buttons are rebuilt for the new phase, and the focus
  // lands on the new first one (Resume), not on <body>.
  await dash.focus('#phase-buttons button[data-phase="paused"]');
  await dash.keyboard.press('Enter');
  await within(dash, SECOND, 'the exam is paused', () => document.querySelector('#phase-value').dataset.phase === 'paused' && document.querySelector('#countdown-label').textContent === 'Paused — closes in', null, () => text('#exam-bar'));
  await within(dash, SECOND, 'every running row shows paused', (sel) => document.querySelector(`${sel} .c-time`).dataset.state === 'paused', row('s1'), (sel) => text(`${sel} .c-time`));
  await within(dash, SECOND, 'the focus is on Resume after the phase change', () => document.activeElement?.matches('#phase-buttons button[data-phase="in_progress"]'), null, () => document.activeElement?.outerHTML ?? 'none');
  const heldExam = parse(await dash.textContent('#countdown-time'));
  const heldRow = parse((await timeOf(dash, 's1')).replace(/^\D+/, '').replace(/ .*$/, ''));
  // The pause lasts three seconds of the server's time; none of it is lost.
  await new Promise((r) => setTimeout(r, 3000));
  await dash.click('#phase-buttons button[data-phase="in_progress"]');
  await within(dash, SECOND, 'resumed', (sel) => document.querySelector('#phase-value').dataset.phase === 'in_progress' && document.querySelector(`${sel} .c-time`).dataset.state === 'running', row('s1'), () => text('#exam-bar'));
  const afterExam = parse(await dash.textContent('#countdown-time'));
  const afterRow = parse(await timeOf(dash, 's1'));
  check(afterExam >= heldExam - 1500, `the exam's countdown stood still while paused: ${heldExam} then ${afterExam}`);
  check(afterRow >= heldRow - 1500, `s1's time left stood still while the exam was paused: ${heldRow} then ${afterRow}`);

  // ---- a dashboard opened now, its token pasted --------------------------
  // Without `#token=`: the token goes into the paste field. Its rights are
  // the pasted teacher's (phase buttons, the whole row menu), and its
  // countdown counts the pause above from the snapshot's clock.
  // This page has no crypto.randomUUID, as on a plain-http LAN address
  // (not a secure context): its actions still get their ids.
  await browser.addInitScript(() => {
    Object.defineProperty(Crypto.prototype, 'randomUUID', { value: undefined, configurable: true });
    // And its browser prefers British English: times on a 24 h clock.
    Object.defineProperty(Navigator.prototype, 'languages', { get: () => ['en-GB', 'en'], configurable: true });
  });
  const pasted = await page(browser, `${base}/dashboard/?exam=e1`, problems);
  await pasted.waitForSelector('#token-input', { state: 'visible' });
  check((await pasted.$$('#phase-buttons button')).length === 0, 'no phase button before a token');
  const asked = [];
  pasted.on('request', (r) => asked.push(`${r.method()} ${new URL(r.url()).pathname}`));
  await pasted.fill('#token-input', teacher);
  await pasted.press('#token-input', 'Enter');
  await pasted.waitForSelector('#live[data-state="live"]');
  await within(pasted, SECOND, 'the pasted teacher token gets the phase buttons', () => [...document.querySelectorAll('#phase-buttons button')].map((b) => b.dataset.phase).join() === 'paused,ended', null, () => text('#exam-bar'));
  check(!(await pasted.$eval('#announce-section', (e) => e.hidden)), 'and the announcement box');
  // One alerts load per snapshot (the panel's, the badges count from it),
  // and no GET of the exam for its times (the snapshot's clock has them).
  await within(pasted, SECOND, 'the alerts are loaded', () => !document.querySelector('#alerts-panel .panel-status')?.textContent.includes('…'), null, () => text('#alerts-panel'));
  check(asked.filter((r) => r === 'GET /v1/exams/e1/alerts').length === 1 && !asked.includes('GET /v1/exams/e1'), `one alerts load, no exam GET: ${asked.join(', ')}`);
  await within(pasted, SECOND, 'its rows are there', (sel) => document.querySelector(`${sel} .menu-btn`) !== null, row('s1'), () => text('#students'));
  await pasted.click(`${row('s1')} .menu-btn`);
  const pastedItems = await pasted.$$eval('#row-menu [role="menuitem"]', (is) => is.map((i) => i.dataset.kind).join());
  check(pastedItems === 'extend,pause,resume,message,terminate,deny,allow,reset_session', `the pasted teacher's row menu: ${pastedItems}`);
  await pasted.keyboard.press('Escape');
  check((await pasted.evaluate(() => typeof crypto.randomUUID)) === 'undefined', 'the pasted page has no randomUUID');
  await pasted.evaluate(() => window.examwatch.controls.run('message', ['s1'], { text: 'Sent without randomUUID' }));
  await s1again.next((f) => f.type === 'message' && f.text === 'Sent without randomUUID', 'an action sent without randomUUID reached s1');
  await within(pasted, SECOND, 'and says done', () => /^message: done for 1 student/.test(document.querySelector('#control-status').textContent), null, () => text('#control-status'));
  // A fault in the page while sending is said in the status line.
  await pasted.evaluate(() => window.examwatch.controls.run('message', ['s1'], { get text() { throw new Error('boom'); } }));
  await within(pasted, SECOND, 'a thrown error is shown', () => /message not sent — the page failed: boom/.test(document.querySelector('#control-status').textContent) && document.querySelector('#control-status').dataset.kind === 'error', null, () => text('#control-status'));
  const pastedBulk = await pasted.$$eval('#bulk-buttons button', (bs) => bs.map((b) => b.dataset.kind).join());
  check(pastedBulk === 'extend,message,pause,resume', `and the bulk bar: ${pastedBulk}`);
  // Its countdown agrees with the first dashboard's (read here, then aged
  // by the real time since) within 1.5 s; one counting to the raw
  // closes_at would be the 3 s pause short.
  const mine = parse(await dash.textContent('#countdown-time'));
  await within(pasted, 2 * SECOND, 'a dashboard opened after the pause counts it', ([m, at, skew]) => {
    const s = document.querySelector('#countdown-time').textContent;
    const left = s.split(':').map(Number).reduce((a, n) => a * 60 + n, 0) * 1000;
    return Math.abs(left - (m - (Date.now() - skew - at))) < 1500;
  }, [mine, Date.now(), SKEW], () => `${text('#countdown')} ${JSON.stringify(window.examwatch.header.pauses)}`);
  const teaTime = Date.UTC(2026, 0, 1, 15, 0, 0);
  const shown = async (p) => p.evaluate((at) => import('/i18n/i18n.js').then((m) => m.formatTime(at)), teaTime);
  check(/PM/.test(await shown(dash)) && !/PM/i.test(await shown(pasted)), `times follow the browser's locale (en-US, en-GB): ${await shown(dash)}, ${await shown(pasted)}`);
  await pasted.close();

  // ---- end, with a confirmation -----------------------------------------
  await dash.click('#phase-buttons button[data-phase="ended"]');
  await dash.click('#dialog button.cancel');
  check((await dash.$eval('#phase-value', (v) => v.dataset.phase)) === 'in_progress', 'cancelling the end changes nothing');
  await dash.click('#phase-buttons button[data-phase="ended"]');
  check(/End the exam/.test(await dash.textContent('#dialog h2')), 'ending asks first');
  await dash.click('#dialog button.confirm');
  await within(dash, SECOND, 'ended', () => document.querySelector('#phase-value').dataset.phase === 'ended' && document.querySelector('#countdown-label').textContent === 'The exam has ended', null, () => text('#exam-bar'));
  check((await buttons()) === '', `no phase button after the end: ${await buttons()}`);
  await within(dash, SECOND, 'everyone is finished', () => [...document.querySelectorAll('#students .rows .c-time')].every((c) => c.dataset.state === 'ended'), null, () => text('#students'));
  log('controls: ok');
});
