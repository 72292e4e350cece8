// The proctor's dashboard on one instance, the students on another, through
// Redis (issue 15 item 10): two `examwatch serve` processes sharing one
// SQLite file and a redis-server that tests/api/browser.rs started
// (REDIS_URL). The dashboard on A sees the students connected to B; its
// Start reaches them; an extend and a message from A's row menu reach the
// student on B, whose acknowledgement comes back to A as delivered; a
// pause shows; a hand raised on B is marked on A; a bulk extend of "all
// filtered" reaches both.

import { SECOND, check, frame, kill9, launch, log, page, rawStudents, rest, row, scenario, send, startServer, token, within } from './lib.mjs';

const REDIS = process.env.REDIS_URL;

await scenario('cluster', async ({ cleanup, problems }) => {
  check(REDIS, 'REDIS_URL is set (run through cargo test)');
  const node = (id) => ({ EXAMWATCH__BROKER__REDIS_URL: REDIS, EXAMWATCH__DATABASE__INSTANCE_ID: id });
  const a = await startServer(['serve'], { env: node('node-a') });
  cleanup.push(() => kill9(a));
  const b = await startServer(['serve'], { env: node('node-b') });
  cleanup.push(() => kill9(b));
  const baseA = `http://${a.addr}`;
  const baseB = `http://${b.addr}`;
  const teacher = token('t1', 'teacher', 'e1', 'Ms Rivera');
  const created = await rest(baseA, teacher, 'POST', '/v1/exams', {
    id: 'e1',
    title: 'Two instances',
    phase: 'scheduled',
    closes_at: new Date(Date.now() + 30 * 60 * 1000).toISOString(),
  });
  check(created.status === 201, `exam created on A: ${created.status} ${created.text}`);

  const browser = await launch();
  cleanup.push(() => browser.close());
  // What the checks' diagnostics call in the page (`text(sel)`).
  await browser.addInitScript(() => {
    window.text = (sel) => document.querySelector(sel)?.textContent ?? `no ${sel}`;
  });
  const raw = await rawStudents(browser, baseB, 'e1', [
    { id: 's1', token: token('s1', 'student', 'e1', 'Ada') },
    { id: 's2', token: token('s2', 'student', 'e1', 'Alan') },
  ]);
  const dash = await page(browser, `${baseA}/dashboard/?exam=e1#token=${teacher}`, problems);
  await dash.waitForSelector('#live[data-state="live"]');
  await within(dash, 2 * SECOND, "B's students are on A's dashboard and in its waiting room", () => document.querySelectorAll('#waiting-list li').length === 2 && document.querySelectorAll('#students .rows .row[data-conn="connected"]').length === 2, null, () => text('#waiting-room'));

  await dash.click('#phase-buttons button[data-phase="in_progress"]');
  await frame(raw, 's1', 'the start reached B', { type: 'exam_update', phase: 'in_progress' });
  await within(dash, SECOND, 'the time left is shown', (sel) => /^\d+:\d\d$/.test(document.querySelector(`${sel} .c-time`).textContent), row('s1'), (sel) => text(sel));

  await dash.click(`${row('s1')} .menu-btn`);
  await dash.click('#row-menu [data-kind="extend"]');
  await dash.fill('#dialog input[name="minutes"]', '10');
  await dash.click('#dialog button.confirm');
  await frame(raw, 's1', 'the extension reached s1 on B', { type: 'exam_update', cause: 'extend' });
  await within(dash, 2 * SECOND, "s1's acknowledgement came back to A", (sel) => /extend: ✓ delivered/.test(document.querySelector(`${sel} .c-last`).textContent), row('s1'), (sel) => text(`${sel} .c-last`));
  await within(dash, SECOND, 'extra time shown', (sel) => /\+10 min/.test(document.querySelector(`${sel} .c-extra`).textContent), row('s1'), (sel) => text(sel));

  await dash.click(`${row('s2')} .menu-btn`);
  await dash.click('#row-menu [data-kind="message"]');
  await dash.fill('#dialog textarea', 'Across instances');
  await dash.click('#dialog button.confirm');
  await frame(raw, 's2', 'the message reached s2 on B', { type: 'message', text: 'Across instances' });
  await within(dash, 2 * SECOND, 'delivered, as seen on A', (sel) => /message: ✓ delivered/.test(document.querySelector(`${sel} .c-last`).textContent), row('s2'), (sel) => text(`${sel} .c-last`));

  await dash.click(`${row('s2')} .menu-btn`);
  await dash.click('#row-menu [data-kind="pause"]');
  await frame(raw, 's2', 's2 paused on B', { type: 'exam_update', cause: 'pause' });
  await within(dash, 2 * SECOND, 'paused on A', (sel) => document.querySelector(`${sel} .c-time`).dataset.state === 'paused', row('s2'), (sel) => text(sel));

  await send(raw, 's1', { type: 'raise_hand', text: 'May I have paper?' });
  await within(dash, 2 * SECOND, "s1's hand on A", (sel) => document.querySelector(sel).dataset.hand === 'up' && /raised/.test(document.querySelector(`${sel} .c-hand`).textContent), row('s1'), (sel) => text(sel));

  await dash.click('#select-filtered');
  await dash.click('#bulk-buttons [data-kind="extend"]');
  await dash.fill('#dialog input[name="minutes"]', '1');
  await dash.click('#dialog button.confirm');
  for (const s of ['s1', 's2']) {
    const updates = async () => (await raw.evaluate((id) => window.frames_[id].filter((m) => m.type === 'exam_update' && m.cause === 'extend').length, s));
    await raw.waitForFunction((id) => window.frames_[id].filter((m) => m.type === 'exam_update' && m.cause === 'extend').length >= (id === 's1' ? 2 : 1), s, { timeout: 3 * SECOND });
    log(`bulk extend reached ${s} on B (${await updates()} extensions)`);
  }
  await within(dash, 2 * SECOND, 'bulk extend delivered to both', () => ['s1', 's2'].every((id) => /extend: ✓ delivered/.test(document.querySelector(`#students .row[data-student="${id}"] .c-last`).textContent)), null, () => text('#students'));
  log('cluster: ok');
});
