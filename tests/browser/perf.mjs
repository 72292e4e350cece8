// 300 simulated students (`examwatch demo --students 300 --pace 1s`) on one
// dashboard: measures what each render spends applying updates (the view's
// own performance.now() timings), the gaps between animation frames (jank),
// long tasks (> 50 ms), the main thread's busy share (Chromium's metrics)
// and the 1 Hz "last active" refresh. Prints a PERF line with the numbers
// quoted in docs/CLIENT.md. It fails if a row element is rebuilt, if a row
// update costs more than a few DOM mutations, or if renders get slow.
//
// Issue 15: 250 of the 300 are the demo's simulated students, 50 are plain
// sockets that raise their hand during the measurement, and during it too
// the teacher selects all 300 ("select all filtered") and extends them in
// bulk: every row must show its extension and the 50 hands, on top of the
// same budget.

import { SLACK, check, kill9, launch, log, page, patience, rawStudents, scenario, send, startServer, token } from './lib.mjs';

const STUDENTS = 300;
const HANDS = 50;

await scenario('300 students', async ({ cleanup, problems }) => {
  const server = await startServer(['demo', '--students', String(STUDENTS - HANDS), '--pace', '1s', '--waiting', '0s']);
  cleanup.push(() => kill9(server));
  const browser = await launch();
  cleanup.push(() => browser.close());
  const hands = Array.from({ length: HANDS }, (_, i) => `h${String(i + 1).padStart(2, '0')}`);
  const raw = await rawStudents(browser, `http://${server.addr}`, 'demo', hands.map((id) => ({ id, token: token(id, 'student', 'demo', `Hand ${id}`) })));
  const dash = await page(browser, server.urls.dashboard, problems);
  await dash.waitForFunction((n) => document.querySelectorAll('#students .rows .row').length === n, STUDENTS, { timeout: 30000 });
  log(`${STUDENTS} students on the dashboard`);

  // Chromium's own accounting of the page's main thread.
  const cdp = await dash.context().newCDPSession(dash);
  await cdp.send('Performance.enable');
  const metrics = async () => Object.fromEntries((await cdp.send('Performance.getMetrics')).metrics.map((x) => [x.name, x.value]));
  const before = await metrics();
  // Measure from now on: frames, row updates, long tasks.
  await dash.evaluate(() => {
    const s = window.examwatch.stats;
    s.frames = 0;
    s.rowUpdates = 0;
    s.frameMs = [];
    window.longTasks = [];
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) window.longTasks.push(e.duration);
    }).observe({ type: 'longtask', buffered: false });
    window.measureStart = performance.now();
    // Update only what changed: count DOM mutations in the table, and keep
    // the row elements to check that none was rebuilt.
    window.rowsAtStart = [...document.querySelectorAll('#students .rows .row')];
    window.mutations = 0;
    new MutationObserver((records) => {
      window.mutations += records.length;
    }).observe(document.querySelector('#students .rows'), { subtree: true, childList: true, characterData: true, attributes: true });
    // Gaps between animation frames: what a viewer would see as jank.
    window.gaps = [];
    let last = performance.now();
    const tick = (t) => {
      window.gaps.push(t - last);
      last = t;
      requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  });
  // The burst: 50 hands, and a bulk extend of all 300 through the page.
  const t0 = Date.now();
  for (const id of hands) await send(raw, id, { type: 'raise_hand', text: `question from ${id}` });
  await dash.click('#select-filtered');
  check((await dash.textContent('#bulk-count')) === `${STUDENTS} selected`, `all ${STUDENTS} selected: ${await dash.textContent('#bulk-count')}`);
  await dash.click('#bulk-buttons [data-kind="extend"]');
  await dash.fill('#dialog input[name="minutes"]', '5');
  await dash.click('#dialog button.confirm');
  await dash.waitForFunction((n) => [...document.querySelectorAll('#students .rows .c-extra')].filter((c) => /\+5 min/.test(c.textContent)).length === n, STUDENTS, { timeout: 30000 });
  const extendedMs = Date.now() - t0;
  await dash.waitForFunction((n) => document.querySelectorAll('#students .rows .row[data-hand="up"]').length === n, HANDS, { timeout: 30000 });
  const burstMs = Date.now() - t0;
  log(`bulk extend of ${STUDENTS} shown in ${extendedMs} ms, ${HANDS} hands and the extension in ${burstMs} ms`);
  await dash.waitForFunction(() => window.examwatch.stats.rowUpdates >= 3000, null, { timeout: 60000 });
  const m = await dash.evaluate(() => {
    const s = window.examwatch.stats;
    const sorted = [...s.frameMs].sort((a, b) => a - b);
    const pct = (p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
    const seconds = (performance.now() - window.measureStart) / 1000;
    return {
      students: document.querySelectorAll('#students .rows .row').length,
      rows_rebuilt: window.rowsAtStart.filter((r) => !r.isConnected).length,
      mutations_per_row_update: +(window.mutations / s.rowUpdates).toFixed(2),
      seconds: +seconds.toFixed(1),
      frames: s.frames,
      row_updates: s.rowUpdates,
      row_updates_per_s: Math.round(s.rowUpdates / seconds),
      frame_ms_p50: +pct(50).toFixed(2),
      frame_ms_p95: +pct(95).toFixed(2),
      frame_ms_max: +(sorted[sorted.length - 1] ?? 0).toFixed(2),
      age_tick_ms: +(s.tickMs ?? 0).toFixed(2),
      frame_gap_ms_p95: +[...window.gaps].sort((a, b) => a - b)[Math.floor(0.95 * window.gaps.length)].toFixed(1),
      frame_gaps_over_50ms: window.gaps.filter((g) => g > 50).length,
      frame_gaps: window.gaps.length,
      long_tasks: window.longTasks.length,
      long_task_ms_max: +Math.max(0, ...window.longTasks).toFixed(1),
      extended: [...document.querySelectorAll('#students .rows .c-extra')].filter((c) => /\+5 min/.test(c.textContent)).length,
      extend_listed: [...document.querySelectorAll('#students .rows .c-last')].filter((c) => /^extend: /.test(c.textContent)).length,
      hands: document.querySelectorAll('#students .rows .row[data-hand="up"]').length,
    };
  });
  m.bulk_extend_shown_ms = extendedMs;
  m.burst_shown_ms = burstMs;
  const after = await metrics();
  const busy = (k) => +((after[k] - before[k]) / m.seconds * 100).toFixed(1);
  m.main_thread_busy_pct = busy('TaskDuration');
  m.script_pct = busy('ScriptDuration');
  m.layout_pct = busy('LayoutDuration');
  m.style_pct = busy('RecalcStyleDuration');
  console.log(`PERF ${JSON.stringify(m)}`);
  check(m.students === STUDENTS, 'every student has a row');
  check(m.extended === STUDENTS && m.extend_listed === STUDENTS, `every row shows the bulk extension (${m.extended}) and its delivery state (${m.extend_listed})`);
  check(m.hands === HANDS, `every raised hand is marked (${m.hands})`);
  // Deterministic: what the view does per update, whatever the machine's load.
  check(m.rows_rebuilt === 0, `no row element was rebuilt (${m.rows_rebuilt} were)`);
  check(m.mutations_per_row_update < 8, `a row update touches only its changed cells (${m.mutations_per_row_update} DOM mutations each)`);
  // Renders are batched: one at most every RENDER_MS (100 ms, a timer that
  // never fires early), each applying many row updates. A view that
  // rendered per event has about one render per row update and fails here,
  // whatever the machine's speed. (A bound on render time, which this
  // replaces, could not fail: one repaint of 300 rows takes well under its
  // 50 ms even when done for every event.)
  check(m.frames > 0, 'renders were measured');
  // A loose bound (the machine may be shared): 50 ms of work per render at
  // the 95th percentile, times BROWSER_SLACK (measured: 5-8 ms).
  check(m.frame_ms_p95 < patience(50), `a render's work at the 95th percentile is under ${patience(50)} ms (50 ms × slack ${SLACK}): ${m.frame_ms_p95} ms`);
  check(m.frames <= Math.floor((m.seconds + 0.1) * 10) + 2, `at most ten renders a second (${m.frames} in ${m.seconds} s)`);
  check(m.row_updates >= 5 * m.frames, `each render applies a batch of updates (${m.row_updates} updates in ${m.frames} renders)`);
});
