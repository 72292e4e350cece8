// The timeline before a snapshot, from the REST API (PROTOCOL.md 1.8), so a
// dashboard opened mid-exam (or handed a fresh snapshot after a long outage)
// shows the alerts and events it did not see live.
//
// The snapshot says which seq it is at; the socket delivers everything after
// it, so this loads exactly (after, upTo]: nothing twice, nothing missing.
// Events are written to the database just after teachers received them
// (PROTOCOL.md 4.10), so the newest few may not be there yet: the load asks
// again every `retryMs` until it reaches `upTo`, for at most `patienceMs`
// (after a crash the seqs before a snapshot can be gone for good, so it
// must not wait for ever).

const PAGE = 1000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The exam's events with `after < seq <= upTo`, oldest first. `api(path)`
 * is the dashboard's authenticated GET returning parsed JSON.
 */
export async function loadTimeline(api, exam, after, upTo, { retryMs = 100, patienceMs = 3000 } = {}) {
  const events = [];
  const deadline = Date.now() + patienceMs;
  let cursor = after;
  while (cursor < upTo) {
    const page = await api(`/v1/exams/${encodeURIComponent(exam)}/timeline?after_seq=${cursor}&limit=${PAGE}`);
    for (const ev of page.events) if (ev.seq > cursor && ev.seq <= upTo) events.push(ev);
    cursor = Math.max(cursor, page.next_after_seq);
    if (page.has_more || cursor >= upTo) continue;
    if (Date.now() >= deadline) break;
    await sleep(retryMs);
  }
  return events;
}
