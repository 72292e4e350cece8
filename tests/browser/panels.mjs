// The dashboard's panels against a real server, watched with a proctor's
// token (a proctor may answer hands, resolve alerts and file reports):
//
// * raised hands: two students raise a hand before the dashboard opens and
//   a third after; the panel lists them oldest first and the tab title
//   counts them, also after a reload; a private reply (typed with the
//   keyboard only) reaches the student and lowers the hand; dismiss
//   lowers the other;
// * alerts: a focus loss from before the page opened is listed; a refused
//   resolve (a 403, forced) is said so; resolved with a note it leaves
//   the open list and is under "resolved" with its note; a report about a
//   student and one about the room appear; four students dropping at once
//   are one `network_incident` line for the room; the category filter
//   keeps only its category;
// * a student's record: a click on the row opens it with their sessions
//   (IP, device), alerts and actions; "More" pages their timeline; Escape
//   closes it and focus goes back to the row; then the same from the
//   keyboard alone (the name button, Enter, Tab to the close button);
// * keyboard only, besides: a resolve with its note and a room report;
//   the strings of the three panels are bidi-isolated, and they redraw in
//   French when the language changes.
//
// The students are node WebSockets (students.mjs).

import { join } from 'node:path';
import { SECOND, SLOW, artifacts, check, kill9, launch, log, page, row, scenario, startServer, token, within } from './lib.mjs';
import { connectStudent, ensureWebSocket } from './students.mjs';

ensureWebSocket();

const texts = (sel) => [...document.querySelectorAll(sel)].map((e) => e.textContent);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Presses Tab until the focused element matches `selector`. */
async function tabTo(p, selector, what) {
  for (let i = 0; i < 300; i++) {
    if (await p.evaluate((sel) => Boolean(document.activeElement?.matches(sel)), selector)) return i;
    await p.keyboard.press('Tab');
  }
  throw new Error(`${what}: not reached with Tab (${selector})`);
}

