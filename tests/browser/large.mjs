// A 20,000-student exam on the dashboard. tests/api/browser.rs seeds the
// students into the database (as a room writes them), so the room loads
// them when the dashboard connects: the snapshot (about 10 MB) arrives in
// parts (docs/PROTOCOL.md 4.12), the client library assembles it, and the
// dashboard shows every row and the whole exam's counts, live. Before
// parts existed every connection of such an exam failed ("Write buffer is
// full") and the dashboard reconnected forever. Prints a LARGE line.

import { check, kill9, launch, page, scenario, startServer, token, within } from './lib.mjs';

const STUDENTS = 20000;

await scenario('large exam', async ({ cleanup, problems }) => {
  const server = await startServer(['serve']);
  cleanup.push(() => kill9(server));
  const browser = await launch();
  cleanup.push(() => browser.close());
  const started = Date.now();
  const url = `http://${server.addr}/dashboard/?exam=big&token=${token('t1', 'teacher', 'big')}`;
  const dash = await page(browser, url, problems);
  await within(
    dash,
    60000,
    `${STUDENTS} students on the dashboard, live`,
    (n) => window.examwatch.view.rows.size === n && document.querySelector('#live').dataset.state === 'live',
    STUDENTS,
    () => `${window.examwatch.view.rows.size} rows, ${document.querySelector('#live').dataset.state}`,
  );
  const seen = await dash.evaluate(() => ({
    rows: window.examwatch.view.rows.size,
    rendered: document.querySelectorAll('#students .rows .row').length,
    counts: Object.fromEntries(
      ['active', 'idle', 'submitted', 'disconnected'].map((k) => [k, Number(document.querySelector(`#count-${k}`).textContent)]),
    ),
    banner: document.querySelector('#banner').hidden,
  }));
  check(seen.counts.submitted === 5000 && seen.counts.disconnected === 15000, `counts: ${JSON.stringify(seen.counts)}`);
  check(seen.banner, 'no "not live" banner');
  // The exam has no total_questions: no bar drawn (never a full one), the count alone.
  const progress = await dash.evaluate(() => {
    const row = document.querySelector('#students .rows .row');
    const bar = row.querySelector('.bar');
    return { hidden: getComputedStyle(bar).display === 'none', width: row.querySelector('.fill').style.width, text: row.querySelector('.bar-text').textContent };
  });
  check(progress.hidden && progress.text === '16', `no progress bar without a total: ${JSON.stringify(progress)}`);
  console.log(`LARGE ${JSON.stringify({ ...seen, ms: Date.now() - started })}`);
});
