// Shared helpers for the browser tests (run by tests/api/browser.rs, which
// sets EXAMWATCH_BIN, TEST_DIR and ARTIFACT_DIR). Each scenario starts its
// own examwatch process, drives Debian's chromium through playwright-core
// (never a downloaded browser), and exits non-zero on the first failed
// check, printing what it saw.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const BIN = required('EXAMWATCH_BIN');
export const DIR = required('TEST_DIR');
export const ARTIFACTS = process.env.ARTIFACT_DIR ?? join(DIR, 'artifacts');
export const SECRET = 'browser-test-secret-browser-test-secret-0123';
/** "Within a second" checks use this: the promise, in milliseconds. */
export const SECOND = 1000;
/**
 * How much longer than its promise a wall-clock check may wait before it
 * fails (BROWSER_SLACK, default 3): the machine running the tests may be
 * shared and slow, and a check that fails on a busy machine proves nothing.
 * A check that took longer than its promise still passes, with a visible
 * SLOW line in the log.
 */
export const SLACK = Number(process.env.BROWSER_SLACK ?? 3);
/** The deadline of a check promised within `ms`. */
export const patience = (ms) => ms * SLACK;
/** Anything that involves the server starting or a reconnect backoff. */
export const SLOW = 15000;

function required(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`${name} is not set (run through cargo test)`);
    process.exit(2);
  }
  return v;
}

export function log(...args) {
  console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...args);
}

export function check(cond, message) {
  if (!cond) throw new Error(`check failed: ${message}`);
}

/** The server's environment: its own SQLite file and data dir under DIR. */
export function serverEnv(extra = {}) {
  const { RUST_LOG: _ignored, ...inherited } = process.env;
  return {
    ...inherited,
    // A free port for the operators' listener too: the default 9090 may be
    // held by anything else on the machine (another test run).
    EXAMWATCH__SERVER__ADMIN_BIND: '127.0.0.1:0',
    EXAMWATCH__LOG__LEVEL: 'info',
    EXAMWATCH__DATABASE__URL: `sqlite://${DIR}/examwatch.db`,
    EXAMWATCH__SERVER__DATA_DIR: join(DIR, 'data'),
    EXAMWATCH__AUTH__JWT_SECRET: SECRET,
    EXAMWATCH__SERVER__SHUTDOWN_TIMEOUT: '2s',
    ...extra,
  };
}

/**
 * Starts `examwatch ...args` and resolves once it logged its address (and,
 * for `demo`, printed its URLs). `bind` defaults to a free port.
 */
export function startServer(args, { bind = '127.0.0.1:0', env = {} } = {}) {
  const proc = spawn(BIN, args, {
    cwd: DIR,
    env: serverEnv({ EXAMWATCH__SERVER__BIND: bind, ...env }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const server = { proc, addr: null, urls: {}, logs: [] };
  const wantUrls = args[0] === 'demo';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`server did not start:\n${server.logs.join('\n')}`));
    }, SLOW);
    const done = () => {
      if (server.addr && (!wantUrls || server.urls.student)) {
        clearTimeout(timer);
        resolve(server);
      }
    };
    const onLine = (line) => {
      server.logs.push(line);
      const addr = line.match(/listening on http:\/\/(\S+)/);
      if (addr) server.addr = addr[1];
      const url = line.match(/^\s*(dashboard|student page):\s+(\S+)/);
      if (url) {
        server.urls[url[1] === 'dashboard' ? 'dashboard' : 'student'] = url[2];
        server.addr = new URL(url[2]).host;
      }
      done();
    };
    for (const stream of [proc.stdout, proc.stderr]) {
      let buf = '';
      stream.on('data', (chunk) => {
        buf += chunk;
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          onLine(buf.slice(0, i));
          buf = buf.slice(i + 1);
        }
      });
    }
    proc.on('exit', (code) => reject(new Error(`server exited (${code}):\n${server.logs.join('\n')}`)));
  });
}

/** SIGKILL, and wait until the process is gone. */
export function kill9(server) {
  return new Promise((resolve) => {
    if (server.proc.exitCode !== null) return resolve();
    server.proc.removeAllListeners('exit');
    server.proc.on('exit', () => resolve());
    server.proc.kill('SIGKILL');
  });
}

/** SIGTERM (graceful: everything queued is written), expecting exit 0. */
export function stop(server) {
  return new Promise((resolve, reject) => {
    server.proc.removeAllListeners('exit');
    server.proc.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`server exited with ${code}`))));
    server.proc.kill('SIGTERM');
  });
}

/** A token minted by `examwatch token` with the test secret. */
export function token(sub, role, exam, name = sub) {
  const args = ['token', '--sub', sub, '--name', name, '--role', role, '--exam', exam];
  return execFileSync(BIN, args, { cwd: DIR, env: serverEnv() }).toString().trim();
}

