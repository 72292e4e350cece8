// Students driven from the node script itself, over real WebSockets to the
// server (node's own WebSocket, the WHATWG one): they raise hands, lose
// focus, send progress, and show what the server sent them (a private
// message). Used by panels.mjs and screenshot.mjs.

import { spawnSync } from 'node:child_process';

/**
 * Node 20 has `WebSocket` only behind `--experimental-websocket` (node 22
 * has it always): without it, run this same script again with the flag
 * and exit with its status. Call first thing in the scenario.
 */
export function ensureWebSocket() {
  if (typeof WebSocket !== 'undefined') return;
  const r = spawnSync(process.execPath, ['--experimental-websocket', ...process.argv.slice(1)], { stdio: 'inherit' });
  process.exit(r.status ?? 1);
}

/**
 * A student's socket on `exam` at `base` (http://host:port) with a token
 * (`?access_token=`, the fallback PROTOCOL.md 1.2 allows). Resolves once
 * the `welcome` arrived.
 */
export async function connectStudent(base, exam, token, { timeoutMs = 15000 } = {}) {
  const url = `${base.replace(/^http/, 'ws')}/v1/exams/${encodeURIComponent(exam)}/ws?access_token=${encodeURIComponent(token)}`;
  const ws = new WebSocket(url, 'examwatch.v1');
  const frames = [];
  const waiters = new Set();
  let refs = 0;
  ws.addEventListener('message', (e) => {
    const frame = JSON.parse(String(e.data));
    frames.push(frame);
    for (const w of [...waiters]) {
      if (w.pred(frame)) {
        waiters.delete(w);
        clearTimeout(w.timer);
        w.resolve(frame);
      }
    }
  });
  const student = {
    ws,
    frames,
    /** The first frame (already received or to come) matching `pred`. */
    next(pred, what = 'a frame', ms = timeoutMs) {
      const seen = frames.find(pred);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const w = { pred, resolve };
        w.timer = setTimeout(() => {
          waiters.delete(w);
          reject(new Error(`${what}: not received within ${ms} ms; got ${JSON.stringify(frames.map((f) => f.type))}`));
        }, ms);
        waiters.add(w);
      });
    },
    send(msg) {
      ws.send(JSON.stringify(msg));
    },
    /** Sends `msg` with a fresh `ref` and waits for its `ack` (or error). */
    async request(msg, what = msg.type) {
      const ref = `r${++refs}`;
      student.send({ ...msg, ref });
      const reply = await student.next((f) => f.ref === ref && (f.type === 'ack' || f.type === 'error'), what);
      if (reply.type === 'error') throw new Error(`${what}: ${reply.code} ${reply.message}`);
      return reply;
    },
    close() {
      try {
        ws.close();
      } catch {
        // Closed already.
      }
    },
  };
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${url}: no welcome within ${timeoutMs} ms`)), timeoutMs);
    ws.addEventListener('error', () => {
      clearTimeout(timer);
      reject(new Error(`${exam}: the student's socket failed`));
    });
    student.next((f) => f.type === 'welcome', 'welcome').then(() => {
      clearTimeout(timer);
      resolve();
    }, reject);
  });
  return student;
}
