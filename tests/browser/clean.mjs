// A page load is clean: no console error of any kind (not even "Failed to
// load resource", which lib.mjs's page() lets through), no answer >= 400, no
// failed request; the icon is served (/favicon.ico and the page's own
// <link rel="icon">). And the user's strings are isolated: a student, a
// teacher and an announcement with U+202E (RIGHT-TO-LEFT OVERRIDE) in them
// sit in <bdi> elements (or elements with `unicode-bidi: isolate`), so they
// cannot reorder the text around them. And they are text, never markup: a
// student whose name, current question and raised-hand text are HTML (the
// question and the hand's text are the student's own choice) shows that
// HTML as text on the dashboard, and none of it becomes an element.

import { SECOND, check, kill9, launch, log, rawStudents, row, scenario, send, startServer, token, within } from './lib.mjs';

const RLO = '\u202E';
/** Markup that, parsed as HTML, would add an element and fetch an image (a 404 the strict page reports). */
const MARKUP = '<xss-probe>x</xss-probe><img src="/xss-probe.png">';

/** Every error the page shows, unfiltered. */
async function strictPage(browser, url, problems) {
  const p = await browser.newPage();
  p.on('console', (m) => m.type() === 'error' && problems.push(`console error on ${url}: ${m.text()} (${m.location().url})`));
  p.on('pageerror', (e) => problems.push(`page error on ${url}: ${e.message}`));
  p.on('response', (r) => r.status() >= 400 && problems.push(`${r.status()} for ${r.url()} on ${url}`));
  p.on('requestfailed', (r) => problems.push(`request failed on ${url}: ${r.url()} ${r.failure()?.errorText}`));
  await p.goto(url);
  return p;
}

await scenario('clean page', async ({ cleanup, problems }) => {
  const server = await startServer(['serve']);
  cleanup.push(() => kill9(server));
  const base = `http://${server.addr}`;
  const teacher = token('t1', 'teacher', 'e1', `${RLO}Lovelace`);
  const created = await fetch(`${base}/v1/exams`, {
    method: 'POST',
    headers: { authorization: `Bearer ${teacher}`, 'content-type': 'application/json' },
    body: JSON.stringify({ id: 'e1', phase: 'in_progress', title: `${RLO}Clean test`, settings: { total_questions: 3 } }),
  });
  check(created.status === 201, `exam created: ${created.status}`);

  for (const path of ['/favicon.ico', '/dashboard/icon.svg']) {
    const icon = await fetch(`${base}${path}`);
    check(icon.status === 200 && icon.headers.get('content-type') === 'image/svg+xml', `${path}: ${icon.status} ${icon.headers.get('content-type')}`);
  }

  const browser = await launch();
  cleanup.push(() => browser.close());
  const dash = await strictPage(browser, `${base}/dashboard/?exam=e1#token=${teacher}`, problems);
  await dash.waitForSelector('#live[data-state="live"]');
  const href = await dash.$eval('link[rel="icon"]', (l) => l.href);
  check((await fetch(href)).status === 200, `the page's icon ${href} is served`);

  const student = await strictPage(browser, `${base}/demo/student#token=${token('s1', 'student', 'e1', `${RLO}evil`)}`, problems);
  await student.waitForSelector('#conn[data-state="live"]');
  await within(dash, SECOND, 'the student is on the dashboard', (sel) => document.querySelector(sel)?.dataset.conn === 'connected', row('s1'), (sel) => document.querySelector(sel)?.textContent);
  await student.evaluate(() => window.dispatchEvent(new Event('blur')));
  await within(dash, SECOND, 'the alert is listed', () => document.querySelectorAll('#alerts li').length === 1, null, () => document.querySelector('#alerts').textContent);
  await dash.fill('#announce-text', `${RLO}Ten minutes left`);
  await dash.click('#announce-form button');
  await within(dash, SECOND, 'the announcement is in the timeline', () => document.querySelector('#timeline li.ev-announcement') !== null, null, () => document.querySelector('#timeline').textContent);

  // Each user-supplied string is the whole text of an isolated element.
  const unisolated = await dash.evaluate((rlo) => {
    const isolated = (e) => e.tagName === 'BDI' || getComputedStyle(e).unicodeBidi === 'isolate';
    const bad = [];
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      if (!n.data.includes(rlo)) continue;
      const holder = n.parentElement;
      // An <option> cannot hold a <bdi>: FSI … PDI around the string instead.
      if (holder.tagName === 'OPTION') {
        if (!n.data.includes(`\u2068${rlo}`)) bad.push(`OPTION: ${JSON.stringify(n.data)}`);
        continue;
      }
      // Alone in an isolated element: nothing else shares its bidi run.
      if (!isolated(holder) || holder.textContent !== n.data) bad.push(`${holder.tagName}.${holder.className}: ${JSON.stringify(holder.textContent)}`);
    }
    return { bad, seen: [...document.body.innerText].filter((c) => c === rlo).length };
  }, RLO);
  check(unisolated.bad.length === 0, `every string with U+202E is isolated: ${JSON.stringify(unisolated.bad)}`);
  // The name cell, the alert, the timeline's join and announcement lines, the teacher's name.
  check(unisolated.seen >= 5, `the strings with U+202E are on the page: ${unisolated.seen}`);
  const cell = await dash.$eval(`${row('s1')} .c-name bdi`, (b) => b.textContent);
  check(cell === `${RLO}evil`, `the name cell holds the name in a <bdi>: ${JSON.stringify(cell)}`);
  log('isolated strings:', unisolated.seen);

  const raw = await rawStudents(browser, base, 'e1', [{ id: 's2', token: token('s2', 'student', 'e1', `Eve${MARKUP}`) }]);
  await send(raw, 's2', { type: 'progress', question: `q${MARKUP}`.slice(0, 64), answered: 1 });
  await send(raw, 's2', { type: 'raise_hand', text: `help${MARKUP}` });
  await within(dash, SECOND, "s2's question is on the dashboard", (sel) => document.querySelector(sel)?.textContent.includes('q<xss-probe>'), row('s2'), (sel) => document.querySelector(sel)?.textContent);
  await within(dash, SECOND, "s2's raised hand is listed", (text) => document.querySelector('#hands-panel')?.textContent.includes(text), `help${MARKUP}`, () => document.querySelector('#hands-panel')?.textContent);
  const injected = await dash.evaluate((sel) => ({
    elements: document.querySelectorAll('xss-probe, img[src*="xss-probe"]').length,
    name: document.querySelector(`${sel} .c-name`)?.textContent,
  }), row('s2'));
  check(injected.elements === 0, `no user string became an element: ${injected.elements}`);
  check(injected.name?.includes(`Eve${MARKUP}`), `the name is shown as the text it is: ${JSON.stringify(injected.name)}`);
});
