// A dashboard opened mid-exam shows the alerts and the timeline so far, not
// only what happens after it opened: it loads the REST timeline up to its
// snapshot's seq and merges the live events by seq. The timeline's answer
// is held back until a live event has arrived on the socket, so the merge
// is tested where it can go wrong: each seq is listed exactly once, in
// order, with no gap, and the student's repeated alert is one line (×3).

import { SECOND, check, kill9, launch, log, page, row, scenario, startServer, token, within } from './lib.mjs';

const seqs = () => [...document.querySelectorAll('#timeline li .seq')].map((s) => Number(s.textContent.slice(1)));

await scenario('history', async ({ cleanup, problems }) => {
  // Repeats fold for 1 s (not the default 10 s): the second alert is
  // stored well within the wait below, even on a loaded machine.
  const server = await startServer(['serve'], { env: { EXAMWATCH__EXAM__ALERT_WINDOW: '1s' } });
  cleanup.push(() => kill9(server));
  const base = `http://${server.addr}`;
  const teacher = token('t1', 'teacher', 'e1', 'Ms Lovelace');
  const created = await fetch(`${base}/v1/exams`, {
    method: 'POST',
    headers: { authorization: `Bearer ${teacher}`, 'content-type': 'application/json' },
    body: JSON.stringify({ id: 'e1', phase: 'in_progress', title: 'History test', settings: { total_questions: 3 } }),
  });
  check(created.status === 201, `exam created: ${created.status}`);
  const timeline = async () => {
    const res = await fetch(`${base}/v1/exams/e1/timeline?limit=1000`, { headers: { authorization: `Bearer ${teacher}` } });
    return (await res.json()).events;
  };

  // Before any dashboard: the student joins and loses focus twice.
  const browser = await launch();
  cleanup.push(() => browser.close());
  const student = await page(browser, `${base}/demo/student#token=${token('s1', 'student', 'e1', 'Ada')}`, problems);
  await student.waitForSelector('#conn[data-state="live"]');
  for (let i = 0; i < 2; i++) {
    await student.evaluate(() => window.dispatchEvent(new Event('blur')));
    await student.evaluate(() => window.dispatchEvent(new Event('focus')));
  }
  // Stored (the writer commits just after delivery): wait for both alerts.
  const deadline = Date.now() + 10 * SECOND;
  let before = [];
  while ((before = await timeline()).filter((e) => e.type === 'alert').length < 2) {
    check(Date.now() < deadline, `two alerts stored: ${JSON.stringify(before)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  log(`${before.length} events before the dashboard opened`);

  // The dashboard opens; its timeline request waits until a live event
  // (the third focus loss) has reached its table.
  let release;
  const held = new Promise((r) => (release = r));
  let asked;
  const askedFor = new Promise((r) => (asked = r));
  await browser.route('**/v1/exams/e1/timeline*', async (route) => {
    asked();
    await held;
    await route.continue();
  });
  const dash = await page(browser, `${base}/dashboard/?exam=e1#token=${teacher}`, problems);
  await dash.waitForSelector('#live[data-state="live"]');
  let timer;
  const notAsked = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('the dashboard never asked the REST API for the timeline')), 5 * SECOND)));
  await Promise.race([askedFor, notAsked]);
  clearTimeout(timer);
  await student.evaluate(() => window.dispatchEvent(new Event('blur')));
  await within(dash, SECOND, 'the live focus loss is in the table', (sel) => document.querySelector(`${sel} .c-focus`)?.textContent === '3', row('s1'), (sel) => document.querySelector(sel)?.textContent);
  release();

  // Every stored event is listed once, newest first, and nothing else.
  let all = [];
  const until = Date.now() + 10 * SECOND;
  while ((all = await timeline()).filter((e) => e.type === 'alert').length < 3) {
    check(Date.now() < until, `the third alert stored: ${JSON.stringify(all)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const expected = all.map((e) => e.seq).reverse();
  await within(dash, SECOND, 'every event in the timeline', (n) => document.querySelectorAll('#timeline li').length >= n, expected.length, () => document.querySelector('#timeline').textContent);
  const shown = await dash.evaluate(seqs);
  check(JSON.stringify(shown) === JSON.stringify(expected), `the timeline lists each seq once, newest first: ${JSON.stringify(shown)}, expected ${JSON.stringify(expected)}`);
  const alerts = await dash.$$eval('#alerts li', (lis) => lis.map((li) => li.textContent));
  check(alerts.length === 1 && alerts[0].includes('Ada') && alerts[0].includes('focus lost') && alerts[0].includes('×3'), `one folded alert line, ×3: ${JSON.stringify(alerts)}`);
  log('timeline', JSON.stringify(shown), 'alerts', JSON.stringify(alerts));
});
