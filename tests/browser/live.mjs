// `examwatch demo` with 30 simulated students, watched on the dashboard:
// students joining appear; a student page joining appears; its focus loss
// and its submission are on the dashboard within a second; an announcement
// from the dashboard reaches the student page within a second; sorting and
// filtering work; a screenshot of the dashboard is saved.

import { join } from 'node:path';
import { SECOND, artifacts, check, kill9, launch, log, page, row, scenario, startServer } from './lib.mjs';

await scenario('live dashboard', async ({ cleanup, problems }) => {
  const server = await startServer(['demo', '--students', '30', '--pace', '1s']);
  cleanup.push(() => kill9(server));
  log('demo running at', server.addr);

  // Static files: right types, CSP, caching.
  const base = `http://${server.addr}`;
  const lib = await fetch(`${base}/client/examwatch.js`);
  check(lib.headers.get('content-type').startsWith('text/javascript'), 'library is served as JavaScript');
  check(lib.headers.get('cache-control') === 'no-cache' && lib.headers.get('etag'), 'library revalidates by ETag');
  const again = await fetch(`${base}/client/examwatch.js`, { headers: { 'if-none-match': lib.headers.get('etag') } });
  check(again.status === 304, `unchanged library is a 304, got ${again.status}`);
  const html = await fetch(`${base}/dashboard/`);
  check(/script-src 'self'/.test(html.headers.get('content-security-policy') ?? ''), 'dashboard has a CSP');
  check((await fetch(`${base}/dashboard/nope.js`)).status === 404, 'unknown file is a 404');

  const browser = await launch();
  cleanup.push(() => browser.close());
  const dash = await page(browser, server.urls.dashboard, problems);
  await dash.waitForSelector('#live[data-state="live"]');
  check(!new URL(dash.url()).searchParams.has('token'), 'the token is removed from the address bar');
  await dash.waitForFunction(() => document.querySelectorAll('#students tbody tr').length === 30);
  log('30 simulated students on the dashboard');
  check((await dash.textContent('#count-active')) !== '', 'counts are shown');

  // The README screenshot: wait until the class looks like a real one.
  await dash.waitForFunction(() => {
    const n = (k) => Number(document.querySelector(`#count-${k}`).textContent);
    return document.querySelectorAll('#alerts li').length >= 3 && n('idle') + n('disconnected') >= 2;
  }, null, { timeout: 60000 });
  const shot = join(artifacts(), 'dashboard-30.png');
  await dash.screenshot({ path: shot, fullPage: true });
  log('screenshot saved to', shot);

  // A student page joins: on the dashboard within a second of being online.
  const student = await page(browser, server.urls.student, problems);
  await student.waitForSelector('#conn[data-state="live"]');
  await dash.waitForSelector(row('visitor'), { timeout: SECOND });
  check((await dash.textContent(`${row('visitor')} .c-name`)) === 'You (student page)', 'name shown');
  log('student page joined and is on the dashboard');

  // Focus lost on the student page: the count changes within a second.
  await student.evaluate(() => window.dispatchEvent(new Event('blur')));
  await dash.waitForFunction((sel) => document.querySelector(`${sel} .c-focus`)?.textContent === '1', row('visitor'), { timeout: SECOND });
  await dash.waitForFunction(() => [...document.querySelectorAll('#alerts li')].some((li) => li.textContent.includes('You (student page)')), null, { timeout: SECOND });
  await student.evaluate(() => window.dispatchEvent(new Event('focus')));
  log('focus loss shown within a second, with its alert');

  // An announcement from the dashboard reaches the student page within a second.
  await dash.fill('#announce-text', 'Ten minutes left');
  await dash.click('#announce-form button');
  await student.waitForFunction(() => document.querySelector('#announcements li')?.textContent.includes('Ten minutes left'), null, { timeout: SECOND });
  await dash.waitForFunction(() => document.querySelector('#announce-status').textContent === 'sent', null, { timeout: SECOND });
  log('announcement reached the student page within a second');

  // The student answers everything and submits: "submitted" within a second.
  for (const q of ['q1', 'q2', 'q3', 'q4', 'q5']) await student.check(`fieldset[data-question="${q}"] input >> nth=0`);
  await student.waitForSelector('#pending[data-count="0"]');
  await dash.waitForFunction((sel) => document.querySelector(`${sel} .bar-text`)?.textContent === '5 / 5', row('visitor'), { timeout: SECOND });
  await student.click('#submit');
  await dash.waitForSelector(`${row('visitor')}[data-status="submitted"]`, { timeout: SECOND });
  log('submission shown within a second');

  // Filter and sort.
  await dash.selectOption('#filter-status', 'submitted');
  await dash.waitForFunction(() => {
    const shown = [...document.querySelectorAll('#students tbody tr:not([hidden])')];
    return shown.length >= 1 && shown.every((r) => r.dataset.status === 'submitted');
  }, null, { timeout: SECOND });
  check(!(await dash.$eval(row('visitor'), (r) => r.hidden)), 'the submitted student is shown');
  await dash.selectOption('#filter-status', '');
  await dash.fill('#filter-name', 'page)');
  await dash.waitForFunction(() => document.querySelectorAll('#students tbody tr:not([hidden])').length === 1);
  await dash.fill('#filter-name', '');
  await dash.click('th[data-sort="name"]');
  await dash.waitForFunction(() => {
    const names = [...document.querySelectorAll('#students tbody tr .c-name')].map((td) => td.textContent.toLowerCase());
    return names.length === 31 && names.every((n, i) => i === 0 || names[i - 1] <= n);
  });
  log('filter by status and name, sort by name: ok');
});
