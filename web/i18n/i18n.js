// The pages' strings and their formatting, in one place.
//
// Every user-visible string of the dashboard and the student demo page is
// a key in the catalogues next to this file (en.js, fr.js; English is the
// fallback for a key a catalogue lacks). The language is the one chosen
// with the page's switch (kept in localStorage), else the first of the
// browser's languages we ship, else English. Dates, times and numbers are
// formatted with `Intl` in the viewer's locale and time zone; durations
// (remaining time, time disconnected) are plain h:mm:ss, which reads the
// same in every language we ship.
//
// Static markup is translated by attribute: `data-i18n="key"` sets the
// element's text, `data-i18n-attr="placeholder:key;aria-label:key"` sets
// attributes. Code calls `t('key', {name: …})`, where `{name}` in the
// string is replaced by the value (as text: callers put it into the DOM
// with textContent, never innerHTML).

import en from './en.js';
import fr from './fr.js';

export const CATALOGUES = { en, fr };
const KEY = 'examwatch.lang';

function pick() {
  let saved = null;
  try { saved = localStorage.getItem(KEY); } catch { /* storage blocked */ }
  if (saved && CATALOGUES[saved]) return saved;
  for (const tag of navigator.languages ?? [navigator.language ?? 'en']) {
    const base = String(tag).toLowerCase().split('-')[0];
    if (CATALOGUES[base]) return base;
  }
  return 'en';
}

let lang = pick();
const listeners = new Set();

/** The language in use: a key of CATALOGUES. */
export function language() {
  return lang;
}

/** Switch language, remember it, re-translate the page and tell listeners. */
export function setLanguage(next) {
  if (!CATALOGUES[next] || next === lang) return;
  lang = next;
  try { localStorage.setItem(KEY, next); } catch { /* storage blocked */ }
  document.documentElement.lang = next;
  translate(document);
  for (const f of listeners) f(next);
}

/** Call `f(lang)` after every language switch (to redraw dynamic text). */
export function onLanguage(f) {
  listeners.add(f);
  return () => listeners.delete(f);
}

/** The string for `key` with `{name}` placeholders filled from `vars`. */
export function t(key, vars) {
  const s = CATALOGUES[lang][key] ?? en[key];
  if (s === undefined) return key;
  if (!vars) return s;
  return s.replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
}

/** Translate every `data-i18n` / `data-i18n-attr` element under `root`. */
export function translate(root) {
  for (const el of root.querySelectorAll('[data-i18n]')) {
    el.textContent = t(el.dataset.i18n);
  }
  for (const el of root.querySelectorAll('[data-i18n-attr]')) {
    for (const pair of el.dataset.i18nAttr.split(';')) {
      const [attr, key] = pair.split(':').map((s) => s.trim());
      if (attr && key) el.setAttribute(attr, t(key));
    }
  }
}

/**
 * A `<select>` that switches the language: its options are the shipped
 * catalogues, each named in its own language (`lang.name`).
 */
export function languageSwitch(select) {
  select.replaceChildren();
  for (const [code, cat] of Object.entries(CATALOGUES)) {
    const o = document.createElement('option');
    o.value = code;
    o.textContent = cat['lang.name'] ?? code;
    o.lang = code;
    select.append(o);
  }
  select.value = lang;
  select.addEventListener('change', () => setLanguage(select.value));
}

/**
 * The locale the Intl formatters use: the browser's full one (en-GB: a 24 h
 * clock) when one of its languages is the catalogue's language, else the
 * bare language.
 */
export function locale() {
  const tags = typeof navigator === 'undefined' ? [] : navigator.languages ?? [navigator.language];
  for (const tag of tags) {
    if (String(tag ?? '').toLowerCase().split('-')[0] !== lang) continue;
    try {
      return Intl.DateTimeFormat.supportedLocalesOf([tag]).length ? tag : lang;
    } catch {
      return lang; // not a valid tag
    }
  }
  return lang;
}

const formatters = new Map();
function formatter(kind, options) {
  const k = `${lang}|${kind}`;
  let f = formatters.get(k);
  if (!f) {
    const loc = locale();
    f = kind === 'number' ? new Intl.NumberFormat(loc, options) : new Intl.DateTimeFormat(loc, options);
    formatters.set(k, f);
  }
  return f;
}

/** A wall-clock time (ms since the epoch) in the viewer's locale and zone. */
export function formatTime(ms) {
  return formatter('time', { hour: '2-digit', minute: '2-digit', second: '2-digit' }).format(new Date(ms));
}

/** A date and time (ms since the epoch) in the viewer's locale and zone. */
export function formatDateTime(ms) {
  return formatter('datetime', { dateStyle: 'medium', timeStyle: 'medium' }).format(new Date(ms));
}

/** A number in the viewer's locale. */
export function formatNumber(n) {
  return formatter('number').format(n);
}

/** A duration in ms as h:mm:ss (or m:ss under an hour); negative is 0. */
export function formatDuration(ms) {
  const total = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${s}` : `${m}:${s}`;
}

if (typeof document !== 'undefined') document.documentElement.lang = lang;