await scenario('panels', async ({ cleanup, problems }) => {
  const server = await startServer(['serve']);
  cleanup.push(() => kill9(server));
  const base = `http://${server.addr}`;
  const teacher = token('t1', 'teacher', 'e1', 'Ms Lovelace');
  const proctor = token('p1', 'proctor', 'e1', 'Mr Proctor');
  const created = await fetch(`${base}/v1/exams`, {
    method: 'POST',
    headers: { authorization: `Bearer ${teacher}`, 'content-type': 'application/json' },
    body: JSON.stringify({ id: 'e1', phase: 'in_progress', title: 'Panels test', settings: { total_questions: 3 } }),
  });
  check(created.status === 201, `exam created: ${created.status}`);
  const get = async (path) => (await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${teacher}` } })).json();

  const names = { s1: 'Ada', s2: 'Grace', s3: 'Alan', s4: 'Edsger', s5: 'Barbara', s6: 'Donald', s7: 'Frances' };
  const st = {};
  for (const [id, name] of Object.entries(names)) {
    st[id] = await connectStudent(base, 'e1', token(id, 'student', 'e1', name));
    cleanup.push(() => st[id].close());
  }
  log('7 students connected over node WebSockets');

  // Before the dashboard: two hands (s1 first) and a focus loss.
  await st.s1.request({ type: 'raise_hand', text: 'Is a calculator allowed?' });
  await sleep(30);
  await st.s2.request({ type: 'raise_hand', text: 'May I have more paper?' });
  await st.s1.request({ type: 'focus', state: 'lost' });
  await st.s1.request({ type: 'focus', state: 'gained' });

  const browser = await launch();
  cleanup.push(() => browser.close());
  const dash = await page(browser, `${base}/dashboard/?exam=e1#token=${proctor}`, problems);
  await dash.waitForSelector('#live[data-state="live"]');
  const handOrder = () => [...document.querySelectorAll('#hands li')].map((li) => li.dataset.student).join(',');
  const handsSeen = () => `${document.title} | ${[...document.querySelectorAll('#hands li')].map((li) => li.textContent).join(' / ')}`;
  await within(dash, SLOW, 'the hands raised before the page opened', () => document.querySelectorAll('#hands li').length === 2, null, handsSeen);
  check((await dash.evaluate(handOrder)) === 's1,s2', `oldest first: ${await dash.evaluate(handOrder)}`);
  check((await dash.title()).startsWith('(2) '), `the title counts two hands: ${await dash.title()}`);
  check((await dash.textContent('#hands li[data-student="s1"]')).includes('Is a calculator allowed?'), 'the hand shows its question');

  // A third hand, live: noticeable (title, "new" mark), listed last.
  await st.s3.request({ type: 'raise_hand', text: 'The link in question 2 is broken' });
  await within(dash, SECOND, 'a live hand in the panel', () => document.querySelectorAll('#hands li').length === 3 && document.title.startsWith('(3) '), null, handsSeen);
  check((await dash.evaluate(handOrder)) === 's1,s2,s3', `oldest first: ${await dash.evaluate(handOrder)}`);
  check(await dash.$eval('#hands li[data-student="s3"]', (li) => li.classList.contains('new')), 'the new hand is marked new');
  check((await dash.textContent('#hands-panel [role="status"]')).includes('Alan'), 'the live region names the student');

  // A reload mid-exam: the same three hands, in the same order.
  await dash.reload();
  await dash.waitForSelector('#live[data-state="live"]');
  await within(dash, SLOW, 'the hands after a reload', () => document.querySelectorAll('#hands li').length === 3, null, handsSeen);
  check((await dash.evaluate(handOrder)) === 's1,s2,s3', `after a reload, oldest first: ${await dash.evaluate(handOrder)}`);
  check((await dash.title()).startsWith('(3) '), `the title after a reload: ${await dash.title()}`);

  // The skip link, first in the tab order, goes to the raised hands.
  await dash.keyboard.press('Tab');
  check(await dash.evaluate(() => document.activeElement?.matches('a.skip[href="#hands-title"]') && document.activeElement.textContent === 'Skip to raised hands'), 'the first Tab reaches the skip link');
  await dash.keyboard.press('Enter');
  check(await dash.evaluate(() => document.activeElement?.id === 'hands-title'), 'the skip link puts the focus on the hands heading');
  // Reply to s1 privately, keyboard only.
  const presses = await tabTo(dash, '#hands li[data-student="s1"] button.reply', 'the reply button');
  log(`reply button reached with ${presses} Tab presses`);
  await dash.keyboard.press('Enter');
  check(await dash.evaluate(() => document.activeElement?.matches('#hands li[data-student="s1"] .reply-form input')), 'Enter on Reply puts the focus in the reply field');
  await dash.keyboard.type('Yes, a basic one.');
  await dash.keyboard.press('Enter');
  const message = await st.s1.next((f) => f.type === 'message' && f.text === 'Yes, a basic one.', 'the private reply');
  check(message.from === 'Mr Proctor', `the reply is from the proctor: ${JSON.stringify(message)}`);
  check(typeof message.reply_to === 'string' && message.reply_to.length > 0, `the reply names the hand it answers: ${JSON.stringify(message)}`);
  await st.s1.request({ type: 'received', id: message.id });
  await within(dash, SECOND, 'the reply lowers the hand', () => !document.querySelector('#hands li[data-student="s1"]') && document.title.startsWith('(2) '), null, handsSeen);
  await within(dash, SECOND, 'the focus moves to the next hand\'s Reply', () => document.activeElement?.matches('#hands li[data-student="s2"] button.reply'), null, () => document.activeElement?.outerHTML ?? 'none');
  check(!st.s2.frames.some((f) => f.type === 'message') && !st.s3.frames.some((f) => f.type === 'message'), 'the reply went to s1 only');

  // A refused dismiss (a 403, forced) is said so and the hand stays up.
  await dash.route('**/v1/exams/e1/actions', (r) => r.fulfill({ status: 403, contentType: 'application/json', body: JSON.stringify({ error: { code: 'forbidden', message: 'this role may not answer hands' } }) }), { times: 1 });
  await dash.click('#hands li[data-student="s2"] button.dismiss');
  const handStatus = () => document.querySelector('#hands-panel [role="status"]').textContent;
  await within(dash, SECOND, 'a refused dismiss is said so', () => /403/.test(document.querySelector('#hands-panel [role="status"]').textContent), null, handStatus);
  check((await dash.textContent('#hands-panel [role="status"]')).includes('Grace') && (await dash.$('#hands li[data-student="s2"]')), 'the refusal names the student and the hand is still listed');
  check(await dash.$eval('#hands li[data-student="s2"] button.dismiss', (b) => !b.disabled), 'Dismiss can be tried again');
  // Dismiss s2's hand: lowered, and s2 is told so (no message).
  await dash.click('#hands li[data-student="s2"] button.dismiss');
  await within(dash, SECOND, 'dismiss lowers the hand', () => !document.querySelector('#hands li[data-student="s2"]') && document.title.startsWith('(1) '), null, handsSeen);
  await within(dash, SECOND, 'the focus is not lost with the dismissed hand', () => document.activeElement !== document.body && document.activeElement?.closest('#hands-panel'), null, () => document.activeElement?.outerHTML ?? 'none');
  const lowered = (await get('/v1/exams/e1/timeline?limit=1000')).events.filter((e) => e.type === 'hand_lowered').map((e) => e.student_id).sort();
  check(JSON.stringify(lowered) === '["s1","s2"]', `two hands lowered on the server: ${JSON.stringify(lowered)}`);
  check(!st.s2.frames.some((f) => f.type === 'message'), 'dismiss sends the student no message');
  const down = await st.s2.next((f) => f.type === 'hand_lowered', 'the student told their hand was lowered');
  check(down.from === 'Mr Proctor' && typeof down.id === 'string' && typeof down.hand_id === 'string', `hand_lowered names the proctor, the action and the hand: ${JSON.stringify(down)}`);
  log('hands: listed, counted, replied to, dismissed');

  // Alerts: s1's focus loss (from before the page opened) is open.
  const focusLine = '#alerts li[data-kind="focus_lost"][data-student="s1"]';
  const alertsSeen = () => texts('#alerts li').join(' / ');
  await within(dash, SECOND, 'the earlier focus loss is an open alert', (sel) => document.querySelector(sel)?.dataset.state === 'open', focusLine, alertsSeen);
  check((await dash.textContent(focusLine)).includes('Ada') && (await dash.textContent(focusLine)).includes('open'), 'the line names the student and says open in words');
  // A refused resolve is told, not swallowed (a 403 forced on the next call).
  await dash.route('**/v1/exams/e1/alerts/*/resolve', (r) => r.fulfill({ status: 403, contentType: 'application/json', body: JSON.stringify({ error: { code: 'forbidden', message: 'proctor may not resolve alerts' } }) }), { times: 1 });
  await dash.click(`${focusLine} button.resolve`);
  await dash.fill(`${focusLine} .resolve-form input`, 'Spoke to her, phone away');
  await dash.click(`${focusLine} .resolve-form button.confirm`);
  await within(dash, SECOND, 'a refused resolve is said so', () => /403/.test(document.querySelector('#alerts-panel [role="status"]').textContent), null, () => document.querySelector('#alerts-panel [role="status"]').textContent);
  check((await dash.$eval(focusLine, (li) => li.dataset.state)) === 'open', 'still open after the refusal');
  await dash.click(`${focusLine} .resolve-form button.confirm`);
  await within(dash, SECOND, 'resolved: gone from the open list', (sel) => !document.querySelector(sel), focusLine, alertsSeen);
  await dash.selectOption('#alert-state', 'resolved');
  await within(dash, SECOND, 'listed under resolved, with its note', (sel) => document.querySelector(sel)?.textContent.includes('Spoke to her, phone away'), focusLine, alertsSeen);
  check((await dash.textContent(focusLine)).includes('resolved') && (await dash.textContent(focusLine)).includes('p1'), 'the resolved line says who resolved it');
  const resolved = (await get('/v1/exams/e1/alerts?state=resolved')).alerts;
  check(resolved.length === 1 && resolved[0].resolution.note === 'Spoke to her, phone away' && resolved[0].resolution.by === 'p1', `resolved on the server: ${JSON.stringify(resolved)}`);
  await dash.selectOption('#alert-state', 'open');

  // Reports: one about s2, one about the room.
  await dash.click('#alerts-panel .report-toggle');
  await dash.selectOption('#report-student', 's2');
  await dash.selectOption('#report-category', 'environment');
  await dash.fill('#report-text', 'Phone rang at the back');
  await dash.click('#report-form button.file');
  const studentReport = '#alerts li[data-kind="report"][data-student="s2"]';
  await within(dash, SECOND, 'the report about a student', (sel) => document.querySelector(sel)?.textContent.includes('Phone rang at the back'), studentReport, alertsSeen);
  await dash.selectOption('#report-student', '');
  await dash.selectOption('#report-category', 'environment');
  await dash.fill('#report-text', 'Fire alarm test at 10:40');
  await dash.click('#report-form button.file');
  const roomReport = '#alerts li[data-kind="report"][data-student=""]';
  await within(dash, SECOND, 'the report about the room', (sel) => document.querySelector(sel)?.textContent.includes('Fire alarm test at 10:40'), roomReport, alertsSeen);
  check((await dash.textContent(studentReport)).includes('Grace') && (await dash.textContent(roomReport)).includes('whole room'), 'reports name the student, or the room');
  const reports = (await get('/v1/exams/e1/alerts')).alerts.filter((a) => a.kind === 'report');
  check(reports.length === 2 && reports.some((a) => a.student_id === 's2' && a.category === 'environment') && reports.some((a) => a.student_id === null), `two reports stored: ${JSON.stringify(reports)}`);

  // Four of seven drop at once: one line for the room.
  for (const id of ['s4', 's5', 's6', 's7']) st[id].close();
  const incident = '#alerts li[data-kind="network_incident"]';
  await within(dash, SLOW, 'a network incident', (sel) => document.querySelector(sel), incident, alertsSeen);
  await sleep(500);
  const incidents = await dash.$$eval(incident, (lis) => lis.map((li) => li.textContent));
  check(incidents.length === 1 && incidents[0].includes('whole room') && /[34] students dropped/.test(incidents[0]), `one room-wide incident line: ${JSON.stringify(incidents)}`);
  await dash.screenshot({ path: join(artifacts(), 'panels.png'), fullPage: true });
  // Keyboard only: resolve the incident (Tab to Resolve, Enter, type the
  // note, Enter), then file a report about the room (Tab to the toggle,
  // Enter: focus on "About", whose first choice is the room; Tab to the
  // text, type, Enter on the button).
  await dash.focus('#alert-state');
  await tabTo(dash, `${incident} button.resolve`, "the incident's Resolve");
  await dash.keyboard.press('Enter');
  check(await dash.evaluate((sel) => document.activeElement?.matches(`${sel} .resolve-form input`), incident), 'Enter on Resolve puts the focus in the note');
  await dash.keyboard.type('Wi-Fi access point rebooted');
  await dash.keyboard.press('Enter');
  await within(dash, SECOND, 'the incident resolved from the keyboard', (sel) => !document.querySelector(sel), incident, alertsSeen);
  check(await dash.evaluate(() => document.querySelector('#alerts-panel').contains(document.activeElement)), 'focus stays in the alerts panel');
  await dash.click('#alerts-panel .report-toggle'); // closed, to open it with the keyboard
  check(await dash.$eval('#report-form', (f) => f.hidden), 'the report form is closed');
  await tabTo(dash, '#alerts-panel .report-toggle', 'the report button');
  await dash.keyboard.press('Enter');
  check(await dash.evaluate(() => document.activeElement?.id === 'report-student' && document.activeElement.value === ''), 'focus on "About", the room chosen');
  await tabTo(dash, '#report-text', 'the report text');
  await dash.keyboard.type('Projector noise in row 3');
  await tabTo(dash, '#report-form button.file', 'the file button');
  await dash.keyboard.press('Enter');
  await within(dash, SECOND, 'the room report filed from the keyboard', () => [...document.querySelectorAll('#alerts li[data-kind="report"][data-student=""]')].some((li) => li.textContent.includes('Projector noise in row 3')), null, alertsSeen);
  await dash.selectOption('#alert-state', 'resolved');
  await within(dash, SECOND, 'the incident under resolved, with its note', (sel) => document.querySelector(sel)?.textContent.includes('Wi-Fi access point rebooted'), incident, alertsSeen);
  await dash.selectOption('#alert-state', '');
  await within(dash, SECOND, 'any state: resolved and open lines', () => document.querySelector('#alerts li[data-kind="network_incident"][data-state="resolved"]') && document.querySelector('#alerts li[data-kind="report"][data-state="open"]'), null, alertsSeen);
  await dash.selectOption('#alert-category', 'technical');
  await within(dash, SECOND, 'the category filter', () => {
    const lis = [...document.querySelectorAll('#alerts li')];
    return lis.length >= 1 && lis.every((li) => li.dataset.category === 'technical');
  }, null, alertsSeen);
  check(await dash.$(incident), 'the incident is technical (resolved, under any state)');
  await dash.selectOption('#alert-category', '');
  await dash.selectOption('#alert-state', 'open');
  log('alerts: resolved with a note, filtered, reports and an incident listed');

  // The record: s1 sends enough progress for two pages of their timeline.
  for (let i = 0; i < 30; i++) {
    st.s1.send({ type: 'progress', question: `q${(i % 3) + 1}`, answered: 1 });
    await sleep(60);
  }
  await st.s1.request({ type: 'heartbeat' });
  const deadline = Date.now() + 10 * SECOND;
  let events = [];
  while ((events = (await get('/v1/exams/e1/students/s1/timeline?limit=1000')).events).length < 35) {
    check(Date.now() < deadline, `s1's events stored: ${events.length}`);
    await sleep(100);
  }
  log(`s1 has ${events.length} events in their timeline`);
  // Accommodations the record must show.
  const patched = await fetch(`${base}/v1/exams/e1/students/s1`, {
    method: 'PATCH',
    headers: { authorization: `Bearer ${teacher}`, 'content-type': 'application/json' },
    body: JSON.stringify({ extra_minutes: 7, time_multiplier: 1.5 }),
  });
  check(patched.status === 200, `accommodations set: ${patched.status}`);
  await dash.click(`${row('s1')} .c-progress`);
  const recordSeen = () => document.querySelector('#record')?.textContent;
  await within(dash, SECOND, 'a row click opens the record', () => !document.querySelector('#record').hidden && document.querySelector('#record-sessions'), null, recordSeen);
  check(await dash.evaluate(() => document.querySelector('#record').contains(document.activeElement)), 'focus is in the record');
  check((await dash.getAttribute('#record', 'role')) === 'dialog' && (await dash.getAttribute('#record', 'aria-labelledby')) === 'record-title', 'the record is a labelled dialog');
  const sessions = await dash.$$eval('#record-sessions tbody tr', (trs) => trs.map((tr) => ({ ip: tr.querySelector('.ip').textContent, ua: tr.querySelector('.ua').textContent })));
  check(sessions.length === 1 && sessions[0].ip === '127.0.0.1' && sessions[0].ua !== '—' && sessions[0].ua.length > 0, `a session with IP and device: ${JSON.stringify(sessions)}`);
  check((await dash.textContent('#record-alerts')).includes('focus lost'), 'the record lists their alert');
  const state = await dash.textContent('#record .record-state');
  check(state.includes('active') && state.includes('none (untimed)') && state.includes('+7 min, time ×1.5'), `the record shows state, deadline and accommodations: ${state}`);
  check((await dash.textContent('#record-actions')).includes('Yes, a basic one.') && (await dash.textContent('#record-actions')).includes('delivered'), 'the record lists the reply, delivered');
  log('sessions', JSON.stringify(sessions));
  await dash.screenshot({ path: join(artifacts(), 'panels-record.png') });
  const firstPage = await dash.$$eval('#record-timeline li', (lis) => lis.length);
  check(firstPage === 25 && !(await dash.$eval('#record button.more', (b) => b.hidden)), `one page of 25 and a More button: ${firstPage}`);
  await dash.click('#record button.more');
  await within(dash, SECOND, 'More loads the next page', (n) => document.querySelectorAll('#record-timeline li').length > n, firstPage, recordSeen);
  while (!(await dash.$eval('#record button.more', (b) => b.hidden))) {
    await dash.click('#record button.more');
    await sleep(200);
  }
  const seqs = await dash.$$eval('#record-timeline li .seq', (s) => s.map((x) => Number(x.textContent.slice(1))));
  check(seqs.length >= events.length && seqs.every((s, i) => i === 0 || seqs[i - 1] < s), `the whole timeline, in order, once each: ${seqs.length} of ${events.length}`);
  await dash.keyboard.press('Escape');
  await within(dash, SECOND, 'Escape closes the record, focus back on the row', (sel) => document.querySelector('#record').hidden && document.activeElement?.closest(sel), row('s1'), () => document.activeElement?.outerHTML);

  // The same from the keyboard alone: the name button, Enter, More, Escape.
  await tabTo(dash, `${row('s2')} .open-record`, 's2 name button');
  await dash.keyboard.press('Enter');
  await within(dash, SECOND, 'Enter on the name opens the record', () => document.querySelector('#record').dataset.student === 's2' && document.querySelector('#record-sessions'), null, recordSeen);
  check(await dash.evaluate(() => document.activeElement?.id === 'record-title'), 'focus on the record title');
  check((await dash.textContent('#record-actions')).includes('lower hand') && (await dash.textContent('#record-alerts')).includes('Phone rang at the back'), 'their dismissed hand and the report about them are in the record');
  await tabTo(dash, '#record button.close', 'the close button');
  await dash.keyboard.press('Enter');
  await within(dash, SECOND, 'the close button closes, focus back on the row', (sel) => document.querySelector('#record').hidden && document.activeElement?.closest(sel), row('s2'), () => document.activeElement?.outerHTML);
  log('record: opened by click and by keyboard, paged, closed with Escape and the button');

  // A name and texts with a bidi override (U+202E): isolated wherever the
  // panels show them (a hand, its reply form, the live region, a report,
  // the record), so they reorder nothing around them.
  const RLO = '\u202E';
  const evil = await connectStudent(base, 'e1', token('s8', 'student', 'e1', `${RLO}evil`));
  cleanup.push(() => evil.close());
  await evil.request({ type: 'raise_hand', text: `${RLO}help me` });
  await within(dash, SECOND, 'the hand of s8', () => document.querySelector('#hands li[data-student="s8"]'), null, handsSeen);
  await dash.click('#hands li[data-student="s8"] button.reply');
  await dash.focus('#report-student');
  await dash.selectOption('#report-student', 's8');
  await dash.fill('#report-text', `${RLO}note passed`);
  await dash.click('#report-form button.file');
  await within(dash, SECOND, 'the report about s8', () => document.querySelector('#alerts li[data-kind="report"][data-student="s8"]'), null, alertsSeen);
  await dash.click(`${row('s8')} .c-progress`);
  await within(dash, SECOND, "s8's record", () => document.querySelector('#record').dataset.student === 's8' && document.querySelector('#record-sessions'), null, recordSeen);
  const bidi = await dash.evaluate((rlo) => {
    const isolated = (e) => e.tagName === 'BDI' || getComputedStyle(e).unicodeBidi === 'isolate';
    const bad = [];
    let seen = 0;
    for (const panel of ['#hands-panel', '#alerts-panel', '#record']) {
      const walker = document.createTreeWalker(document.querySelector(panel), NodeFilter.SHOW_TEXT);
      for (let n = walker.nextNode(); n; n = walker.nextNode()) {
        if (!n.data.includes(rlo)) continue;
        seen += 1;
        const holder = n.parentElement;
        // An <option> cannot hold a <bdi>: FSI … PDI around the string instead.
        if (holder.tagName === 'OPTION') {
          if (!n.data.includes(`\u2068${rlo}`)) bad.push(`OPTION: ${JSON.stringify(n.data)}`);
        } else if (!isolated(holder) || holder.textContent !== n.data) bad.push(`${panel} ${holder.tagName}.${holder.className}: ${JSON.stringify(holder.textContent)}`);
      }
    }
    return { bad, seen };
  }, RLO);
  check(bidi.bad.length === 0, `every string with U+202E is isolated in the panels: ${JSON.stringify(bidi.bad)}`);
  check(bidi.seen >= 8, `the strings with U+202E are in the panels: ${bidi.seen}`);
  log('bidi: isolated in the panels,', bidi.seen, 'strings');

  // In French, the panels redraw in French (the strings of en.js and fr.js).
  await dash.evaluate(() => import('/i18n/i18n.js').then((m) => m.setLanguage('fr')));
  await within(dash, SECOND, 'the panels in French', () => document.querySelector('#hands-title').textContent.startsWith('Mains levées')
    && document.querySelector('#alerts-title').textContent.startsWith('Alertes')
    && document.querySelector('#record-title').textContent.startsWith('Dossier de')
    && document.querySelector('#alerts li .state')?.textContent.includes('ouverte')
    && document.querySelector('#hands li button.reply')?.textContent === 'Répondre', null, () => `${document.querySelector('#hands-panel').textContent} | ${document.querySelector('#alerts-panel').textContent.slice(0, 300)}`);
  log('the panels switch to French');
});