/** Headless Debian chromium with a fresh profile; no network but ours. */
export async function launch() {
  const profile = mkdtempSync(join(tmpdir(), 'examwatch-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1400, height: 900 },
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  context.setDefaultTimeout(SLOW);
  return context;
}

/**
 * A new page that fails the test on any script error, CSP violation or
 * failed load of one of our own assets (a 404 for a script, a stylesheet,
 * an image: the console only says "Failed to load resource", which is
 * ignored below because refused sockets say it too).
 */
export async function page(context, url, problems) {
  const p = await context.newPage();
  const origin = new URL(url).origin;
  const assets = new Set(['document', 'stylesheet', 'script', 'image', 'font', 'manifest']);
  p.on('response', (r) => {
    if (r.status() >= 400 && new URL(r.url()).origin === origin && assets.has(r.request().resourceType())) {
      problems.push(`asset failed to load on ${url}: ${r.status()} ${r.url()}`);
    }
  });
  p.on('pageerror', (e) => problems.push(`page error on ${url}: ${e.message}`));
  p.on('console', (m) => {
    if (m.type() === 'error' && !/WebSocket connection|ERR_CONNECTION_REFUSED|Failed to load resource/.test(m.text())) {
      problems.push(`console error on ${url}: ${m.text()}`);
    }
  });
  await p.goto(url);
  return p;
}

/**
 * Waits until `fn(arg)` is true in `page`, at most `ms`; logs how long it
 * took. On timeout the error says what `show(arg)` saw in the page.
 */
export async function within(page, ms, what, fn, arg = null, show = null) {
  const t0 = Date.now();
  try {
    // Interval polling: a page that is not the front tab gets no animation
    // frames, which the default polling relies on.
    await page.waitForFunction(fn, arg, { timeout: patience(ms), polling: 50 });
  } catch {
    const seen = show ? await page.evaluate(show, arg).catch((e) => `? ${e.message}`) : '';
    throw new Error(`${what}: not within ${patience(ms)} ms (promised ${ms}); the page shows: ${seen}`);
  }
  const took = Date.now() - t0;
  log(`${what}: ${took} ms${took > ms ? ` (SLOW: promised ${ms} ms)` : ''}`);
}

/** The dashboard row of a student. */
export const row = (id) => `#students .row[data-student="${id}"]`;

export function artifacts() {
  mkdirSync(ARTIFACTS, { recursive: true });
  return ARTIFACTS;
}

/** Runs a scenario: cleans up processes and browser, exit code 1 on failure. */
export async function scenario(name, body) {
  const cleanup = [];
  const problems = [];
  let failed = false;
  try {
    await body({ cleanup, problems });
    check(problems.length === 0, `no page errors, got:\n${problems.join('\n')}`);
    log(`${name}: ok`);
  } catch (e) {
    failed = true;
    console.error(`${name}: FAILED: ${e.stack ?? e}`);
  } finally {
    for (const f of cleanup.reverse()) {
      try {
        await f();
      } catch {
        // Best effort: the process may be gone already.
      }
    }
  }
  process.exit(failed ? 1 : 0);
}

/** POST/GET `path` on `base` with a bearer token and a JSON body; the parsed answer and status. */
export async function rest(base, tok, method, path, body) {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: { authorization: `Bearer ${tok}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    // Not JSON (report.csv).
  }
  return { status: res.status, json, text };
}

/**
 * Students with plain sockets, in one page on `base`'s origin, so a test
 * decides when each acknowledges an action's frame (`received`): every
 * frame they get is kept in `window.frames[id]`; with `ack` true (the
 * default) frames with an action `id` are acknowledged at once, else only
 * when the test calls `ack(page, id, actionId)`. Also `send(page, id, msg)`.
 */
export async function rawStudents(context, base, exam, students) {
  const p = await context.newPage();
  await p.goto(`${base}/healthz`);
  await p.evaluate(({ exam, students }) => {
    window.frames_ = {};
    window.sockets = {};
    window.autoAck = {};
    for (const s of students) {
      window.frames_[s.id] = [];
      window.autoAck[s.id] = s.ack !== false;
      const ws = new WebSocket(`ws://${location.host}/v1/exams/${encodeURIComponent(exam)}/ws?access_token=${s.token}`, 'examwatch.v1');
      ws.onmessage = (e) => {
        const m = JSON.parse(e.data);
        window.frames_[s.id].push(m);
        if (m.id && window.autoAck[s.id] && ['message', 'exam_update', 'terminated', 'session_invalidated'].includes(m.type)) {
          ws.send(JSON.stringify({ type: 'received', id: m.id }));
        }
      };
      window.sockets[s.id] = ws;
    }
  }, { exam, students });
  await p.waitForFunction((ids) => ids.every((id) => window.frames_[id].some((m) => m.type === 'welcome')), students.map((s) => s.id), { timeout: SLOW });
  return p;
}

/** The frames a raw student got so far. */
export const framesOf = (p, id) => p.evaluate((id) => window.frames_[id], id);
/** A raw student acknowledges an action's frame. */
export const ack = (p, id, actionId) => p.evaluate(([id, a]) => window.sockets[id].send(JSON.stringify({ type: 'received', id: a })), [id, actionId]);
/** A raw student sends a message. */
export const send = (p, id, msg) => p.evaluate(([id, m]) => window.sockets[id].send(JSON.stringify(m)), [id, msg]);
/** Whether frame `m` has every field of `want` (shallow). */
const matches = (m, want) => Object.entries(want).every(([k, v]) => m[k] === v);

/** Waits until raw student `id` got a frame with the fields of `want`; returns the last such. */
export async function frame(p, id, what, want, ms = SECOND) {
  const t0 = Date.now();
  try {
    await p.waitForFunction(([id, want]) => window.frames_[id].some((m) => Object.entries(want).every(([k, v]) => m[k] === v)), [id, want], { timeout: patience(ms), polling: 50 });
  } catch {
    throw new Error(`${what}: not within ${patience(ms)} ms; ${id} got ${JSON.stringify(await framesOf(p, id)).slice(-1500)}`);
  }
  log(`${what}: ${Date.now() - t0} ms`);
  return (await framesOf(p, id)).filter((m) => matches(m, want)).at(-1);
}
