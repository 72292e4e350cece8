// The roles show (issue 15 item 6): a proctor's dashboard has no control a
// proctor may not use (no phase buttons, no announcement box; the row menu
// and the bulk bar offer only message, pause and resume), what a proctor
// may do works (pausing a student), and an action the server refuses (403,
// here an extend asked for through the page's controller, as a stale page
// or a changed role would) is reported with the server's code and message,
// in the status line and in the student's row.

import { SECOND, check, frame, kill9, launch, log, page, rawStudents, rest, row, scenario, startServer, token, within } from './lib.mjs';


await scenario('proctor', async ({ cleanup, problems }) => {
  const server = await startServer(['serve']);
  cleanup.push(() => kill9(server));
  const base = `http://${server.addr}`;
  const teacher = token('t1', 'teacher', 'e1', 'Ms Rivera');
  const created = await rest(base, teacher, 'POST', '/v1/exams', {
    id: 'e1',
    title: 'Proctored',
    phase: 'in_progress',
    closes_at: new Date(Date.now() + 30 * 60 * 1000).toISOString(),
  });
  check(created.status === 201, `exam created: ${created.status} ${created.text}`);
  const browser = await launch();
  cleanup.push(() => browser.close());
  // What the checks' diagnostics call in the page (`text(sel)`).
  await browser.addInitScript(() => {
    window.text = (sel) => document.querySelector(sel)?.textContent ?? `no ${sel}`;
  });
  const raw = await rawStudents(browser, base, 'e1', [{ id: 's1', token: token('s1', 'student', 'e1', 'Ada') }]);
  const proctor = token('p1', 'proctor', 'e1', 'Mr Proctor');
  const dash = await page(browser, `${base}/dashboard/?exam=e1#token=${proctor}`, problems);
  await dash.waitForSelector('#live[data-state="live"]');
  await within(dash, SECOND, 'the header shows the phase', () => document.querySelector('#phase-value').dataset.phase === 'in_progress', null, () => text('#exam-bar'));
  await dash.waitForSelector(`${row('s1')} .menu-btn`);

  // No control a proctor may not use.
  check((await dash.$$('#phase-buttons button')).length === 0, 'no phase button for a proctor');
  check(await dash.$eval('#announce-section', (s) => s.hidden), 'no announcement box for a proctor');
  await dash.click(`${row('s1')} .menu-btn`);
  const items = await dash.$$eval('#row-menu [role="menuitem"]', (is) => is.map((i) => i.dataset.kind).join());
  check(items === 'pause,resume,message', `a proctor's row menu: ${items}`);
  await dash.keyboard.press('Escape');
  const bulk = await dash.$$eval('#bulk-buttons button', (bs) => bs.map((b) => b.dataset.kind).join());
  check(bulk === 'message,pause,resume', `a proctor's bulk bar: ${bulk}`);
  // What the proctor sees the page can do for everyone: the report.
  check(await dash.$eval('#report', (b) => !b.hidden), 'the report is offered (proctors may read it)');

  // What a proctor may do works.
  await dash.click(`${row('s1')} .menu-btn`);
  await dash.click('#row-menu [data-kind="pause"]');
  await frame(raw, 's1', 's1 is paused', { type: 'exam_update', cause: 'pause' });
  await within(dash, SECOND, 'paused in the row', (sel) => document.querySelector(`${sel} .c-time`).dataset.state === 'paused', row('s1'), (sel) => text(sel));

  // A refused action is reported, never ignored.
  const answer = await dash.evaluate(() => window.examwatch.controls.run('extend', ['s1'], { minutes: 5 }));
  check(answer === null, 'the refused action has no answer');
  await within(dash, SECOND, 'the 403 is in the status line', () => /refused \(403 forbidden\): .*proctor/.test(document.querySelector('#control-status').textContent), null, () => text('#control-status'));
  check((await dash.$eval('#control-status', (s) => s.dataset.kind)) === 'error', 'shown as an error');
  await within(dash, SECOND, 'and in the row', (sel) => /extend: ✗ failed: not allowed for this role/.test(document.querySelector(`${sel} .c-last`).textContent), row('s1'), (sel) => text(`${sel} .c-last`));
  await within(dash, SECOND, 'and in the actions list', () => /403 forbidden/.test(document.querySelector('#actions').textContent), null, () => text('#actions'));
  // And a refused phase change, the same way.
  await dash.evaluate(() => window.examwatch.header.setPhase('paused'));
  await within(dash, SECOND, 'a refused phase change is reported', () => /refused \(403 forbidden\)/.test(document.querySelector('#phase-status').textContent), null, () => text('#phase-status'));
  log('proctor: ok');
});
