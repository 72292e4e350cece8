// The README's screenshot (docs/img/dashboard.png): `examwatch demo` with
// 30 simulated students, an exam in progress, watched on the dashboard
// once it looks like a real class: a raised hand waiting in the hands
// panel (a student on a node WebSocket raises it), open alerts, students
// idle or disconnected. Saved as target/tmp/browser-artifacts/dashboard.png;
// copy it into docs/img/ to update the README.

import { join } from 'node:path';
import { SLOW, artifacts, check, kill9, launch, log, page, scenario, startServer, token, within } from './lib.mjs';
import { connectStudent, ensureWebSocket } from './students.mjs';

ensureWebSocket();

await scenario('readme screenshot', async ({ cleanup, problems }) => {
  const server = await startServer(['demo', '--students', '30', '--pace', '1s', '--waiting', '0s']);
  cleanup.push(() => kill9(server));
  const base = `http://${server.addr}`;
  const browser = await launch();
  cleanup.push(() => browser.close());
  const dash = await page(browser, server.urls.dashboard, problems);
  await dash.waitForSelector('#live[data-state="live"]');
  await dash.waitForFunction(() => document.querySelectorAll('#students .rows .row').length === 30);

  const exam = new URL(server.urls.student).searchParams.get('exam') ?? 'demo';
  const student = await connectStudent(base, exam, token('s-lin', 'student', exam, 'Lin Wei'));
  cleanup.push(() => student.close());
  await student.request({ type: 'raise_hand', text: 'Does question 4 want the exact value or a rounded one?' });
  await within(dash, SLOW, 'the raised hand on the dashboard', () => document.querySelector('#hands li[data-student="s-lin"]') && document.title.startsWith('(1) '), null, () => document.querySelector('#hands-panel').textContent);

  // A class that looks real: open alerts, some students idle or gone.
  await dash.waitForFunction(() => {
    const n = (k) => Number(document.querySelector(`#count-${k}`).textContent);
    return document.querySelectorAll('#alerts li[data-state="open"]').length >= 3 && n('idle') + n('disconnected') >= 2;
  }, null, { timeout: 60000, polling: 100 });
  check(await dash.$('#hands li[data-student="s-lin"]'), 'the hand is still up');
  // At 1400 px no state is cut: the hand, status, time, focus, last-active
  // and latest-action cells of every row show all their words (wrapped if
  // need be), and the hand's symbol is one the system fonts have.
  const hand = await dash.$eval('#students .row[data-student="s-lin"] .c-hand', (c) => c.textContent);
  check(hand === '☝ raised', `the raised hand reads: ${hand}`);
  const cut = await dash.evaluate(() => {
    const out = [];
    for (const r of document.querySelectorAll('#students .rows .row')) {
      r.scrollIntoView({ block: 'nearest' });
      for (const c of r.querySelectorAll('.c-status, .c-status .badge, .c-time, .c-hand, .c-focus, .c-active, .c-conn, .c-last')) {
        if (c.scrollWidth > c.clientWidth + 1 || c.scrollHeight > c.clientHeight + 1) out.push(`${r.dataset.student} ${c.className}: ${c.textContent} (${c.scrollWidth}x${c.scrollHeight} in ${c.clientWidth}x${c.clientHeight})`);
      }
    }
    window.scrollTo(0, 0);
    return out;
  });
  check(cut.length === 0, `cells cut at 1400 px: ${cut.join('; ')}`);
  const shot = join(artifacts(), 'dashboard.png');
  await dash.screenshot({ path: shot, fullPage: true });
  log('screenshot saved to', shot);
});
