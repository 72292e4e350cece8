// What the dashboard's side panels share (hands.js, alerts.js, record.js):
// building elements without HTML strings, the REST calls they make with
// the dashboard's token, and how a refused call is told to the user.
//
// A panel never ignores a refusal: every failed call comes back as an
// Error whose message is already a sentence for the panel's status line
// (a 403 says the role may not do this, PROTOCOL.md 1.2.2).

import { t } from '../i18n/i18n.js';
import { request, ApiError } from './api.js';

/** An element with a class and text (textContent: never parsed as HTML). */
export function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

/** A user's string (a name, an id, a note), bidi-isolated in a <bdi>. */
export function user(text, className) {
  return el('bdi', className, text ?? '');
}

/**
 * Puts the string for `key` into `node` with each `{placeholder}` filled
 * by its value in a <bdi> of its own: a name with a bidi override
 * (U+202E) in a sentence reorders nothing around it. `vars` values are
 * text (numbers are formatted by the caller).
 */
export function say(node, key, vars = {}) {
  const parts = t(key).split(/\{(\w+)\}/);
  node.replaceChildren(...parts.map((part, i) => (i % 2 ? user(String(vars[part] ?? '')) : part)).filter((x) => x !== ''));
  return node;
}

/** A `<button type=button>` with its text and, if given, an aria-label. */
export function button(className, text, label) {
  const b = el('button', className, text);
  b.type = 'button';
  if (label) b.setAttribute('aria-label', label);
  return b;
}

/** ms since the epoch of an RFC 3339 time, NaN when absent. */
export function ms(at) {
  return at ? Date.parse(at) : NaN;
}


/** A refused or failed call, as a sentence for a status line. */
export class RestError extends Error {
  constructor(status, code, detail) {
    const message =
      status === 403
        ? t('panels.err.forbidden', { code })
        : status === 0
          ? t('panels.err.network')
          : t('panels.err.failed', { status, detail: detail || code || '' });
    super(message);
    this.status = status;
    this.code = code;
  }
}

/**
 * The REST calls of the panels, through api.js (the dashboard's token,
 * read at each call: the token may be changed on the page).
 */
export function restClient() {
  // api.js's request (the token it was given by the dashboard, read at each
  // call), its ApiError turned into a RestError's sentence.
  async function call(method, path, body) {
    try {
      return await request(method, path, body);
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      throw new RestError(err.status, err.status === 0 ? undefined : err.code, err.message);
    }
  }
  return {
    get: (path) => call('GET', path),
    post: (path, body) => call('POST', path, body ?? {}),
  };
}

/** `/v1/exams/{exam}` + `rest`: api.js's. */
export { examPath } from './api.js';

/** The translation of `key`, or `fallback` when the catalogues lack it. */
export function tOr(key, fallback, vars) {
  const s = t(key, vars);
  return s === key ? fallback : s;
}

/** A category's label (environment, test_taker, technical). */
export function categoryText(category) {
  return tOr(`panels.category.${category}`, category ?? '');
}

/** An alert kind's label (focus_lost, network_incident, report, …). */
export function kindText(kind) {
  return tOr(`panels.kind.${kind}`, kind ?? '');
}

/**
 * Inserts `items` (elements) into `list` in that order, moving only the
 * ones out of place and removing the rest: an element that stays keeps
 * its focus (a full replaceChildren would blur the button a keyboard user
 * is on whenever a new line arrives).
 */
export function placeChildren(list, items) {
  const keep = new Set(items);
  for (const child of [...list.children]) if (!keep.has(child)) child.remove();
  let cursor = list.firstElementChild;
  for (const item of items) {
    if (item === cursor) cursor = cursor.nextElementSibling;
    else list.insertBefore(item, cursor);
  }
}
