// `examwatch demo` with 30 simulated students, watched on the dashboard:
// students joining appear; a student page joining appears; its focus loss
// and its submission are on the dashboard within a second; an announcement
// from the dashboard reaches the student page within a second; an answer
// the server refuses shows as "not saved"; a second tab of the same student
// takes over and the first page disables its form; sorting and filtering
// work; every socket (pages and simulated students) was admitted with a
// single-use ticket, never a token in the URL; a screenshot is saved.

import { join } from 'node:path';
import { SECOND, artifacts, check, kill9, launch, log, page, patience, row, scenario, startServer, within } from './lib.mjs';

const rowText = (sel) => document.querySelector(sel)?.textContent ?? 'no such row';

await scenario('live dashboard', async ({ cleanup, problems }) => {
  const server = await startServer(['demo', '--students', '30', '--pace', '1s', '--waiting', '0s']);
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
  // Every socket a page opens, to check how it authenticated.
  const socketUrls = [];
  browser.on('page', (p) => p.on('websocket', (ws) => socketUrls.push(ws.url())));
  const dash = await page(browser, server.urls.dashboard, problems);
  await dash.waitForSelector('#live[data-state="live"]');
  check(server.urls.dashboard.includes('#token=') && !new URL(server.urls.dashboard).searchParams.has('token'), `the demo's link carries the token in the fragment only: ${server.urls.dashboard}`);
  check(!new URL(dash.url()).searchParams.has('token') && !new URL(dash.url()).hash.includes('token'), `the token is removed from the address bar: ${dash.url()}`);
  await dash.waitForFunction(() => document.querySelectorAll('#students .rows .row').length === 30);
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
  await within(dash, SECOND, 'the student page is on the dashboard', (sel) => document.querySelector(sel)?.textContent.includes('You (student page)'), row('visitor'), rowText);

  // Focus lost on the student page: the count changes within a second.
  await student.evaluate(() => window.dispatchEvent(new Event('blur')));
  await within(dash, SECOND, 'focus loss on the dashboard', (sel) => document.querySelector(`${sel} .c-focus`)?.textContent === '1', row('visitor'), rowText);
  await within(dash, SECOND, 'focus loss in the alerts', () => [...document.querySelectorAll('#alerts li')].some((li) => li.textContent.includes('You (student page)')), null, () => document.querySelector('#alerts').textContent);
  await student.evaluate(() => window.dispatchEvent(new Event('focus')));

  // An announcement from the dashboard reaches the student page within a second.
  await dash.fill('#announce-text', 'Ten minutes left');
  await dash.click('#announce-form button');
  await within(student, SECOND, 'announcement on the student page', () => document.querySelector('#announcements li')?.textContent.includes('Ten minutes left'), null, () => document.querySelector('#announcements').textContent);
  await within(dash, SECOND, 'announcement acked', () => document.querySelector('#announce-status').textContent === 'sent', null, () => document.querySelector('#announce-status').textContent);

  // The student answers everything and submits: "submitted" within a second.
  for (const q of ['q1', 'q2', 'q3', 'q4', 'q5']) await student.check(`fieldset[data-question="${q}"] input >> nth=0`);
  await student.waitForSelector('#pending[data-count="0"]');
  await within(dash, SECOND, 'progress 5 / 5', (sel) => document.querySelector(`${sel} .bar-text`)?.textContent === '5 / 5', row('visitor'), rowText);
  await student.click('#submit');
  await within(dash, SECOND, 'submission on the dashboard', (sel) => document.querySelector(sel)?.dataset.status === 'submitted', row('visitor'), rowText);

  // An answer after the submission is refused by the server: the page says "not saved".
  await student.check('fieldset[data-question="q1"] input >> nth=1');
  await within(student, SECOND, 'a refused answer shows as not saved', () => document.querySelector('fieldset[data-question="q1"] .saved').dataset.state === 'rejected', null, () => document.querySelector('fieldset[data-question="q1"] .saved').textContent);
  // The same student opens the exam in a second tab, which takes the session
  // over: the first page closes its form instead of queueing answers for nobody.
  const second = await page(browser, server.urls.student, problems);
  await second.waitForSelector('#conn[data-state="live"]');
  await within(student, SECOND, 'the taken-over page disables its form', () => !document.querySelector('#notice').hidden && [...document.querySelectorAll('#questions input, #submit')].every((i) => i.disabled), null, () => document.querySelector('#notice').textContent);

  // Filter and sort.
  await dash.selectOption('#filter-status', 'submitted');
  await dash.waitForFunction(() => {
    const shown = [...document.querySelectorAll('#students .rows .row:not([hidden])')];
    return shown.length >= 1 && shown.every((r) => r.dataset.status === 'submitted');
  }, null, { timeout: patience(SECOND) });
  check(!(await dash.$eval(row('visitor'), (r) => r.hidden)), 'the submitted student is shown');
  await dash.selectOption('#filter-status', '');
  await dash.fill('#filter-name', 'page)');
  await dash.waitForFunction(() => document.querySelectorAll('#students .rows .row:not([hidden])').length === 1);
  await dash.fill('#filter-name', '');
  await dash.click('[data-sort="name"]');
  await dash.waitForFunction(() => {
    const names = [...document.querySelectorAll('#students .rows .row .c-name')].map((td) => td.textContent.toLowerCase());
    return names.length === 31 && names.every((n, i) => i === 0 || names[i - 1] <= n);
  });
  log('filter by status and name, sort by name: ok');

  // The pages connected with single-use tickets, never with the token in the URL.
  check(socketUrls.length >= 3, `the dashboard and two student tabs opened sockets: ${socketUrls}`);
  const tickets = socketUrls.map((u) => new URL(u).searchParams.get('ticket'));
  check(socketUrls.every((u) => !u.includes('access_token') && !u.includes('eyJ')), `no token in a socket URL: ${socketUrls}`);
  check(tickets.every((t) => /^[0-9a-f]{64}$/.test(t ?? '')) && new Set(tickets).size === tickets.length, `a fresh ticket each time: ${tickets}`);
  const plain = server.logs.map((l) => l.replace(/\x1b\[[0-9;]*m/g, ''));
  const visitor = plain.filter((l) => l.includes('user_id=visitor') && / connected /.test(l));
  check(visitor.length >= 2 && visitor.every((l) => l.includes('via="ticket"')), `the server admitted the student page by ticket:\n${visitor.join('\n')}`);
  // So did the demo's simulated students (every connection, reconnects included).
  const connected = plain.filter((l) => / connected /.test(l));
  check(connected.length > 30 && connected.every((l) => l.includes('via="ticket"')), `every connection admitted by ticket:\n${connected.filter((l) => !l.includes('via="ticket"')).join('\n')}`);
  log('every socket used a ticket:', socketUrls.length, 'pages,', connected.length, 'connections');
});
